"""Canary rollout policy (cloud/coordinator/rollout.py), on a fake clock: guards, steps, promotion."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from splitasr.cloud.coordinator.config import PoolConfig, build_checked, load_config
from splitasr.cloud.coordinator.probe import probe_entries
from splitasr.cloud.coordinator.rollout import (
    PROMOTED,
    ROLLED_BACK,
    RUNNING,
    Guards,
    Rollout,
    VersionStats,
    breach,
    evaluate,
    parse_interval,
    parse_steps,
    to_canary,
)
from splitasr.shared.errors import ConfigError

REAL_MANIFEST = Path(__file__).resolve().parents[1] / "samples" / "real" / "manifest.jsonl"
STABLE = VersionStats(finals=40, empty_finals=2, errors=0, p99_ms=900)
GOOD = VersionStats(finals=6, empty_finals=0, errors=0, p99_ms=1000)


def started(steps=(25, 50, 100), interval_s=10.0) -> Rollout:
    r = Rollout("tiny.en", "default", "v2", steps, interval_s)
    step = evaluate(r, VersionStats(), STABLE, now=100.0, canary_serving=True)
    assert step.event == "started-step" and step.rollout.share == 0.25
    return step.rollout


def test_the_step_clock_waits_for_the_canary_to_serve():
    r = Rollout("tiny.en", "default", "v2", (50, 100), 10.0)
    assert r.share == 0.0
    for now in (0.0, 50.0, 500.0):
        step = evaluate(r, VersionStats(), STABLE, now, canary_serving=False)
        assert step.event is None and step.rollout.step_started is None and step.rollout.share == 0.0
    assert evaluate(r, VersionStats(), STABLE, 501.0, canary_serving=True).rollout.step_started == 501.0


def test_a_good_canary_advances_every_interval_and_is_promoted():
    r = started()
    assert evaluate(r, GOOD, STABLE, 109.9, True).event is None  # the interval has not passed
    events = []
    now = 100.0
    while r.status == RUNNING:
        now += 10.0
        step = evaluate(r, GOOD, STABLE, now, True)
        events.append(step.event)
        r = step.rollout
    assert events == ["advanced", "advanced", PROMOTED]
    assert r.share == 1.0 and "100% step passed" in r.reason


def test_a_step_is_extended_while_the_canary_has_too_little_traffic():
    r = started()
    few = VersionStats(finals=2, p99_ms=800)
    assert evaluate(r, few, STABLE, 150.0, True).event is None
    assert evaluate(r, GOOD, STABLE, 150.0, True).event == "advanced"


@pytest.mark.parametrize(
    ("canary", "reason"),
    [
        (VersionStats(finals=3, p99_ms=3900), "p99 FINAL latency 3900 ms vs stable 900 ms (limit 1900 ms)"),
        (VersionStats(finals=4, empty_finals=4, p99_ms=500), "empty-FINAL rate 100% (4/4) vs stable 5%"),
        (VersionStats(finals=1, errors=2, p99_ms=500), "error rate 67% (2/3) vs stable 0%"),
    ],
)
def test_a_breached_guard_rolls_back_at_once_with_its_reason(canary, reason):
    r = started()
    step = evaluate(r, canary, STABLE, 101.0, True)  # long before the interval ends
    assert step.event == ROLLED_BACK and step.rollout.status == ROLLED_BACK and step.rollout.share == 0.0
    assert step.detail.startswith(reason) and step.rollout.reason == step.detail
    assert evaluate(step.rollout, GOOD, STABLE, 500.0, True).event is None  # finished: nothing more


def test_guards_judge_only_with_enough_canary_answers_and_relative_to_stable():
    guards = Guards()
    assert breach(VersionStats(finals=1, empty_finals=1), STABLE, guards) is None  # one answer: not judged
    noisy_stable = VersionStats(finals=10, empty_finals=5, p99_ms=900)
    assert breach(VersionStats(finals=4, empty_finals=2, p99_ms=900), noisy_stable, guards) is None
    assert breach(VersionStats(finals=4, p99_ms=1850), STABLE, guards) is None  # within stable + slack
    # no stable latency yet: only the absolute limit, when set, judges latency
    assert breach(VersionStats(finals=4, p99_ms=9000), VersionStats(), guards) is None
    capped = Guards(p99_max_ms=5000)
    assert "above the limit 5000 ms" in breach(VersionStats(finals=4, p99_ms=9000), VersionStats(), capped)


def test_with_a_probe_set_a_step_waits_for_both_scores_and_a_worse_wer_rolls_back():
    r = dataclasses.replace(started(), probe=True)
    scored = dataclasses.replace(GOOD, probe_wer=0.06)
    stable = dataclasses.replace(STABLE, probe_wer=0.04)
    assert evaluate(r, GOOD, stable, 150.0, True).event is None  # the canary not scored yet: the step waits
    assert evaluate(r, scored, STABLE, 150.0, True).event is None  # stable not scored yet
    step = evaluate(r, scored, stable, 150.0, True)
    assert step.event == "advanced" and "probe WER 6.0% vs stable 4.0%" in step.detail
    garbage = dataclasses.replace(GOOD, probe_wer=1.0)  # prompt, non-empty answers: only WER tells
    step = evaluate(r, garbage, stable, 101.0, True)
    assert step.event == ROLLED_BACK and step.detail == "probe WER 100.0% vs stable 4.0%: more than 5.0% above"
    assert breach(garbage, stable, Guards(max_wer_increase=1.0)) is None


def test_sessions_keep_their_version_and_the_share_is_respected():
    sessions = [f"device-{i}/session-{i}" for i in range(4000)]
    canary = [s for s in sessions if to_canary(s, 0.25)]
    assert 0.22 < len(canary) / len(sessions) < 0.28
    assert canary == [s for s in sessions if to_canary(s, 0.25)]  # the same answer every time
    assert set(canary) <= {s for s in sessions if to_canary(s, 0.5)}  # a larger share keeps them
    assert not any(to_canary(s, 0.0) for s in sessions) and all(to_canary(s, 1.0) for s in sessions)


def test_rollout_state_round_trips_through_its_dict():
    r = started()
    assert Rollout.from_dict(r.to_dict()) == r


def test_bad_steps_intervals_guards_and_versions_are_config_errors(tmp_path):
    assert parse_steps("5,25,50,100") == (5, 25, 50, 100) and parse_steps([100]) == (100,)
    for bad in ("5,25", "50,25,100", "0,100", "5,x,100", "", "100,100"):
        with pytest.raises(ConfigError, match="rollout steps"):
            parse_steps(bad)
    assert parse_interval("60s") == 60 and parse_interval("2m") == 120 and parse_interval(30) == 30
    for bad in ("0", "soon", "-5s", "2d", "90000"):
        with pytest.raises(ConfigError, match="rollout interval"):
            parse_interval(bad)
    with pytest.raises(ConfigError, match="min_finals"):
        Guards(min_finals=0)
    with pytest.raises(ConfigError, match="guards"):
        build_checked(Guards, {"p99_ratio": "high"}, "guards")
    with pytest.raises(ConfigError, match="unknown keys max_latency"):
        build_checked(Guards, {"max_latency": 1}, "guards")
    config = tmp_path / "cluster.yaml"
    config.write_text("pools:\n  - model: tiny.en\n    versions:\n      v2: {threads: 2, shard_arg: [--x]}\n")
    with pytest.raises(ConfigError, match=r"pools\[0\].versions.v2: unknown keys shard_arg"):
        load_config(config)
    config.write_text("pools:\n  - model: tiny.en\n    versions:\n      v2: {threads: 2, int8: false}\n")
    pool = load_config(config).pools[0]
    v2 = pool.for_version("v2")
    assert (v2.version, v2.threads, v2.int8) == ("v2", 2, False) and pool.for_version("default") == pool
    with pytest.raises(ConfigError, match="has no version 'v3'; versions: default, v2"):
        pool.for_version("v3")
    config.write_text("pools:\n  - model: tiny.en\n    version: v9\n")
    with pytest.raises(ConfigError, match="version 'v9' is not in its versions"):
        load_config(config)


def test_a_restarted_coordinator_resumes_rollouts_and_keeps_promoted_versions(tmp_path):
    """Rollouts, stable versions and the decision log survive in the state store (SQLite)."""
    from splitasr.cloud.coordinator.config import PoolConfig, PoolVersion
    from splitasr.cloud.coordinator.controller import PoolController
    from splitasr.cloud.coordinator.registry import Registry
    from splitasr.cloud.coordinator.rollouts import Rollouts
    from splitasr.cloud.coordinator.state import StateStore

    pool = PoolConfig(versions={"v2": PoolVersion(threads=2), "v3": PoolVersion()})

    def coordinator(state: StateStore) -> Rollouts:
        registry = Registry()
        controllers = {pool.model: PoolController(pool, registry, None)}
        make = lambda p: PoolController(p, registry, None)  # noqa: E731  (no backend: nothing is started)
        rollouts = Rollouts({pool.model: pool}, registry, controllers, make, clock=lambda: 0.0)
        rollouts.restore(state)
        return rollouts

    state = StateStore(tmp_path / "state.db")
    first = coordinator(state)
    with pytest.raises(ConfigError, match="has no version 'v9'"):
        first.start("tiny.en", "v9", (100,), 30.0, Guards())
    first.start("tiny.en", "v2", (50, 100), 30.0, Guards(min_finals=5))
    with pytest.raises(ConfigError, match="already rolling out v2"):
        first.start("tiny.en", "v3", (100,), 30.0, Guards())

    second = coordinator(state)  # the restarted coordinator
    r = second.rollouts["tiny.en"]
    assert (r.status, r.canary, r.steps, r.guards.min_finals, r.step_started) == (RUNNING, "v2", (50, 100), 5, None)
    assert second.canaries["tiny.en"].pool.version == "v2" and second.canaries["tiny.en"].pool.threads == 2
    assert [e["event"] for e in second.log] == ["started"]
    second.promote("tiny.en")

    third = coordinator(state)
    assert third.controllers["tiny.en"].pool.version == "v2" and not third.canaries
    assert third.rollouts["tiny.en"].status == PROMOTED
    assert [e["event"] for e in third.log] == ["started", PROMOTED]
    with pytest.raises(ConfigError, match="already runs version v2"):
        third.start("tiny.en", "v2", (100,), 30.0, Guards())
    state.close()


def test_probe_sets_are_checked_when_the_coordinator_builds_them(tmp_path):
    with pytest.raises(ConfigError, match="probe_clips must be in"):
        build_checked(PoolConfig, {"probe_clips": 0}, "pool")
    with pytest.raises(ConfigError, match="not found"):
        probe_entries(tmp_path / "none.jsonl", ("en",), 3)
    with pytest.raises(ConfigError, match="no clip in the pool's languages xx"):
        probe_entries(REAL_MANIFEST, ("xx",), 3)
    lost = tmp_path / "lost.jsonl"
    lost.write_text('{"file": "gone.flac", "text": "hello", "language": "en"}\n')
    with pytest.raises(ConfigError, match="missing audio"):
        probe_entries(lost, ("en",), 3)
    entries = probe_entries(REAL_MANIFEST, ("de", "fr"), 2)
    assert len(entries) == 2 and {e.language for e in entries} <= {"de", "fr"}
