"""Canary rollouts on a real cluster (``splitasr up`` + local shard processes + real-speech edges).

A deliberately slow canary version is rolled back by its p99 guard, by itself, within two step
intervals, while the sessions on the stable version see no error and every utterance gets exactly
one FINAL; a good canary goes through every step to 100 % and becomes the stable version, and the
old version's shards are retired (drained stage by stage) without losing an utterance. A canary that
answers promptly with garbage text passes every rate and latency guard; the pool's WER probe (real
speech with references) rolls it back.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from splitasr.cloud.coordinator.rollout import to_canary
from tests.browser import cells, render
from tests.cluster import FIXED_ONE, LONG_REAL, CoordinatorProcess, stream_base, wait_until

pytestmark = pytest.mark.integration

FIXED = FIXED_ONE
CONFIG = {
    "decision_period_s": 0.5,
    "pools": [
        {
            "model": "tiny.en",
            "zones": ["a"],
            "autoscaler": FIXED,
            "versions": {
                "slow": {"shard_args": ["--inject-fault", "slow:5000"]},  # every FINAL 5 s late
                "v2": {"threads": 1},
                "garbage": {"shard_args": ["--inject-fault", "garbage"]},  # prompt, wrong text
            },
        }
    ],
}
INTERVAL_S = 20.0
P99_SLACK_MS = 2500.0
REAL = Path(__file__).resolve().parents[1] / "samples" / "real"
PROBE_CLIPS = ("en/en_ljspeech_LJ001-0009.flac", "en/en_ljspeech_LJ001-0018.flac")  # tune split


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, tiny_artifacts):
    tmp = tmp_path_factory.mktemp("canary")
    lines = (REAL / "manifest.jsonl").read_text().splitlines()
    entries = {json.loads(line)["file"]: json.loads(line) for line in lines}
    manifest = tmp / "probe.jsonl"
    manifest.write_text("".join(json.dumps({**entries[f], "file": str(REAL / f)}) + "\n" for f in PROBE_CLIPS))
    config = {**CONFIG, "pools": [{**CONFIG["pools"][0], "probe": str(manifest), "probe_clips": len(PROBE_CLIPS)}]}
    with CoordinatorProcess(tmp, config) as c:
        yield c


def sessions(n: int, canary: int, share: float, tag: str) -> list[tuple[str, bool]]:
    """``n`` session ids of which ``canary`` hash into the canary share (so the split is known)."""
    picked, i = [], 0
    want = {True: canary, False: n - canary}
    while any(want.values()):
        sid = f"{tag}-{i:04d}"
        side = to_canary(sid, share)
        if want[side]:
            want[side] -= 1
            picked.append((sid, side))
        i += 1
    return picked


def rollout(cluster) -> dict:
    return next(r for r in cluster.get("/v1/rollouts")["rollouts"] if r["pool"] == "tiny.en")


def log_time(cluster, event: str, after: float) -> float:
    entry = next(e for e in cluster.get("/v1/rollouts")["log"] if e["event"] == event and e["time"] >= after)
    return entry["time"]


def versions_of(cluster) -> dict[str, str]:
    """stage-0 shard url -> its pool version."""
    return {stream_base(s["url"]): s["config_version"] for s in cluster.stage0()}


def stream(cluster, edges, picked, tag: str):
    futures = []
    for i, (sid, _) in enumerate(picked):
        futures.append(edges.start(LONG_REAL[i % len(LONG_REAL)], cluster.url, device_id=f"{tag}-{i}", session_id=sid))
    return futures


def finished(futures) -> list:
    reports = [f.result(timeout=240) for f in futures]
    for r in reports:
        assert r.utterances >= 2 and r.duplicate_finals == 0
        assert sorted(f.utt for f in r.finals) == list(range(r.utterances)), "an utterance lost or answered twice"
    return reports


def start(cluster, version: str, steps: str) -> None:
    # The p99 guard compares versions under different loads: at the 100 % step every new session is on
    # the canary's single chain while stable's p99 is from a lighter load, so on a busy 2-core runner a
    # good canary can be ~1.5 s behind. The slow version is 5 s late on every FINAL: still far above.
    done = cluster.cli(
        "rollout",
        "start",
        "tiny.en",
        "--to",
        version,
        "--steps",
        steps,
        "--interval",
        f"{INTERVAL_S}s",
        "--guard",
        f"p99_slack_ms={P99_SLACK_MS:.0f}",
    )
    assert done.returncode == 0, done.stderr


def test_a_slow_canary_is_rolled_back_and_a_good_one_promoted(cluster, edges):
    # -- 1. the slow canary ------------------------------------------------------------------
    t0 = time.time()
    start(cluster, "slow", "50,100")
    bad = cluster.cli("rollout", "start", "tiny.en", "--to", "v2")
    assert bad.returncode != 0 and "already rolling out slow" in bad.stderr
    wait_until(lambda: rollout(cluster)["share"] == 0.5, 90, "the slow canary to serve")
    serving_at = log_time(cluster, "started-step", t0)
    stable_errors_before = sum(s["final_errors"] for s in cluster.stage0() if s["config_version"] == "default")
    picked = sessions(6, 3, 0.5, "slow")
    futures = stream(cluster, edges, picked, "slow")
    try:
        wait_until(lambda: rollout(cluster)["status"] != "running", 3 * INTERVAL_S, "the slow canary's rollback")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}: {rollout(cluster)}; {cluster.stage0()}") from None
    r = rollout(cluster)
    rolled_back_at = log_time(cluster, "rolled_back", t0)
    assert r["status"] == "rolled_back" and r["reason"].startswith("p99 FINAL latency"), r
    assert rolled_back_at - serving_at < 2 * INTERVAL_S
    reports = finished(futures)
    by_url = versions_of(cluster)
    canary_sessions = [rep for rep, (_, side) in zip(reports, picked, strict=True) if side]
    stable_sessions = [rep for rep, (_, side) in zip(reports, picked, strict=True) if not side]
    for rep in stable_sessions:  # never moved, never an error
        assert rep.reconnects == 0 and len({stream_base(u) for u in rep.shards}) == 1
        assert by_url.get(stream_base(rep.shards[0])) == "default"
    moved = [r for r in canary_sessions if len(r.shards) >= 2 and by_url.get(stream_base(r.shards[-1])) == "default"]
    assert moved, f"no canary session moved to stable: {[(r.shards, r.utterances) for r in canary_sessions]} {by_url}"
    stable_errors = sum(s["final_errors"] for s in cluster.stage0() if s["config_version"] == "default")
    assert stable_errors == stable_errors_before == 0
    wait_until(lambda: not [s for s in cluster.pool()["shards"] if s["config_version"] == "slow"], 60, "retired")
    dom = render(f"{cluster.url}/ui")
    assert cells(dom, "rollout")[0].startswith("default → slow: rolled_back, canary share 0% p99 FINAL latency")
    assert "rolled_back" in cells(dom, "change")
    print(
        f"\nslow canary: rolled back {rolled_back_at - serving_at:.1f} s after it began serving "
        f"(interval {INTERVAL_S:.0f} s): {r['reason']}; "
        f"{sum(rep.utterances for rep in reports)} utterances, {sum(len(rep.finals) for rep in reports)} FINALs, "
        f"{len(moved)} of {len(canary_sessions)} canary sessions moved to stable"
    )

    # -- 2. the good canary ------------------------------------------------------------------
    t1 = time.time()
    start(cluster, "v2", "50,100")
    wait_until(lambda: rollout(cluster)["share"] == 0.5, 90, "the v2 canary to serve")
    serving_at = log_time(cluster, "started-step", t1)
    picked = sessions(4, 2, 0.5, "good")
    futures = stream(cluster, edges, picked, "good")
    wait_until(lambda: rollout(cluster)["share"] == 1.0, 4 * INTERVAL_S, "the v2 canary's 100% step")
    futures += stream(cluster, edges, sessions(2, 2, 1.0, "late"), "late")  # new sessions: all on the canary
    wait_until(lambda: rollout(cluster)["status"] != "running", 4 * INTERVAL_S, "the v2 canary's promotion")
    r = rollout(cluster)
    assert r["status"] == "promoted", (r["reason"], cluster.get("/v1/rollouts")["log"][-6:])
    promoted_at = log_time(cluster, "promoted", t1)
    assert cluster.get("/v1/rollouts")["stable"] == {"tiny.en": "v2"} and cluster.pool()["version"] == "v2"
    reports = finished(futures)
    wait_until(
        lambda: {s["config_version"] for s in cluster.pool()["shards"]} == {"v2"}, 90, "the default version retired"
    )
    assert {s["stage"] for s in cluster.pool()["shards"]} == {"enc_a", "enc_b", "dec"}
    print(
        f"good canary: promoted {promoted_at - serving_at:.1f} s after it began serving (2 steps of "
        f"{INTERVAL_S:.0f} s); {sum(rep.utterances for rep in reports)} utterances, "
        f"{sum(len(rep.finals) for rep in reports)} FINALs, duplicates {sum(rep.duplicate_finals for rep in reports)}"
    )


def test_a_garbage_canary_is_rolled_back_by_the_wer_probe(cluster, edges):
    """Prompt, non-empty, wrong FINALs: only the probe's WER tells them apart from stable's."""
    t0 = time.time()
    stable = cluster.get("/v1/rollouts")["stable"]["tiny.en"]
    start(cluster, "garbage", "50,100")
    wait_until(lambda: rollout(cluster)["share"] == 0.5, 90, "the garbage canary to serve")
    serving_at = log_time(cluster, "started-step", t0)
    picked = sessions(2, 1, 0.5, "garbage")
    futures = stream(cluster, edges, picked, "garbage")
    wait_until(lambda: rollout(cluster)["status"] != "running", 3 * INTERVAL_S, "the garbage canary's rollback")
    r = rollout(cluster)
    rolled_back_at = log_time(cluster, "rolled_back", t0)
    assert r["status"] == "rolled_back" and r["reason"].startswith("probe WER 100.0% vs stable"), r
    assert rolled_back_at - serving_at < 2 * INTERVAL_S
    probed = next(e for e in cluster.get("/v1/rollouts")["log"] if e["event"] == "probed" and e["time"] >= t0)
    reports = finished(futures)
    stable_report = next(rep for rep, (_, side) in zip(reports, picked, strict=True) if not side)
    assert stable_report.reconnects == 0 and stable_report.finals and all(f.text.strip() for f in stable_report.finals)
    wait_until(lambda: not [s for s in cluster.pool()["shards"] if s["config_version"] == "garbage"], 60, "retired")
    assert cluster.get("/v1/rollouts")["stable"]["tiny.en"] == stable
    print(
        f"\ngarbage canary: rolled back {rolled_back_at - serving_at:.1f} s after it began serving: {r['reason']}; "
        f"probe: {probed['detail']}"
    )


def test_feature_flags_change_shards_at_run_time(cluster, edges):
    """Partials off and on again, and a decoder batch limit, pushed in heartbeats without restarts."""

    def applied(version: int) -> bool:
        return all(s["flags_version"] == version for s in cluster.pool()["shards"] if s["breaker"] != "open")

    def set_flags(*args: str) -> int:
        done = cluster.cli("flags", "set", "tiny.en", *args)
        assert done.returncode == 0, done.stderr
        version = cluster.get("/v1/flags")["version"]
        wait_until(lambda: applied(version), 15, f"every shard to apply flags version {version}")
        return version

    clip = LONG_REAL[2]
    set_flags("partials=false", "max_batch=4")
    off = edges.start(clip, cluster.url, device_id="flags-off").result(timeout=180)
    assert off.partials == 0 and off.utterances >= 2 and len(off.finals) == off.utterances
    set_flags("partials=true", "partial_interval_s=0.4", "endpoint_silence_s=2.0")
    running = edges.start(clip, cluster.url, device_id="flags-on")
    agent = edges.agents[-1]
    wait_until(lambda: agent.report.flags, 30, "the session's WELCOME")
    set_flags("endpoint_silence_s=0.6")  # while the session runs: a FLAGS frame, from the next pause on
    on = running.result(timeout=180)
    assert on.partials >= 5 and len(on.finals) == on.utterances
    assert on.flags == [{"endpoint_silence_s": 2.0}, {"endpoint_silence_s": 0.6}], on.flags
    assert agent.segmenter.o.trailing_silence_s == 0.6

    for bad, message in [
        (["loudness=3"], "Extra inputs are not permitted"),
        (["max_batch=4", "--share", "0.5"], "max_batch apply to whole shards"),
        (["partial_interval_s=0"], "greater than or equal to 0.1"),
        (["partials"], "flags are FLAG=VALUE"),
    ]:
        done = cluster.cli("flags", "set", "tiny.en", *bad)
        assert done.returncode != 0 and message in done.stderr, (bad, done.stderr)
    listed = cluster.cli("flags", "list")
    assert listed.returncode == 0 and "{'partials': False, 'max_batch': 4} for 100% of devices" in listed.stdout
    status = cluster.cli("status")
    assert "{'partials': True, 'partial_interval_s': 0.4, 'endpoint_silence_s': 2.0} for 100%" in status.stdout
    dom = render(f"{cluster.url}/ui")
    assert cells(dom, "flags") == [
        '{"partials":false,"max_batch":4} for 100% of devices; '
        '{"partials":true,"partial_interval_s":0.4,"endpoint_silence_s":2} for 100% of devices; '
        '{"endpoint_silence_s":0.6} for 100% of devices'
    ]
    assert cells(dom, "change")[:3] == ["flags"] * 3 and cells(dom, "ladder") == ["0 normal"]
    cleared = cluster.cli("flags", "clear", "tiny.en")
    assert cleared.returncode == 0 and "3 rules cleared" in cleared.stdout
    version = cluster.get("/v1/flags")["version"]
    wait_until(lambda: applied(version), 15, "the cleared flags to reach every shard")
    print(
        f"\nflags: partials off -> {off.partials} partials; on at 0.4 s -> {on.partials} partials; "
        f"endpoint silence {on.flags}: {on.utterances} utterances (flags off: {off.utterances})"
    )
