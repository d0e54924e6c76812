"""Audio sources for the edge agent (file, WAV/raw PCM on stdin, microphone) as async chunk streams."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soxr

from splitasr.edge.wav_stream import WavFormat, read_header
from splitasr.shared.audio import load_audio, to_mono
from splitasr.shared.errors import AudioError

SAMPLE_RATE = 16000


async def file_source(path: str | Path, realtime: bool = True, chunk_s: float = 0.02) -> AsyncIterator[np.ndarray]:
    """Chunks of a file at 16 kHz; ``realtime`` paces them like a live device would deliver them."""
    async for chunk in array_source(load_audio(path, SAMPLE_RATE), realtime, chunk_s):
        yield chunk


async def array_source(audio: np.ndarray, realtime: bool = False, chunk_s: float = 0.02) -> AsyncIterator[np.ndarray]:
    """Chunks of 16 kHz mono float32 samples, paced like a live device when ``realtime``."""
    step = int(chunk_s * SAMPLE_RATE)
    started = time.monotonic()
    for i in range(0, len(audio), step):
        # pace like a device (wall-clock), or at least let the event loop serve others between chunks
        # (the coordinator runs uploads of its OpenAI-compatible API this way)
        await asyncio.sleep(max(0.0, started + i / SAMPLE_RATE - time.monotonic()) if realtime else 0)
        yield np.asarray(audio[i : i + step], np.float32)


async def stdin_source(
    raw_rate: int | None = None, channels: int = 1, chunk_s: float = 0.1
) -> AsyncIterator[np.ndarray]:
    """A WAV stream on stdin, or raw s16le PCM when ``raw_rate`` is given."""
    async for block in pcm_stream(sys.stdin.buffer, raw_rate, channels, chunk_s):
        yield block


async def pcm_stream(
    stream: BinaryIO, raw_rate: int | None = None, channels: int = 1, chunk_s: float = 0.1
) -> AsyncIterator[np.ndarray]:
    """16 kHz mono blocks of a WAV (header parsed as it arrives) or raw s16le stream, resampled with
    one streaming resampler so block edges leave no trace."""
    loop = asyncio.get_running_loop()
    if raw_rate is None:
        fmt = await loop.run_in_executor(None, read_header, stream)
    else:
        fmt = WavFormat(raw_rate, channels, 16, False)
    resampler = soxr.ResampleStream(fmt.sample_rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
    nbytes = max(1, int(chunk_s * fmt.sample_rate)) * fmt.frame_bytes
    pending = b""
    while True:
        data = await loop.run_in_executor(None, stream.read, nbytes)
        pending += data or b""
        whole = len(pending) - len(pending) % fmt.frame_bytes
        block, pending = pending[:whole], pending[whole:]
        out = resampler.resample_chunk(to_mono(fmt.decode(block)), last=not data)
        if len(out):
            yield np.ascontiguousarray(out, np.float32)
        if not data:
            return


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
