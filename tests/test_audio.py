"""Audio loading: any rate and channel count to 16 kHz mono; typed errors naming the file."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from splitasr.shared.audio import load_audio
from splitasr.shared.errors import AudioError
from tests.conftest import SAMPLES


def test_stereo_22k_is_resampled_and_downmixed():
    path = SAMPLES / "en_train_22k_stereo.flac"
    info = sf.info(str(path))
    assert (info.samplerate, info.channels) == (22050, 2)
    audio = load_audio(path)
    assert audio.ndim == 1 and audio.dtype == np.float32
    assert abs(len(audio) - round(info.frames * 16000 / 22050)) <= 1
    assert 0.3 < np.abs(audio).max() <= 1.0


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match="not found") as info:
        load_audio(tmp_path / "missing.wav")
    assert "missing.wav" in str(info.value)


def test_corrupt_file(tmp_path):
    bad = tmp_path / "corrupt.flac"
    bad.write_bytes(b"fLaC" + bytes(range(256)) * 4)
    with pytest.raises(AudioError, match="corrupt.flac") as info:
        load_audio(bad)
    assert "soundfile" in str(info.value) and "ffmpeg" in str(info.value)


def test_empty_file(tmp_path):
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match="no samples"):
        load_audio(empty)


def encode(audio: np.ndarray, rate: int, path, codec: str, out_rate: int, channels: int = 1) -> None:
    """Write ``audio`` (16 kHz mono) with PyAV as a phone or browser would record it."""
    import av

    layout = "stereo" if channels == 2 else "mono"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=out_rate, layout=layout)
        frame_in = av.AudioFrame.from_ndarray(
            np.tile(audio[None], (channels, 1)).astype(np.float32), format="fltp", layout=layout
        )
        frame_in.sample_rate = rate
        resampler = av.AudioResampler(format=stream.codec_context.format.name, layout=layout, rate=out_rate)
        for frame in [*resampler.resample(frame_in), *resampler.resample(None)]:
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


# what phones and browsers record: m4a (AAC), webm (Opus, Chrome's MediaRecorder), ogg (Opus, Firefox)
RECORDED = [
    ("m4a", "aac", 44100, 2),
    ("webm", "libopus", 48000, 1),
    ("ogg", "libopus", 48000, 2),
    ("mp4", "aac", 16000, 1),
]


@pytest.mark.parametrize("suffix,codec,rate,channels", RECORDED)
def test_phone_and_browser_recordings_decode_like_the_original(
    tmp_path, real_manifest, tiny_int8_recognizer, suffix, codec, rate, channels
):
    entry = next(e for e in real_manifest if e.file.name == "en_ljspeech_LJ001-0011.flac")
    original = load_audio(entry.file)
    path = tmp_path / f"clip.{suffix}"
    encode(original, 16000, path, codec, rate, channels)
    if suffix != "ogg":  # libsndfile reads Ogg Opus itself
        with pytest.raises(sf.LibsndfileError):
            sf.info(str(path))  # soundfile cannot read it: PyAV does
    decoded = load_audio(path)
    assert decoded.dtype == np.float32 and decoded.ndim == 1
    assert abs(len(decoded) - len(original)) < 0.1 * 16000  # encoder padding/priming only
    # the same waveform up to the codec's delay and loss: normalised cross-correlation at the best lag
    from scipy.signal import correlate

    xc = correlate(decoded, original, mode="full", method="fft")
    best = xc.max() / (np.linalg.norm(decoded) * np.linalg.norm(original))
    assert best > 0.9, best
    assert np.array_equal(load_audio(path.read_bytes()), decoded)  # bytes (an upload) decode the same
    # lossy codecs may move a word either way (16 kHz AAC reads "fine in form" where the FLAC gives "and")
    from splitasr.shared.wer import WERTally

    errors = []
    for audio in (original, decoded):
        tally = WERTally()
        tally.add(entry.reference, tiny_int8_recognizer.transcribe(audio).text)
        errors.append(tally.errors)
    assert errors[1] <= errors[0] + 1, errors


def test_bytes_that_no_decoder_reads_name_both_decoders():
    with pytest.raises(AudioError, match="uploaded audio") as info:
        load_audio(b"\x00garbage" * 100)
    assert "soundfile" in str(info.value) and "ffmpeg" in str(info.value)


def test_a_length_limit_is_checked_before_decoding_everything(tmp_path, real_manifest):
    """An upload's decoded length is bounded (25 MB of FLAC silence is about 150 hours of audio)."""
    entry = next(e for e in real_manifest if e.file.name == "en_ljspeech_LJ001-0011.flac")
    audio = load_audio(entry.file)
    m4a = tmp_path / "clip.m4a"
    encode(audio, 16000, m4a, "aac", 16000, 1)
    for source in (entry.file, entry.file.read_bytes(), m4a, m4a.read_bytes()):  # soundfile, then PyAV
        with pytest.raises(AudioError, match="lasts more than 2 s"):
            load_audio(source, max_s=2.0)
        assert load_audio(source, max_s=60.0).size > 16000 * 4
