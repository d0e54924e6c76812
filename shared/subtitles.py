"""Transcript output formats: plain text, JSON, SubRip (SRT) and WebVTT, from timed segments.

One writer per format, used by ``splitasr transcribe --output-format`` and the OpenAI-compatible
``response_format`` alike. Segments are ``(start_s, end_s, text)``; empty ones are skipped, an end
before its start is raised to the start, and cues never overlap (a cue ends where the next starts).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from splitasr.shared.errors import ConfigError

FORMATS = ("txt", "json", "srt", "vtt")


class Timed(Protocol):
    start_s: float
    end_s: float
    text: str


def cues(segments: Iterable[Timed]) -> list[tuple[float, float, str]]:
    """Non-empty segments as ``(start, end, text)``, times non-negative, ordered and not overlapping."""
    kept = [(max(0.0, s.start_s), max(0.0, s.end_s), s.text.strip()) for s in segments if s.text.strip()]
    kept.sort(key=lambda c: c[0])
    out = []
    for i, (start, end, text) in enumerate(kept):
        following = kept[i + 1][0] if i + 1 < len(kept) else None
        end = max(end, start)
        if following is not None:
            end = min(end, max(following, start))
        out.append((start, end, text))
    return out


@dataclass(frozen=True)
class Cue:
    start_s: float
    end_s: float
    text: str


def fit_segments(parts: list[tuple[float, float, str]], lo: float, hi: float) -> list[Cue]:
    """The decoder's segments of one utterance (stream time) fitted to its speech ``[lo, hi]`` from
    the VAD: the first starts at ``lo``, the last ends at ``hi`` (Whisper's timestamps drift at the
    edges of a window), the inner boundaries are the decoder's, clamped into the utterance."""
    kept = [p for p in parts if p[2].strip()]
    out = []
    for i, (start, end, text) in enumerate(kept):
        start = lo if i == 0 else min(max(start, lo), hi)
        end = hi if i == len(kept) - 1 else min(max(end, start), hi)
        out.append(Cue(start, end, text.strip()))
    return out


def timestamp(seconds: float, decimal: str) -> str:
    """``HH:MM:SS,mmm`` (SRT, ``decimal=","``) or ``HH:MM:SS.mmm`` (WebVTT)."""
    ms = round(seconds * 1000)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{ms:03d}"


def to_srt(segments: Iterable[Timed]) -> str:
    blocks = [
        f"{i}\n{timestamp(start, ',')} --> {timestamp(end, ',')}\n{text}\n"
        for i, (start, end, text) in enumerate(cues(segments), 1)
    ]
    return "\n".join(blocks)


def vtt_text(text: str) -> str:
    """Cue text escaped as WebVTT requires (``&``, ``<``; ``>`` so that ``-->`` cannot end a cue)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_vtt(segments: Iterable[Timed]) -> str:
    blocks = [
        f"{timestamp(start, '.')} --> {timestamp(end, '.')}\n{vtt_text(text)}\n" for start, end, text in cues(segments)
    ]
    return "WEBVTT\n\n" + "\n".join(blocks)


def to_txt(text: str) -> str:
    return text.strip() + "\n"


def to_json(text: str, language: str, duration_s: float, segments: Iterable[Timed]) -> str:
    body = {
        "text": text.strip(),
        "language": language,
        "duration": round(duration_s, 3),
        "segments": [
            {"id": i, "start": round(start, 3), "end": round(end, 3), "text": t}
            for i, (start, end, t) in enumerate(cues(segments))
        ],
    }
    return json.dumps(body, ensure_ascii=False, indent=2) + "\n"


def render(fmt: str, text: str, language: str, duration_s: float, segments: list) -> str:
    """The transcript in ``fmt`` (one of :data:`FORMATS`)."""
    if fmt == "txt":
        return to_txt(text)
    if fmt == "json":
        return to_json(text, language, duration_s, segments)
    if fmt == "srt":
        return to_srt(segments)
    if fmt == "vtt":
        return to_vtt(segments)
    raise ConfigError(f"unknown output format {fmt!r}; one of {', '.join(FORMATS)}")
