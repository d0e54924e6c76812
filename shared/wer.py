"""Word error rate with Whisper-style text normalisation (English rules for English, basic otherwise)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import jiwer

from splitasr.shared.errors import ConfigError


@cache
def _normalizer(language: str):
    if language == "en":
        from whisper_normalizer.english import EnglishTextNormalizer

        return EnglishTextNormalizer()
    from whisper_normalizer.basic import BasicTextNormalizer

    return BasicTextNormalizer(remove_diacritics=False)


def normalize_text(text: str, language: str = "en") -> str:
    return " ".join(_normalizer(language)(text).split())


@dataclass
class WERTally:
    """Accumulates word errors and reference words (corpus WER = errors / words)."""

    errors: int = 0
    words: int = 0
    utterances: int = 0

    def add(self, reference: str, hypothesis: str, language: str = "en") -> float:
        ref, hyp = normalize_text(reference, language), normalize_text(hypothesis, language)
        n = len(ref.split())
        if n == 0:
            errors = len(hyp.split())
        else:
            out = jiwer.process_words(ref, hyp)
            errors = out.substitutions + out.deletions + out.insertions
        self.errors += errors
        self.words += n
        self.utterances += 1
        return errors / max(n, 1)

    @property
    def wer(self) -> float:
        return self.errors / max(self.words, 1)


@dataclass
class WERReport:
    per_language: dict[str, WERTally] = field(default_factory=dict)

    def add(self, reference: str, hypothesis: str, language: str) -> float:
        return self.per_language.setdefault(language, WERTally()).add(reference, hypothesis, language)

    def to_dict(self) -> dict[str, dict[str, float]]:
        return {
            lang: {"wer": round(t.wer, 4), "errors": t.errors, "words": t.words, "utterances": t.utterances}
            for lang, t in sorted(self.per_language.items())
        }


@dataclass(frozen=True)
class ManifestEntry:
    file: Path
    text: str
    language: str
    label: str | None = None  # digit clips: the digit string, the reference to score against
    split: str = "tune"  # "tune" or "holdout" (kept out of tuning)
    duration_s: float | None = None

    @property
    def reference(self) -> str:
        return self.label or self.text


def read_manifest(path: str | Path) -> list[ManifestEntry]:
    """Read a JSONL manifest of ``{"file", "text", "language"}``; files are relative to the manifest."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"manifest {path} not found")
    entries = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            entries.append(
                ManifestEntry(
                    path.parent / raw["file"],
                    str(raw["text"]),
                    str(raw.get("language", "en")),
                    raw.get("label"),
                    str(raw.get("split", "tune")),
                    raw.get("duration_s"),
                )
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}:{lineno}: bad manifest line ({exc}); want file, text, language") from exc
    return entries


def repeats_phrase(text: str, max_words: int = 4, times: int = 3, long_words: int = 5) -> bool:
    """Does a phrase of 1..``max_words`` words occur ``times`` times back to back, or one of
    ``long_words`` words or more twice (a sentence said again: a decoding loop, or speech that really
    repeats: compare with the reference)?"""
    words = re.findall(r"[\w']+", text.lower())

    def turns(lengths: range, times: int) -> bool:  # a phrase of one of these lengths, ``times`` times in a row
        return any(
            all(words[i : i + n] == words[i + k * n : i + (k + 1) * n] for k in range(1, times))
            for n in lengths
            for i in range(len(words) - times * n + 1)
        )

    return turns(range(1, max_words + 1), times) or turns(range(long_words, len(words) // 2 + 1), 2)


def corpus_wer(pairs: Iterable[tuple[str, str]], language: str = "en") -> float:
    tally = WERTally()
    for ref, hyp in pairs:
        tally.add(ref, hyp, language)
    return tally.wer
