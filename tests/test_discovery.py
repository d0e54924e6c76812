"""zeroconf discovery of the coordinator, inside a private network namespace (no multicast leaves it)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def probe() -> None:
    """Run inside the namespace: a real coordinator advertises itself; discover() must find it."""
    from aiohttp import web

    from splitasr.cloud.coordinator.config import ClusterConfig
    from splitasr.cloud.coordinator.service import Coordinator, create_app
    from splitasr.shared.discovery import Advertiser, discover

    async def main() -> dict:
        runner = web.AppRunner(create_app(Coordinator(ClusterConfig(admin_token="t"), backend=None)))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        before = await asyncio.to_thread(discover, 1.0, "127.0.0.1")
        advertiser = Advertiser("127.0.0.1", port)
        await advertiser.start()
        try:
            found = await asyncio.to_thread(discover, 10.0, "127.0.0.1")
            health = await asyncio.to_thread(lambda: json.loads(urllib.request.urlopen(f"{found}/healthz").read()))
        finally:
            await advertiser.close()
            await runner.cleanup()
        return {"port": port, "before": before, "found": found, "health": health}

    print(json.dumps(asyncio.run(main())))


def test_edge_finds_the_coordinator_by_zeroconf_in_a_private_namespace():
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs unshare (util-linux) and ip (iproute2)")
    code = "from tests.test_discovery import probe; probe()"
    script = f"ip link set lo up && exec {sys.executable} -c '{code}'"
    done = subprocess.run(["unshare", "-n", "sh", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    if "Operation not permitted" in done.stderr and done.returncode != 0:
        pytest.skip("creating a network namespace is not permitted here (needs root or user namespaces)")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["before"] is None  # nothing is advertised before the coordinator does
    assert result["found"] == f"http://127.0.0.1:{result['port']}"
    assert result["health"] == {"status": "ok"}
