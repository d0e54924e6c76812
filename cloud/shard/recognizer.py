"""Offline recogniser: audio in, text out, through the ONNX stage chain of one model."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from splitasr.cloud.shard.decoding import DecodingOptions, SuppressRules, greedy_decode
from splitasr.cloud.shard.runtime import RuntimeOptions, StageRuntime
from splitasr.cloud.shard.windows import split_windows
from splitasr.models.stages import StageArtifacts, ensure_stages
from splitasr.models.tokenizer import DecoderConfig, WhisperTokenizer
from splitasr.shared.audio import load_audio
from splitasr.shared.errors import AudioError
from splitasr.shared.features import log_mel, normalize

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TranscribeOptions:
    """Per-request options. ``window="trimmed"`` encodes only the audio plus ``pad_s`` of silence;
    ``"full"`` pads every window to 30 s exactly as faster-whisper does (for parity checks)."""

    language: str | None = None
    window: Literal["trimmed", "full"] = "trimmed"
    pad_s: float = 2.0
    decoding: DecodingOptions = field(default_factory=DecodingOptions)


@dataclass
class Transcript:
    text: str
    language: str
    tokens: list[list[int]]
    duration_s: float
    model_version: str
    timings_ms: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "text": self.text,
            "language": self.language,
            "duration_s": round(self.duration_s, 3),
            "model_version": self.model_version,
            "windows": len(self.tokens),
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
        }


class _Timer:
    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    def add(self, key: str, started: float) -> None:
        self.ms[key] = self.ms.get(key, 0.0) + (time.perf_counter() - started) * 1000


class TextDecoder:
    """cross_kv + greedy decoding + language detection: the work of the decoder stage."""

    def __init__(self, runtime: StageRuntime, artifacts: StageArtifacts):
        self.runtime = runtime
        n_vocab = artifacts.manifest["dims"]["n_vocab"]
        self.tokenizer = WhisperTokenizer(artifacts.tokenizer_json, DecoderConfig.load(artifacts.config_json), n_vocab)
        config = self.tokenizer.config
        self.rules = SuppressRules(self.tokenizer.suppress, config.suppress_ids_begin, self.tokenizer.eot)

    def detect_language(self, cross_k: np.ndarray, cross_v: np.ndarray) -> list[str]:
        """Most likely language per batch row, from the first decoder step after <|startoftranscript|>."""
        layers, batch, ctx, d = cross_k.shape
        tokens = np.full((batch, 1), self.tokenizer.sot, np.int64)
        empty = np.zeros((layers, batch, 0, d), np.float32)
        logits, _, _ = self.runtime.dec_step(
            tokens,
            np.zeros(batch, np.int64),
            empty,
            empty,
            np.zeros((batch, 0), np.float32),
            cross_k,
            cross_v,
            np.zeros((batch, ctx), np.float32),
        )
        codes = list(self.tokenizer.languages)
        ids = [self.tokenizer.languages[c] for c in codes]
        return [codes[i] for i in logits[:, ids].argmax(axis=-1)]

    def decode(
        self,
        audio_states: np.ndarray,
        language: str | None,
        audio_seconds: float,
        options: DecodingOptions,
        timer: _Timer | None = None,
    ) -> tuple[list[int], str]:
        """Tokens of one window (batch 1) and its language (detected when ``language`` is None)."""
        timer = timer or _Timer()
        t = time.perf_counter()
        cross_k, cross_v = self.runtime.cross_kv(audio_states)
        timer.add("cross_kv", t)
        t = time.perf_counter()
        if language is None:
            language = self.detect_language(cross_k, cross_v)[0] if self.tokenizer.multilingual else "en"
            log.info("detected language %s", language)
        prompt = self.tokenizer.prompt(language)
        cap = options.token_cap(audio_seconds, len(prompt))
        (tokens,) = greedy_decode(self.runtime.dec_step, cross_k, cross_v, [prompt], [cap], self.rules)
        timer.add("decode", t)
        return tokens, language


class Recognizer:
    """Runs the full stage chain of one model in this process (the offline path)."""

    def __init__(self, artifacts: StageArtifacts, runtime: RuntimeOptions = RuntimeOptions()):
        self.artifacts = artifacts
        self.runtime = StageRuntime(artifacts, runtime)
        self.decoder = TextDecoder(self.runtime, artifacts)
        self.tokenizer = self.decoder.tokenizer
        self.rules = self.decoder.rules
        self.spec = artifacts.feature_spec

    @classmethod
    def load(
        cls,
        model: str = "tiny.en",
        int8: bool = False,
        threads: int = 0,
        device: str = "auto",
        split_layer: int | None = None,
        show_progress: bool = True,
    ) -> Recognizer:
        artifacts = ensure_stages(model, split_layer=split_layer, int8=int8, show_progress=show_progress)
        return cls(artifacts, RuntimeOptions(threads=threads, device=device, int8=int8))

    @property
    def multilingual(self) -> bool:
        return self.tokenizer.multilingual

    def features(self, audio: np.ndarray, options: TranscribeOptions) -> np.ndarray:
        """Normalised log-mel (1, mels, frames) of one window."""
        spec = self.spec
        if options.window == "full":
            raw = log_mel(np.pad(audio, (0, spec.hop_length)), spec)
            mel = normalize(raw)[:, :-1]
            mel = np.pad(mel[:, : spec.n_frames], ((0, 0), (0, max(0, spec.n_frames - mel.shape[1]))))
        else:
            pad = np.zeros(int(options.pad_s * spec.sample_rate), np.float32)
            mel = normalize(log_mel(np.concatenate([audio, pad]), spec))[:, : spec.n_frames]
            mel = mel[:, : mel.shape[1] - mel.shape[1] % 2]
        return np.ascontiguousarray(mel[None], dtype=np.float32)

    def max_window_s(self, options: TranscribeOptions) -> float:
        chunk = self.spec.chunk_length_s
        return chunk if options.window == "full" else chunk - options.pad_s

    def transcribe(self, audio: np.ndarray, options: TranscribeOptions = TranscribeOptions()) -> Transcript:
        """Transcribe 16 kHz mono float32 audio of any length."""
        self.tokenizer.check_language(options.language)
        if audio.ndim != 1 or audio.size == 0:
            raise AudioError(f"expected non-empty mono audio, got shape {audio.shape}")
        sr = self.spec.sample_rate
        timer = _Timer()
        language = options.language or ("en" if not self.multilingual else None)
        all_tokens: list[list[int]] = []
        texts: list[str] = []
        for start, end in split_windows(audio, sr, self.max_window_s(options)):
            t = time.perf_counter()
            mel = self.features(audio[start:end], options)
            timer.add("features", t)
            t = time.perf_counter()
            enc = self.runtime.encode(mel)
            timer.add("encode", t)
            tokens, language = self.decoder.decode(enc, language, (end - start) / sr, options.decoding, timer)
            all_tokens.append(tokens)
            texts.append(self.tokenizer.decode(tokens).strip())
        return Transcript(
            text=" ".join(t for t in texts if t),
            language=language or "en",
            tokens=all_tokens,
            duration_s=len(audio) / sr,
            model_version=self.artifacts.version,
            timings_ms=timer.ms,
        )

    def transcribe_file(self, path: str | Path, options: TranscribeOptions = TranscribeOptions()) -> Transcript:
        return self.transcribe(load_audio(path, self.spec.sample_rate), options)
