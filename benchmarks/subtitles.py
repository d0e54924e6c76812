"""Subtitle timing on long-form real speech: how close cue boundaries come to the true utterance
boundaries, with ``splitasr transcribe --vad`` (the edge's Silero endpointing, one decode per
utterance) and through the OpenAI-compatible API of a local cluster (``verbose_json``: the edge
pipeline streams the upload into the cluster; segments are the FINALs' decoder segments fitted to
each utterance, the same rule as ``--vad``) against Whisper's own timestamp tokens (the offline
default), and the WER and speed of each (``--no-api`` skips the cluster).

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
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import FIXED, bar_plot, print_table, write_json  # noqa: E402

from splitasr.cloud.coordinator.launch import CoordinatorProcess  # noqa: E402
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


def api_system(url: str):
    """``verbose_json`` from the cluster's OpenAI-compatible API, as the official client sees it."""
    from openai import OpenAI

    from splitasr.cloud.shard.recognizer import Segment
    from splitasr.shared.auth import ClusterAuth, secret_from_env

    token = ClusterAuth(secret_from_env()).device_token("bench-subtitles", ttl_s=3600)
    client = OpenAI(base_url=f"{url}/v1", api_key=token, max_retries=0, timeout=600)

    def run(path: Path) -> SimpleNamespace:
        with path.open("rb") as f:
            out = client.audio.transcriptions.create(
                model="tiny.en", file=f, response_format="verbose_json", timestamp_granularities=["segment"]
            )
        return SimpleNamespace(text=out.text, segments=[Segment(s.start, s.end, s.text) for s in out.segments])

    return run


def measure(name: str, run, streams: list[LongStream], audio_s: float) -> dict:
    """Boundary hits, WER and speed of ``run(stream) -> transcript`` over ``streams``."""
    tally, distances, started = WERTally(), [], time.perf_counter()
    for stream in streams:
        transcript = run(stream)
        tally.add(stream.reference, transcript.text)
        distances += boundary_distances(stream, transcript.segments)
    wall = time.perf_counter() - started
    d = np.array(distances)
    print(f"{name}: done in {wall:.0f} s", flush=True)
    return {
        "boundaries": len(d),
        "within_0_5_s": round(float(np.mean(d <= TOLERANCE_S)), 4),
        "median_distance_s": round(float(np.median(d)), 3),
        "wer": round(tally.wer, 4),
        "audio_s_per_wall_s": round(audio_s / wall, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--per-stream", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-api", action="store_true", help="skip the OpenAI API through a local cluster")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="splitasr-subs-"))
    streams = build_streams(workdir / "streams", args.count, args.per_stream)
    audio_s = sum(load_audio(s.path).size for s in streams) / 16000
    rec = Recognizer.load("tiny.en", int8=True, threads=args.threads, show_progress=False)
    edge = SegmenterOptions()

    def vad(stream: LongStream):
        audio = load_audio(stream.path)
        return rec.transcribe_regions(audio, speech_regions(audio, edge), head_s=edge.pre_roll_s)

    results = {
        "Whisper timestamps (default)": measure(
            "timestamps", lambda s: rec.transcribe(load_audio(s.path)), streams, audio_s
        ),
        "--vad (Silero endpointing)": measure("--vad", vad, streams, audio_s),
    }
    if not args.no_api:
        config = {"pools": [{"model": "tiny.en", "zones": ["a"], "int8": True, "autoscaler": FIXED}]}
        with CoordinatorProcess(config, workdir / "cluster") as cluster:
            api = api_system(cluster.url)
            results["OpenAI API verbose_json (cluster)"] = measure("API", lambda s: api(s.path), streams, audio_s)
    rows = [
        [name, f"{r['within_0_5_s']:.0%}", r["median_distance_s"], f"{r['wer'] * 100:.1f}%", r["audio_s_per_wall_s"]]
        for name, r in results.items()
    ]
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
