"""Per-session state on a stage-0 shard: utterance buffers, replay-safe ordering, partial agreement."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from splitasr.shared.errors import ProtocolError
from splitasr.shared.protocol import E_STATE, E_TOO_LARGE, Final


@dataclass
class Utterance:
    utt: int
    chunks: list[np.ndarray] = field(default_factory=list)
    n_frames: int = 0
    next_seq: int = 0
    ended: bool = False
    final: Final | None = None
    partial_at_frames: int = 0  # frames covered by the last partial started
    hypotheses: list[str] = field(default_factory=list)
    speech_end: int | None = None  # the edge VAD's latest hint: frames up to the last voiced one
    speculated_end: int | None = None  # speech end of the last speculative final started

    def raw(self, frames: int | None = None) -> np.ndarray:
        if not self.chunks:
            return np.zeros((0, 0), np.float32)
        raw = np.concatenate(self.chunks, axis=1)
        return raw if frames is None else raw[:, :frames]

    def pause_frames(self) -> int:
        """Frames of trailing silence so far, by the edge's hint (0 without hints)."""
        if self.speech_end is None:
            return 0
        return max(0, self.n_frames - self.speech_end)


def stable_prefix(previous: str, current: str) -> int:
    """LocalAgreement-2: characters of ``current`` made of whole words both hypotheses agree on."""
    a, b = previous.split(), current.split()
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    if n == 0:
        return 0
    return len(" ".join(b[:n]))


class Session:
    """Utterances of one edge session; frames are applied in order and replays are idempotent."""

    def __init__(
        self, session_id: str, device_id: str, language: str | None, max_frames: int, max_open_utterances: int = 4
    ):
        self.session_id = session_id
        self.device_id = device_id
        self.language = language
        self.max_frames = max_frames
        self.max_open_utterances = max_open_utterances
        self.utterances: dict[int, Utterance] = {}

    def open_utterances(self) -> int:
        return sum(1 for u in self.utterances.values() if not u.ended)

    def add_features(
        self, utt: int, seq: int, start: int, raw: np.ndarray, speech_end: int | None = None
    ) -> Utterance | None:
        """Append frames; returns None for a duplicate (already applied) frame."""
        if utt not in self.utterances and self.open_utterances() >= self.max_open_utterances:
            raise ProtocolError(
                E_STATE, f"utterance {utt}: {self.max_open_utterances} utterances are open; end one with EOU first"
            )
        u = self.utterances.get(utt) or Utterance(utt)  # kept only once its first frame is accepted
        if u.ended or seq < u.next_seq:
            return None  # replayed frame we already have
        if seq != u.next_seq or start != u.n_frames:
            raise ProtocolError(
                E_STATE, f"utterance {utt}: expected seq {u.next_seq} at frame {u.n_frames}, got seq {seq} at {start}"
            )
        if u.n_frames + raw.shape[1] > self.max_frames:
            raise ProtocolError(E_TOO_LARGE, f"utterance {utt} exceeds {self.max_frames} frames; end it with EOU")
        self.utterances[utt] = u
        u.chunks.append(raw)
        u.n_frames += raw.shape[1]
        u.next_seq += 1
        if speech_end is not None:
            u.speech_end = min(max(0, speech_end), u.n_frames)
        return u

    def end(self, utt: int, last_seq: int) -> Utterance | None:
        """Mark the end of an utterance; None if already ended (replayed EOU)."""
        if utt not in self.utterances and self.open_utterances() >= self.max_open_utterances:
            raise ProtocolError(E_STATE, f"utterance {utt}: {self.max_open_utterances} utterances are open")
        u = self.utterances.get(utt) or Utterance(utt)  # kept only once the EOU is accepted
        if u.ended:
            return None
        if last_seq != u.next_seq - 1:
            raise ProtocolError(E_STATE, f"utterance {utt}: EOU after seq {last_seq}, but {u.next_seq} frames arrived")
        self.utterances[utt] = u
        u.ended = True
        return u

    def forget(self, utt: int) -> None:
        """Drop an utterance's frames once its FINAL went out (the FINAL is kept for replays)."""
        u = self.utterances.get(utt)
        if u is not None:
            u.chunks.clear()
