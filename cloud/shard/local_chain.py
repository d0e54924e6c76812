"""The later stages in this process: a stage-0 shard with ``--whole-chain`` runs encoder B and the
decoder itself, and calls them through this instead of the network (the monolith the split is
measured against in ``benchmarks/capacity.py``)."""

from __future__ import annotations

import dataclasses

from splitasr.cloud.shard.config import ShardConfig
from splitasr.cloud.shard.metrics import ShardMetrics
from splitasr.cloud.shard.stage_client import StageCaller
from splitasr.cloud.shard.worker import StageWorker
from splitasr.models.stages import StageArtifacts
from splitasr.shared import protocol as p


class LocalStages(StageCaller):
    """A STAGE_REQ goes straight to the worker's ``serve_stage`` (errors are the same
    :class:`ProtocolError` a remote stage's ERROR becomes)."""

    def __init__(self, workers: dict[str, StageWorker], owner: bool = True):
        self.workers = workers
        self.owner = owner  # stage 0's starts and stops the workers; encoder B's only calls the decoder

    async def start(self) -> None:
        for worker in self.workers.values() if self.owner else ():
            await worker.start()

    async def close(self) -> None:
        for worker in self.workers.values() if self.owner else ():
            await worker.close()

    async def send(self, request: p.StageRequest) -> p.StageResponse:
        return await self.workers[request.stage].serve_stage(request)


def later_stages(config: ShardConfig, artifacts: StageArtifacts, metrics: ShardMetrics) -> LocalStages:
    """Encoder B and the decoder of ``config.model`` in this process, wired to each other."""
    from splitasr.cloud.shard.roles import make_worker

    workers = {
        role: make_worker(dataclasses.replace(config, role=role, require_ticket=False), artifacts, metrics)
        for role in ("enc_b", "dec")
    }
    workers["enc_b"].client = LocalStages(workers, owner=False)
    for worker in workers.values():
        worker.warm_up()
    return LocalStages(workers)
