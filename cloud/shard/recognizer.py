"""Offline recogniser: audio in, text out, through the ONNX stage chain of one model."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from splitasr.cloud.shard.decoding import FRAMES, DecodeBatch, DecodingOptions, Sequence, SuppressRules, prefill
from splitasr.cloud.shard.guard import (
    DEFAULT_WINDOW,
    DecodeResult,
    GuardOptions,
    WindowChoice,
    WindowMode,
    has_next,
    judge,
    plan,
)
from splitasr.cloud.shard.runtime import RuntimeOptions, StageRuntime
from splitasr.cloud.shard.windows import audio_log_mel, next_start, window_end, window_mel
from splitasr.models.stages import StageArtifacts, ensure_stages
from splitasr.models.tokenizer import TIMESTAMP_S, DecoderConfig, WhisperTokenizer
from splitasr.shared.audio import load_audio
from splitasr.shared.errors import AudioError
from splitasr.shared.subtitles import fit_segments

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TranscribeOptions:
    """Per-request options. ``window="auto"`` encodes the audio plus ``pad_s`` of silence and decodes
    a window again on a 15 s window when the guard finds its hypothesis degenerate (see
    :mod:`splitasr.cloud.shard.guard`; ``"auto-full"`` retries on 30 s); ``"trimmed"`` never
    retries; ``"full"`` pads every window to 30 s exactly as faster-whisper does."""

    language: str | None = None
    window: WindowChoice = DEFAULT_WINDOW
    pad_s: float = 2.0
    decoding: DecodingOptions = field(default_factory=DecodingOptions)
    guard: GuardOptions = field(default_factory=GuardOptions)


@dataclass(frozen=True)
class Segment:
    start_s: float
    end_s: float
    text: str

    def to_dict(self) -> dict:
        return {"start_s": round(self.start_s, 2), "end_s": round(self.end_s, 2), "text": self.text}


@dataclass
class Transcript:
    text: str
    language: str
    tokens: list[list[int]]
    duration_s: float
    model_version: str
    timings_ms: dict[str, float] = field(default_factory=dict)
    segments: list[Segment] = field(default_factory=list)
    retried_windows: int = 0

    def to_dict(self) -> dict:
        return {
            "text": self.text,
            "language": self.language,
            "duration_s": round(self.duration_s, 3),
            "model_version": self.model_version,
            "windows": len(self.tokens),
            "retried_windows": self.retried_windows,
            "segments": [s.to_dict() for s in self.segments],
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
        }


def window_segments(tokenizer: WhisperTokenizer, tokens: list[int], offset_s: float, length_s: float) -> list[Segment]:
    """Segments of one window's tokens in stream time; an open last segment ends with the window."""
    out = []
    for start, end, text in tokenizer.segments(tokens):
        end = end if end > start else length_s
        out.append(Segment(offset_s + min(start, length_s), offset_s + min(end, length_s), text))
    return out


