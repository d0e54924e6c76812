"""Offline batch mode: many files through the same stages, windows of all files decoded in one running batch.

Windows are encoded one at a time (encoder batching does not pay on CPU, see
:mod:`splitasr.cloud.shard.microbatch`) and join the decoder's running batch as soon as a slot is
free, so the decoder always works on up to ``max_batch`` sequences from any files. Identical
windows (same feature hash) are decoded once. A file that cannot be read is reported and the others
go on.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from splitasr.cloud.shard.decoding import DecodeBatch, Sequence
from splitasr.cloud.shard.recognizer import Recognizer, TranscribeOptions, Transcript
from splitasr.cloud.shard.result_cache import ResultCache, feature_key
from splitasr.cloud.shard.windows import split_windows
from splitasr.shared.errors import SplitASRError

log = logging.getLogger(__name__)


@dataclass
class BatchResult:
    name: str
    transcript: Transcript | None = None
    error: Exception | None = None


@dataclass
class _File:
    name: str
    duration_s: float
    windows: list[list[int] | None]
    language: str | None
    remaining: int


@dataclass
class _Window:
    file: _File
    index: int
    audio: np.ndarray


@dataclass
class BatchStats:
    windows: int = 0
    cache_hits: int = 0
    steps: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)


class BatchTranscriber:
    def __init__(self, recognizer: Recognizer, max_batch: int = 16, cache: ResultCache | None = None):
        self.recognizer = recognizer
        self.max_batch = max_batch
        self.cache = cache if cache is not None else ResultCache(ttl_s=300.0, max_entries=4096)
        self.stats = BatchStats()

    def run(
        self,
        items: Iterable[tuple[str, Callable[[], np.ndarray]]],
        options: TranscribeOptions = TranscribeOptions(),
        on_audio_done: Callable[[float], None] | None = None,
    ) -> Iterator[BatchResult]:
        """Transcribe ``(name, load)`` pairs; yields each file's result as soon as its last window is decoded."""
        rec = self.recognizer
        rec.tokenizer.check_language(options.language)
        sr = rec.spec.sample_rate
        default_language = options.language or ("en" if not rec.multilingual else None)
        queue: deque[_Window] = deque()
        inflight: dict[str, list[_Window]] = {}
        files = iter(items)
        batch = DecodeBatch(rec.runtime.dec_step, rec.rules)
        exhausted = False

        def finish(key: str, tokens: list[int]) -> Iterator[BatchResult]:
            self.cache.put(key, tokens)
            for w in inflight.pop(key):
                yield from complete(w, tokens)

        def complete(w: _Window, tokens: list[int]) -> Iterator[BatchResult]:
            f = w.file
            f.windows[w.index] = tokens
            f.remaining -= 1
            if on_audio_done:
                on_audio_done(len(w.audio) / sr)
            if f.remaining == 0:
                texts = [rec.tokenizer.decode(t).strip() for t in f.windows]
                text = " ".join(t for t in texts if t)
                transcript = Transcript(text, f.language or "en", f.windows, f.duration_s, rec.artifacts.version)
                yield BatchResult(f.name, transcript)

        while True:
            joiners: list[Sequence] = []
            while len(batch) + len(joiners) < self.max_batch:
                if not queue:
                    if exhausted:
                        break
                    try:
                        name, load = next(files)
                    except StopIteration:
                        exhausted = True
                        continue
                    try:
                        audio = load()
                        if audio.ndim != 1 or audio.size == 0:
                            raise SplitASRError(f"{name}: expected non-empty mono audio, got shape {audio.shape}")
                    except SplitASRError as exc:
                        yield BatchResult(name, error=exc)
                        continue
                    spans = split_windows(audio, sr, rec.max_window_s(options))
                    f = _File(name, len(audio) / sr, [None] * len(spans), default_language, len(spans))
                    queue.extend(_Window(f, i, audio[s:e]) for i, (s, e) in enumerate(spans))
                    continue
                w = queue.popleft()
                self.stats.windows += 1
                mel = rec.features(w.audio, options)
                key = feature_key(mel, w.file.language, rec.artifacts.version)
                cached = self.cache.get(key)
                if cached is not None:
                    self.stats.cache_hits += 1
                    yield from complete(w, cached)
                    continue
                if key in inflight:
                    self.stats.cache_hits += 1
                    inflight[key].append(w)
                    continue
                inflight[key] = [w]
                joiners.append(self._sequence(w, mel, key, options))
            if not joiners and not len(batch):
                return
            for seq in batch.join(joiners):
                yield from finish(seq.tag, seq.tokens)
            if len(batch):
                size = len(batch)
                self.stats.batch_sizes[size] = self.stats.batch_sizes.get(size, 0) + 1
                self.stats.steps += 1
                for seq in batch.step():
                    yield from finish(seq.tag, seq.tokens)

    def _sequence(self, w: _Window, mel: np.ndarray, key: str, options: TranscribeOptions) -> Sequence:
        rec = self.recognizer
        cross_k, cross_v = rec.runtime.cross_kv(rec.runtime.encode(mel))
        if w.file.language is None:
            w.file.language = rec.decoder.detect_language(cross_k, cross_v)[0]
        prompt = rec.tokenizer.prompt(w.file.language)
        cap = options.decoding.token_cap(len(w.audio) / rec.spec.sample_rate, len(prompt))
        return Sequence(prompt, cap, cross_k[:, 0], cross_v[:, 0], tag=key)
