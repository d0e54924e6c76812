"""The hypothesis guard (pure): loops, low confidence and no-speech windows; the window plan; seek."""

from __future__ import annotations

import numpy as np

from splitasr.cloud.shard.decoding import SuppressRules
from splitasr.cloud.shard.guard import (
    DecodeResult,
    GuardOptions,
    Verdict,
    assess,
    compression_ratio,
    judge,
    loops_at_tail,
    plan,
    repetition_start,
    span_repeat,
)
from splitasr.cloud.shard.windows import next_start, window_end

EOT = 50256
TS = 50363  # <|0.00|> of tiny.en


def test_repetition_found_in_text_tokens_across_timestamps():
    loop = [TS, 10, 11, 12, TS + 50, TS + 50, 10, 11, 12, TS + 100, TS + 100, 10, 11, 12, TS + 150]
    cut = repetition_start(loop, EOT)
    assert cut == 4  # after the first "10 11 12"
    assert repetition_start([TS, 10, 11, 12, 13, TS + 50], EOT) is None
    # "zero zero zero" is " 0" twice after "0": two back-to-back repeats are speech, three are a loop
    assert repetition_start([15, 657, 657], EOT) is None
    assert repetition_start([15, 657, 657, 657], EOT) == 2


def test_a_sentence_said_twice_is_a_loop_and_is_cut_after_its_first_turn():
    """tiny.en on a trimmed window of a real 4.6 s clip: "Montreal forced liner. I hardly know her."
    twice, the second time in a new segment; two turns of a short n-gram stay speech ("0 0")."""
    sentence = [10, 11, 12, 13, 14, 15, 16]
    tokens = [TS, *sentence, TS + 150, TS + 150, *sentence, TS + 231]
    assert repetition_start(tokens, EOT) is None  # two turns: not a short-n-gram loop
    assert span_repeat(tokens, EOT) == 8  # after the first turn
    assert span_repeat([TS, 1, 2, 3, 4, 5, 1, 2, 3, 4, 5, TS + 9], EOT) is None  # 5 tokens: too short
    assert span_repeat([9, *sentence, *sentence[:-1], 8], EOT) is None
    result = DecodeResult(tuple(tokens), avg_logprob=-0.2)
    assert assess(result, "a b c d e f g a b c d e f g", EOT) is Verdict.RETRY
    assert judge(result, "a b c d e f g a b c d e f g", 1, ("trimmed", "long"), EOT, GuardOptions()) == tuple(
        tokens[:8]
    )


def test_a_loop_is_found_at_the_token_that_completes_it_exactly_as_repetition_start_finds_it():
    """The decoder checks the tail after every token (to stop a window the guard will retry); the
    first prefix it stops at is the first that ``repetition_start`` calls a loop, on any sequence."""
    rng = np.random.default_rng(7)
    alphabet = [10, 11, 12, TS, TS + 50]  # few symbols, so loops are common; timestamps in between
    stops = 0
    for _ in range(3000):
        tokens = [int(t) for t in rng.choice(alphabet, size=int(rng.integers(0, 40)))]
        first = next((i for i in range(1, len(tokens) + 1) if loops_at_tail(tokens[:i], EOT)), None)
        assert (first is not None) == (repetition_start(tokens, EOT) is not None)
        if first is not None:
            stops += 1
            assert repetition_start(tokens[:first], EOT) is not None
            assert repetition_start(tokens[: first - 1], EOT) is None
    assert stops > 500  # the property was exercised on loops, not only on clean sequences


def test_assess_accepts_confident_text_and_flags_loops_cap_and_low_confidence():
    ok = DecodeResult((TS, 10, 11, TS + 40), avg_logprob=-0.3, no_speech_prob=0.01)
    assert assess(ok, "hello there", EOT) is Verdict.ACCEPT
    capped = DecodeResult((TS, 10, 11), avg_logprob=-0.3, hit_cap=True)
    assert assess(capped, "hello there", EOT) is Verdict.RETRY
    unsure = DecodeResult((TS, 10, 11, TS + 40), avg_logprob=-1.4)
    assert assess(unsure, "hello there", EOT) is Verdict.RETRY
    looped = "go forward ten meters " * 8
    assert compression_ratio(looped) > GuardOptions().compression_ratio_threshold
    assert assess(DecodeResult((TS, 10), avg_logprob=-0.2), looped, EOT) is Verdict.RETRY


def test_no_speech_needs_both_a_high_probability_and_low_confidence():
    silent = DecodeResult((TS, 10, TS + 10), avg_logprob=-1.5, no_speech_prob=0.9)
    assert assess(silent, "you", EOT) is Verdict.SILENCE
    sure = DecodeResult((TS, 10, TS + 10), avg_logprob=-0.2, no_speech_prob=0.9)
    assert assess(sure, "yes", EOT) is Verdict.ACCEPT


