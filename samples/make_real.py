"""Copy the real-speech dev set (``../shared/devset``) into ``samples/real`` as FLAC (lossless, same rate
and channels) with its references, labels, licences and a tune/holdout split.

The split is fixed by a hash of the file name (a quarter held out), so it never moves when clips are
added: tune thresholds on ``tune`` only and check ``holdout`` at the end.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import soundfile as sf

HERE = Path(__file__).resolve().parent
KEEP = ("file", "text", "language", "duration_s", "label", "alt_text", "source", "licence", "sample_rate", "channels")


def split_of(name: str) -> str:
    return "holdout" if int(hashlib.sha1(name.encode()).hexdigest(), 16) % 4 == 0 else "tune"


def main(devset: Path) -> int:
    out = HERE / "real"
    rows = [json.loads(line) for line in (devset / "manifest.jsonl").read_text().splitlines() if line.strip()]
    lines = []
    for row in rows:
        src = devset / row["file"]
        dst = out / Path(row["file"]).with_suffix(".flac")
        dst.parent.mkdir(parents=True, exist_ok=True)
        audio, rate = sf.read(src, dtype="int16", always_2d=False)
        sf.write(dst, audio, rate, subtype="PCM_16", format="FLAC")
        entry = {k: row[k] for k in KEEP if k in row}
        entry["file"] = str(dst.relative_to(out))
        entry["split"] = split_of(Path(row["file"]).name)
        lines.append(json.dumps(entry, ensure_ascii=False))
    (out / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    print(f"wrote {len(lines)} clips to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parent.parent / "shared" / "devset"))