def consume_window(
    tokenizer: WhisperTokenizer, tokens: list[int], start: int, end: int, total: int, sample_rate: int
) -> tuple[list[Segment], int]:
    """The segments of a decoded window ``[start, end)`` of ``total`` samples, and where the next
    window starts (after the last finished segment: :func:`windows.next_start`)."""
    found = window_segments(tokenizer, tokens, start / sample_rate, (end - start) / sample_rate)
    last_end = round(found[-1].end_s * sample_rate) if found else None
    return found, next_start(start, end, total, last_end, sample_rate)


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
        tok = self.tokenizer
        self.rules = SuppressRules(
            tok.suppress,
            config.suppress_ids_begin,
            tok.eot,
            timestamp_begin=tok.timestamp_begin,
            no_speech=tok.no_speech,
        )

    def sequence(
        self,
        cross_k: np.ndarray,
        cross_v: np.ndarray,
        language: str,
        audio_seconds: float,
        options: DecodingOptions,
        tag=None,
        loop_guard: GuardOptions | None = None,
    ) -> Sequence:
        """One window (cross K/V of batch row 0) ready to join a :class:`DecodeBatch`: prompt, cap, rules
        (``loop_guard``: stop at the first text loop, for a window the guard would decode again)."""
        prompt = self.tokenizer.prompt(language, options.timestamps)
        cap = options.token_cap(audio_seconds, len(prompt))
        return Sequence(
            prompt,
            cap,
            cross_k[:, 0],
            cross_v[:, 0],
            tag=tag,
            timestamps=options.timestamps,
            last_start=max(0, math.ceil(round(audio_seconds / TIMESTAMP_S, 6)) - 1),
            loop_guard=loop_guard,
        )

    def detect_language(self, cross_k: np.ndarray, cross_v: np.ndarray) -> list[str]:
        """Most likely language per batch row, from the first decoder step after <|startoftranscript|>."""
        batch, ctx = cross_k.shape[1], cross_k.shape[FRAMES]
        tokens = np.full((batch, 1), self.tokenizer.sot, np.int64)
        logits, _, _ = prefill(self.runtime.dec_step, tokens, cross_k, cross_v, np.zeros((batch, ctx), np.float32))
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
        loop_guard: GuardOptions | None = None,
    ) -> tuple[DecodeResult, str]:
        """Tokens (and guard statistics) of one window (batch 1) and its language (detected when None)."""
        timer = timer or _Timer()
        t = time.perf_counter()
        cross_k, cross_v = self.runtime.cross_kv(audio_states)
        timer.add("cross_kv", t)
        t = time.perf_counter()
        if language is None:
            language = self.detect_language(cross_k, cross_v)[0] if self.tokenizer.multilingual else "en"
            log.info("detected language %s", language)
        seq = self.sequence(cross_k, cross_v, language, audio_seconds, options, loop_guard=loop_guard)
        batch = DecodeBatch(self.runtime.dec_step, self.rules)
        batch.join([seq])
        while len(batch):
            batch.step()
        timer.add("decode", t)
        return seq.result(), language


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

    def features(self, audio: np.ndarray, mode: WindowMode = "trimmed", pad_s: float = 2.0) -> np.ndarray:
        """Encoder input (1, mels, T) of one window of 16 kHz audio."""
        return window_mel(audio_log_mel(audio, self.spec), mode, self.spec, pad_s)

    def max_window_s(self, options: TranscribeOptions, language: str | None) -> float:
        """The longest audio one window takes: 30 s on a plan that starts full, else 30 s minus the pad."""
        chunk = self.spec.chunk_length_s
        return chunk if plan(options.window, language)[0] == "full" else chunk - options.pad_s

    def recognise_window(
        self, raw: np.ndarray, language: str | None, options: TranscribeOptions, timer: _Timer
    ) -> tuple[list[int], str, int]:
        """Tokens of one window of raw log-mel, its language and how many windows it took (guard retries)."""
        modes = plan(options.window, language)
        seconds = raw.shape[1] / self.spec.frames_per_second
        for attempt, mode in enumerate(modes):
            t = time.perf_counter()
            mel = window_mel(raw, mode, self.spec, options.pad_s)
            timer.add("features", t)
            t = time.perf_counter()
            enc = self.runtime.encode(mel)
            timer.add("encode", t)
            retry = options.guard if has_next(modes, attempt) else None
            result, language = self.decoder.decode(enc, language, seconds, options.decoding, timer, retry)
            kept = judge(
                result, self.tokenizer.decode(list(result.tokens)), attempt, modes, self.tokenizer.eot, options.guard
            )
            if kept is not None:
                return list(kept), language, attempt + 1
        raise AssertionError("a plan's last window always yields tokens")

    def transcribe(self, audio: np.ndarray, options: TranscribeOptions = TranscribeOptions()) -> Transcript:
        """Transcribe 16 kHz mono float32 audio of any length."""
        self.tokenizer.check_language(options.language)
        if audio.ndim != 1 or audio.size == 0:
            raise AudioError(f"expected non-empty mono audio, got shape {audio.shape}")
        sr = self.spec.sample_rate
        timer = _Timer()
        language = self.tokenizer.spoken(options.language)
        all_tokens: list[list[int]] = []
        segments: list[Segment] = []
        retried, start = 0, 0
        while start < len(audio):
            end = window_end(audio, start, sr, self.max_window_s(options, language))
            t = time.perf_counter()
            raw = audio_log_mel(audio[start:end], self.spec)
            timer.add("features", t)
            tokens, language, tries = self.recognise_window(raw, language, options, timer)
            retried += tries > 1
            found, start = consume_window(self.tokenizer, tokens, start, end, len(audio), sr)
            all_tokens.append(tokens)
            segments += found
        return self._transcript(audio, language, all_tokens, timer.ms, segments, retried)

    def _transcript(self, audio: np.ndarray, language, tokens, timings: dict, segments: list, retried: int):
        return Transcript(
            text=" ".join(seg.text for seg in segments),
            language=language or "en",
            tokens=tokens,
            duration_s=len(audio) / self.spec.sample_rate,
            model_version=self.artifacts.version,
            timings_ms=timings,
            segments=segments,
            retried_windows=retried,
        )

    def transcribe_regions(
        self,
        audio: np.ndarray,
        regions: list[tuple[int, int]],
        options: TranscribeOptions = TranscribeOptions(),
        head_s: float = 0.3,
        tail_s: float = 0.3,
    ) -> Transcript:
        """Transcribe each speech region ``(first, end sample)`` of ``audio`` on its own (from
        ``edge.segmenter.speech_regions``): segments take the region's bounds, not Whisper's
        timestamps, which drift by seconds across long pauses. ``head_s`` of audio before each
        region and ``tail_s`` after it are decoded too, as the streaming edge sends its pre-roll and
        its trailing silence (without the pre-roll a word's onset is lost: 19.8 % against 22.7 %
        WER on 16 long-form streams), but no sample twice (regions split by a length cut touch)."""
        sr = self.spec.sample_rate
        segments: list[Segment] = []
        tokens: list[list[int]] = []
        timings: dict[str, float] = {}
        language, retried, decoded_to = options.language, 0, 0
        for k, (first, end) in enumerate(regions):
            # the pre-roll and the tail, but no sample twice: a length cut has a region right after
            begin = max(decoded_to, first - int(head_s * sr), 0)
            upto = min(len(audio), end + int(tail_s * sr), regions[k + 1][0] if k + 1 < len(regions) else len(audio))
            decoded_to = max(upto, begin + 1)
            part = self.transcribe(audio[begin:decoded_to], replace(options, language=language))
            language = language or (part.language if part.text else None)
            tokens += part.tokens
            retried += part.retried_windows
            for key, ms in part.timings_ms.items():
                timings[key] = timings.get(key, 0.0) + ms
            lo, hi = first / sr, max(first, end) / sr
            found = [(begin / sr + seg.start_s, begin / sr + seg.end_s, seg.text) for seg in part.segments]
            segments += [Segment(c.start_s, c.end_s, c.text) for c in fit_segments(found, lo, hi)]
        return self._transcript(audio, language, tokens, timings, segments, retried)

    def transcribe_file(self, path: str | Path, options: TranscribeOptions = TranscribeOptions()) -> Transcript:
        return self.transcribe(load_audio(path, self.spec.sample_rate), options)
