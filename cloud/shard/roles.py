"""The shard roles, one class each, chosen once at start: encoder A (stage 0), encoder B, decoder."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable

import numpy as np

from splitasr.cloud.shard.config import ShardConfig
from splitasr.cloud.shard.decode_engine import DecodeEngine, EngineOptions
from splitasr.cloud.shard.decoding import DecodingOptions
from splitasr.cloud.shard.metrics import ShardMetrics
from splitasr.cloud.shard.microbatch import BatchPolicy, MicroBatcher, default_max_batch
from splitasr.cloud.shard.recognizer import TextDecoder
from splitasr.cloud.shard.runtime import providers
from splitasr.cloud.shard.scheduler import PRIORITY_PARTIAL
from splitasr.cloud.shard.tensors import pack, unpack
from splitasr.cloud.shard.utilisation import Utilisation
from splitasr.cloud.shard.windows import SILENCE_LOG_MEL, window_mel
from splitasr.cloud.shard.worker import StageWorker
from splitasr.models.stages import StageArtifacts
from splitasr.shared import protocol as p
from splitasr.shared.control import StageMeta

WARM_UP_FRAMES = 200

log = logging.getLogger(__name__)


class EncoderStage(StageWorker):
    """An encoder part: requests run through a :class:`MicroBatcher` (batch size per device, 1 on CPU
    by default)."""

    def __init__(self, config: ShardConfig, artifacts: StageArtifacts, metrics: ShardMetrics):
        super().__init__(config, artifacts, metrics)
        device = "cuda" if providers(config.device)[0].startswith("CUDA") else "cpu"
        enc_batch = config.encoder_max_batch or default_max_batch(device)
        self.batcher = MicroBatcher(self._run_encoder_batch, BatchPolicy(max_batch=enc_batch))

    async def _run_encoder_batch(self, stacked: np.ndarray, priority: int) -> np.ndarray:
        self.metrics.batch_size.labels(self.role).observe(stacked.shape[0])
        (out,), _ = await self.run(self.role, self.runtime.run, self.role, stacked, priority=priority)
        return out

    async def encode(
        self, array: np.ndarray, priority: int, deadline_s: float, stale: Callable[[], bool] | None = None
    ) -> tuple[np.ndarray, float]:
        """This encoder stage on one request; returns the output and the time it waited (s)."""
        if self.batcher.policy.max_batch <= 1:
            self.metrics.batch_size.labels(self.role).observe(1)
            (out,), wait = await self.run(self.role, self.runtime.run, self.role, array, priority=priority, stale=stale)
            return out, wait
        started = time.perf_counter()
        out = await self.batcher.submit(array, priority, time.perf_counter() + deadline_s)
        return out, max(0.0, time.perf_counter() - started - self.batcher.service_s)


class EncoderA(EncoderStage):
    """Stage 0's encoder part; the sessions and the rest of recognition are :class:`~.stage0.Stage0`'s."""

    role = "enc_a"
    onnx_stages = ("enc_a",)

    enc_a_s_per_window_s = 0.0  # measured at warm-up, then on every window (split "auto" reads it)

    def warm_up(self) -> None:
        silence = np.full((self.dims["n_mels"], WARM_UP_FRAMES // 2), SILENCE_LOG_MEL, np.float32)
        mel = window_mel(silence, "trimmed", self.artifacts.feature_spec)
        self.runtime.run("enc_a", mel)
        started = time.perf_counter()
        self.runtime.run("enc_a", mel)
        self.observe_window(time.perf_counter() - started, mel.shape[2])

    def observe_window(self, compute_s: float, mel_frames: int) -> None:
        """Encoder A's cost per second of window: a moving average of the windows computed here."""
        sample = compute_s * self.artifacts.feature_spec.frames_per_second / mel_frames
        previous = self.enc_a_s_per_window_s
        self.enc_a_s_per_window_s = sample if not previous else 0.8 * previous + 0.2 * sample


