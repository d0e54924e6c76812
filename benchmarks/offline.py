"""Offline throughput: splitasr's ONNX stage chain vs faster-whisper on the same clips, in one run.

Systems: splitasr one file at a time (fp32, int8) and in batch mode (int8, all clips in one running
decoder batch, result cache off), faster-whisper ``WhisperModel`` (fp32, int8) and its
``BatchedInferencePipeline`` (int8, batch 16). Each system transcribes the whole clip set per round.
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


def one_at_a_time(transcribe):
    """A corpus runner from a per-clip function (audio, language) -> text."""
    return lambda clips: [transcribe(audio, e.language) for e, audio in clips]


def splitasr_system(model: str, int8: bool, threads: int):
    from splitasr.cloud.shard.recognizer import Recognizer, TranscribeOptions

    rec = Recognizer.load(model, int8=int8, threads=threads, show_progress=False)
    return one_at_a_time(lambda audio, language: rec.transcribe(audio, TranscribeOptions(language=language)).text)


def splitasr_batch_system(model: str, int8: bool, threads: int, max_batch: int):
    from splitasr.cloud.shard.batch_transcriber import BatchTranscriber
    from splitasr.cloud.shard.recognizer import Recognizer, TranscribeOptions
    from splitasr.cloud.shard.result_cache import ResultCache

    rec = Recognizer.load(model, int8=int8, threads=threads, show_progress=False)

    def run(clips):
        transcriber = BatchTranscriber(rec, max_batch=max_batch, cache=ResultCache(ttl_s=0))  # no cache hits
        language = clips[0][0].language if model.endswith(".en") else None
        items = [(str(i), (lambda a=audio: a)) for i, (_, audio) in enumerate(clips)]
        results = {r.name: r.transcript.text for r in transcriber.run(items, TranscribeOptions(language=language))}
        run.sizes = transcriber.stats.batch_sizes
        return [results[str(i)] for i in range(len(clips))]

    return run


def faster_whisper_system(model: str, compute_type: str, threads: int):
    from splitasr.models.reference import faster_whisper_greedy

    transcribe = faster_whisper_greedy(model, compute_type, threads)
    return one_at_a_time(lambda audio, language: transcribe(audio, language)[0])


def faster_whisper_batched_system(model: str, threads: int, batch_size: int):
    from splitasr.models.reference import faster_whisper_batched

    return one_at_a_time(faster_whisper_batched(model, "int8", threads, batch_size))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--manifest", default=str(ROOT / "samples" / "manifest.jsonl"))
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16, help="batch size of the batched systems")
    args = parser.parse_args()

    entries = [e for e in read_manifest(args.manifest) if args.model != "tiny.en" or e.language == "en"]
    clips = [(e, load_audio(e.file)) for e in entries]
    audio_s = sum(a.size for _, a in clips) / 16000
    systems = {
        "splitasr fp32": splitasr_system(args.model, False, args.threads),
        "splitasr int8": splitasr_system(args.model, True, args.threads),
        "faster-whisper fp32": faster_whisper_system(args.model, "float32", args.threads),
        "faster-whisper int8": faster_whisper_system(args.model, "int8", args.threads),
        "splitasr batch int8": splitasr_batch_system(args.model, True, args.threads, args.batch),
        "faster-whisper batched int8": faster_whisper_batched_system(args.model, args.threads, args.batch),
    }
    for run in systems.values():  # warm-up
        run(clips[:1])
    walls: dict[str, list[float]] = {name: [] for name in systems}
    texts: dict[str, list[str]] = {}
    for _ in range(args.rounds):
        for name, run in systems.items():
            started = time.perf_counter()
            texts[name] = run(clips)
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
        if hasattr(run := systems[name], "sizes"):
            results[name]["decoder_batch_sizes"] = {str(k): v for k, v in sorted(run.sizes.items())}
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
