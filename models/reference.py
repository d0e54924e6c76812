"""faster-whisper on the same weights, greedy and without timestamps: the reference for parity and speed.

Needs the ``dev`` extra (faster-whisper); never imported by serving code.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from splitasr.models.sources import locate


def faster_whisper_greedy(
    model: str, compute_type: str = "float32", threads: int = 2, timestamps: bool = True
) -> Callable[[np.ndarray, str], tuple[str, list[int]]]:
    """A function audio, language -> (text, tokens) using faster-whisper with beam size 1, temperature 0
    and no fallbacks: what one splitasr decoding pass of a full window must equal token for token."""
    from faster_whisper import WhisperModel

    fw = WhisperModel(str(locate(model).directory), device="cpu", compute_type=compute_type, cpu_threads=threads)

    def transcribe(audio: np.ndarray, language: str) -> tuple[str, list[int]]:
        segments, _ = fw.transcribe(
            audio,
            language=language,
            beam_size=1,
            temperature=0.0,
            without_timestamps=not timestamps,
            condition_on_previous_text=False,
            vad_filter=False,
            no_speech_threshold=None,
            log_prob_threshold=None,
            compression_ratio_threshold=None,
        )
        segments = list(segments)
        return " ".join(s.text.strip() for s in segments), [t for s in segments for t in s.tokens]

    return transcribe


def faster_whisper_default(
    model: str, compute_type: str = "int8", threads: int = 2, workers: int = 1
) -> Callable[[np.ndarray, str | None], str]:
    """faster-whisper as a user runs it: greedy (``beam_size=1``) with all its defaults (timestamps,
    temperature fallback on compression ratio / log-prob, no-speech skipping, conditioning on the
    previous window). The baseline for accuracy and speed claims. ``workers`` > 1 lets that many
    threads transcribe at once (CTranslate2's ``num_workers``)."""
    from faster_whisper import WhisperModel

    fw = WhisperModel(
        str(locate(model).directory), device="cpu", compute_type=compute_type, cpu_threads=threads, num_workers=workers
    )

    def transcribe(audio: np.ndarray, language: str | None) -> str:
        segments, _ = fw.transcribe(audio, language=language, beam_size=1)
        return " ".join(s.text.strip() for s in segments)

    return transcribe


def faster_whisper_batched(
    model: str, compute_type: str = "int8", threads: int = 2, batch_size: int = 16
) -> Callable[[np.ndarray, str], str]:
    """faster-whisper's ``BatchedInferencePipeline`` (its VAD chunking, batched 30 s windows), greedy."""
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    fw = WhisperModel(str(locate(model).directory), device="cpu", compute_type=compute_type, cpu_threads=threads)
    pipeline = BatchedInferencePipeline(fw)

    def transcribe(audio: np.ndarray, language: str) -> str:
        segments, _ = pipeline.transcribe(
            audio, language=language, beam_size=1, temperature=0.0, without_timestamps=True, batch_size=batch_size
        )
        return " ".join(s.text.strip() for s in segments)

    return transcribe
