"""Subtitle timing on long-form real speech: how close cue boundaries come to the true utterance
boundaries, with ``splitasr transcribe --vad`` (the edge's Silero endpointing, one decode per
utterance) against Whisper's own timestamp tokens (default), and the WER and speed of each.

Streams: the 16 long-form streams of ``benchmarks/streaming.py`` (``shared/longform.py``: the 102
real English clips, pauses of 0.5–8 s, 8–48 kHz, stereo, noise). A true boundary (an utterance's
first or last voiced sample) counts as hit when a cue starts or ends within 0.5 s of it. Writes
benchmarks/results/subtitles.json + .png.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import bar_plot, print_table, write_json  # noqa: E402

from splitasr.cloud.shard.recognizer import Recognizer  # noqa: E402
from splitasr.edge.segmenter import SegmenterOptions, speech_regions  # noqa: E402
from splitasr.shared.audio import load_audio  # noqa: E402
from splitasr.shared.longform import LongStream, build_streams  # noqa: E402
from splitasr.shared.wer import WERTally  # noqa: E402

TOLERANCE_S = 0.5


def boundary_distances(stream: LongStream, segments) -> list[float]:
    """For each true utterance start and end, the distance (s) to the nearest cue start or end
    (utterances without words, such as a breath clip, have no cue to find)."""
    marks = np.array([t for s in segments for t in (s.start_s, s.end_s)] or [np.inf])
    return [float(np.abs(marks - t).min()) for u in stream.utterances if u.text for t in (u.start_s, u.end_s)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--per-stream", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    streams = build_streams(Path(tempfile.mkdtemp(prefix="splitasr-subs-")), args.count, args.per_stream)
    rec = Recognizer.load("tiny.en", int8=True, threads=args.threads, show_progress=False)
    edge = SegmenterOptions()
    systems = {
        "Whisper timestamps (default)": lambda audio: rec.transcribe(audio),
        "--vad (Silero endpointing)": lambda audio: rec.transcribe_regions(
            audio, speech_regions(audio, edge), head_s=edge.pre_roll_s
        ),
    }
    audios = [load_audio(s.path) for s in streams]
    audio_s = sum(a.size for a in audios) / 16000
    results, rows = {}, []
    for name, run in systems.items():
        tally, distances, started = WERTally(), [], time.perf_counter()
        for stream, audio in zip(streams, audios, strict=True):
            transcript = run(audio)
            tally.add(stream.reference, transcript.text)
            distances += boundary_distances(stream, transcript.segments)
        wall = time.perf_counter() - started
        d = np.array(distances)
        results[name] = {
            "boundaries": len(d),
            "within_0_5_s": round(float(np.mean(d <= TOLERANCE_S)), 4),
            "median_distance_s": round(float(np.median(d)), 3),
            "wer": round(tally.wer, 4),
            "audio_s_per_wall_s": round(audio_s / wall, 1),
        }
        r = results[name]
        rows.append(
            [
                name,
                f"{r['within_0_5_s']:.0%}",
                r["median_distance_s"],
                f"{r['wer'] * 100:.1f}%",
                r["audio_s_per_wall_s"],
            ]
        )
    print(f"{len(streams)} long-form streams, {audio_s:.0f} s, tiny.en int8, {args.threads} threads")
    print_table(
        ["cue times from", f"boundaries within {TOLERANCE_S} s", "median distance s", "WER", "audio s / wall s"], rows
    )
    path = write_json("subtitles", {"model": "tiny.en", "int8": True, "streams": len(streams), "results": results})
    png = bar_plot(
        "subtitles",
        [f"{n}\nWER {r['wer'] * 100:.1f}%" for n, r in results.items()],
        [100 * r["within_0_5_s"] for r in results.values()],
        f"% of utterance boundaries within {TOLERANCE_S} s of a cue boundary",
        "Subtitle timing, long-form real speech, tiny.en int8",
    )
    print(f"wrote {path} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
