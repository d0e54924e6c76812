"""Offline files sent to a cluster as batch-class sessions (``splitasr transcribe --coordinator``).

Each file is one edge session with ``qos=batch``: the coordinator routes it to the pool's spot
replicas first, defers it (the edge waits as told) or sheds it when the pool is overloaded
(ladder.py), and it survives the loss of its shard like any session (replayed elsewhere). Files
are read as fast as the shards' audio rate limit allows, ``concurrency`` at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from splitasr.edge.agent import AgentOptions, EdgeAgent, FinalResult
from splitasr.edge.audio_in import file_source
from splitasr.shared.errors import ConfigError, SplitASRError


@dataclass
class FileResult:
    path: Path
    finals: list[FinalResult] = field(default_factory=list)  # in utterance order, with text
    reconnects: int = 0
    error: str | None = None

    @property
    def text(self) -> str:
        return " ".join(f.text.strip() for f in self.finals).strip()

    def to_dict(self) -> dict:
        cues = [c for f in self.finals for c in f.cues()]
        segments = [{"start": round(c.start_s, 2), "end": round(c.end_s, 2), "text": c.text} for c in cues]
        out = {"file": str(self.path), "text": self.text, "segments": segments, "reconnects": self.reconnects}
        return out | ({"error": self.error} if self.error else {})


async def transcribe_files(
    paths: list[Path],
    coordinator: str,
    language: str | None = None,
    concurrency: int = 4,
    device_id: str = "batch",
    token: str = "",
    on_result: Callable[[FileResult], None] | None = None,
) -> list[FileResult]:
    if not 1 <= concurrency <= 256:
        raise ConfigError(f"concurrency must be in [1, 256], got {concurrency}")
    gate = asyncio.Semaphore(concurrency)

    async def one(path: Path) -> FileResult:
        async with gate:
            options = AgentOptions(
                coordinator=coordinator, device_id=device_id, token=token, language=language, qos="batch"
            )
            agent = EdgeAgent(options)
            result = FileResult(path)
            try:
                report = await agent.run(file_source(path, realtime=False))
                result.finals = sorted((f for f in report.finals if f.text.strip()), key=lambda f: f.utt)
                result.reconnects = report.reconnects
            except SplitASRError as exc:
                result.error = str(exc)
        if on_result is not None:
            on_result(result)
        return result

    return list(await asyncio.gather(*(one(p) for p in paths)))
