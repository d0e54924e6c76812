"""The Python API as the README shows it: its examples are run here, as written."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

import splitasr
from tests.cluster import ONE_TINY_POOL, CoordinatorProcess

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_examples() -> list[str]:
    section = README.read_text().split("## Python\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def run_example(code: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {"__name__": "readme"})  # noqa: S102 (our own README)
    return out.getvalue()


def test_the_readme_shows_two_examples_and_the_api_is_lazy():
    assert len(readme_examples()) == 2
    import subprocess
    import sys

    probe = "import sys, splitasr; print(sorted({'onnxruntime', 'aiohttp', 'numpy'} & set(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]", loaded  # `import splitasr` (and so every CLI start) loads no heavy module
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", splitasr.__version__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = splitasr.nope


def test_transcribe_example(tiny_int8_recognizer):
    printed = run_example(readme_examples()[0])
    assert printed.lower().count("first importance") == 3, printed  # text and segment, then Recognizer
    assert "(0.0, " in printed  # segments with start and end


def test_streaming_example_against_a_cluster(tmp_path, tiny_artifacts):
    with CoordinatorProcess(tmp_path / "cluster", ONE_TINY_POOL) as cluster:
        printed = run_example(readme_examples()[1].replace("http://127.0.0.1:7070", cluster.url))
    assert re.search(r"^\[0\.\d\d-\d\.\d\d\] It is of the first importance", printed, re.M), printed
