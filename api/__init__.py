"""splitasr: edge-cloud split speech recognition with Whisper split into ONNX stages.

The Python API::

    import splitasr

    result = splitasr.transcribe("meeting.m4a")  # here, tiny.en int8 (exported on first use)
    print(result.text)
    for seg in result.segments:
        print(seg.start_s, seg.end_s, seg.text)

    rec = splitasr.Recognizer.load("base", int8=True)  # keep a model loaded
    rec.transcribe(splitasr.load_audio("talk.mp3"), splitasr.TranscribeOptions(language="de"))

    async for event in splitasr.EdgeClient(coordinator="http://127.0.0.1:8700").stream("call.wav"):
        print(event)  # splitasr.Partial while someone speaks, splitasr.Final once per utterance

Heavy modules (onnxruntime, aiohttp) load on first use, not on ``import splitasr``.
"""

from __future__ import annotations

import threading
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

try:
    __version__ = metadata.version("splitasr")
except metadata.PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0+unknown"

if TYPE_CHECKING:
    import numpy as np

    from splitasr.cloud.shard.recognizer import Recognizer, Transcript

# public name -> module that defines it (imported on first access)
_LAZY = {
    "Recognizer": "splitasr.cloud.shard.recognizer",
    "TranscribeOptions": "splitasr.cloud.shard.recognizer",
    "Transcript": "splitasr.cloud.shard.recognizer",
    "Segment": "splitasr.cloud.shard.recognizer",
    "EdgeClient": "splitasr.edge.client",
    "Partial": "splitasr.edge.client",
    "Final": "splitasr.edge.client",
    "load_audio": "splitasr.shared.audio",
    "SplitASRError": "splitasr.shared.errors",
    "AudioError": "splitasr.shared.errors",
}
__all__ = ["__version__", "transcribe", *_LAZY]

_recognizers: dict[tuple, Recognizer] = {}
_recognizers_lock = threading.Lock()


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'splitasr' has no attribute {name!r}")


def transcribe(
    audio: str | Path | np.ndarray,
    model: str = "tiny.en",
    language: str | None = None,
    int8: bool = True,
    threads: int = 0,
    **options: Any,
) -> Transcript:
    """Transcribe a file (wav, flac, mp3, ogg, m4a, webm, …) or 16 kHz mono float32 samples, here.

    The model's stages are exported on first use and kept loaded for later calls with the same
    ``model``/``int8``/``threads`` (0: all cores, at most 4). ``options`` go to :class:`TranscribeOptions` (``window``,
    ``pad_s``, ``decoding``, ``guard``). Returns a :class:`Transcript` (``text``, ``language``,
    ``segments`` with start/end in seconds)."""
    from splitasr.cloud.shard.recognizer import Recognizer, TranscribeOptions
    from splitasr.shared.audio import load_audio

    samples = load_audio(audio) if isinstance(audio, str | Path) else audio
    key = (model, int8, threads)
    with _recognizers_lock:
        rec = _recognizers.get(key)
        if rec is None:
            rec = Recognizer.load(model, int8=int8, threads=threads, show_progress=False)
            _recognizers[key] = rec
    return rec.transcribe(samples, TranscribeOptions(language=language, **options))
