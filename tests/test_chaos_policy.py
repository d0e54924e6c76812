"""The chaos injector's choice of targets, on /v1/pools-shaped data (no processes)."""

from __future__ import annotations

import dataclasses

import pytest

from splitasr.cloud.chaos import Fault, StreamRun, between_kills, charge, costs, strike_targets
from splitasr.edge.agent import FinalResult


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


def _run_with(finals: list[tuple[float, float, float, float]]) -> StreamRun:
    """A stream whose FINALs arrived at monotonic times: (first chunk at, start_s, EOU at, arrival)."""
    run = StreamRun(0, None, {"coordinator": "http://127.0.0.1:1"}, frames=[])
    for utt, (first, start_s, eou, arrival) in enumerate(finals):
        f = FinalResult(utt, "x", "en", "v", 0.0, 1.0, eou_latency_s=arrival - eou, start_s=start_s)
        run.arrivals.append((arrival, dataclasses.replace(f, received_s=arrival - first)))
        run.agent.report.finals.append(f)
    return run


def test_an_utterance_in_flight_through_several_faults_is_charged_once_to_the_last():
    # utterance 0 runs 0..20 s (EOU at 20, FINAL at 21); utterance 1 runs 22..25 (FINAL at 25.2)
    run = _run_with([(0.0, 0.0, 20.0, 21.0), (0.0, 22.0, 25.0, 25.2)])
    kills = [Fault("kill", t, "enc_a", 1, at=t) for t in (5.0, 10.0, 15.0)]
    hang = Fault("hang", 24.0, "dec", 2, at=24.0)
    charged = charge([run], [*kills, hang])
    assert charged.keys() == {(0, 0), (0, 1)}
    assert charged[0, 0] == (kills[-1], 1.0)  # from the EOU: it came after the kill
    assert charged[0, 1][0] is hang and charged[0, 1][1] == pytest.approx(0.2)
    baseline = {"eou_latency_s": [{"0": [0.4, 0.0], "1": [0.1, 22.0]}]}  # [EOU -> FINAL, start]
    gaps, added = costs(charged, [run], baseline, lambda f: f.kind == "kill")
    assert gaps == [1.0] and added == [pytest.approx(0.6)]  # 1.0 s EOU -> FINAL against 0.4 s without faults
    elsewhere = {"eou_latency_s": [{"0": [0.4, 3.0]}]}  # live edges cut utterance 0 differently there
    assert costs(charged, [run], elsewhere, lambda f: f.kind == "kill") == ([1.0], [])
    gaps, added = costs(charged, [run], None, lambda f: f.kind == "hang")
    assert gaps == [pytest.approx(0.2)] and added == []  # no baseline: nothing to compare with


def test_a_hang_or_restart_strikes_halfway_between_two_kills():
    assert between_kills(20.0, 5.0) == 22.5  # the 60 s run: a third of the way in
    assert between_kills(20.0 / 3, 3.0) == 7.5  # the short test's horizon of 20 s
    assert between_kills(52.5 / 3, 5.0) == 17.5  # not on the kill at 20 s
    assert between_kills(7.0, 0.0) == 7.0  # no kills: when it is due
