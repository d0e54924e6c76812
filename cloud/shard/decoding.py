"""Greedy Whisper decoding with continuous batching: sequences of different lengths share each step.

:class:`DecodeBatch` keeps one running batch. Sequences join between steps (after a prefill of
their prompt) and leave as soon as they finish; padding masks let caches and audio states of
different lengths sit in one batch, so a sequence's tokens do not depend on its batch mates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from splitasr.cloud.shard.guard import DecodeResult, GuardOptions, loops_at_tail

# dec_step(tokens, offset, past_k, past_v, past_mask, cross_k, cross_v, cross_mask) -> logits, new_k, new_v
StepFn = Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray]]
MASKED = np.float32(-1e9)
FRAMES = -2  # the audio-frame axis of cross keys/values: (layers, [batch,] heads, frames, state // heads)


def prefill(step: StepFn, tokens: np.ndarray, ck: np.ndarray, cv: np.ndarray, cmask: np.ndarray):
    """dec_step on ``tokens`` (batch, n) at position 0 with an empty self-attention cache."""
    layers, batch, heads, _, head_dim = ck.shape
    empty = np.zeros((layers, batch, 0, heads * head_dim), np.float32)
    return step(tokens, np.zeros(batch, np.int64), empty, empty, np.zeros((batch, 0), np.float32), ck, cv, cmask)


@dataclass(frozen=True)
class DecodingOptions:
    """Greedy decoding settings.

    ``timestamps`` decodes in Whisper's timestamp mode (segments with start/end, as faster-whisper
    does by default): on real speech it is both more accurate and less prone to loops than
    ``<|notimestamps|>`` decoding (see docs/decoding.md)."""

    max_tokens_per_second: float = 6.0
    extra_tokens: int = 10
    max_length: int = 448  # Whisper's text context, prompt included
    suppress_blank: bool = True
    timestamps: bool = True

    def token_cap(self, audio_seconds: float, prompt_length: int) -> int:
        """At most ~6 tokens per second of audio + 10 (+ room for timestamp pairs), within the text context."""
        cap = int(self.max_tokens_per_second * audio_seconds) + self.extra_tokens
        if self.timestamps:
            cap += 2 * (int(audio_seconds / 3) + 1)
        return max(1, min(cap, self.max_length - prompt_length))


@dataclass(frozen=True)
class SuppressRules:
    """Token ids that are never generated, those forbidden as the first token, and Whisper's timestamp rules.

    ``timestamp_begin`` is the id of ``<|0.00|>`` (timestamps are 0.02 s apart); ``no_speech`` the id
    whose probability at the start-of-transcript position says "no speech in this window"."""

    always: tuple[int, ...]
    at_begin: tuple[int, ...]
    eot: int
    timestamp_begin: int | None = None
    no_speech: int | None = None
    max_initial_timestamp: int = 50  # in 0.02 s steps

    def apply(self, logits: np.ndarray, first_step: bool) -> np.ndarray:
        logits[:, list(self.always)] = -np.inf
        if first_step and self.at_begin:
            logits[:, list(self.at_begin)] = -np.inf
        return logits

    def apply_timestamps(self, logits: np.ndarray, tokens: list[int], last_start: int | None = None) -> None:
        """Whisper's ``ApplyTimestampRules`` on one row's logits (in place), given its tokens so far.

        ``last_start`` (in 0.02 s steps): no segment starts later, since the audio ends there; text
        after it would transcribe the window's padding (on a trimmed window, tiny.en repeats its
        last sentence there). Then only EOT is left. The first segment's start is also bounded by
        Whisper's ``max_initial_timestamp`` (1 s), which alone let a clip shorter than that start in
        the padding."""
        begin = self.timestamp_begin
        if not tokens:  # the first token is a timestamp, no later than max_initial_timestamp
            first = self.max_initial_timestamp if last_start is None else min(self.max_initial_timestamp, last_start)
            logits[:begin] = -np.inf
            logits[begin + first + 1 :] = -np.inf
            return
        last_ts = tokens[-1] >= begin
        penultimate_ts = len(tokens) < 2 or tokens[-2] >= begin
        if last_ts:
            if penultimate_ts:  # a closed pair: text (or EOT) must follow
                logits[begin:] = -np.inf
            else:  # an open segment end: another timestamp or EOT, not text
                logits[: self.eot] = -np.inf
                if last_start is not None:  # the next segment's start: not after the audio
                    logits[begin + last_start + 1 :] = -np.inf
        stamps = [t for t in tokens if t >= begin]
        if stamps:  # timestamps never decrease; a new segment starts after the last one
            floor = stamps[-1] if last_ts and not penultimate_ts else stamps[-1] + 1
            logits[begin:floor] = -np.inf
        text_max = logits[:begin].max()
        if np.isfinite(text_max):
            ts = logits[begin:]
            top = max(text_max, ts.max())
            if np.isfinite(ts.max()) and np.log(np.exp(ts - top).sum()) + top > text_max:
                logits[:begin] = -np.inf


def _loops(s: Sequence, eot: int) -> bool:
    """Whether ``s`` may stop early: its guard would call it degenerate whatever came next (a text
    loop is a retry; only a window that may still be silence must run to its end, since the
    no-speech rule reads the whole hypothesis's log-probability)."""
    g = s.loop_guard
    return (
        g is not None
        and s.no_speech_prob <= g.no_speech_threshold
        and loops_at_tail(s.tokens, eot, g.max_ngram, g.max_repeats)
    )


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    top = logits.max(axis=-1, keepdims=True)
    return logits - top - np.log(np.exp(logits - top).sum(axis=-1, keepdims=True))


@dataclass(eq=False)
class Sequence:
    """One window being decoded: its prompt, token cap and cross-attention keys/values (L, T, d)."""

    prompt: list[int]
    cap: int
    cross_k: np.ndarray
    cross_v: np.ndarray
    tokens: list[int] = field(default_factory=list)
    tag: Any = None  # the caller's handle (a request, a window index)
    timestamps: bool = False  # Whisper's timestamp rules apply to this sequence
    last_start: int | None = None  # timestamp step after which no segment starts (the audio's end)
    sum_logprob: float = 0.0  # of the generated tokens, EOT included
    no_speech_prob: float = 0.0  # P(no speech) at the start-of-transcript position
    hit_cap: bool = False  # stopped by the token cap, not by EOT
    # stop as soon as the text loops (the guard will decode the window again on a longer one anyway):
    # set offline, in batch mode and for streaming FINALs on a window that has a next window in its
    # plan (guard.has_next); None decodes to EOT or the cap
    loop_guard: GuardOptions | None = None

    @property
    def length(self) -> int:
        return len(self.prompt) + len(self.tokens)

    @property
    def frames(self) -> int:
        return self.cross_k.shape[FRAMES]

    @property
    def avg_logprob(self) -> float:
        return self.sum_logprob / (len(self.tokens) + 1)

    def result(self) -> DecodeResult:
        return DecodeResult(tuple(self.tokens), self.avg_logprob, self.no_speech_prob, self.hit_cap)


def _pad_axis(array: np.ndarray, axis: int, size: int, value: float = 0.0) -> np.ndarray:
    missing = size - array.shape[axis]
    if missing <= 0:
        return array
    widths = [(0, 0)] * array.ndim
    widths[axis] = (0, missing)
    return np.pad(array, widths, constant_values=value)


def _stack_cross(seqs: list[Sequence], ctx: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cross keys/values (L, B, heads, ctx, d / heads) padded to ``ctx`` frames, with the additive
    frame mask (B, ctx)."""
    ks = np.stack([_pad_axis(s.cross_k, FRAMES, ctx) for s in seqs], axis=1)
    vs = np.stack([_pad_axis(s.cross_v, FRAMES, ctx) for s in seqs], axis=1)
    mask = np.zeros((len(seqs), ctx), np.float32)
    for row, s in enumerate(seqs):
        mask[row, s.frames :] = MASKED
    return ks, vs, mask


class _Lane:
    """Sequences whose audio states have similar lengths, decoded by one dec_step call per step."""

    def __init__(self, step: StepFn, rules: SuppressRules):
        self._step = step
        self.rules = rules
        self.seqs: list[Sequence] = []
        self._state: dict[str, np.ndarray] = {}
        self.steps = 0

    def __len__(self) -> int:
        return len(self.seqs)

    def _finish(self, seqs: list[Sequence], logits: np.ndarray, first: bool) -> list[bool]:
        """Pick each row's next token; True where the sequence is done (EOT or its cap)."""
        logits = self.rules.apply(logits.astype(np.float32, copy=True), first)
        for row, s in enumerate(seqs):
            if s.timestamps:
                self.rules.apply_timestamps(logits[row], s.tokens, s.last_start)
        logprobs = _log_softmax(logits)
        best = logprobs.argmax(axis=-1)
        done = []
        for row, (s, token) in enumerate(zip(seqs, best.tolist(), strict=True)):
            s.sum_logprob += float(logprobs[row, token])
            if token != self.rules.eot:
                s.tokens.append(token)
            s.hit_cap = token != self.rules.eot and len(s.tokens) >= s.cap
            done.append(token == self.rules.eot or s.hit_cap or _loops(s, self.rules.eot))
        return done

    def _no_speech(self, group: list[Sequence], tokens: np.ndarray, ck, cv, cmask):
        """Prefill the start-of-transcript token alone: its logits give P(no speech) (Whisper's rule)."""
        logits, k, v = prefill(self._step, tokens[:, :1], ck, cv, cmask)
        probs = np.exp(_log_softmax(logits.astype(np.float32)))[:, self.rules.no_speech]
        for s, prob in zip(group, probs.tolist(), strict=True):
            s.no_speech_prob = prob
        return logits, k, v

    def join(self, seqs: list[Sequence]) -> list[Sequence]:
        """Prefill the prompts of ``seqs`` (grouped by prompt length) and add the unfinished ones.

        Returns the sequences that finished on their first token."""
        finished: list[Sequence] = []
        by_length: dict[int, list[Sequence]] = {}
        for s in seqs:
            by_length.setdefault(len(s.prompt), []).append(s)
        for n, group in by_length.items():
            ctx = max(s.frames for s in group)
            ck, cv, cmask = _stack_cross(group, ctx)
            tokens = np.asarray([s.prompt for s in group], np.int64)
            if self.rules.no_speech is not None:
                logits, k, v = self._no_speech(group, tokens, ck, cv, cmask)
                if n > 1:  # the rest of the prompt, on top of the start token's cache
                    logits, k, v = self._step(
                        tokens[:, 1:],
                        np.ones(len(group), np.int64),
                        k,
                        v,
                        np.zeros((len(group), 1), np.float32),
                        ck,
                        cv,
                        cmask,
                    )
            else:
                logits, k, v = prefill(self._step, tokens, ck, cv, cmask)
            done = self._finish(group, logits, first=True)
            keep = [row for row, d_ in enumerate(done) if not d_]
            finished += [s for s, d_ in zip(group, done, strict=True) if d_]
            if keep:
                self._merge([group[r] for r in keep], k[:, keep], v[:, keep], np.zeros((len(keep), n), np.float32))
        return finished

    def _merge(self, seqs: list[Sequence], k: np.ndarray, v: np.ndarray, mask: np.ndarray) -> None:
        last = np.asarray([s.tokens[-1] for s in seqs], np.int64)
        if not self.seqs:
            ctx = max(s.frames for s in seqs)
            ck, cv, cmask = _stack_cross(seqs, ctx)
            self._state = {"k": k, "v": v, "mask": mask, "ck": ck, "cv": cv, "cmask": cmask, "last": last}
            self.seqs = list(seqs)
            return
        st = self._state
        past = max(st["k"].shape[2], k.shape[2])
        ctx = max(st["ck"].shape[FRAMES], *(s.frames for s in seqs))
        ck, cv, cmask = _stack_cross(seqs, ctx)
        st["k"] = np.concatenate([_pad_axis(st["k"], 2, past), _pad_axis(k, 2, past)], axis=1)
        st["v"] = np.concatenate([_pad_axis(st["v"], 2, past), _pad_axis(v, 2, past)], axis=1)
        st["mask"] = np.concatenate([_pad_axis(st["mask"], 1, past, MASKED), _pad_axis(mask, 1, past, MASKED)])
        st["ck"] = np.concatenate([_pad_axis(st["ck"], FRAMES, ctx), ck], axis=1)
        st["cv"] = np.concatenate([_pad_axis(st["cv"], FRAMES, ctx), cv], axis=1)
        st["cmask"] = np.concatenate([_pad_axis(st["cmask"], 1, ctx, MASKED), cmask])
        st["last"] = np.concatenate([st["last"], last])
        self.seqs += seqs

    def remove(self, seqs: list[Sequence]) -> None:
        """Take sequences out of the batch (finished, superseded or preempted)."""
        gone = {id(s) for s in seqs}
        keep = [row for row, s in enumerate(self.seqs) if id(s) not in gone]
        if len(keep) == len(self.seqs):
            return
        self.seqs = [self.seqs[r] for r in keep]
        if not self.seqs:
            self._state = {}
            return
        st = self._state
        for key in ("k", "v", "ck", "cv"):
            st[key] = st[key][:, keep]
        for key in ("mask", "cmask", "last"):
            st[key] = st[key][keep]
        # drop cache columns and audio frames nobody in the batch can see any more
        for mask_key, arrays, axis in (("mask", ("k", "v"), 2), ("cmask", ("ck", "cv"), FRAMES)):
            visible = (st[mask_key] == 0).any(axis=0)
            if not visible.all():
                st[mask_key] = st[mask_key][:, visible]
                for key in arrays:
                    st[key] = np.compress(visible, st[key], axis=axis)

    def step(self) -> list[Sequence]:
        """Decode one token for every sequence in the batch; returns (and removes) those that finished."""
        if not self.seqs:
            return []
        st = self._state
        offset = np.asarray([s.length - 1 for s in self.seqs], np.int64)
        logits, st["k"], st["v"] = self._step(
            st["last"][:, None], offset, st["k"], st["v"], st["mask"], st["ck"], st["cv"], st["cmask"]
        )
        st["mask"] = np.concatenate([st["mask"], np.zeros((len(self.seqs), 1), np.float32)], axis=1)
        self.steps += 1
        done = self._finish(self.seqs, logits, first=False)
        st["last"] = np.asarray([s.tokens[-1] if s.tokens else 0 for s in self.seqs], np.int64)
        finished = [s for s, d in zip(self.seqs, done, strict=True) if d]
        self.remove(finished)
        return finished


class DecodeBatch:
    """The running batch of a decoder: ``join`` adds sequences, ``step`` decodes one token for all.

    Cross-attention reads every audio frame of every row at every step, and on CPU that memory
    traffic dominates a step (tiny.en int8, batch 8: 8 ms at 250 frames, 33 ms at 1500). So rows
    are kept in lanes by audio length (``lane_frames`` per lane) and a short window never pays for
    a long one's padding; each lane is one dec_step call per step.
    """

    def __init__(self, step: StepFn, rules: SuppressRules, lane_frames: int = 250):
        self._step = step
        self.rules = rules
        self.lane_frames = lane_frames
        self._lanes: dict[int, _Lane] = {}
        self.steps = 0

    def _lane(self, s: Sequence) -> int:
        return -(-s.frames // self.lane_frames)

    @property
    def seqs(self) -> list[Sequence]:
        return [s for lane in self._lanes.values() for s in lane.seqs]

    def __len__(self) -> int:
        return sum(len(lane) for lane in self._lanes.values())

    def join(self, seqs: list[Sequence]) -> list[Sequence]:
        """Prefill ``seqs`` and add the unfinished ones; returns those that finished on their first token."""
        by_lane: dict[int, list[Sequence]] = {}
        for s in seqs:
            by_lane.setdefault(self._lane(s), []).append(s)
        finished: list[Sequence] = []
        for key, group in by_lane.items():
            lane = self._lanes.setdefault(key, _Lane(self._step, self.rules))
            finished += lane.join(group)
        return finished

    def remove(self, seqs: list[Sequence]) -> None:
        for lane in self._lanes.values():
            lane.remove(seqs)

    def step(self) -> list[Sequence]:
        """One token for every sequence (one dec_step per lane); returns (and removes) those that finished."""
        finished: list[Sequence] = []
        for key in list(self._lanes):
            finished += self._lanes[key].step()
            if not len(self._lanes[key]):
                del self._lanes[key]
        self.steps += 1
        return finished


def greedy_decode(
    step: StepFn,
    cross_k: np.ndarray,
    cross_v: np.ndarray,
    prompts: list[list[int]],
    caps: list[int],
    rules: SuppressRules,
) -> list[list[int]]:
    """Decode a batch of windows (cross keys/values (L, B, heads, T, d / heads)) to the end; prompts may
    differ in length."""
    seqs = [
        Sequence(pr, cap, cross_k[:, i], cross_v[:, i]) for i, (pr, cap) in enumerate(zip(prompts, caps, strict=True))
    ]
    batch = DecodeBatch(step, rules)
    batch.join(seqs)
    while len(batch):
        batch.step()
    return [s.tokens for s in seqs]
