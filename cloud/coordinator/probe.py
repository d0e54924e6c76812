"""The WER probe of a rollout: clips with references, transcribed by the canary and by stable.

A pool with ``probe: manifest.jsonl`` (the JSONL manifest of ``shared/wer.py``: file, text,
language) has every rollout step judged on word error rate as well: when a step starts, the
coordinator streams the first ``probe_clips`` clips of the pool's languages through one stage-0
shard of each version, as an edge would (the same frames, sent as fast as the shard's rate limit
lets them), and scores the FINALs. The canary's WER above stable's by more than the guard
``max_wer_increase`` rolls it back (``rollout.breach``). A garbage-text canary answers every
utterance promptly and non-empty, so only this guard catches it.

The clips' frames are made once per coordinator (in a worker thread: the edge pipeline is
CPU-bound and the coordinator's loop must keep answering heartbeats).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from splitasr.edge.agent import AgentOptions, EdgeAgent, EdgeFrame, record_frames, replay_frames
from splitasr.edge.audio_in import file_source
from splitasr.shared.auth import ClusterAuth
from splitasr.shared.errors import ConfigError
from splitasr.shared.wer import ManifestEntry, WERTally, read_manifest

log = logging.getLogger(__name__)

PROBE_DEVICE = "coordinator-probe"
PROBE_TOKEN_TTL_S = 3600.0


@dataclass(frozen=True)
class ProbeResult:
    wer: float
    errors: int
    words: int
    clips: int
    shard: str

    def summary(self) -> str:
        return f"{self.wer:.1%} ({self.errors}/{self.words} words, {self.clips} clips on {self.shard})"


def probe_entries(manifest: str | Path, languages: tuple[str, ...], clips: int) -> list[ManifestEntry]:
    """The first ``clips`` entries of ``manifest`` in one of ``languages`` ("*": any); ConfigError if none."""
    entries = [e for e in read_manifest(manifest) if "*" in languages or e.language in languages]
    if not entries:
        raise ConfigError(f"probe manifest {manifest} has no clip in the pool's languages {', '.join(languages)}")
    missing = [str(e.file) for e in entries[:clips] if not e.file.exists()]
    if missing:
        raise ConfigError(f"probe manifest {manifest}: missing audio {', '.join(missing)}")
    return entries[:clips]


class Prober:
    """Streams a pool's probe clips through a chosen stage-0 shard and scores the FINALs."""

    def __init__(self, entries: list[ManifestEntry], auth: ClusterAuth, timeout_s: float = 120.0):
        self.entries = entries
        self.auth = auth
        self.timeout_s = timeout_s
        self._frames: list[list[EdgeFrame]] | None = None
        self._lock = asyncio.Lock()

    async def frames(self) -> list[list[EdgeFrame]]:
        async with self._lock:
            if self._frames is None:
                self._frames = await asyncio.to_thread(self._record)
        return self._frames

    def _record(self) -> list[list[EdgeFrame]]:
        out = []
        for e in self.entries:
            o = AgentOptions(language=e.language)
            out.append(asyncio.run(record_frames(file_source(e.file, realtime=False), o)))
        return out

    async def run(self, shard_id: str, url: str) -> ProbeResult:
        """Every probe clip as its own session on shard ``shard_id`` at ``url``; WER over all of them."""
        tally = WERTally()
        token = self.auth.device_token(PROBE_DEVICE, PROBE_TOKEN_TTL_S)
        for entry, frames in zip(self.entries, await self.frames(), strict=True):
            options = AgentOptions(
                shards=(url,),
                device_id=PROBE_DEVICE,
                token=token,
                language=entry.language,
                max_reconnects=3,
                final_timeout_s=self.timeout_s,
            )
            texts: list[str] = []
            agent = EdgeAgent(options, on_final=lambda f, texts=texts: texts.append(f.text))
            agent.use_ticket(url, self.auth.route_ticket(PROBE_DEVICE, agent.session_id, shard_id))
            await asyncio.wait_for(agent.run_frames(replay_frames(frames, realtime=False)), self.timeout_s)
            tally.add(entry.reference, " ".join(texts), entry.language)
        result = ProbeResult(tally.wer, tally.errors, tally.words, len(self.entries), shard_id)
        log.info("probe of %s: WER %s", shard_id, result.summary())
        return result
