"""A streaming client for programs: the edge agent as an async iterator of partials and finals.

::

    client = splitasr.EdgeClient(coordinator="http://127.0.0.1:8700", language="en")
    async for event in client.stream("call.wav"):  # or a 16 kHz float32 array, or async chunks
        if isinstance(event, splitasr.Final):
            print(f"[{event.start_s:.1f}-{event.end_s:.1f}] {event.text}")

One :meth:`EdgeClient.stream` call is one session: the agent segments the audio (Silero VAD),
streams features, survives the loss of its shard (replay elsewhere) and ends once every utterance
has its FINAL; ``client.report`` then holds the session's :class:`AgentReport`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from splitasr.edge.agent import AgentOptions, AgentReport, EdgeAgent, FinalResult
from splitasr.edge.audio_in import array_source, file_source

Final = FinalResult  # one per utterance: text, language, start_s/end_s in stream time, latencies


@dataclass(frozen=True)
class Partial:
    """The running hypothesis of an utterance while it is spoken (replaced by later ones)."""

    utt: int
    text: str
    stable: int = 0  # characters of ``text`` that later partials keep


class EdgeClient:
    """Streams audio to a splitasr cluster (``coordinator``) or to stage-0 ``shards`` directly.

    ``options`` are :class:`AgentOptions` fields (``device_id``, ``token``, ``model``, ``qos``,
    ``split``, ``final_timeout_s``, …)."""

    def __init__(
        self,
        coordinator: str | None = None,
        shards: tuple[str, ...] | list[str] = (),
        language: str | None = None,
        **options: Any,
    ):
        self.options = AgentOptions(coordinator=coordinator, shards=tuple(shards), language=language, **options)
        self.report: AgentReport | None = None

    async def stream(
        self, source: str | Path | np.ndarray | AsyncIterator[np.ndarray], realtime: bool = False
    ) -> AsyncIterator[Partial | Final]:
        """Stream ``source`` as one session; yields :class:`Partial` and :class:`Final` as they come.

        A file or array is sent as fast as the shard's audio rate limit allows unless ``realtime``;
        an async iterator of 16 kHz float32 chunks (a microphone) is sent as it yields. Errors of the
        session (no shard reachable, a FINAL that never came) are raised here."""
        if isinstance(source, str | Path):
            chunks = file_source(source, realtime=realtime)
        elif isinstance(source, np.ndarray):
            chunks = array_source(source, realtime=realtime)
        else:
            chunks = source
        events: asyncio.Queue[Partial | Final | None] = asyncio.Queue()
        agent = EdgeAgent(
            self.options,
            on_partial=lambda f: events.put_nowait(Partial(f.utt, f.text, f.stable)),
            on_final=events.put_nowait,
        )
        task = asyncio.create_task(agent.run(chunks))
        task.add_done_callback(lambda _: events.put_nowait(None))
        try:
            while (event := await events.get()) is not None:
                yield event
            self.report = task.result()  # raises the session's error
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
