"""The simulator's pieces with a fake clock: arrival traces in any time format, and the baseline
autoscalers (HPA, KPA, Ray Serve) behaving as their implementations do."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from splitasr.cloud.simulate.baselines import HPA, KPA, Observation, RayServe
from splitasr.cloud.simulate.trace import load_arrivals, transform
from splitasr.shared.errors import ConfigError

TRACES = Path(__file__).resolve().parent.parent / "samples" / "traces"
AZURE_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


@pytest.mark.parametrize(
    ("name", "rows", "minutes", "rate"),
    [("azure_llm_2023_conv.csv", 19_366, 58.4, 5.53), ("azure_llm_2023_code.csv", 8_819, 57.3, 2.57)],
)
def test_shipped_traces_load_with_their_format_and_without(name, rows, minutes, rate):
    arrivals = load_arrivals(TRACES / name, "TIMESTAMP", time_format=AZURE_FORMAT)
    assert arrivals.size == rows and arrivals[0] == 0.0 and np.all(np.diff(arrivals) >= 0)
    assert arrivals[-1] / 60 == pytest.approx(minutes, abs=0.1)
    assert rows / arrivals[-1] == pytest.approx(rate, rel=0.02)
    # 7 fractional digits, read as ISO 8601 when no format is given
    assert np.allclose(load_arrivals(TRACES / name, "TIMESTAMP"), arrivals)


def test_other_columns_units_month_long_spans_and_idle_stretches(tmp_path):
    rng = np.random.default_rng(3)
    busy = np.sort(rng.uniform(0, 3600, 500))  # an hour of traffic on day 1, then on day 30
    seconds = np.concatenate([busy, busy + 29 * 86_400])
    path = tmp_path / "ms.csv"
    path.write_text("id,timestamp_ms\n" + "".join(f"{i},{int(s * 1000)}\n" for i, s in enumerate(seconds)))
    arrivals = load_arrivals(path, "timestamp_ms", time_unit="ms")
    assert arrivals.size == 1000 and arrivals[-1] == pytest.approx(seconds[-1] - seconds[0], abs=0.002)
    assert np.diff(arrivals).max() > 28 * 86_400  # the idle month is kept, not filled
    path = tmp_path / "gmt.csv"
    path.write_text("gmt_create,size\n2024-03-01 10:00:05,1\n2024-03-01 10:00:01,2\n2024-03-31 10:00:01,3\n")
    assert load_arrivals(path, "gmt_create", time_format="%Y-%m-%d %H:%M:%S").tolist() == [0.0, 4.0, 2_592_000.0]


def test_bad_traces_are_explained(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("t\n1.5\nsoon\n")
    with pytest.raises(ConfigError, match="line 3"):
        load_arrivals(path, "t")
    with pytest.raises(ConfigError, match="no column 'time'"):
        load_arrivals(path, "time")
    with pytest.raises(ConfigError, match="unit"):
        load_arrivals(path, "t", time_unit="fortnight")
    with pytest.raises(ConfigError, match="not both"):
        load_arrivals(path, "t", time_format="%S", time_unit="s")


def test_scale_and_speedup_keep_the_trace_shape():
    arrivals = load_arrivals(TRACES / "azure_llm_2023_code.csv", "TIMESTAMP", time_format=AZURE_FORMAT)
    assert np.array_equal(transform(arrivals, 1.0), arrivals)
    ten = transform(arrivals, 10.0, seed=1)
    mean_gap = arrivals[-1] / (arrivals.size - 1)  # the last arrival's copies fall within one mean gap
    assert ten.size == 10 * arrivals.size and ten[-1] <= arrivals[-1] + mean_gap
    bins = np.arange(0, arrivals[-1] + 60, 60)
    per_minute, scaled = np.histogram(arrivals, bins)[0], np.histogram(ten, bins)[0]
    assert np.corrcoef(per_minute, scaled)[0, 1] > 0.95  # bursts stay where they were
    half = transform(arrivals, 0.5, seed=1)
    assert abs(half.size - arrivals.size / 2) < 4 * np.sqrt(arrivals.size)
    assert transform(arrivals, 1.0, speedup=4.0)[-1] == pytest.approx(arrivals[-1] / 4)
    with pytest.raises(ConfigError):
        transform(arrivals, 0.0)


def run(policy, load, seconds: float, step: float = 1.0, start_replicas: int = 1):
    """Drive ``policy`` with ``load(t)`` (pool metric); replicas follow decisions at once."""
    replicas, out, t = start_replicas, [], 0.0
    while t <= seconds:
        replicas = policy.decide(Observation(t, replicas, load(t, replicas)))
        out.append((t, replicas))
        t += step
    return out


def test_hpa_syncs_every_15_s_within_tolerance_limits_scale_up_and_stabilises_scale_down():
    hpa = HPA(target=0.6)
    # 1 pod at 0.64 busy: within the 0.1 tolerance of 0.6, no change
    assert run(hpa, lambda t, r: 0.64, 60)[-1][1] == 1
    hpa = HPA(target=0.5)
    steps = run(hpa, lambda t, r: 20.0 if t < 120 else 0.5, 900)  # 40 pods' worth of load, then 1
    by_t = dict(steps)
    assert by_t[0.0] == 5 and by_t[14.0] == 5  # +4 beats 2x at one pod; nothing until the next sync
    assert by_t[15.0] == 10 and by_t[30.0] == 20 and by_t[45.0] == 40  # 2x per period
    assert by_t[400.0] == 40  # the 300 s window still holds 40
    assert by_t[450.0] == 1  # stabilisation over: straight down


def test_kpa_panics_at_twice_the_pods_and_never_scales_down_while_panicking():
    kpa = KPA(target=10)  # 7 sessions per pod at 0.7 utilisation
    steps = dict(run(kpa, lambda t, r: 70.0 if 20 <= t < 40 else 7.0, 200))
    assert steps[18.0] == 1
    assert steps[22.0] == 6  # the 6 s panic window's mean (38.5) already asks for 6 pods: panic, scale at once
    assert steps[26.0] == 10  # the window is all 70 now
    assert steps[60.0] == 10  # load fell at 40 s, but panic holds the pods ...
    assert steps[80.0] == 10  # ... until a stable window (60 s) has passed since the last panic (22 s) ...
    assert steps[82.0] == 5  # ... then down, at most by half per tick
    assert steps[200.0] == 1


def test_ray_serve_waits_30_s_to_scale_up_and_600_s_to_scale_down():
    ray = RayServe()
    steps = dict(run(ray, lambda t, r: 20.0 if t < 300 else 2.0, 1000))  # 10 replicas' worth, then 1
    assert steps[29.0] == 1 and steps[30.0] > 1  # the look-back mean rises; after 30 s of "more" it scales
    assert steps[120.0] == 10
    assert steps[899.0] == 10 and steps[1000.0] == 1  # 600 s of "fewer" (from 330 s, the look-back) first


def simulate_cli(tmp_path, trace: Path, *extra: str) -> dict:
    from splitasr.cli.main import main

    out = tmp_path / "sim.json"
    assert (
        main(["simulate", "--trace", str(trace), *extra, "--json", str(out), "--plot", str(tmp_path / "sim.png")]) == 0
    )
    assert (tmp_path / "sim.png").stat().st_size > 0
    return json.loads(out.read_text())


def test_simulate_compares_every_policy_on_a_trace(tmp_path):
    rows = (TRACES / "azure_llm_2023_conv.csv").read_text().splitlines()[:3001]  # the first ~9 minutes
    trace = tmp_path / "slice.csv"
    trace.write_text("\n".join(rows) + "\n")
    result = simulate_cli(tmp_path, trace, "--time-column", "TIMESTAMP", "--time-format", AZURE_FORMAT)
    policies = result["policies"]
    assert set(policies) == {"static", "hpa", "kpa", "ray", "hybrid", "oracle"}
    for name, r in policies.items():
        assert 0 <= r["slo_attainment"] <= 1 and r["p50_s"] >= 0.8 and r["replica_seconds"] > 0, name
        assert set(r["replica_seconds_by_stage"]) == {"enc_a", "enc_b", "dec"}
    assert policies["oracle"]["slo_attainment"] == 1.0
    assert policies["static"]["replica_seconds"] >= policies["oracle"]["replica_seconds"]
    assert result["sessions"] == 3000 and result["session_model"]["mean_session_s"] > 30


def test_month_long_trace_with_idle_stretches(tmp_path):
    rng = np.random.default_rng(5)
    busy = np.sort(rng.uniform(0, 1800, 2000))  # half an hour of traffic on day 1 and on day 30
    seconds = np.concatenate([busy, busy + 29 * 86_400])
    trace = tmp_path / "month.csv"
    trace.write_text("timestamp_ms\n" + "".join(f"{int(s * 1000)}\n" for s in seconds))
    started = time.perf_counter()
    result = simulate_cli(
        tmp_path, trace, "--time-column", "timestamp_ms", "--time-unit", "ms", "--policies", "hybrid,oracle"
    )
    assert time.perf_counter() - started < 60  # the idle month is stepped through 5 minutes at a time
    hybrid = result["policies"]["hybrid"]
    assert result["seconds"] > 29 * 86_400 and hybrid["slo_attainment"] > 0.99
    idle = [p for p in hybrid["timeline"] if 2 * 86_400 < p["t"] < 28 * 86_400]
    # scaled in: the minimum of each stage, and stage 0's warm spare
    assert idle and all((p["replicas_enc_a"], p["replicas_enc_b"], p["replicas_dec"]) == (2, 1, 1) for p in idle)


def test_failures_cost_attainment_and_replicas_come_back(tmp_path):
    from splitasr.cloud.simulate.engine import Load, Options, simulate
    from splitasr.cloud.simulate.service import ServiceModel
    from splitasr.cloud.simulate.workload import SessionModel

    profile = SessionModel.from_devset().profile(sessions=2000)
    service = ServiceModel.calibrated(profile.speaking_share)
    arrivals = np.sort(np.random.default_rng(2).uniform(0, 1200, 6000))  # 5 sessions/s for 20 minutes
    load = Load.of(arrivals, profile)
    calm = simulate("hybrid", load, profile, service, Options())
    # a failure per replica a minute: FINALs in flight on a lost replica are late, replacements come back
    some = simulate("hybrid", load, profile, service, Options(failure_rate_per_h=60.0))
    assert some["p99_s"] > calm["p99_s"] and some["slo_attainment"] >= 0.99
    assert all(min(p[f"replicas_{s}"] for s in ("enc_a", "enc_b", "dec")) >= 1 for p in some["timeline"])
    # every replica failing about once a second: the pools cannot stay up
    brutal = simulate("hybrid", load, profile, service, Options(failure_rate_per_h=3600.0))
    assert brutal["slo_attainment"] < 0.5 < calm["slo_attainment"]


def test_targets_and_hybrid_settings_are_options_and_bad_ones_are_refused(tmp_path):
    from splitasr.cli.simulate import parse_settings
    from splitasr.cloud.simulate.engine import Options
    from splitasr.shared.errors import ConfigError

    assert parse_settings(["scale_in_stabilization_s=30", "warm_spares=0"], "--hybrid") == (
        ("scale_in_stabilization_s", 30.0),
        ("warm_spares", 0.0),
    )
    for bad in (["hold"], ["scale_in_stabilization_s=soon"]):
        with pytest.raises(ConfigError, match="KEY=NUMBER"):
            parse_settings(bad, "--hybrid")
    with pytest.raises(ConfigError, match="unknown hybrid autoscaler settings"):
        Options(hybrid=(("signal", 1.0),))
    with pytest.raises(ConfigError):
        Options(target_busy=1.5)
    rows = (TRACES / "azure_llm_2023_conv.csv").read_text().splitlines()[:1501]
    trace = tmp_path / "slice.csv"
    trace.write_text("\n".join(rows) + "\n")
    args = ["--time-column", "TIMESTAMP", "--time-format", AZURE_FORMAT, "--policies", "hybrid,oracle"]
    loose = simulate_cli(tmp_path, trace, *args)["policies"]["hybrid"]
    tight = simulate_cli(
        tmp_path,
        trace,
        *args,
        "--target-busy",
        "0.9",
        "--target-sessions",
        "50",
        "--hybrid",
        "warm_spares=0",
        "--hybrid",
        "max_replicas=500",
    )["policies"]["hybrid"]
    assert tight["replica_seconds"] < loose["replica_seconds"]  # fuller replicas, no spare: fewer of them


def test_zones_go_through_the_router_and_hangs_through_the_breaker():
    import random

    from splitasr.cloud.coordinator.breaker import BreakerConfig
    from splitasr.cloud.simulate.engine import Load, Options, simulate
    from splitasr.cloud.simulate.placement import cross_zone_share, hang_detection_s, spread
    from splitasr.cloud.simulate.service import ServiceModel
    from splitasr.cloud.simulate.workload import SessionModel
    from splitasr.shared.errors import ConfigError

    rng = random.Random(0)
    assert spread(5, 2) == [3, 2] and spread(1, 3) == [1, 0, 0]
    # 70 of 100 sessions in zone a, one 64-session replica per zone: 6 overflow to zone b
    assert cross_zone_share(100, {"a": 0.7, "b": 0.3}, 2, 64, rng) == pytest.approx(0.06)
    assert cross_zone_share(100, {"a": 0.5, "b": 0.5}, 2, 64, rng) == 0.0
    assert cross_zone_share(100, {"a": 1.0}, 1, 64, rng) == 0.0
    # heartbeat silence opens the breaker after its timeout, less the phase of the hang
    assert hang_detection_s(BreakerConfig(heartbeat_timeout_s=2.0), heartbeat_s=1.0) == pytest.approx(1.5, abs=0.05)
    with pytest.raises(ConfigError, match="add up to 1"):
        Options(zones=(("a", 0.7), ("b", 0.7)))

    profile = SessionModel.from_devset().profile(sessions=2000)
    service = ServiceModel.calibrated(profile.speaking_share)
    load = Load.of(np.sort(np.random.default_rng(3).uniform(0, 900, 3000)), profile)
    # every session in zone a, which has about half of the replicas: the router sends the overflow to b
    tight = {"target_sessions": 58.0, "target_busy": 0.9}
    even = simulate("hybrid", load, profile, service, Options(**tight))
    skewed = simulate(
        "hybrid", load, profile, service, Options(**tight, zones=(("a", 1.0), ("b", 0.0)), cross_zone_s=0.5)
    )
    assert even["cross_zone_share"] == 0 and 0.02 < skewed["cross_zone_share"] < 0.5
    assert skewed["p99_s"] > even["p99_s"] + 0.4
    crashes = simulate("hybrid", load, profile, service, Options(failure_rate_per_h=60.0))
    hangs = simulate("hybrid", load, profile, service, Options(failure_rate_per_h=60.0, hang_share=1.0))
    assert hangs["p99_s"] > crashes["p99_s"]
