"""onnxruntime sessions for the stages of a split Whisper, with explicit threads and no spinning."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from splitasr.models.export import STAGE_IO, STAGES, input_names
from splitasr.models.stages import StageArtifacts
from splitasr.shared.errors import ConfigError

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class RuntimeOptions:
    """How stage sessions run: threads per session, device and int8 weights."""

    threads: int = 0  # 0: all cores, at most 4
    device: str = "auto"
    int8: bool = False

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ConfigError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.threads < 0:
            raise ConfigError(f"threads must be >= 0, got {self.threads}")

    @property
    def thread_count(self) -> int:
        return self.threads or max(1, min(os.cpu_count() or 1, 4))


def session_options(threads: int) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning threads burn the cores other shard processes need (2-core boxes, many processes).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return opts


def providers(device: str) -> list[str]:
    available = ort.get_available_providers()
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise ConfigError("device 'cuda' requested but onnxruntime has no CUDA provider: pip install 'splitasr[gpu]'")
    if device in ("cuda", "auto") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class StageRuntime:
    """ORT sessions for some (or all) stages of one model; a shard hosts just its own stage."""

    def __init__(
        self, artifacts: StageArtifacts, options: RuntimeOptions = RuntimeOptions(), stages: Iterable[str] = STAGES
    ):
        self.artifacts = artifacts
        self.options = options
        self.sessions: dict[str, ort.InferenceSession] = {}
        provider_list = providers(options.device)
        for stage in stages:
            if stage not in STAGE_IO:
                raise ConfigError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
            path = artifacts.stage_path(stage, int8=options.int8)
            self.sessions[stage] = ort.InferenceSession(
                str(path), sess_options=session_options(options.thread_count), providers=provider_list
            )
        log.info("loaded stages %s of %s on %s", list(self.sessions), artifacts.version, provider_list[0])

    def run(self, stage: str, *inputs: np.ndarray) -> list[np.ndarray]:
        names = input_names(stage, self.artifacts.decoder_layers)
        return self.sessions[stage].run(None, dict(zip(names, inputs, strict=True)))

    def encode(self, mel: np.ndarray) -> np.ndarray:
        """Encoder stages A and B: normalised log-mel (batch, mels, frames) -> audio states."""
        (hidden,) = self.run("enc_a", mel)
        (audio,) = self.run("enc_b", hidden)
        return audio

    def cross_kv(self, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k, v = self.run("cross_kv", audio)
        return k, v

    def dec_step(self, *inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One decoder step; inputs as in ``STAGE_IO["dec_step"]`` (see :mod:`splitasr.cloud.shard.decoding`)."""
        tokens, offset, past_k, past_v, past_mask, cross_k, cross_v, cross_mask = inputs
        # per-layer views of the stacked cross keys/values (no copy): the stage's own inputs
        logits, k, v = self.run("dec_step", tokens, offset, past_k, past_v, past_mask, cross_mask, *cross_k, *cross_v)
        return logits, k, v
