"""Which pool and replicas a new stream is routed to: by its language, to the multilingual pool
without a hint, to the model it asks for; batch work to spot replicas first. In process, with
shards registered (no processes)."""

from __future__ import annotations

import pytest

from splitasr.cloud.coordinator.config import ClusterConfig, PoolConfig, PoolVersion, SpotConfig, build_checked
from splitasr.cloud.coordinator.ladder import LadderConfig, LadderState
from splitasr.cloud.coordinator.registry import ShardInfo
from splitasr.cloud.coordinator.service import Coordinator
from splitasr.edge.agent import AgentOptions
from splitasr.shared.control import RouteQuery
from splitasr.shared.errors import ConfigError


def coordinator(*pools: PoolConfig) -> Coordinator:
    c = Coordinator(ClusterConfig(pools=pools), backend=None)
    for port, pool in enumerate(pools, start=9001):
        c.register(ShardInfo(shard_id=f"{pool.model}-a", url=f"ws://127.0.0.1:{port}", model=pool.model, stage="enc_a"))
    return c


def test_a_stream_without_a_language_starts_on_the_multilingual_pool():
    c = coordinator(PoolConfig(model="tiny.en", languages=("en",)), PoolConfig(model="base", languages=("*",)))
    assert c.route(RouteQuery())["pool"] == "base"  # no hint: base detects the language
    assert c.route(RouteQuery(language="en"))["pool"] == "tiny.en"
    assert c.route(RouteQuery(language="de"))["pool"] == "base"
    assert c.route(RouteQuery(model="base", language="en"))["pool"] == "base"  # asked for by name
    with pytest.raises(ConfigError, match="pool tiny.en does not serve language 'de'"):
        c.route(RouteQuery(model="tiny.en", language="de"))
    with pytest.raises(ConfigError, match="no pool 'large'"):
        c.route(RouteQuery(model="large"))
    # a multilingual model counts even with a language list; an English-only cluster serves it as English
    assert coordinator(PoolConfig(), PoolConfig(model="base", languages=("de",))).route(RouteQuery())["pool"] == "base"
    assert coordinator(PoolConfig()).route(RouteQuery())["pool"] == "tiny.en"


def test_a_degraded_pool_sends_only_sessions_of_a_known_language_to_its_fallback():
    ladder = LadderConfig(enabled=True)
    c = coordinator(
        PoolConfig(model="base", languages=("*",), fallback="tiny.en", ladder=ladder),
        PoolConfig(model="tiny.en", languages=("en",)),
    )
    c.ladders["base"] = LadderState(level=3)  # fallback model
    assert c.route(RouteQuery(language="en"))["pool"] == "tiny.en"
    assert c.route(RouteQuery())["pool"] == "base"  # its language is not known yet: tiny.en might not speak it
    assert c.route(RouteQuery(language="de"))["pool"] == "base"


def test_edge_options_check_the_qos_class():
    assert AgentOptions(qos="batch").qos == "batch"
    with pytest.raises(ConfigError, match="qos must be interactive or batch"):
        AgentOptions(qos="urgent")


def test_batch_sessions_go_to_spot_replicas_first_and_interactive_ones_never():
    pool = PoolConfig(spot=SpotConfig(replicas=1))
    c = Coordinator(ClusterConfig(pools=(pool,)), backend=None)
    c.register(ShardInfo(shard_id="od", url="ws://127.0.0.1:9001", model="tiny.en", stage="enc_a"))
    c.register(
        ShardInfo(shard_id="sp", url="ws://127.0.0.1:9002", model="tiny.en", stage="enc_a", config_version="spot")
    )
    assert [x["shard_id"] for x in c.route(RouteQuery(language="en", qos="batch"))["candidates"]] == ["sp"]
    assert [x["shard_id"] for x in c.route(RouteQuery(language="en"))["candidates"]] == ["od"]
    c.registry.records["sp"].breaker.trip(c.clock(), "pre-empted")
    assert [x["shard_id"] for x in c.route(RouteQuery(language="en", qos="batch"))["candidates"]] == ["od"]


def test_bad_spot_configs_are_config_errors():
    with pytest.raises(ConfigError, match=r"spot.replicas must be in \[0, 64\]"):
        SpotConfig(replicas=-1)
    with pytest.raises(ConfigError, match="reserved for spot replicas"):
        PoolConfig(versions={"spot": PoolVersion()})
    with pytest.raises(ConfigError, match="price_per_hour must be >= 0"):
        build_checked(PoolConfig, {"price_per_hour": -1.0}, "pool")
    spot = PoolConfig(spot=SpotConfig(replicas=2)).spot_pool()
    assert spot.whole_chain and spot.version == "spot" and spot.autoscaler.max_replicas == 2
