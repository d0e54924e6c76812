"""Audio sources for the edge agent (file, WAV/raw PCM on stdin, microphone) as async chunk streams."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import soundfile as sf

from splitasr.shared.audio import load_audio, resample, to_mono
from splitasr.shared.errors import AudioError

SAMPLE_RATE = 16000


async def file_source(path: str | Path, realtime: bool = True, chunk_s: float = 0.02) -> AsyncIterator[np.ndarray]:
    """Chunks of a file at 16 kHz; ``realtime`` paces them like a live device would deliver them."""
    audio = load_audio(path, SAMPLE_RATE)
    step = int(chunk_s * SAMPLE_RATE)
    started = time.monotonic()
    for i in range(0, len(audio), step):
        if realtime:  # a live device delivers audio at wall-clock pace
            await asyncio.sleep(max(0.0, started + i / SAMPLE_RATE - time.monotonic()))
        yield audio[i : i + step]


async def stdin_source(
    raw_rate: int | None = None, channels: int = 1, chunk_s: float = 0.1
) -> AsyncIterator[np.ndarray]:
    """A WAV stream on stdin, or raw s16le PCM when ``raw_rate`` is given."""
    stream = sys.stdin.buffer
    loop = asyncio.get_running_loop()
    if raw_rate is None:
        try:
            f = sf.SoundFile(stream)
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise AudioError(f"stdin is not a WAV stream ({exc}); for raw PCM pass --raw-rate") from None
        rate, frames = f.samplerate, int(chunk_s * f.samplerate)
        while True:
            block = await loop.run_in_executor(None, f.read, frames, "float32")
            if len(block) == 0:
                return
            yield resample(to_mono(block), rate, SAMPLE_RATE)
    else:
        nbytes = int(chunk_s * raw_rate) * 2 * channels
        while True:
            data = await loop.run_in_executor(None, stream.read, nbytes)
            if not data:
                return
            pcm = np.frombuffer(data[: len(data) - len(data) % (2 * channels)], "<i2").astype(np.float32) / 32768
            yield resample(to_mono(pcm.reshape(-1, channels)), raw_rate, SAMPLE_RATE)


async def mic_source(chunk_s: float = 0.02, device: str | int | None = None) -> AsyncIterator[np.ndarray]:
    """The default (or given) microphone via sounddevice (extra ``mic``)."""
    try:
        import sounddevice as sd
    except (ImportError, OSError) as exc:
        raise AudioError(
            f"microphone input needs sounddevice and PortAudio: pip install 'splitasr[mic]' ({exc})"
        ) from None
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[np.ndarray] = asyncio.Queue()

    def callback(indata, frames, time_info, status):  # runs on PortAudio's thread
        loop.call_soon_threadsafe(queue.put_nowait, indata[:, 0].copy())

    with sd.InputStream(
        samplerate=SAMPLE_RATE,
        channels=1,
        dtype="float32",
        blocksize=int(chunk_s * SAMPLE_RATE),
        device=device,
        callback=callback,
    ):
        while True:
            yield await queue.get()
