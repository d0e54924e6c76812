"""The hypothesis guard: when a window's decoding looped or hallucinated, and what to do about it.

Trimmed windows (the audio plus 2 s, not 30 s) are several times cheaper to encode and decode,
but Whisper was trained on 30 s windows and, on real short clips, greedy decoding of a trimmed
window often loops (``5, 5, 5, 5 …``) until the token cap. This module holds the one rule that
every path (offline, batch mode, streaming) applies to each decoded window, following
openai-whisper / faster-whisper: a hypothesis is *degenerate* when it reached the token cap, its
text compresses too well (gzip ratio above ``compression_ratio_threshold``, Whisper's loop
detector), a short n-gram repeats back to back (or a longer span twice), or its average
log-probability is below ``log_prob_threshold``; a degenerate hypothesis of a trimmed window is
decoded again on a longer window (``plan``: at least 15 s, which on the tune split of the real dev
set was both more accurate and cheaper than the full 30 s; ``auto-full`` retries on 30 s). A
window is *silent* when Whisper's no-speech probability is above ``no_speech_threshold`` and the
hypothesis is unsure (average log-probability below the threshold):
it yields no text. Pure functions, no I/O.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from enum import Enum
from typing import Literal

import numpy as np

WindowMode = Literal["trimmed", "long", "full"]
WindowChoice = Literal["auto", "trimmed", "full"]

# the windows tried in turn for each choice; "auto" retries a degenerate trimmed window on a 15 s one
PLANS: dict[str, tuple[WindowMode, ...]] = {
    "auto": ("trimmed", "long"),
    "trimmed": ("trimmed",),
    "full": ("full",),
    "auto-full": ("trimmed", "full"),
}
DEFAULT_WINDOW: WindowChoice = "auto"
# languages whose "auto" plan starts on a trimmed window: the guard and the retry window were tuned on
# English. For every other language (and while it is unknown) "auto" decodes the full 30 s window, as
# Whisper was trained: on the real non-English clips, Whisper base int8 made 23.9 % WER on trimmed
# windows and 20.2 % on full ones (faster-whisper int8: 21.0 %; docs/decoding.md).
TRIMMED_LANGUAGES = frozenset({"en"})


def plan(choice: str, language: str | None) -> tuple[WindowMode, ...]:
    """The windows tried in turn for ``choice`` on speech in ``language`` (None: not detected yet)."""
    if choice == "auto" and language not in TRIMMED_LANGUAGES:
        return PLANS["full"]
    return PLANS[choice]


@dataclass(frozen=True)
class GuardOptions:
    """Thresholds (Whisper's defaults) and the repetition rule."""

    compression_ratio_threshold: float = 2.4
    log_prob_threshold: float = -1.0
    no_speech_threshold: float = 0.6
    max_ngram: int = 8  # repeated n-grams of up to this many tokens count as a loop
    max_repeats: int = 3  # ... when one occurs this many times back to back
    span_tokens: int = 6  # a span of at least this many tokens said twice back to back is a loop too


@dataclass(frozen=True)
class DecodeResult:
    """What a decoder returns for one window: its tokens and the statistics the guard needs."""

    tokens: tuple[int, ...]
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0
    hit_cap: bool = False

    def to_meta(self) -> dict:
        return {"avg_logprob": self.avg_logprob, "no_speech_prob": self.no_speech_prob, "hit_cap": self.hit_cap}

    @classmethod
    def from_meta(cls, tokens: list[int], meta: dict) -> DecodeResult:
        return cls(
            tuple(int(t) for t in tokens),
            float(meta.get("avg_logprob", 0.0)),
            float(meta.get("no_speech_prob", 0.0)),
            bool(meta.get("hit_cap", False)),
        )


class Verdict(Enum):
    ACCEPT = "accept"
    RETRY = "retry"  # degenerate: decode again on the next window of the plan
    SILENCE = "silence"  # no speech: no text


def compression_ratio(text: str) -> float:
    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw)) if raw else 0.0


def repetition_start(
    tokens: tuple[int, ...] | list[int], eot: int, max_ngram: int = 8, max_repeats: int = 3
) -> int | None:
    """Index (into ``tokens``) after the first turn of a text n-gram (n ≤ ``max_ngram``) that occurs
    ``max_repeats`` times back to back, or None. Timestamps (ids above ``eot``) are skipped, so a
    loop across segments counts too."""
    where = [i for i, tok in enumerate(tokens) if tok < eot]
    t = [tokens[i] for i in where]
    for start in range(len(t)):
        for n in range(1, max_ngram + 1):
            if start + n * max_repeats > len(t):
                break
            gram = t[start : start + n]
            if all(t[start + k * n : start + (k + 1) * n] == gram for k in range(1, max_repeats)):
                return where[start + n - 1] + 1
    return None


