"""Degradation ladder (cloud/coordinator/ladder.py): the pure policy on a fake clock, and the
coordinator acting on it (flags pushed to shards, new sessions to the fallback model, batch work
deferred, then shed), with shards registered and heartbeating in process."""

from __future__ import annotations

import pytest

from splitasr.cloud.coordinator.config import ClusterConfig, PoolConfig
from splitasr.cloud.coordinator.ladder import LEVELS, LadderConfig, LadderState, step
from splitasr.cloud.coordinator.registry import ShardInfo, ShardLoad
from splitasr.cloud.coordinator.service import Coordinator
from splitasr.shared.control import RouteQuery
from splitasr.shared.errors import ConfigError, OverloadedError
from splitasr.shared.flags import Flags

LADDER = LadderConfig(enabled=True, down_after_s=2, up_after_s=10, min_step_s=2)


def run(config: LadderConfig, delays: list[float], p99_ms: float = 0.0) -> list[int]:
    """The level after each one-second period with these queue delays."""
    state, levels = LadderState(), []
    for t, delay in enumerate(delays):
        state = step(config, state, float(t), delay, p99_ms)
        levels.append(state.level)
    return levels


def test_steps_down_one_level_at_a_time_and_climbs_back_with_hysteresis():
    levels = run(LADDER, [1.0] * 12 + [0.02] * 70)
    assert levels[:12] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]  # 2 s of pressure per step, never faster
    assert max(levels[12:22]) == 5  # 10 s of calm before the first step up
    assert levels[-1] == 0 and all(b - a in (-1, 0) for a, b in zip(levels[12:], levels[13:], strict=False))


def test_between_the_marks_nothing_changes_and_the_slo_counts_as_pressure():
    assert run(LADDER, [1.0] * 4 + [0.1] * 60)[-1] == 1  # in the band: stays where it is (no flapping)
    assert run(LadderConfig(enabled=True, slo_p99_ms=1500), [0.0] * 5, p99_ms=2500)[-1] >= 1
    assert run(LadderConfig(enabled=True, max_level=2), [1.0] * 30)[-1] == 2
    assert run(LadderConfig(), [1.0] * 30)[-1] == 0  # off by default
    with pytest.raises(ConfigError, match="low_queue_delay_s"):
        LadderConfig(low_queue_delay_s=0.5, high_queue_delay_s=0.2)


class Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t


def test_the_coordinator_degrades_a_pool_and_restores_it():
    primary = PoolConfig(model="base", languages=("en",), fallback="tiny.en", ladder=LADDER)
    config = ClusterConfig(pools=(primary, PoolConfig(model="tiny.en", languages=("en",))))
    clock = Clock()
    c = Coordinator(config, backend=None, clock=clock)
    for model, port in (("base", 9001), ("tiny.en", 9002)):
        c.register(ShardInfo(shard_id=f"{model}-a", url=f"ws://127.0.0.1:{port}", model=model, stage="enc_a"))

    def period(base_delay_s: float) -> None:
        clock.t += 1.0
        c.registry.heartbeat("base-a", ShardLoad(queue_delay_s=base_delay_s), clock.t)
        c.registry.heartbeat("tiny.en-a", ShardLoad(), clock.t)
        c.tick()

    en = RouteQuery(language="en")
    batch = RouteQuery(language="en", qos="batch")
    seen = {}
    for _ in range(12):
        period(1.0)
        level = c.ladders["base"].level
        if level not in seen:
            seen[level] = (c.route(en)["pool"], c.flags.for_pool("base"))
            if level >= 4:
                with pytest.raises(OverloadedError) as refused:
                    c.route(batch)
                seen[level] += (refused.value.retry_after_ms,)
    assert sorted(seen) == [0, 1, 2, 3, 4, 5]
    assert seen[0][0] == "base" and seen[0][1] == []
    assert seen[1][1] == [{"pool": "base", "share": 1.0, "set": {**_unset(), "partial_interval_s": 1.2}}]
    assert seen[2][1][0]["set"]["partials"] is False and seen[2][0] == "base"
    assert seen[3][0] == "tiny.en"  # new English sessions on the smaller model
    assert seen[4][2] == 30_000 and seen[5][2] == 0  # batch deferred, then shed
    assert c.route(en)["pool"] == "tiny.en" and c.pools()["pools"][0]["ladder"]["name"] == LEVELS[5]
    for _ in range(80):
        period(0.0)
    assert c.ladders["base"].level == 0 and c.route(en)["pool"] == "base" and c.flags.for_pool("base") == []
    assert c.route(batch)["pool"] == "base"
    events = [e["detail"].split(":")[0] for e in c.pools()["changes"] if e["event"] == "ladder"]
    assert events == [f"down to {n}" for n in LEVELS[1:]] + [f"up to {n}" for n in reversed(LEVELS[:-1])]


def _unset() -> dict:
    return dict.fromkeys(Flags.model_fields)


def test_bad_ladder_and_fallback_configs_are_config_errors(tmp_path):
    from splitasr.cloud.coordinator.config import load_config

    path = tmp_path / "cluster.yaml"
    path.write_text("pools:\n  - model: tiny.en\n    fallback: base\n")
    with pytest.raises(ConfigError, match="fallback must be another pool's model"):
        load_config(path)
    path.write_text("pools:\n  - model: tiny.en\n    ladder: {enabled: yes, down_after: 3}\n")
    with pytest.raises(ConfigError, match=r"pools\[0\].ladder: unknown keys down_after"):
        load_config(path)
