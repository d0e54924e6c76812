"""Per-stage service model, calibrated from this repository's own benchmark results.

- **Work per speaking stream** (CPU cores one stream that is speaking keeps busy, per stage): the
  busy cores of each stage in ``benchmarks/results/capacity.json`` (split pipeline, the 8-stream
  step: within the SLO, little contention) over the streams speaking then (8 x the speaking share
  of the session model, which draws from the same clips and pauses).
- **Decoder batching**: per-sequence cost of a decoder step by batch size, from
  ``benchmarks/results/batching.json`` (tiny.en int8, 1 thread): a decoder replica with B streams
  speaking runs batches of about B, and its work per stream scales with that curve, relative to
  the batch at the calibration step.
- **A FINAL's own compute** (all stages, no queue): ``final_base_s + final_per_audio_s x length``.
  Stage 0 starts it 0.25 s into the pause (speculative finals) and sends it at the EOU, so with no
  queue a FINAL arrives ``endpoint_s`` after the speech ends, as measured (capacity p50 0.85 s at
  4-8 streams with an endpoint of 0.8 s).
- **Endpointing lag**: the edge sends the EOU ``endpoint_s`` after its VAD sees the speech end, which
  is a little after the last voiced sample. Its distribution is end -> FINAL less the endpoint at one
  stream with no load (``benchmarks/results/streaming-solo.json``: p50 / p95 / p99 of 53 / 129 /
  212 ms), spread over each second's FINALs independently of their length.
- **Queueing** at a stage with utilisation rho < 1: ``service_s x rho / (1 - rho)`` (M/M/1 per
  replica); above 1 a backlog builds and drains at the spare capacity. It is held to
  ``2 x queue_budget_s`` of work per replica: past that, shards stop partials and refuse new
  sessions (``cloud/shard/overload.py``), so the queue a FINAL meets stays about a second long.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from splitasr.shared.control import STAGES

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
CALIBRATION_STREAMS = 8


def _decoder_batch_curve() -> tuple[tuple[int, ...], tuple[float, ...]]:
    rows = json.loads((RESULTS / "batching.json").read_text())["results"]
    points = sorted(
        (r["batch"], r["vs_single"]) for r in rows if r["stage"] == "dec_step" and r["int8"] and r["threads"] == 1
    )
    return tuple(b for b, _ in points), tuple(v for _, v in points)


def _busy_per_stream() -> dict[str, float]:
    steps = json.loads((RESULTS / "capacity.json").read_text())["systems"]["split"]["steps"]
    step = next(s for s in steps if s["streams"] == CALIBRATION_STREAMS)
    return {stage: step["busy_cores"][stage] / CALIBRATION_STREAMS for stage in STAGES}


def _endpoint_lag(row: str = "silence 0.8 s, N=1") -> tuple[tuple[float, float], ...]:
    """(quantile, lag s) from one unloaded stream's end -> FINAL less its endpoint silence."""
    result = json.loads((RESULTS / "streaming-solo.json").read_text())["results"][row]
    points = [
        (q, result[f"end_to_final_ms_p{round(q * 100)}"] / 1000 - result["endpoint_silence_s"])
        for q in (0.5, 0.95, 0.99)
    ]
    return ((0.0, 0.0), *points, (1.0, points[-1][1]))


@dataclass(frozen=True)
class ServiceModel:
    busy_per_speaking: dict[str, float]  # cores one speaking stream keeps busy, per stage
    batch_sizes: tuple[int, ...] = (1,)
    batch_cost: tuple[float, ...] = (1.0,)  # per-sequence cost relative to batch 1
    calibration_speaking: float = 4.0  # streams speaking per decoder at the calibration step
    service_s: dict[str, float] = field(default_factory=lambda: {"enc_a": 0.02, "enc_b": 0.02, "dec": 0.05})
    final_base_s: float = 0.03
    final_per_audio_s: float = 0.004
    speculate_s: float = 0.25
    cold_start_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 1.0))
    max_sessions: int = 64  # per stage-0 replica
    max_batch: int = 16
    queue_budget_s: float = 0.5  # shards shed partials past 2x this queue delay (their overload levels)
    endpoint_lag_s: tuple[tuple[float, float], ...] = ((0.0, 0.0), (1.0, 0.0))  # (quantile, lag) points

    def endpoint_lags(self, n: int, seed: int = 0) -> np.ndarray:
        """``n`` lag quantiles in an order unrelated to length (a fixed shuffle)."""
        q, lag = zip(*self.endpoint_lag_s, strict=True)
        values = np.interp((np.arange(n) + 0.5) / n, q, lag)
        return np.random.default_rng(seed).permutation(values)

    @classmethod
    def calibrated(cls, speaking_share: float, cold_start_s: float | None = None) -> ServiceModel:
        """From the benchmark results; ``speaking_share`` is the session model's (work per speaking stream)."""
        sizes, cost = _decoder_batch_curve()
        per_stream = {k: v / speaking_share for k, v in _busy_per_stream().items()}
        extra = {"cold_start_s": dict.fromkeys(STAGES, cold_start_s)} if cold_start_s else {}
        return cls(
            per_stream, sizes, cost, CALIBRATION_STREAMS * speaking_share, endpoint_lag_s=_endpoint_lag(), **extra
        )

    def batch_factor(self, speaking_per_replica: np.ndarray | float) -> np.ndarray:
        """Decoder work per stream relative to the calibration step, for streams speaking per replica."""
        b = np.clip(speaking_per_replica, 1, self.max_batch)
        ref = np.interp(np.clip(self.calibration_speaking, 1, self.max_batch), self.batch_sizes, self.batch_cost)
        return np.interp(b, self.batch_sizes, self.batch_cost) / ref

    def demand(self, stage: str, speaking: float, replicas: int) -> float:
        """Cores of work at ``stage`` for ``speaking`` streams over ``replicas`` replicas."""
        work = speaking * self.busy_per_speaking[stage]
        if stage == "dec":
            work *= float(self.batch_factor(speaking / max(replicas, 1)))
        return work

    def max_backlog(self, replicas: int) -> float:
        """Work (core-seconds) a stage's queues hold before the shards shed partials."""
        return 2 * self.queue_budget_s * replicas

    def wait_s(self, stage: str, demand: float, replicas: int, backlog: float) -> float:
        """Queueing delay at a stage: M/M/1 per replica below saturation, plus any backlog, held to
        the shedding bound (twice the queue budget) like the backlog: near saturation the M/M/1 term
        grows without bound, but past the bound the shards stop partials."""
        if replicas <= 0:
            return float("inf") if demand > 0 or backlog > 0 else 0.0
        rho = demand / replicas
        queue = self.service_s[stage] * rho / (1 - rho) if rho < 1 else 0.0
        return min(queue + backlog / replicas, 2 * self.queue_budget_s)