def span_repeat(tokens: tuple[int, ...] | list[int], eot: int, min_tokens: int = 6) -> int | None:
    """Index (into ``tokens``) after the first turn of a text span of at least ``min_tokens`` tokens
    said twice back to back (a sentence decoded again, which :func:`repetition_start` misses: it
    needs three turns of a short n-gram), or None. Timestamps are skipped, as there."""
    where = [i for i, tok in enumerate(tokens) if tok < eot]
    t = np.asarray([tokens[i] for i in where], np.int64)
    best: int | None = None
    for n in range(min_tokens, len(t) // 2 + 1):
        same = t[:-n] == t[n:]  # same[j]: token j equals token j + n
        run = 0
        for j, eq in enumerate(same.tolist()):
            run = run + 1 if eq else 0
            if run == n:  # t[j-n+1 : j+1] == t[j+1 : j+n+1]: the first turn ends at j
                best = j if best is None else min(best, j)
                break
    return None if best is None else where[best] + 1


def loops_at_tail(tokens: list[int], eot: int, max_ngram: int = 8, max_repeats: int = 3) -> bool:
    """Whether the text tokens end with an n-gram (n ≤ ``max_ngram``) repeated ``max_repeats`` times
    back to back. Checked after every new token, it finds the first loop that
    :func:`repetition_start` would find, at the token that completes it."""
    want, t = max_ngram * max_repeats, []
    for tok in reversed(tokens):  # the last ``want`` text tokens, timestamps skipped
        if tok < eot:
            t.append(tok)
            if len(t) == want:
                break
    t.reverse()
    for n in range(1, max_ngram + 1):
        if n * max_repeats > len(t):
            break
        gram = t[len(t) - n :]
        if all(t[len(t) - (k + 1) * n : len(t) - k * n] == gram for k in range(1, max_repeats)):
            return True
    return False


def _runaway(result: DecodeResult, text: str, options: GuardOptions) -> bool:
    return result.hit_cap or compression_ratio(text) > options.compression_ratio_threshold


def assess(result: DecodeResult, text: str, eot: int, options: GuardOptions = GuardOptions()) -> Verdict:
    """Whisper's no-speech rule first, then the loop and confidence checks."""
    unsure = result.avg_logprob < options.log_prob_threshold
    if result.no_speech_prob > options.no_speech_threshold and unsure:
        return Verdict.SILENCE
    if not text.strip():
        return Verdict.ACCEPT
    if (
        unsure
        or _runaway(result, text, options)
        or repetition_start(result.tokens, eot, options.max_ngram, options.max_repeats) is not None
        or span_repeat(result.tokens, eot, options.span_tokens) is not None
    ):
        return Verdict.RETRY
    return Verdict.ACCEPT


def final_tokens(
    result: DecodeResult, text: str, verdict: Verdict, eot: int, options: GuardOptions = GuardOptions()
) -> tuple[int, ...]:
    """The tokens to keep once no window is left to try: none for silence; a runaway loop (token cap
    reached or text that compresses too well) or a span said twice cut after its first turn;
    otherwise all of them."""
    if verdict is Verdict.SILENCE:
        return ()
    if verdict is Verdict.RETRY:
        cut = repetition_start(result.tokens, eot, options.max_ngram, 2) if _runaway(result, text, options) else None
        cut = cut if cut is not None else span_repeat(result.tokens, eot, options.span_tokens)
        if cut is not None:
            return result.tokens[:cut]
    return result.tokens


def has_next(modes: tuple[WindowMode, ...], attempt: int) -> bool:
    """Whether the plan has a window after ``modes[attempt]``: a degenerate hypothesis is decoded
    again, so its decoding may stop at the first loop (``Sequence.loop_guard``)."""
    return attempt + 1 < len(modes)


def judge(
    result: DecodeResult, text: str, attempt: int, modes: tuple[WindowMode, ...], eot: int, options: GuardOptions
) -> tuple[int, ...] | None:
    """The tokens to keep for a window decoded on ``modes[attempt]``, or None: decode it on the next mode."""
    verdict = assess(result, text, eot, options)
    if verdict is Verdict.RETRY and has_next(modes, attempt):
        return None
    return final_tokens(result, text, verdict, eot, options)
