"""The chaos injector's choice of targets, on /v1/pools-shaped data (no processes)."""

from __future__ import annotations

from splitasr.cloud.chaos import strike_targets


def _shard(pid: int, stage: str, breaker: str = "closed", draining: bool = False) -> dict:
    return {"pid": pid, "stage": stage, "breaker": breaker, "draining": draining}


def test_a_fault_never_takes_the_last_live_replica_of_a_stage():
    pools = [
        {
            "model": "tiny.en",
            "shards": [
                _shard(1, "enc_a"),
                _shard(2, "enc_a"),  # hung below: enc_a has one live replica left
                _shard(3, "enc_b"),
                _shard(4, "enc_b", breaker="open"),  # restarting: not live
                _shard(5, "dec"),
                _shard(6, "dec"),
                _shard(7, "dec", draining=True),
            ],
        },
        {"model": "base", "shards": [_shard(8, "enc_a"), _shard(9, "enc_a")]},  # counted per pool
    ]
    assert sorted(s["pid"] for s in strike_targets(pools, hung={2})) == [5, 6, 8, 9]
    assert sorted(s["pid"] for s in strike_targets(pools, hung=set())) == [1, 2, 5, 6, 8, 9]
    lonely = [{"model": "tiny.en", "shards": [_shard(1, "enc_a"), _shard(3, "enc_b"), _shard(5, "dec")]}]
    assert strike_targets(lonely, hung=set()) == []  # nothing may be struck: the fault is skipped
