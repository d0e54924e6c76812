"""Offline accuracy and speed on real speech: splitasr against faster-whisper, same files, same run.

Clips: ``samples/real`` (the real-speech dev set: digits, words, commands, read sentences, passages
over 30 s; 8–48 kHz, stereo). tiny.en runs the English clips; base (``--model base``) the others with
the language given. Systems: splitasr with default settings (fp32, int8), splitasr batch mode (int8,
result cache off), faster-whisper greedy with its default fallbacks (fp32, int8; the baseline) and
its ``BatchedInferencePipeline`` (int8). Systems run interleaved for ``--rounds`` rounds (median
speed, mean WER with its range: faster-whisper's temperature fallback samples, so its WER moves
from run to run) so that other load on the machine hits them alike. WER is reported on all clips and on
the held-out split (never used for tuning), with the number of hypotheses that loop. Writes
benchmarks/results/offline[-MODEL].json + .png.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import bar_plot, median, print_table, write_json  # noqa: E402

from splitasr.shared.audio import load_audio  # noqa: E402
from splitasr.shared.wer import WERTally, read_manifest, repeats_phrase  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
REAL = ROOT / "samples" / "real" / "manifest.jsonl"


def looped(text: str) -> bool:
    """A hypothesis that repeats a phrase (1–4 words) three times back to back, or compresses like a loop."""
    from splitasr.cloud.shard.guard import compression_ratio

    return repeats_phrase(text) or compression_ratio(text) > 2.4


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
        texts = {}
        for language in sorted({e.language for e, _ in clips}):  # one language per batch run
            items = [(str(i), (lambda a=a: a)) for i, (e, a) in enumerate(clips) if e.language == language]
            for r in transcriber.run(items, TranscribeOptions(language=language)):
                texts[r.name] = r.transcript.text
        run.sizes = transcriber.stats.batch_sizes
        return [texts[str(i)] for i in range(len(clips))]

    return run


def faster_whisper_system(model: str, compute_type: str, threads: int):
    from splitasr.models.reference import faster_whisper_default

    return one_at_a_time(faster_whisper_default(model, compute_type, threads))


def faster_whisper_batched_system(model: str, threads: int, batch_size: int):
    from splitasr.models.reference import faster_whisper_batched

    return one_at_a_time(faster_whisper_batched(model, "int8", threads, batch_size))


def score(clips, texts, split: str | None = None) -> float:
    tally = WERTally()
    for (e, _), text in zip(clips, texts, strict=True):
        if split is None or e.split == split:
            tally.add(e.reference, text, e.language)
    return tally.wer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--manifest", default=str(REAL))
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16, help="batch size of the batched systems")
    parser.add_argument("--quick", action="store_true", help="int8 systems only")
    args = parser.parse_args()

    english = args.model.endswith(".en")
    entries = [e for e in read_manifest(args.manifest) if (e.language == "en") == english]
    clips = [(e, load_audio(e.file)) for e in entries]
    audio_s = sum(a.size for _, a in clips) / 16000
    systems = {
        "splitasr int8": splitasr_system(args.model, True, args.threads),
        "faster-whisper int8": faster_whisper_system(args.model, "int8", args.threads),
        "splitasr batch int8": splitasr_batch_system(args.model, True, args.threads, args.batch),
    }
    if not args.quick:
        systems["splitasr fp32"] = splitasr_system(args.model, False, args.threads)
        systems["faster-whisper fp32"] = faster_whisper_system(args.model, "float32", args.threads)
        systems["faster-whisper batched int8"] = faster_whisper_batched_system(args.model, args.threads, args.batch)
    for run in systems.values():  # warm-up
        run(clips[:1])
    walls: dict[str, list[float]] = {name: [] for name in systems}
    texts: dict[str, list[str]] = {}
    wers: dict[str, list[float]] = {name: [] for name in systems}  # faster-whisper's fallback samples: WER varies
    for _ in range(args.rounds):
        for name, run in systems.items():
            started = time.perf_counter()
            texts[name] = run(clips)
            walls[name].append(time.perf_counter() - started)
            wers[name].append(score(clips, texts[name]))
    baseline = audio_s / median(walls["faster-whisper int8"])
    rows, results = [], {}
    for name in systems:
        speed = audio_s / median(walls[name])
        wer, held = sum(wers[name]) / len(wers[name]), score(clips, texts[name], "holdout")
        loops = [  # a reference may repeat a word itself ("word word word word")
            str(e.file.name)
            for (e, _), t in zip(clips, texts[name], strict=True)
            if looped(t) and not looped(e.reference)
        ]
        results[name] = {
            "audio_s_per_wall_s": round(speed, 2),
            "ratio_vs_fw_int8": round(speed / baseline, 3),
            "wall_s": [round(w, 3) for w in walls[name]],
            "wer": round(wer, 4),  # mean over rounds
            "wer_rounds": [round(w, 4) for w in wers[name]],
            "wer_holdout": round(held, 4),  # last round, as the texts and loops
            "looping_hypotheses": loops,
            "texts": texts[name],
        }
        if hasattr(run := systems[name], "sizes"):
            results[name]["decoder_batch_sizes"] = {str(k): v for k, v in sorted(run.sizes.items())}
        rows.append(
            [
                name,
                round(speed, 1),
                round(speed / baseline, 2),
                f"{wer * 100:.1f}%"
                + (f" ({min(wers[name]) * 100:.1f}-{max(wers[name]) * 100:.1f})" if args.rounds > 1 else ""),
                f"{held * 100:.1f}%",
                len(loops),
            ]
        )
    print(
        f"{len(clips)} real clips ({sum(e.split == 'holdout' for e, _ in clips)} held out), {audio_s:.1f} s of audio, "
        f"model {args.model}, {args.threads} threads, median of {args.rounds} round(s)"
    )
    print_table(["system", "audio s / wall s", "x fw int8", "WER", "WER holdout", "loops"], rows)
    name = "offline" if english else f"offline-{args.model}"
    json_path = write_json(
        name,
        {
            "model": args.model,
            "manifest": str(Path(args.manifest).relative_to(ROOT))
            if Path(args.manifest).is_relative_to(ROOT)
            else args.manifest,
            "clips": [str(e.file.name) for e, _ in clips],
            "audio_s": round(audio_s, 2),
            "rounds": args.rounds,
            "threads": args.threads,
            "systems": results,
        },
    )
    png = bar_plot(
        name,
        [f"{n}\nWER {r['wer'] * 100:.1f}%" for n, r in results.items()],
        [r["audio_s_per_wall_s"] for r in results.values()],
        "audio seconds per wall second",
        f"Offline, {args.model}, real speech ({len(clips)} clips), 2 CPU cores",
    )
    print(f"wrote {json_path} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
