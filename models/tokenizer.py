"""Whisper's tokenizer (HF ``tokenizers``) with the special tokens and prompts splitasr needs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from tokenizers import Tokenizer

from splitasr.shared.errors import ModelFormatError, UnknownLanguageError

TIMESTAMP_S = 0.02  # Whisper's timestamp tokens are this many seconds apart


@dataclass(frozen=True)
class DecoderConfig:
    """Token-level settings from the model's ``config.json``."""

    suppress_ids: tuple[int, ...]
    suppress_ids_begin: tuple[int, ...]
    lang_ids: tuple[int, ...]

    @classmethod
    def load(cls, path: Path) -> DecoderConfig:
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ModelFormatError(f"cannot read model config {path}: {exc}") from exc
        return cls(
            suppress_ids=tuple(raw.get("suppress_ids", ())),
            suppress_ids_begin=tuple(raw.get("suppress_ids_begin", ())),
            lang_ids=tuple(raw.get("lang_ids", ())),
        )


class WhisperTokenizer:
    """Special token ids, prompt construction and text decoding for one Whisper model."""

    def __init__(self, tokenizer_json: Path, config: DecoderConfig, n_vocab: int):
        self.tokenizer = Tokenizer.from_file(str(tokenizer_json))
        self.config = config
        # Whisper's own rule; English-only configs may still list language ids
        self.multilingual = n_vocab >= 51865

    def spoken(self, language: str | None) -> str | None:
        """``language``, else English for an English-only model; None: to be detected."""
        return language or (None if self.multilingual else "en")

    def _id(self, token: str) -> int:
        token_id = self.tokenizer.token_to_id(token)
        if token_id is None:
            raise ModelFormatError(f"tokenizer has no {token!r} token")
        return token_id

    @cached_property
    def eot(self) -> int:
        return self._id("<|endoftext|>")

    @cached_property
    def sot(self) -> int:
        return self._id("<|startoftranscript|>")

    @cached_property
    def no_timestamps(self) -> int:
        return self._id("<|notimestamps|>")

    @cached_property
    def timestamp_begin(self) -> int:
        """Id of ``<|0.00|>``; timestamps follow in 0.02 s steps (Whisper: the id after ``<|notimestamps|>``)."""
        return self.no_timestamps + 1

    @cached_property
    def no_speech(self) -> int:
        """The token whose probability after start-of-transcript means "no speech" in the window."""
        token = "<|nospeech|>" if self.tokenizer.token_to_id("<|nospeech|>") is not None else "<|nocaptions|>"
        return self._id(token)

    @cached_property
    def languages(self) -> dict[str, int]:
        """Language code -> language token id (empty for English-only models)."""
        if not self.multilingual:
            return {}
        return {self.tokenizer.id_to_token(i)[2:-2]: i for i in self.config.lang_ids}

    @cached_property
    def suppress(self) -> tuple[int, ...]:
        """Tokens never generated: non-speech symbols from config plus task/control tokens."""
        control = ["<|transcribe|>", "<|translate|>", "<|startoftranscript|>", "<|startofprev|>", "<|startoflm|>"]
        ids = set(self.config.suppress_ids) | {self._id(t) for t in control} | {self.no_speech}
        return tuple(sorted(ids))

    def language_token(self, language: str) -> int:
        if not self.multilingual:
            if language != "en":
                raise UnknownLanguageError(f"this model is English-only; got language {language!r} (use --model base)")
            raise ValueError("English-only models take no language token")
        try:
            return self.languages[language]
        except KeyError:
            raise UnknownLanguageError(
                f"unknown language {language!r}; supported: {', '.join(sorted(self.languages))}"
            ) from None

    def check_language(self, language: str | None) -> None:
        """Raise :class:`UnknownLanguageError` when ``language`` cannot be transcribed by this model."""
        if language is None or (not self.multilingual and language == "en"):
            return
        self.language_token(language)

    def prompt(self, language: str | None, timestamps: bool = False) -> list[int]:
        """Start-of-transcript prompt (with ``<|notimestamps|>`` unless ``timestamps``); multilingual
        models need a language."""
        tail = [] if timestamps else [self.no_timestamps]
        if not self.multilingual:
            self.check_language(language)
            return [self.sot, *tail]
        if language is None:
            raise UnknownLanguageError("a multilingual prompt needs a language (detect it first)")
        return [self.sot, self.language_token(language), self._id("<|transcribe|>"), *tail]

    def decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode([t for t in tokens if t < self.eot])

    def segments(self, tokens: list[int]) -> list[tuple[float, float, str]]:
        """(start_s, end_s, text) of each timestamped segment of a window's tokens; text without
        timestamps is one segment from 0 to the last timestamp seen (or 0)."""
        out: list[tuple[float, float, str]] = []
        begin, start, text = self.timestamp_begin, None, []
        for t in tokens:
            if t < begin:
                if t < self.eot:
                    text.append(t)
                continue
            stamp = (t - begin) * TIMESTAMP_S
            if start is None:
                start = stamp
            else:
                out.append((start, stamp, self.decode(text).strip()))
                start, text = None, []
        if text:
            out.append((start or 0.0, start or 0.0, self.decode(text).strip()))
        return [seg for seg in out if seg[2]]
