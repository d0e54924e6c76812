"""The browser edge (``/edge``, ``cloud/coordinator/static/edge.js``) in headless Chromium, fed a
real long-form recording through Chromium's fake microphone, against a real local cluster: its
log-mel features equal the Python recipe's within the int8 step, and its FINALs read like the
Python edge's on the same audio (the samples the page captured, which Chromium's capture path has
resampled; and, for the record, the file itself)."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import soundfile as sf

from splitasr.shared.auth import ClusterAuth, secret_from_env
from splitasr.shared.features import log_mel
from splitasr.shared.longform import build_streams
from splitasr.shared.wer import WERTally
from tests.browser import FLAGS, chromium
from tests.cluster import ONE_TINY_POOL, CoordinatorProcess

pytestmark = pytest.mark.integration


class Reports(BaseHTTPRequestHandler):
    """Receives the page's report (a POST) on a loopback port."""

    bodies: list[dict] = []
    arrived = threading.Event()

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Reports.bodies.append(json.loads(body))
        Reports.arrived.set()
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture(scope="module")
def report_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Reports)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def python_edge(url: str, path) -> list[str]:
    """The Python edge's FINAL texts, in utterance order, with the browser edge's VAD (energy)."""
    run = subprocess.run(
        [sys.executable, "-m", "splitasr.cli", "edge", "--coordinator", url, "--device-id", "python"]
        + ["--vad", "energy", "--no-realtime", "--json", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    finals = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    return [f["text"] for f in sorted(finals, key=lambda f: f["utt"])]  # sent at once, answered in any order


def test_browser_edge_streams_features_like_the_python_edge(tmp_path, tiny_artifacts, report_url):
    (stream,) = build_streams(tmp_path / "streams", count=1, per_stream=6, min_clip_s=1.0, seed=3)
    audio, rate = sf.read(stream.path, dtype="float32")
    assert rate == 16000 and audio.ndim == 1  # the first long-form format: 16 kHz mono, no noise
    seconds = len(audio) / rate
    with CoordinatorProcess(tmp_path / "cluster", ONE_TINY_POOL) as cluster:
        token = ClusterAuth(secret_from_env()).device_token("browser", ttl_s=3600)
        url = f"{cluster.url}/edge?token={token}&language=en&seconds={seconds + 1.5:.1f}&report={report_url}"
        fake_mic = [
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={stream.path}%noloop",
            "--autoplay-policy=no-user-gesture-required",
        ]
        with tempfile.TemporaryDirectory(prefix="splitasr-chromium-") as profile:
            browser = subprocess.Popen(
                [chromium(), *FLAGS, *fake_mic, f"--user-data-dir={profile}", url],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            try:
                assert Reports.arrived.wait(timeout=seconds + 90), "the page sent no report"
            finally:
                os.killpg(browser.pid, signal.SIGKILL)
                browser.wait()
        report = Reports.bodies[-1]
        assert "error" not in report, report
        captured = np.frombuffer(base64.b64decode(report["captured"]), np.float32)
        sf.write(tmp_path / "captured.wav", captured, 16000, subtype="FLOAT")
        python_texts = {
            name: python_edge(cluster.url, path)
            for name, path in (("captured", tmp_path / "captured.wav"), ("file", stream.path))
        }

    # features: the page's raw log-mel of its first utterance, against the Python recipe on the same samples
    samples = np.array(report["samples"], np.float32)
    raw = np.array(report["raw"], np.float32).T
    assert samples.size > 8000 and raw.shape[0] == 80
    n = min(raw.shape[1], samples.size // 160 - 2)  # frames whose window lies inside the reported samples
    expected = log_mel(samples)[:, :n]
    step = np.abs(expected - raw[:, :n])
    print(f"features: {n} frames, max abs diff {step.max():.2e} (int8 step 0.05)")
    assert step.max() < 0.05

    # text: the browser's FINALs and the Python edge's (energy VAD) on the same audio
    browser_text = " ".join(f["text"] for f in report["finals"])
    errors = {}
    for name, text in (("browser", browser_text), *((f"python, {k}", " ".join(v)) for k, v in python_texts.items())):
        tally = WERTally()
        tally.add(stream.reference, text)
        errors[name] = tally.errors
        print(f"{name}: {text!r} WER {tally.wer:.3f}")
    words = len(stream.reference.split())
    print(f"reference ({words} words): {stream.reference!r}")
    # the same pipeline on the same samples, in float64 (JS) and float32 (numpy): an energy-VAD block
    # at its threshold may fall either way and move an utterance's edge, so allow 1 point of WER or,
    # on this short a reference, one word; and one FINAL more or less
    assert abs(len(report["finals"]) - len(python_texts["captured"])) <= 1
    assert abs(errors["browser"] - errors["python, captured"]) <= max(1, 0.01 * words), errors
