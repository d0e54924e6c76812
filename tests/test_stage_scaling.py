"""Per-stage pools, with a fake clock: busy-fraction demand, Little's law per stage, utilisation
windows, the controller's per-stage decisions and drains, and next-stage replica choice."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from splitasr.cloud.coordinator.autoscaler import AutoscalerConfig, Sample, decide, demand_per_session, predictive
from splitasr.cloud.coordinator.config import PoolConfig, later_stage_autoscaler, load_config
from splitasr.cloud.coordinator.controller import PoolController
from splitasr.cloud.coordinator.registry import Registry, ShardInfo, ShardLoad
from splitasr.cloud.shard.stage_client import StageClient
from splitasr.cloud.shard.utilisation import Utilisation
from splitasr.shared.errors import ConfigError


def busy_history(busy: float, replicas: int, seconds: int = 30, sessions: float = 8, arrivals: float = 0.0):
    return [
        Sample(t=float(t), sessions=sessions, queue_delay_s=0.0, arrivals=arrivals, replicas=replicas, busy=busy)
        for t in range(1, seconds + 1)
    ]


def test_a_later_stage_scales_on_busy_fraction():
    config = later_stage_autoscaler(target_busy=0.5, predictive=False, max_replicas=8)
    assert decide(config, busy_history(1.6, 2), 30.0).replicas == 4  # 1.6 busy replicas / 0.5 each
    assert decide(config, busy_history(0.2, 1), 30.0).replicas == 1
    capped = dataclasses.replace(config, max_replicas=3)
    assert decide(capped, busy_history(1.6, 2), 30.0).replicas == 3


def test_scale_up_is_at_most_ten_times_what_is_ready():
    config = later_stage_autoscaler(target_busy=0.5, predictive=False, max_replicas=10**6)
    history = [dataclasses.replace(s, queue_delay_s=900.0) for s in busy_history(1.0, 2)]  # minutes of backlog
    decision = decide(config, history, 30.0)
    assert decision.replicas == 20 and "limited to 10x" in decision.reason


def test_queue_delay_at_a_stage_scales_it_even_when_busy_looks_low():
    config = later_stage_autoscaler(target_busy=0.5, predictive=False, target_queue_delay_s=0.1)
    history = [dataclasses.replace(s, queue_delay_s=0.35) for s in busy_history(0.4, 1)]
    # busy asks for 1 (0.4 / 0.5); the queue beyond target, 1 x (0.35 - 0.1) core-s, needs one more to drain in 2 s
    assert decide(config, history, 30.0).replicas == 2


def test_predictive_scales_each_stage_in_proportion_to_its_service_time():
    # the same arrivals (0.5 sessions/s for a minute); the decoder needs 5x the encoder's work per session
    cheap = busy_history(0.4, 1, 60, sessions=10, arrivals=0.5)
    dear = busy_history(2.0, 4, 60, sessions=10, arrivals=0.5)
    config = later_stage_autoscaler(target_busy=0.5, mean_session_s=20)
    assert demand_per_session(config, cheap, 60.0) == pytest.approx(0.08)
    assert demand_per_session(config, dear, 60.0) == pytest.approx(0.4)
    # 0.5/s x 20 s = 10 sessions ahead
    assert predictive(config, cheap, 60.0) == 1
    assert predictive(config, dear, 60.0) == 4
    # stage 0 stays on sessions per replica (target 4: 10 sessions -> 3)
    stage0 = PoolConfig().autoscaler_for("enc_a")
    assert predictive(dataclasses.replace(stage0, mean_session_s=20), dear, 60.0) == 3


def test_utilisation_busy_and_occupancy_over_a_window():
    u = Utilisation(window_s=5.0, capacity=4)
    for t in range(10):
        u.add(10.0 + t * 0.5, 0.25, size=2)  # half of each half-second busy, batch of 2
    assert u.busy(14.5) == pytest.approx(0.5)  # 10 spans end in [9.5, 14.5]: 2.5 s of 5
    assert u.occupancy(14.5) == pytest.approx(2.5 * 2 / (5 * 4))
    assert u.busy(17.0) == pytest.approx(0.3)  # 6 spans end in [12, 14.5]: the earlier ones left
    assert u.busy(30.0) == 0.0


def test_stage_pool_config_from_yaml(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text("pools:\n  - model: tiny.en\n    dec: 2\n    dec_autoscaler: {max_replicas: 6, target_busy: 0.4}\n")
    pool = load_config(path).pools[0]
    dec = pool.autoscaler_for("dec")
    assert (dec.signal, dec.min_replicas, dec.max_replicas, dec.target_busy, dec.warm_spares) == ("busy", 2, 6, 0.4, 0)
    assert pool.autoscaler_for("enc_a").signal == "sessions"
    path.write_text("pools:\n  - model: tiny.en\n    dec_autoscaler: {min_replicas: 3}\n")
    with pytest.raises(ConfigError, match="dec: N"):
        load_config(path)
    path.write_text("pools:\n  - model: tiny.en\n    dec_autoscaler: {target_busy: 1.5}\n")
    with pytest.raises(ConfigError, match="target_busy"):
        load_config(path)


def register(registry: Registry, shard_id: str, stage: str, now: float, **load) -> None:
    info = ShardInfo(
        shard_id=shard_id, url=f"ws://127.0.0.1:{9000 + len(registry.records)}", model="tiny.en", stage=stage
    )
    registry.register(info, now)
    registry.heartbeat(shard_id, ShardLoad(**load), now)


def test_controller_decides_every_stage_and_drains_an_idle_decoder():
    registry = Registry()
    pool = PoolConfig(
        autoscaler=AutoscalerConfig(warm_spares=0),
        dec_autoscaler=later_stage_autoscaler(
            target_busy=0.5, predictive=False, scale_in_stabilization_s=5, stable_window_s=6
        ),
    )
    controller = PoolController(pool, registry, backend=None, period_s=1.0)
    for shard_id, stage in (("a0", "enc_a"), ("b0", "enc_b"), ("d0", "dec"), ("d1", "dec")):
        register(registry, shard_id, stage, 0.0, sessions=3 if stage == "enc_a" else 0, busy=0.05)
    registry.records["d0"].load = ShardLoad(busy=0.05, sessions=2)  # d0 holds work: d1 (idle) drains
    decisions = {}
    for t in range(1, 12):
        for r in registry.records.values():
            r.breaker.heartbeat(float(t))
        decisions = controller.tick(float(t))
    assert set(decisions) == {"enc_a", "enc_b", "dec"}
    assert decisions["dec"].replicas == 1
    assert registry.records["d1"].draining and not registry.records["d0"].draining
    assert [s.busy for s in controller.stages["dec"].history][0] == pytest.approx(0.1)
    assert controller.stages["dec"].key == "tiny.en/dec" and controller.stages["enc_a"].key == "tiny.en"


def test_next_stage_choice_prefers_the_replica_with_less_queue_delay():
    async def main():
        client = StageClient([], dynamic=True)
        await client.start()
        try:
            client.set_replicas([("ws://127.0.0.1:1", 0.4), ("ws://127.0.0.1:2", 0.0)])  # :2 is new
            assert all(client._order()[0].url.startswith("ws://127.0.0.1:2") for _ in range(50))
            client.set_replicas([("ws://127.0.0.1:1", 0.0), ("ws://127.0.0.1:2", 0.0)])  # ties: both get work
            firsts = {client._order()[0].url for _ in range(200)}
            assert len(firsts) == 2
            client.set_replicas([("ws://127.0.0.1:1", 0.0)])  # :2 left the list (draining)
            assert [r.url for r in client._order()] == ["ws://127.0.0.1:1/v1/stage"]
        finally:
            await client.close()

    asyncio.run(main())


def test_queued_work_keeps_the_replicas_and_adds_the_ones_that_drain_it_without_running_away():
    config = later_stage_autoscaler(target_busy=0.5, predictive=False, max_replicas=10**6, target_queue_delay_s=0.2)
    # 10 replicas report low busy but 1.2 s of queue: no scale-in, and 10 x 1.0 core-s drained in 2 s = +5
    history = [dataclasses.replace(s, queue_delay_s=1.2) for s in busy_history(1.0, 10)]
    assert decide(config, history, 30.0).replicas == 15
    # a queue within target asks for nothing beyond the demand
    history = [dataclasses.replace(s, queue_delay_s=0.15) for s in busy_history(1.0, 10)]
    assert decide(config, history, 30.0).replicas == 2
    with pytest.raises(ConfigError):
        later_stage_autoscaler(backlog_drain_s=0)
