"""Offline throughput: splitasr's ONNX stage chain vs faster-whisper on the same clips, in one run.

Prints audio-seconds per wall-second for each system, the ratio to faster-whisper int8 and WER,
and writes benchmarks/results/offline.json + offline.png. Systems run interleaved for several
rounds so that noise from other load on the machine hits them all alike; the median is reported.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import bar_plot, median, print_table, write_json  # noqa: E402

from splitasr.shared.audio import load_audio  # noqa: E402
from splitasr.shared.wer import WERTally, read_manifest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def splitasr_system(model: str, int8: bool, threads: int):
    from splitasr.cloud.shard.recognizer import Recognizer, TranscribeOptions

    rec = Recognizer.load(model, int8=int8, threads=threads, show_progress=False)

    def run(audio, language):
        return rec.transcribe(audio, TranscribeOptions(language=language)).text

    return run


def faster_whisper_system(model: str, compute_type: str, threads: int):
    from splitasr.models.reference import faster_whisper_greedy

    transcribe = faster_whisper_greedy(model, compute_type, threads)
    return lambda audio, language: transcribe(audio, language)[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--manifest", default=str(ROOT / "samples" / "manifest.jsonl"))
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    entries = [e for e in read_manifest(args.manifest) if args.model != "tiny.en" or e.language == "en"]
    clips = [(e, load_audio(e.file)) for e in entries]
    audio_s = sum(a.size for _, a in clips) / 16000
    systems = {
        "splitasr fp32": splitasr_system(args.model, False, args.threads),
        "splitasr int8": splitasr_system(args.model, True, args.threads),
        "faster-whisper fp32": faster_whisper_system(args.model, "float32", args.threads),
        "faster-whisper int8": faster_whisper_system(args.model, "int8", args.threads),
    }
    for run in systems.values():  # warm-up
        run(clips[0][1], clips[0][0].language)
    walls: dict[str, list[float]] = {name: [] for name in systems}
    texts: dict[str, list[str]] = {}
    for _ in range(args.rounds):
        for name, run in systems.items():
            started = time.perf_counter()
            texts[name] = [run(audio, e.language) for e, audio in clips]
            walls[name].append(time.perf_counter() - started)
    baseline = audio_s / median(walls["faster-whisper int8"])
    rows, results = [], {}
    for name in systems:
        speed = audio_s / median(walls[name])
        tally = WERTally()
        for (e, _), text in zip(clips, texts[name], strict=True):
            tally.add(e.text, text, e.language)
        results[name] = {
            "audio_s_per_wall_s": round(speed, 2),
            "ratio_vs_fw_int8": round(speed / baseline, 3),
            "wall_s": [round(w, 3) for w in walls[name]],
            "wer": round(tally.wer, 4),
        }
        rows.append([name, round(speed, 1), round(speed / baseline, 2), f"{tally.wer * 100:.2f}%"])
    print(
        f"{len(clips)} clips, {audio_s:.1f} s of audio, model {args.model}, {args.threads} threads, "
        f"median of {args.rounds} rounds"
    )
    print_table(["system", "audio s / wall s", "x fw int8", "WER"], rows)
    json_path = write_json(
        "offline",
        {
            "model": args.model,
            "clips": len(clips),
            "audio_s": round(audio_s, 2),
            "rounds": args.rounds,
            "threads": args.threads,
            "systems": results,
        },
    )
    png = bar_plot(
        "offline",
        list(results),
        [r["audio_s_per_wall_s"] for r in results.values()],
        "audio seconds per wall second",
        f"Offline throughput, {args.model}, 2 CPU cores",
    )
    print(f"wrote {json_path} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
