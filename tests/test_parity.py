"""The ONNX stage chain decodes the same greedy tokens as faster-whisper on the same weights (fp32,
timestamp mode, full windows), on real speech; the guarded default is at least as accurate."""

from __future__ import annotations

import pytest

from splitasr.cloud.shard.recognizer import TranscribeOptions
from splitasr.shared.audio import load_audio
from splitasr.shared.wer import WERTally

faster_whisper = pytest.importorskip("faster_whisper")

pytestmark = pytest.mark.integration


_MODELS: dict[str, object] = {}


def _reference_tokens(model_name: str, audio, language: str) -> list[int]:
    from splitasr.models.reference import faster_whisper_greedy

    if model_name not in _MODELS:
        _MODELS[model_name] = faster_whisper_greedy(model_name, "float32", threads=2)
    return _MODELS[model_name](audio, language)[1]


def _check(recognizer, model_name, entries):
    tally_full, tally_trim = WERTally(), WERTally()
    mismatched_trimmed = []
    for entry in entries:
        audio = load_audio(entry.file)
        expected = _reference_tokens(model_name, audio, entry.language)
        full = recognizer.transcribe(audio, TranscribeOptions(language=entry.language, window="full"))
        assert [t for w in full.tokens for t in w] == expected, entry.file.name
        trimmed = recognizer.transcribe(audio, TranscribeOptions(language=entry.language))
        if [t for w in trimmed.tokens for t in w] != expected:
            mismatched_trimmed.append(entry.file.name)
        tally_full.add(entry.reference, full.text, entry.language)
        tally_trim.add(entry.reference, trimmed.text, entry.language)
    print(
        f"{model_name}: {len(entries)} clips, tokens equal (30 s windows); trimmed windows differ on "
        f"{mismatched_trimmed or 'none'}; WER full {tally_full.wer:.3f} trimmed {tally_trim.wer:.3f}"
    )
    # the default (trimmed windows, guarded) may pick other tokens, but must not be less accurate
    assert tally_trim.wer <= tally_full.wer + 0.01


def _short(entries, languages, per_language: int):
    out = []
    for language in sorted(languages):
        # every third clip under 30 s: digits, words, commands and sentences alike
        out += [e for e in entries if e.language == language and e.duration_s < 30][::3][:per_language]
    return out


def test_tiny_en_tokens_equal_faster_whisper(tiny_recognizer, real_manifest):
    _check(tiny_recognizer, "tiny.en", _short(real_manifest, {"en"}, 20))


@pytest.mark.multilingual
def test_base_tokens_equal_faster_whisper(base_recognizer, real_manifest):
    _check(base_recognizer, "base", _short(real_manifest, {"de", "es", "fr", "pt"}, 2))


def test_suppressed_tokens_match_faster_whisper(tiny_recognizer):
    from faster_whisper.tokenizer import Tokenizer
    from faster_whisper.transcribe import get_suppressed_tokens

    fw = Tokenizer(tiny_recognizer.tokenizer.tokenizer, multilingual=False)
    assert set(get_suppressed_tokens(fw, [-1])) == set(tiny_recognizer.tokenizer.suppress)
