"""Does batching pay per stage on this machine? Time per item of encoder and decoder calls by batch size.

Encoder (enc_a + enc_b, 500 mel frames = 5 s) and one decoder step (250 audio frames, 30 cached
tokens) of tiny.en, fp32 and int8, 1 and 2 threads. Prints ms per call and per item and the ratio
of batched to single per item, and writes benchmarks/results/batching.json: the measurement behind
the per-device encoder batching default in ``splitasr.cloud.shard.microbatch``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import median, print_table, write_json  # noqa: E402

from splitasr.cloud.shard.runtime import RuntimeOptions, StageRuntime  # noqa: E402
from splitasr.models.stages import ensure_stages  # noqa: E402


def timed(fn, repeats: int) -> float:
    fn()
    walls = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - started)
    return median(walls) * 1000


def main() -> int:
    rng = np.random.default_rng(0)
    rows, results = [], []
    for int8 in (False, True):
        artifacts = ensure_stages("tiny.en", int8=int8, show_progress=False)
        dims = artifacts.manifest["dims"]
        layers, d = dims["n_text_layer"], dims["n_state"]
        for threads in (1, 2):
            rt = StageRuntime(artifacts, RuntimeOptions(threads=threads, int8=int8))
            for stage, sizes in (("encoder", (1, 2, 4)), ("dec_step", (1, 4, 8, 16))):
                single = None
                for b in sizes:
                    if stage == "encoder":
                        mel = rng.standard_normal((b, dims["n_mels"], 500)).astype(np.float32)
                        ms = timed(lambda mel=mel, rt=rt: rt.encode(mel), 5)
                    else:
                        t, p = 250, 30
                        args = (
                            np.zeros((b, 1), np.int64),
                            np.full(b, p, np.int64),
                            rng.standard_normal((layers, b, p, d)).astype(np.float32),
                            rng.standard_normal((layers, b, p, d)).astype(np.float32),
                            np.zeros((b, p), np.float32),
                            rng.standard_normal((layers, b, t, d)).astype(np.float32),
                            rng.standard_normal((layers, b, t, d)).astype(np.float32),
                            np.zeros((b, t), np.float32),
                        )
                        ms = timed(lambda args=args, rt=rt: rt.dec_step(*args), 20)
                    per_item = ms / b
                    single = single or per_item
                    entry = {"stage": stage, "int8": int8, "threads": threads, "batch": b, "ms": round(ms, 2)}
                    entry["ms_per_item"] = round(per_item, 2)
                    entry["vs_single"] = round(per_item / single, 3)
                    results.append(entry)
                    rows.append(
                        [
                            stage,
                            "int8" if int8 else "fp32",
                            threads,
                            b,
                            round(ms, 1),
                            round(per_item, 2),
                            round(per_item / single, 2),
                        ]
                    )
    print_table(["stage", "weights", "threads", "batch", "ms / call", "ms / item", "x single"], rows)
    path = write_json("batching", {"model": "tiny.en", "results": results})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