def test_judge_retries_on_the_plan_then_keeps_the_last_window_without_its_loop():
    modes = plan("auto", "en")
    assert modes == ("trimmed", "long")
    assert plan("auto", "de") == plan("auto", None) == ("full",)  # the trimmed rule is tuned on English
    assert plan("auto-full", "de") == ("trimmed", "full")  # an explicit choice is kept
    looped = DecodeResult((TS, 20, 21, 20, 21, 20, 21, 20, 21), avg_logprob=-0.2, hit_cap=True)
    assert judge(looped, "a b a b a b a b", 0, modes, EOT, GuardOptions()) is None
    kept = judge(looped, "a b a b a b a b", 1, modes, EOT, GuardOptions())
    assert kept == (TS, 20, 21)
    silent = DecodeResult((TS, 10, TS + 10), avg_logprob=-1.5, no_speech_prob=0.9)
    assert judge(silent, "you", 0, modes, EOT, GuardOptions()) == ()
    # a genuine repetition that is not a runaway loop is kept whole on the last window
    words = DecodeResult((TS, 30, 31, 31, 31, 31, TS + 90), avg_logprob=-0.3)
    assert judge(words, "word word word word word", 1, modes, EOT, GuardOptions()) == words.tokens


def test_windows_cut_at_quiet_points_and_seek_back_to_the_last_finished_segment():
    sr = 1000
    audio = np.ones(70 * sr, np.float32)
    audio[27_000:27_100] = 0  # the quietest 100 ms before the 28 s limit
    assert window_end(audio, 0, sr, 28.0) == 27_050
    assert window_end(audio[: 20 * sr], 0, sr, 28.0) == 20 * sr  # fits: no cut
    # the model finished a segment at 20 s of a window cut at 27.05 s: continue from 20 s
    assert next_start(0, 27_050, len(audio), 20 * sr, sr) == 20 * sr
    # a segment ending within a second of the cut, or the end of the audio: move on
    assert next_start(0, 27_050, len(audio), 26_500, sr) == 27_050
    assert next_start(40 * sr, 70 * sr, len(audio), 50 * sr, sr) == 70 * sr
    assert next_start(0, 27_050, len(audio), None, sr) == 27_050


def test_window_modes_share_one_builder():
    from splitasr.cloud.shard.windows import LONG_WINDOW_S, SILENCE_LOG_MEL, window_mel
    from splitasr.shared.features import DEFAULT_SPEC

    raw = np.full((80, 137), -3.0, np.float32)
    raw[:, 50] = -1.0
    trimmed = window_mel(raw, "trimmed", DEFAULT_SPEC)
    long = window_mel(raw, "long", DEFAULT_SPEC)
    full = window_mel(raw, "full", DEFAULT_SPEC)
    assert trimmed.shape == (1, 80, 336)  # 137 frames + 2 s, even
    assert long.shape == (1, 80, int(LONG_WINDOW_S * 100))
    assert full.shape == (1, 80, 3000)
    np.testing.assert_array_equal(trimmed[0, :, :336], long[0, :, :336])  # the same frames, more silence
    assert long[0, 0, -1] == (max(SILENCE_LOG_MEL, -1.0 - 8.0) + 4) / 4
    assert full[0, 0, -1] == 0.0  # faster-whisper pads the normalised features with zeros


def test_no_segment_starts_after_the_audio_ends():
    """Whisper's timestamp rules plus ``last_start``: a segment, the first too, may start no later
    than the audio's end; past it only EOT is left (text there transcribes the padding)."""
    rules = SuppressRules((), (), EOT, timestamp_begin=TS)
    vocab = TS + 1501
    open_end = [TS, 10, 11, TS + 280]  # "<|0.00|> a b <|5.60|>": the next token opens a segment or is EOT

    def allowed(tokens, last_start=None):
        logits = np.zeros(vocab, np.float32)
        logits[EOT] = 20.0  # likelier than all timestamps together (else Whisper's rule masks text and EOT)
        rules.apply_timestamps(logits, tokens, last_start)
        return {t for t in [*range(EOT + 1), *range(TS, vocab)] if np.isfinite(logits[t])}  # text, EOT, timestamps

    assert allowed(open_end) == {EOT, *range(TS + 280, vocab)}  # Whisper's rule alone
    assert allowed(open_end, last_start=287) == {EOT, *range(TS + 280, TS + 288)}  # audio ends at 5.76 s
    assert allowed([TS, 10, 11, TS + 290], last_start=287) == {EOT}  # nothing left but the end
    assert allowed([TS, 10, 11], last_start=287) == allowed([TS, 10, 11])  # inside a segment: no change
    assert allowed([]) == set(range(TS, TS + 51))  # the first start: Whisper's 1 s bound
    assert allowed([], last_start=287) == set(range(TS, TS + 51))  # a long clip: the same
    assert allowed([], last_start=30) == set(range(TS, TS + 31))  # a 0.62 s clip starts within its audio
