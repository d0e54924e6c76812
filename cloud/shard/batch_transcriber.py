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
from splitasr.cloud.shard.guard import DecodeResult, has_next, judge, plan
from splitasr.cloud.shard.recognizer import Recognizer, Segment, TranscribeOptions, Transcript, consume_window
from splitasr.cloud.shard.result_cache import ResultCache, feature_key
from splitasr.cloud.shard.windows import audio_log_mel, window_end, window_mel
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
    audio: np.ndarray
    language: str | None
    tokens: list[list[int]] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    retried: int = 0


@dataclass
class _Window:
    """One window of a file on one attempt of the guard's plan; the file's next window waits for it (seek)."""

    file: _File
    start: int
    end: int
    modes: tuple  # the plan, from the file's language when the window was cut (as offline)
    attempt: int = 0


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
        default_language = rec.tokenizer.spoken(options.language)

        def window(f: _File, start: int) -> _Window:
            """A file's next window, cut and planned for its language as known now (None: detecting)."""
            end = window_end(f.audio, start, sr, rec.max_window_s(options, f.language))
            return _Window(f, start, end, plan(options.window, f.language))

        queue: deque[_Window] = deque()
        inflight: dict[str, list[_Window]] = {}
        files = iter(items)
        batch = DecodeBatch(rec.runtime.dec_step, rec.rules)
        exhausted = False

        def finish(key: str, result: DecodeResult) -> Iterator[BatchResult]:
            self.cache.put(key, result)
            for w in inflight.pop(key):
                yield from complete(w, result)

        def complete(w: _Window, result: DecodeResult) -> Iterator[BatchResult]:
            f = w.file
            text = rec.tokenizer.decode(list(result.tokens))
            kept = judge(result, text, w.attempt, w.modes, rec.tokenizer.eot, options.guard)
            if kept is None:  # degenerate: the same window again on the plan's next mode
                queue.appendleft(_Window(f, w.start, w.end, w.modes, w.attempt + 1))
                return
            f.retried += w.attempt > 0
            f.tokens.append(list(kept))
            found, start = consume_window(rec.tokenizer, list(kept), w.start, w.end, len(f.audio), sr)
            f.segments += found
            if on_audio_done:
                on_audio_done((start - w.start) / sr)
            if start < len(f.audio):
                queue.appendleft(window(f, start))
                return
            transcript = Transcript(
                " ".join(seg.text for seg in f.segments),
                f.language or "en",
                f.tokens,
                len(f.audio) / sr,
                rec.artifacts.version,
                segments=f.segments,
                retried_windows=f.retried,
            )
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
                    f = _File(name, audio, default_language)
                    queue.append(window(f, 0))
                    continue
                w = queue.popleft()
                self.stats.windows += 1
                raw = audio_log_mel(w.file.audio[w.start : w.end], rec.spec)
                mel = window_mel(raw, w.modes[w.attempt], rec.spec, options.pad_s)
                retry = has_next(w.modes, w.attempt)  # a loop stops this window early (the cached result too)
                key = feature_key(mel, w.file.language, rec.artifacts.version, retry)
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
                joiners.append(self._sequence(w, mel, key, options, retry))
            if not joiners and not len(batch):
                return
            for seq in batch.join(joiners):
                yield from finish(seq.tag, seq.result())
            if len(batch):
                size = len(batch)
                self.stats.batch_sizes[size] = self.stats.batch_sizes.get(size, 0) + 1
                self.stats.steps += 1
                for seq in batch.step():
                    yield from finish(seq.tag, seq.result())

    def _sequence(self, w: _Window, mel: np.ndarray, key: str, options: TranscribeOptions, retry: bool) -> Sequence:
        rec = self.recognizer
        cross_k, cross_v = rec.runtime.cross_kv(rec.runtime.encode(mel))
        if w.file.language is None:
            w.file.language = rec.decoder.detect_language(cross_k, cross_v)[0]
        seconds = (w.end - w.start) / rec.spec.sample_rate
        loop_guard = options.guard if retry else None
        return rec.decoder.sequence(cross_k, cross_v, w.file.language, seconds, options.decoding, key, loop_guard)
