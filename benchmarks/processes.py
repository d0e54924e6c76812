"""Whole processes on real speech: ``splitasr transcribe`` against a faster-whisper script, same files,
same run (interpreter start, model load and all; splitasr's stages already exported and cached).

Both transcribe the English clips of ``samples/real`` (tiny.en, int8, 2 threads, greedy): splitasr
with its defaults (`--int8`, and `--batch`), faster-whisper with ``beam_size=1`` and its default
fallbacks. Runs alternate for ``--rounds`` rounds; the median wall time is reported with the WER of
each system's output. Writes benchmarks/results/processes.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import median, print_table, write_json  # noqa: E402

from splitasr.shared.wer import WERTally, read_manifest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FW_SCRIPT = """
import json, sys
from faster_whisper import WhisperModel
from splitasr.models.sources import locate
model = WhisperModel(str(locate("tiny.en").directory), device="cpu", compute_type="int8", cpu_threads=2)
for path in sys.argv[1:]:
    segments, _ = model.transcribe(path, language="en", beam_size=1)
    print(json.dumps({"file": path, "text": " ".join(s.text.strip() for s in segments)}))
"""


def run(cmd: list[str]) -> tuple[float, dict[str, str]]:
    started = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    wall = time.perf_counter() - started
    texts = {}
    for line in out.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            texts[row["file"]] = row["text"]
        elif ": " in line:  # batch mode prints "file: text"
            name, text = line.split(": ", 1)
            texts[name] = text
    return wall, texts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    entries = [e for e in read_manifest(ROOT / "samples" / "real" / "manifest.jsonl") if e.language == "en"]
    files = [str(e.file) for e in entries]
    exe = str(Path(sys.executable).parent / "splitasr")
    systems = {
        "splitasr transcribe --int8": [exe, "transcribe", "--int8", "--threads", "2", "--json", *files],
        "splitasr transcribe --int8 --batch": [exe, "transcribe", "--int8", "--threads", "2", "--batch", *files],
        "faster-whisper int8 (script)": [sys.executable, "-c", FW_SCRIPT, *files],
    }
    walls: dict[str, list[float]] = {k: [] for k in systems}
    texts: dict[str, dict[str, str]] = {}
    for _ in range(args.rounds):
        for name, cmd in systems.items():
            wall, texts[name] = run(cmd)
            walls[name].append(wall)
    base = median(walls["faster-whisper int8 (script)"])
    rows, results = [], {}
    for name in systems:
        tally = WERTally()
        for e in entries:
            tally.add(e.reference, texts[name].get(str(e.file), ""))
        wall = median(walls[name])
        results[name] = {"wall_s": [round(w, 2) for w in walls[name]], "speedup_vs_fw": round(base / wall, 2)}
        results[name]["wer"] = round(tally.wer, 4)
        rows.append([name, round(wall, 1), round(base / wall, 2), f"{tally.wer * 100:.1f}%"])
    print(f"{len(files)} English real clips, whole processes, median of {args.rounds} rounds")
    print_table(["system", "wall s", "x faster-whisper", "WER"], rows)
    print(f"wrote {write_json('processes', {'clips': len(files), 'rounds': args.rounds, 'systems': results})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
