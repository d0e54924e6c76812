"""Endpointing: audio blocks in, utterance events out.

A speech detector (Silero VAD by default, or the energy VAD; see :mod:`splitasr.edge.vad`) labels
each 10 ms block; speech must last ``min_speech_s`` to open an utterance, which starts with a
pre-roll, ends after ``trailing_silence_s`` without speech, and is cut at ``max_utterance_s`` at
the quietest 100 ms of its last seconds (the audio of those seconds is held back until the cut
point is known).
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from splitasr.edge.vad import EnergyVAD, SileroVAD
from splitasr.shared.errors import ConfigError

BLOCK_S = 0.01


@dataclass(frozen=True)
class SegmenterOptions:
    vad: Literal["silero", "energy"] = "silero"
    speech_threshold: float = 0.5  # silero: probability that opens (and keeps) speech ...
    silence_threshold: float = 0.35  # ... and below which an open utterance counts silence
    threshold_db: float = 10.0  # energy: above the noise floor
    absolute_floor_dbfs: float = -50.0  # energy: never speech below this
    min_speech_s: float = 0.1
    trailing_silence_s: float = 0.8
    max_utterance_s: float = 20.0
    cut_search_s: float = 2.0
    pre_roll_s: float = 0.3

    def __post_init__(self) -> None:
        if self.vad not in ("silero", "energy"):
            raise ConfigError(f"vad must be 'silero' or 'energy', got {self.vad!r}")
        if not 0.0 < self.silence_threshold <= self.speech_threshold < 1.0:
            raise ConfigError(
                f"need 0 < silence_threshold <= speech_threshold < 1, got {self.silence_threshold}, "
                f"{self.speech_threshold}"
            )
        if not 0.1 <= self.trailing_silence_s <= 5.0:
            raise ConfigError(f"trailing_silence_s must be within [0.1, 5], got {self.trailing_silence_s}")
        if self.max_utterance_s <= self.cut_search_s + 1.0:
            raise ConfigError("max_utterance_s must exceed cut_search_s by at least 1 s")

    def detector(self) -> Callable[[np.ndarray, bool], bool]:
        """A fresh speech detector for one stream: ``detector(block, utterance_open) -> is speech``."""
        if self.vad == "silero":
            return SileroVAD(self.speech_threshold, self.silence_threshold)
        return EnergyVAD(self.threshold_db, self.absolute_floor_dbfs)


@dataclass(frozen=True)
class Start:
    sample: int  # first sample of the utterance (pre-roll included)
    speech_sample: int = -1  # first voiced sample (after the pre-roll); -1: not known (a length cut)


@dataclass(frozen=True)
class Audio:
    samples: np.ndarray


@dataclass(frozen=True)
class End:
    speech_end_sample: int  # where speech stopped (before the trailing silence)


Event = Start | Audio | End


class Segmenter:
    def __init__(self, options: SegmenterOptions = SegmenterOptions(), sample_rate: int = 16000):
        self.o = options
        self.block = int(BLOCK_S * sample_rate)
        self.rate = sample_rate
        self._carry = np.zeros(0, np.float32)
        self._pos = 0  # samples consumed in whole blocks
        self._is_speech = options.detector()
        self._pre: deque[np.ndarray] = deque(maxlen=max(1, int(options.pre_roll_s / BLOCK_S)))
        self._onset: list[np.ndarray] = []
        self.active = False
        self._utt_blocks = 0
        self._silence_blocks = 0
        self._speech_end = 0
        self._held: list[tuple[np.ndarray, float]] = []  # blocks near the max length, with their energy

    def retune(self, trailing_silence_s: float) -> None:
        """A new endpoint silence (a feature flag), from the next pause on; ConfigError if out of range."""
        self.o = dataclasses.replace(self.o, trailing_silence_s=trailing_silence_s)

    @property
    def speech_end_sample(self) -> int:
        """Sample after the last voiced block of the open utterance (its end so far)."""
        return self._speech_end

    def _blocks(self, seconds: float) -> int:
        return max(1, round(seconds / BLOCK_S))

    def push(self, samples: np.ndarray) -> list[Event]:
        data = np.concatenate([self._carry, np.asarray(samples, np.float32)])
        n = len(data) // self.block
        self._carry = data[n * self.block :]
        events: list[Event] = []
        for i in range(n):
            events += self._step(data[i * self.block : (i + 1) * self.block])
        return events

    def finish(self) -> list[Event]:
        """End of input: close an open utterance."""
        if not self.active:
            return []
        events: list[Event] = [Audio(b) for b, _ in self._held]
        self._held.clear()
        return [*events, *self._end(self._speech_end)]

    def _end(self, speech_end: int) -> list[Event]:
        self.active = False
        self._utt_blocks = self._silence_blocks = 0
        return [End(speech_end)]

    def _step(self, block: np.ndarray) -> list[Event]:
        db = 10 * np.log10(float(np.mean(block * block)) + 1e-12)
        speech = self._is_speech(block, self.active or bool(self._onset))  # hysteresis from the first voiced block
        self._pos += len(block)
        if not self.active:
            if not speech:
                self._pre.append(block)
                self._onset.clear()
                return []
            self._onset.append(block)
            if len(self._onset) < self._blocks(self.o.min_speech_s):
                return []
            pre = list(self._pre)
            voiced = sum(len(b) for b in self._onset)
            audio = np.concatenate(pre + self._onset)
            self._pre.clear()
            self._onset.clear()
            self.active = True
            self._utt_blocks = len(pre) + self._blocks(self.o.min_speech_s)
            self._silence_blocks = 0
            self._speech_end = self._pos
            return [Start(self._pos - len(audio), self._pos - voiced), Audio(audio)]
        self._utt_blocks += 1
        if speech:
            self._silence_blocks = 0
            self._speech_end = self._pos
        else:
            self._silence_blocks += 1
        hold_from = self._blocks(self.o.max_utterance_s - self.o.cut_search_s)
        if self._utt_blocks > hold_from:
            self._held.append((block, db))
        if self._silence_blocks >= self._blocks(self.o.trailing_silence_s):
            events: list[Event] = [Audio(b) for b, _ in self._held] if self._held else []
            if not self._held:
                events.append(Audio(block))
            self._held.clear()
            return [*events, *self._end(self._speech_end)]
        if self._utt_blocks >= self._blocks(self.o.max_utterance_s):
            return self._cut()
        return [] if self._utt_blocks > hold_from else [Audio(block)]

    def _cut(self) -> list[Event]:
        """Max length: end at the quietest 100 ms of the held tail; the rest starts the next utterance."""
        energies = np.array([db for _, db in self._held])
        win = self._blocks(0.1)
        smooth = np.convolve(energies, np.ones(win) / win, mode="valid") if len(energies) >= win else energies
        cut = int(np.argmin(smooth)) + win // 2
        head, tail = self._held[:cut], self._held[cut:]
        self._held.clear()
        cut_sample = self._pos - sum(len(b) for b, _ in tail)
        events: list[Event] = [Audio(b) for b, _ in head]
        events += self._end(cut_sample)
        if tail:
            self.active = True
            self._utt_blocks = len(tail)
            self._silence_blocks = 0
            self._speech_end = self._pos
            events += [Start(cut_sample), Audio(np.concatenate([b for b, _ in tail]))]
        return events


def speech_regions(
    audio: np.ndarray, options: SegmenterOptions = SegmenterOptions(), sample_rate: int = 16000
) -> list[tuple[int, int]]:
    """``(first voiced sample, speech end)`` of each utterance the edge's segmenter finds in a whole
    recording, after the edge's conditioning: the same endpointing as streaming, for offline
    subtitle timings (``--vad``)."""
    from splitasr.edge.conditioning import Conditioner

    segmenter, conditioner = Segmenter(options, sample_rate), Conditioner(sample_rate=sample_rate)
    chunks = (conditioner.process(audio[i : i + sample_rate]) for i in range(0, len(audio), sample_rate))
    events = [e for chunk in chunks for e in segmenter.push(chunk)]
    out, start = [], 0
    for event in [*events, *segmenter.finish()]:
        if isinstance(event, Start):
            start = event.speech_sample if event.speech_sample >= 0 else event.sample
        elif isinstance(event, End):
            out.append((start, max(start, event.speech_end_sample)))
    return out
