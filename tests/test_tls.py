"""TLS as an option: a chain of shards serving wss:// with a self-signed certificate made here; the
stage-to-stage calls and the edge verify it against $SPLITASR_TLS_CA, and refuse it without."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import urllib.request

import pytest

from splitasr.cloud.local_cluster import ChainSpec, LocalCluster
from splitasr.edge.agent import AgentOptions, EdgeAgent
from splitasr.edge.audio_in import file_source
from splitasr.shared import tls
from splitasr.shared.errors import ConfigError, EdgeError
from splitasr.shared.wer import WERTally


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture(scope="module")
def tls_chain(tmp_path_factory, tiny_artifacts, certificate):
    cert, key = certificate
    with pytest.MonkeyPatch.context() as env:
        env.setenv(tls.CA_ENV, str(cert))  # the shards (child processes) trust it for their stage calls
        chain = ChainSpec("tiny.en", enc_a=1, int8=True, shard_args=("--tls-cert", str(cert), "--tls-key", str(key)))
        with LocalCluster([chain], workdir=tmp_path_factory.mktemp("tls-chain")) as cluster:
            yield cluster


def _stream(url: str, clip, reconnects: int = 20):
    options = AgentOptions(shards=(url,), device_id="tls-edge", language="en", max_reconnects=reconnects)
    return asyncio.run(EdgeAgent(options).run(file_source(clip, realtime=False)))


def test_streams_over_wss_through_a_tls_chain(tls_chain, certificate, real_manifest, monkeypatch):
    monkeypatch.setenv(tls.CA_ENV, str(certificate[0]))
    urls = tls_chain.stage0_urls("tiny.en")
    assert all(s["url"].startswith("wss://") for s in tls_chain.describe())
    clip = next(e for e in real_manifest if e.language == "en" and e.duration_s and 4 < e.duration_s < 10)
    report = _stream(urls[0], clip.file)
    tally = WERTally()
    tally.add(clip.reference, " ".join(f.text for f in report.finals))
    assert len(report.finals) == report.utterances >= 1 and tally.wer < 0.35, report.finals
    health = urllib.request.urlopen(
        urls[0].replace("wss://", "https://") + "/healthz", context=ssl.create_default_context(cafile=certificate[0])
    )
    assert json.loads(health.read())["status"] == "ok"


def test_an_untrusted_certificate_is_refused(tls_chain, real_manifest, monkeypatch):
    monkeypatch.delenv(tls.CA_ENV, raising=False)  # only the system's CAs: a self-signed certificate fails
    clip = next(e for e in real_manifest if e.language == "en")
    with pytest.raises(EdgeError, match="no shard accepted the session"):
        _stream(tls_chain.stage0_urls("tiny.en")[0], clip.file, reconnects=2)
    plain = tls_chain.stage0_urls("tiny.en")[0].replace("wss://", "ws://")  # no TLS against a TLS port
    with pytest.raises(EdgeError, match="no shard accepted the session"):
        _stream(plain, clip.file, reconnects=2)


def test_tls_configuration_errors_are_clear(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="cannot load the TLS certificate"):
        tls.server_context(str(tmp_path / "missing.pem"), str(tmp_path / "missing.key"))
    (tmp_path / "bad.pem").write_text("not a certificate")
    monkeypatch.setenv(tls.CA_ENV, str(tmp_path / "bad.pem"))
    with pytest.raises(ConfigError, match="SPLITASR_TLS_CA"):
        tls.client_ssl()


def test_a_coordinator_on_https_with_its_shards_and_a_routed_edge(tmp_path, certificate, real_manifest, monkeypatch):
    """``splitasr up`` with tls_cert/tls_key: the shards it starts register and heartbeat over
    https (trusting $SPLITASR_TLS_CA), the admin CLI and an edge's route request verify it, and a
    plain http client gets nothing from the port."""
    from tests.cluster import CoordinatorProcess

    cert, key = certificate
    monkeypatch.setenv(tls.CA_ENV, str(cert))
    config = {"pools": [{"model": "tiny.en", "int8": True}], "tls_cert": str(cert), "tls_key": str(key)}
    with CoordinatorProcess(tmp_path, config) as cluster:
        assert cluster.url.startswith("https://")
        assert {s["stage"] for s in cluster.pool()["shards"]} == {"enc_a", "enc_b", "dec"}  # registered over https
        status = cluster.cli("status")
        assert status.returncode == 0 and "enc_a" in status.stdout, status.stderr
        clip = next(e for e in real_manifest if e.language == "en" and e.duration_s and 4 < e.duration_s < 10)
        options = AgentOptions(coordinator=cluster.url, device_id="tls-edge", language="en")
        report = asyncio.run(EdgeAgent(options).run(file_source(clip.file, realtime=False)))
        assert len(report.finals) == report.utterances >= 1
        with pytest.raises(OSError):  # http:// against the https port: no answer
            urllib.request.urlopen(cluster.url.replace("https://", "http://") + "/healthz", timeout=5)
        monkeypatch.delenv(tls.CA_ENV)
        refused = cluster.cli("status")  # without the CA, the CLI refuses the certificate
        assert refused.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in refused.stderr, refused.stderr
