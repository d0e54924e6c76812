"""Sessions from arrivals: what one arrival of a trace becomes, drawn from the real-speech dev set.

**Mapping.** Each row of a trace is the arrival of one speech session. A session is a run of
utterances with pauses between them, the way the long-form test streams are built
(``shared/longform.py``): it has 1-16 utterances (uniform, mean 8.5; the long-form streams have 8
clips each); each utterance's length is drawn from the durations of the dev set's 102 English
clips (0.4-43 s, ``samples/real/manifest.jsonl``); each pause is drawn from the long-form pauses
(0.5-8 s). The edge sends an utterance's EOU ``endpoint_s`` (0.8 s) after it ends.

The simulator never draws each session: it needs per-second totals. :meth:`SessionModel.profile`
draws many sessions once and gives, for a session of age ``a`` seconds, the chance it is connected,
the expected number of its utterances being spoken, and the expected number of its utterances
ending; totals are the arrivals per second convolved with these. FINAL lengths keep their
distribution (quantiles) for the latency of each second's FINALs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from splitasr.shared.longform import PAUSES_S, REAL


@dataclass(frozen=True)
class Profile:
    active: np.ndarray  # P(session connected) by age (s)
    speaking: np.ndarray  # E[utterances being spoken] by age
    finals: np.ndarray  # E[utterances ending] by age
    final_lengths: np.ndarray  # quantiles of utterance length (s), equal weights

    @property
    def mean_session_s(self) -> float:
        return float(self.active.sum())

    @property
    def speaking_share(self) -> float:
        return float(self.speaking.sum() / self.active.sum())

    def per_second(self, arrivals_per_s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(connected sessions, streams speaking, FINALs) per second for arrivals per second."""
        n = arrivals_per_s.size
        size = 1 << int(np.ceil(np.log2(n + self.active.size)))  # FFT convolution: month-long traces are 2.6M s
        spectrum = np.fft.rfft(arrivals_per_s, size)
        out = (
            np.fft.irfft(spectrum * np.fft.rfft(k, size), size)[:n] for k in (self.active, self.speaking, self.finals)
        )
        return tuple(np.maximum(x, 0.0) for x in out)  # FFT rounding leaves tiny negatives where there is nothing


def speech_per_second(
    start: np.ndarray, end: np.ndarray, horizon: int, endpoint_s: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per second up to ``horizon``: utterances being spoken (overlap of each [start, end) with the
    second) and utterances whose EOU falls in it (``endpoint_s`` after the speech ends)."""
    speaking = np.zeros(horizon)
    for offset in range(int(np.ceil((end - start).max(initial=0))) + 1):
        second = np.floor(start).astype(np.int64) + offset
        overlap = np.clip(np.minimum(end, second + 1) - np.maximum(start, second), 0, 1)
        keep = (overlap > 0) & (second < horizon)
        np.add.at(speaking, second[keep], overlap[keep])
    finals = np.bincount(np.floor(end + endpoint_s).astype(np.int64), minlength=horizon)[:horizon]
    return speaking, finals.astype(float)


@dataclass(frozen=True)
class SessionModel:
    utterance_s: tuple[float, ...]
    pauses_s: tuple[float, ...] = PAUSES_S
    min_utterances: int = 1
    max_utterances: int = 16
    endpoint_s: float = 0.8

    @classmethod
    def from_devset(cls, manifest: Path = REAL / "manifest.jsonl") -> SessionModel:
        rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
        return cls(utterance_s=tuple(r["duration_s"] for r in rows if r["language"] == "en"))

    def profile(self, sessions: int = 20_000, seed: int = 0, quantiles: int = 32) -> Profile:
        rng = np.random.default_rng(seed)
        counts = rng.integers(self.min_utterances, self.max_utterances + 1, sessions)
        lengths = rng.choice(np.asarray(self.utterance_s), int(counts.sum()))
        pauses = rng.choice(np.asarray(self.pauses_s), int(counts.sum()))
        owner = np.repeat(np.arange(sessions), counts)
        first = np.r_[True, owner[1:] != owner[:-1]]
        step = lengths + pauses
        ends_before = np.cumsum(step) - step  # time from the first utterance of all, per utterance
        session_start = np.maximum.accumulate(np.where(first, ends_before, 0.0))
        start = ends_before - session_start
        return profile_of(start, start + lengths, owner, sessions, self.endpoint_s, quantiles)


def profile_of(
    start: np.ndarray, end: np.ndarray, owner: np.ndarray, sessions: int, endpoint_s: float, quantiles: int = 32
) -> Profile:
    """The profile of given sessions: utterance ``start``/``end`` from their session's start, ``owner``
    the session of each (0 .. sessions - 1); a session stays connected until its last EOU."""
    horizon = int(np.ceil((end + endpoint_s).max())) + 2
    speaking, finals = speech_per_second(start, end, horizon, endpoint_s)
    last = np.zeros(sessions)
    np.maximum.at(last, owner, end + endpoint_s)
    active = np.array([(last > a).mean() for a in range(horizon)])
    grid = (np.arange(quantiles) + 0.5) / quantiles
    return Profile(active, speaking / sessions, finals / sessions, np.quantile(end - start, grid))
