"""Log-mel features: incremental equals whole-file, and equals faster-whisper's recipe."""

from __future__ import annotations

import numpy as np
import pytest

from splitasr.shared.errors import AudioError, ConfigError
from splitasr.shared.features import DEFAULT_SPEC, FeatureSpec, LogMelStream, exact_div, log_mel, normalize


def _stream(audio: np.ndarray, chunk: int) -> np.ndarray:
    stream = LogMelStream()
    parts = [stream.push(audio[i : i + chunk]) for i in range(0, len(audio), chunk)]
    parts.append(stream.flush())
    return np.concatenate(parts, axis=1)


@pytest.mark.parametrize("n", [16000 * 2 + 77, 1000, 401, 400, 201, 200, 150, 0])
@pytest.mark.parametrize("chunk", [1, 7, 160, 333, 4000, 10**6])
def test_incremental_equals_whole(n, chunk):
    audio = (np.random.default_rng(n).standard_normal(n) * 0.1).astype(np.float32)
    whole = log_mel(audio)
    assert whole.shape == (80, n // 160)
    np.testing.assert_allclose(_stream(audio, max(chunk, 1)) if n else LogMelStream().flush(), whole, atol=1e-4)


def test_matches_faster_whisper(manifest):
    from faster_whisper.feature_extractor import FeatureExtractor

    from splitasr.shared.audio import load_audio

    audio = load_audio(manifest[0].file)
    expected = FeatureExtractor()(audio, padding=0)
    np.testing.assert_allclose(normalize(log_mel(audio)), expected, atol=1e-4)


def test_stream_of_real_speech_equals_whole(manifest):
    from splitasr.shared.audio import load_audio

    audio = load_audio(manifest[0].file)
    np.testing.assert_allclose(_stream(audio, 1600), log_mel(audio), atol=1e-4)


def test_spec_is_derived_with_checked_division():
    assert (DEFAULT_SPEC.n_samples, DEFAULT_SPEC.n_frames, DEFAULT_SPEC.frames_per_second) == (480000, 3000, 100)
    assert FeatureSpec.from_dict(DEFAULT_SPEC.to_dict()) == DEFAULT_SPEC
    with pytest.raises(ConfigError):
        exact_div(10, 3)
    with pytest.raises(ConfigError):
        _ = FeatureSpec(hop_length=7).n_frames
    with pytest.raises(ConfigError):
        FeatureSpec.from_dict({"n_mels": "many"})


def test_bad_audio_is_rejected():
    with pytest.raises(AudioError, match="mono"):
        log_mel(np.zeros((2, 100), np.float32))
    with pytest.raises(AudioError, match="NaN"):
        log_mel(np.array([0.0, np.nan] * 200, np.float32))
    stream = LogMelStream()
    stream.flush()
    with pytest.raises(AudioError, match="after flush"):
        stream.push(np.zeros(10, np.float32))


@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filterbank_is_librosas_bit_for_bit(n_mels):
    """Serving computes the Slaney filterbank itself (librosa, with numba and scipy, is ~400 MB of
    a serving install for this one function); librosa stays the reference."""
    import librosa

    from splitasr.shared.features import FeatureSpec, mel_filters

    spec = FeatureSpec(n_mels=n_mels)
    expected = librosa.filters.mel(sr=spec.sample_rate, n_fft=spec.n_fft, n_mels=n_mels, htk=False, norm="slaney")
    assert np.array_equal(mel_filters(spec), expected)
