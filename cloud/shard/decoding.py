"""Greedy Whisper decoding with a KV cache, Whisper's suppression rules and a token cap."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

StepFn = Callable[
    [np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]
]


@dataclass(frozen=True)
class DecodingOptions:
    """Greedy decoding settings (timestamps off)."""

    max_tokens_per_second: float = 6.0
    extra_tokens: int = 10
    max_length: int = 448  # Whisper's text context, prompt included
    suppress_blank: bool = True

    def token_cap(self, audio_seconds: float, prompt_length: int) -> int:
        """At most ~6 tokens per second of audio + 10, within the text context."""
        cap = int(self.max_tokens_per_second * audio_seconds) + self.extra_tokens
        return max(1, min(cap, self.max_length - prompt_length))


@dataclass(frozen=True)
class SuppressRules:
    """Token ids that are never generated, and those forbidden as the first token."""

    always: tuple[int, ...]
    at_begin: tuple[int, ...]
    eot: int

    def apply(self, logits: np.ndarray, first_step: bool) -> np.ndarray:
        logits[:, list(self.always)] = -np.inf
        if first_step and self.at_begin:
            logits[:, list(self.at_begin)] = -np.inf
        return logits


def greedy_decode(
    step: StepFn,
    cross_k: np.ndarray,
    cross_v: np.ndarray,
    empty_cache: tuple[np.ndarray, np.ndarray],
    prompts: list[list[int]],
    caps: list[int],
    rules: SuppressRules,
) -> list[list[int]]:
    """Decode a batch of sequences (prompts of equal length); finished sequences leave the batch."""
    if len({len(p) for p in prompts}) != 1:
        raise ValueError("prompts in one batch must have the same length")
    n = len(prompts)
    results: list[list[int]] = [[] for _ in range(n)]
    active = np.arange(n)
    tokens = np.asarray(prompts, dtype=np.int64)
    past_k, past_v = empty_cache
    first = True
    while len(active):
        logits, past_k, past_v = step(tokens, past_k, past_v, cross_k, cross_v)
        best = rules.apply(logits.astype(np.float32, copy=True), first).argmax(axis=-1)
        first = False
        keep = []
        for row, seq in enumerate(active):
            token = int(best[row])
            if token == rules.eot:
                continue
            results[seq].append(token)
            if len(results[seq]) < caps[seq]:
                keep.append(row)
        if len(keep) < len(active):
            active = active[keep]
            past_k, past_v = past_k[:, keep], past_v[:, keep]
            cross_k, cross_v = cross_k[:, keep], cross_v[:, keep]
            best = best[keep]
        tokens = best[:, None].astype(np.int64)
    return results
