"""The chaos suite, short: 4 real-time streams of real speech through `splitasr up` (two replicas of
every stage) while a random shard is SIGKILLed every 3 s, one is SIGSTOPped for 6 s and the
coordinator is SIGKILLed and started again; the same streams without faults first; then through a
static chain with fault-injecting proxies on every link (reset, 3 s stall, delay). `make chaos`
runs the long one (16 streams, 60 s, a 10 s hang)."""

from __future__ import annotations

import json

from splitasr.cloud.chaos import ChaosOptions, run_chaos
from splitasr.shared import protocol as p


def test_kills_and_a_hang_lose_nothing(tmp_path, tiny_artifacts):
    report = run_chaos(ChaosOptions(duration_s=20, streams=4, kill_every_s=3, hang_s=6), tmp_path)
    baseline, chaos = report["baseline"], report["chaos"]
    print("\n" + json.dumps({k: v for k, v in chaos.items() if k != "faults"}))
    kinds = [f["kind"] for f in chaos["faults"]]
    assert kinds.count("kill") >= 3 and kinds.count("hang") == 1 and kinds.count("coordinator") == 1, kinds
    assert report["orphans"] == []  # the restarted coordinator adopted the shards and stopped them all
    assert report["restarts"] >= kinds.count("kill") - 1  # the backend brought the killed shards back
    assert chaos["failed_streams"] == [] and chaos["lost"] == 0 and chaos["duplicates"] == 0
    assert chaos["utterances"] == baseline["utterances"] and chaos["finals"] == chaos["utterances"]
    assert chaos["wer"] <= baseline["wer"] + 0.02, (chaos["wer"], baseline["wer"])
    # work stuck on a dead or hung shard moves on within a heartbeat and a half plus a retry
    for kind in ("kill", "hang", "coordinator"):
        worst = chaos[f"{kind}_to_next_final_s"]["max"]
        assert worst is None or worst < 1.5 * p.HEARTBEAT_S + 3.0, (kind, worst)
    # the network run: the same streams through proxies that reset, stall (3 s) or delay links
    network = report["network"]
    print(json.dumps({k: v for k, v in network.items() if k not in ("faults", "texts")}))
    assert sorted({f["kind"] for f in network["faults"]}) == ["delay", "reset", "stall"], network["faults"]
    assert network["failed_streams"] == [] and network["lost"] == 0 and network["duplicates"] == 0
    assert network["finals"] == baseline["utterances"]
    assert network["wer"] <= baseline["wer"] + 0.02, (network["wer"], baseline["wer"])
    for kind in ("reset", "stall", "delay"):  # a stalled link is found like a hung shard
        worst = network[f"{kind}_to_next_final_s"]["max"]
        assert worst is None or worst < 1.5 * p.HEARTBEAT_S + 3.0, (kind, worst)
