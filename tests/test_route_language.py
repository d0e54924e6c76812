"""Which pool a new stream is routed to: by its language, to the multilingual pool without a hint,
or to the model it asks for; in process, with shards registered (no processes)."""

from __future__ import annotations

import pytest

from splitasr.cloud.coordinator.config import ClusterConfig, PoolConfig
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
