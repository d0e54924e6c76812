"""What each shard role computes: encoder A (stage 0), encoder B, decoder; inference off the event loop."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from splitasr.cloud.shard.config import NEXT_ROLE, ShardConfig
from splitasr.cloud.shard.decoding import DecodingOptions
from splitasr.cloud.shard.metrics import ShardMetrics
from splitasr.cloud.shard.recognizer import TextDecoder
from splitasr.cloud.shard.runtime import RuntimeOptions, StageRuntime
from splitasr.cloud.shard.scheduler import PRIORITY_FINAL, PriorityRunner
from splitasr.cloud.shard.stage_client import StageClient
from splitasr.cloud.shard.tensors import pack, unpack
from splitasr.models.stages import StageArtifacts
from splitasr.models.tokenizer import DecoderConfig, WhisperTokenizer
from splitasr.shared import protocol as p
from splitasr.shared.errors import ProtocolError
from splitasr.shared.features import normalize

ONNX_STAGES = {"enc_a": ("enc_a",), "enc_b": ("enc_b",), "dec": ("cross_kv", "dec_step")}
SILENCE_LOG_MEL = -10.0  # log10 of the 1e-10 floor: what zero samples give


def utterance_mel(raw: np.ndarray, pad_frames: int, max_frames: int) -> np.ndarray:
    """Whisper input (1, mels, T) for raw log10 mel of an utterance: silence padding, clamp/normalise, even T."""
    padded = np.concatenate([raw, np.full((raw.shape[0], pad_frames), SILENCE_LOG_MEL, np.float32)], axis=1)
    mel = normalize(padded)[:, :max_frames]
    return np.ascontiguousarray(mel[None, :, : mel.shape[1] - mel.shape[1] % 2])


class StageWorker:
    """Loads this shard's ONNX stages and runs them on one worker thread, measuring queue delay."""

    def __init__(self, config: ShardConfig, artifacts: StageArtifacts, metrics: ShardMetrics):
        self.config = config
        self.artifacts = artifacts
        self.metrics = metrics
        self.runtime = StageRuntime(
            artifacts,
            RuntimeOptions(threads=config.threads, device=config.device, int8=config.int8),
            stages=ONNX_STAGES[config.role],
        )
        self.decoder = TextDecoder(self.runtime, artifacts) if config.role == "dec" else None
        self.runner = PriorityRunner(
            f"stage-{config.role}", metrics.queue_seconds.observe, metrics.dropped_partials.inc
        )
        self.client = StageClient(list(config.next_urls), config.stage_timeout_s) if config.next_urls else None

    async def start(self) -> None:
        self.runner.start()
        if self.client is not None:
            await self.client.start()

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
        await self.runner.close()

    async def run(
        self, stage: str, fn, *args: Any, priority: int = PRIORITY_FINAL, stale: Callable[[], bool] | None = None
    ):
        """Run ``fn(*args)`` on the stage thread in priority order, timing its compute."""

        def timed():
            started = time.perf_counter()
            out = fn(*args)
            self.metrics.stage_seconds.labels(stage).observe(time.perf_counter() - started)
            return out

        return await self.runner.submit(timed, priority=priority, stale=stale)

    def warm_up(self) -> None:
        """One inference of this stage on silence, so the first real request is not slow."""
        dims = self.artifacts.manifest["dims"]
        d, frames = dims["n_state"], 200
        if self.config.role == "enc_a":
            self.runtime.run("enc_a", utterance_mel(np.full((dims["n_mels"], 100), -10, np.float32), 100, 3000))
        elif self.config.role == "enc_b":
            self.runtime.run("enc_b", np.zeros((1, frames // 2, d), np.float32))
        else:
            self.decoder.decode(
                np.zeros((1, frames // 2, d), np.float32),
                "en" if not self.decoder.tokenizer.multilingual else None,
                1.0,
                DecodingOptions(),
            )

    async def forward(
        self, hidden_name: str, array: np.ndarray, meta: dict, priority: int, deadline_ms: float
    ) -> p.StageResponse:
        tensors = pack({hidden_name: array}, self.config.activation_dtype)
        return await self.client.call(
            self.config.model, NEXT_ROLE[self.config.role], tensors, meta, deadline_ms, priority
        )

    async def serve_stage(self, request: p.StageRequest) -> p.StageResponse:
        """Answer a STAGE_REQ addressed to this shard (encoder B or decoder)."""
        started = time.perf_counter()
        if request.model != self.config.model or request.stage != self.config.role:
            raise ProtocolError(
                p.E_FIELD,
                f"this shard serves {self.config.model}/{self.config.role}, not {request.model}/{request.stage}",
            )
        if self.config.role == "enc_b":
            hidden = unpack(request.tensors, "hidden")
            (audio,) = await self.run("enc_b", self.runtime.run, "enc_b", hidden, priority=request.priority)
            res = await self.forward("audio", audio, request.meta, request.priority, request.deadline_ms)
            timings = {**res.timings, "enc_b_ms": (time.perf_counter() - started) * 1000}
            return p.StageResponse(req_id=request.req_id, tensors=res.tensors, timings=timings, meta=res.meta)
        if self.config.role == "dec":
            audio = unpack(request.tensors, "audio")
            language = request.meta.get("language")
            if language is not None:
                self.decoder.tokenizer.check_language(language)
            tokens, language = await self.run(
                "dec",
                self.decoder.decode,
                audio,
                language,
                float(request.meta.get("audio_s", 30.0)),
                DecodingOptions(),
                priority=request.priority,
            )
            return p.StageResponse(
                req_id=request.req_id,
                tensors=pack({"tokens": np.asarray(tokens, np.int64)}),
                timings={"dec_ms": (time.perf_counter() - started) * 1000},
                meta={"language": language},
            )
        raise ProtocolError(p.E_STATE, "stage-0 shards take edge sessions at /v1/stream, not STAGE_REQ")


class Stage0:
    """The stage-0 side of recognition: encoder A here, the rest of the chain through the stage client."""

    def __init__(self, worker: StageWorker):
        self.worker = worker
        artifacts = worker.artifacts
        self.tokenizer = WhisperTokenizer(
            artifacts.tokenizer_json, DecoderConfig.load(artifacts.config_json), artifacts.manifest["dims"]["n_vocab"]
        )
        spec = artifacts.feature_spec
        self.spec = spec
        self.pad_frames = int(worker.config.pad_s * spec.frames_per_second)
        self.max_frames = int(worker.config.max_utterance_s * spec.frames_per_second)

    async def recognise(
        self, raw: np.ndarray, language: str | None, priority: int, stale: Callable[[], bool] | None = None
    ) -> tuple[str, str, dict]:
        """Text and language of raw log10 mel frames (one utterance or its prefix)."""
        started = time.perf_counter()
        mel = utterance_mel(raw, self.pad_frames, self.spec.n_frames)
        (hidden,) = await self.worker.run(
            "enc_a", self.worker.runtime.run, "enc_a", mel, priority=priority, stale=stale
        )
        enc_a_ms = (time.perf_counter() - started) * 1000
        meta = {"language": language, "audio_s": raw.shape[1] / self.spec.frames_per_second}
        res = await self.worker.forward("hidden", hidden, meta, priority, 10_000.0)
        tokens = unpack(res.tensors, "tokens", as_float32=False).tolist()
        timings = {**res.timings, "enc_a_ms": enc_a_ms, "total_ms": (time.perf_counter() - started) * 1000}
        return self.tokenizer.decode(tokens).strip(), res.meta.get("language") or "en", timings