class EncoderB(EncoderStage):
    role = "enc_b"
    onnx_stages = ("enc_b",)

    def warm_up(self) -> None:
        self.runtime.run("enc_b", np.zeros((1, WARM_UP_FRAMES // 2, self.dims["n_state"]), np.float32))

    async def _serve(self, request: p.StageRequest, meta: StageMeta, started: float) -> p.StageResponse:
        hidden = unpack(request.tensors, "hidden", expect=(1, (1, self.dims["n_audio_ctx"]), self.dims["n_state"]))
        stale = None
        if request.priority >= PRIORITY_PARTIAL:
            stale = lambda: self.supersession.stale(meta.key, meta.rev)  # noqa: E731
        audio, wait = await self.encode(hidden, request.priority, request.deadline_ms / 1000, stale)
        res = await self.forward("audio", audio, request.meta, request.priority, request.deadline_ms)
        timings = {
            **res.timings,
            "enc_b_ms": (time.perf_counter() - started) * 1000,
            "queue_ms": res.timings.get("queue_ms", 0.0) + wait * 1000,
        }
        return p.StageResponse(req_id=request.req_id, tensors=res.tensors, timings=timings, meta=res.meta)


class Decoder(StageWorker):
    """Cross-attention K/V and the decoder steps: a :class:`DecodeEngine` (continuous batching
    across streams) on its own thread."""

    role = "dec"
    onnx_stages = ("cross_kv", "dec_step")

    def __init__(self, config: ShardConfig, artifacts: StageArtifacts, metrics: ShardMetrics):
        super().__init__(config, artifacts, metrics)
        self.decoder = TextDecoder(self.runtime, artifacts)
        self.utilisation = Utilisation(5.0, capacity=config.max_batch)
        self.engine = DecodeEngine(
            self.decoder,
            EngineOptions(max_batch=config.max_batch),
            self.supersession,
            metrics,
            on_cycle=self.utilisation.add,
        )

    async def start(self) -> None:
        await super().start()
        self.engine.start()

    async def close(self) -> None:
        await asyncio.to_thread(self.engine.close)
        await super().close()

    def pending(self) -> int:
        return self.engine.pending()

    def apply_flags(self, values: dict) -> None:
        """``max_batch``: the running batch's limit, from the next decoding cycle on (default: --max-batch)."""
        limit = values.get("max_batch", self.config.max_batch)
        if limit != self.engine.options.max_batch:
            log.info("decoder: max_batch %d -> %d (flags)", self.engine.options.max_batch, limit)
            self.engine.options = dataclasses.replace(self.engine.options, max_batch=limit)

    def warm_up(self) -> None:
        self.decoder.decode(
            np.zeros((1, WARM_UP_FRAMES // 2, self.dims["n_state"]), np.float32),
            self.decoder.tokenizer.spoken(None),
            1.0,
            DecodingOptions(),
        )

    async def _serve(self, request: p.StageRequest, meta: StageMeta, started: float) -> p.StageResponse:
        audio = unpack(request.tensors, "audio", expect=(1, (1, self.dims["n_audio_ctx"]), self.dims["n_state"]))
        if meta.language is not None:
            self.decoder.tokenizer.check_language(meta.language)
        result, language, wait = await self.engine.decode(
            audio, meta.language, meta.audio_s, request.priority, meta.key, meta.rev, meta.stop_on_loop
        )
        self.recent_waits.add(time.perf_counter(), wait)
        return p.StageResponse(
            req_id=request.req_id,
            tensors=pack({"tokens": np.asarray(result.tokens, np.int64)}),
            timings={"dec_ms": (time.perf_counter() - started) * 1000, "queue_ms": wait * 1000},
            meta={"language": language, **result.to_meta()},
        )


ROLES: dict[str, type[StageWorker]] = {cls.role: cls for cls in (EncoderA, EncoderB, Decoder)}


def make_worker(config: ShardConfig, artifacts: StageArtifacts, metrics: ShardMetrics) -> StageWorker:
    """The worker of ``config.role``."""
    return ROLES[config.role](config, artifacts, metrics)
