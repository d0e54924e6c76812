"""The OpenAI-compatible API of the coordinator, with the official ``openai`` client and ``curl``,
against a real local cluster, on real speech; and what an operator sees of that cluster."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import srt
import webvtt
from openai import AuthenticationError, BadRequestError, OpenAI

from splitasr.shared.auth import ClusterAuth, secret_from_env
from splitasr.shared.wer import WERTally
from tests.cluster import ONE_TINY_POOL, REAL_EN, CoordinatorProcess

pytestmark = pytest.mark.integration

CLIPS = [
    REAL_EN / "en_ljspeech_LJ001-0026_to_0030_concat.flac",  # 35 s, five sentences with pauses
    REAL_EN / "en_ljspeech_LJ001-0011.flac",
    REAL_EN / "en_librivox_sonnet001_lines02-13.flac",
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, tiny_artifacts):
    with CoordinatorProcess(tmp_path_factory.mktemp("openai"), ONE_TINY_POOL) as c:
        yield c


@pytest.fixture(scope="module")
def token(cluster) -> str:
    return ClusterAuth(secret_from_env()).device_token("api-user", ttl_s=3600)


@pytest.fixture(scope="module")
def client(cluster, token) -> OpenAI:
    return OpenAI(base_url=f"{cluster.url}/v1", api_key=token, max_retries=0, timeout=300)


def test_up_prints_where_things_are_and_status_handles_a_pool_without_traffic(cluster):
    printed = cluster.log_file.read_text()
    for line in (f"coordinator  {cluster.url}", f"dashboard    {cluster.url}/ui", f"OpenAI API   {cluster.url}/v1"):
        assert line in printed
    assert f"ready: stream with `splitasr edge --coordinator {cluster.url} FILE`" in printed
    status = cluster.cli("status")  # before any session: no latency percentiles yet
    assert status.returncode == 0, status.stderr
    assert "no FINALs in the last minute" in status.stdout
    version = subprocess.run([sys.executable, "-m", "splitasr.cli", "--version"], capture_output=True, text=True)
    assert version.stdout.startswith("splitasr ") and version.returncode == 0
    import urllib.request

    shard = next(s for s in cluster.pool()["shards"] if s["stage"] == "dec")
    for url in (cluster.url, shard["url"].replace("ws://", "http://")):
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
            body = resp.read().decode()
        assert "process_resident_memory_bytes" in body and "process_cpu_seconds_total" in body, url


def test_models_lists_the_pools(client):
    assert [m.id for m in client.models.list().data] == ["tiny.en"]


def test_every_response_format_through_the_openai_client(client, real_manifest):
    path = CLIPS[0]
    reference = next(e for e in real_manifest if e.file == path).reference
    with path.open("rb") as f:
        verbose = client.audio.transcriptions.create(
            model="whisper-1",
            file=f,
            language="en",
            response_format="verbose_json",
            timestamp_granularities=["segment"],
        )
    assert verbose.language == "english" and verbose.duration == pytest.approx(35, abs=1.5)
    segments = verbose.segments
    assert len(segments) >= 3, segments  # the decoder's segments of each utterance (five sentences)
    assert all(s.start < s.end for s in segments)
    assert all(a.end <= b.start for a, b in zip(segments, segments[1:], strict=False))
    assert verbose.text == " ".join(s.text for s in segments)
    tally = WERTally()
    tally.add(reference, verbose.text)
    print(f"verbose_json: {len(segments)} segments, WER {tally.wer:.3f}")
    assert tally.wer < 0.15

    def create(fmt: str):
        with path.open("rb") as f:
            return client.audio.transcriptions.create(model="tiny.en", file=f, response_format=fmt)

    assert create("json").text == verbose.text  # the same session logic, the same text
    assert create("text").strip() == verbose.text
    subs = list(srt.parse(create("srt")))
    assert [(round(c.start.total_seconds(), 3), c.content) for c in subs] == [
        (round(s.start, 3), s.text) for s in segments
    ]
    vtt = webvtt.from_string(create("vtt"))
    assert [c.text for c in vtt.captions] == [s.text for s in segments]


def test_same_text_as_splitasr_transcribe_through_the_cluster(cluster, client, real_manifest):
    """The API and ``splitasr transcribe --coordinator`` stream the same audio the same way."""
    run = subprocess.run(
        [sys.executable, "-m", "splitasr.cli", "transcribe", "--json", "--coordinator", cluster.url]
        + [str(c) for c in CLIPS],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    cli = {json.loads(line)["file"]: json.loads(line)["text"] for line in run.stdout.splitlines()}
    refs = {e.file: e.reference for e in real_manifest}
    api_tally, cli_tally = WERTally(), WERTally()
    for path in CLIPS:
        with path.open("rb") as f:
            text = client.audio.transcriptions.create(model="whisper-1", file=f, language="en").text
        assert text == cli[str(path)], path.name
        api_tally.add(refs[path], text)
        cli_tally.add(refs[path], cli[str(path)])
    print(f"WER: API {api_tally.wer:.3f}, splitasr transcribe --coordinator {cli_tally.wer:.3f}")
    assert api_tally.wer == cli_tally.wer


def test_curl_uploads_an_m4a_and_gets_subtitles(cluster, token, tmp_path):
    from splitasr.shared.audio import load_audio
    from tests.test_audio import encode

    m4a = tmp_path / "phone.m4a"
    encode(load_audio(CLIPS[1]), 16000, m4a, "aac", 44100, 2)
    out = subprocess.run(
        ["curl", "-sS", "--fail-with-body", "-H", f"Authorization: Bearer {token}", "-F", f"file=@{m4a}"]
        + ["-F", "model=whisper-1", "-F", "response_format=srt", f"{cluster.url}/v1/audio/transcriptions"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    subs = list(srt.parse(out.stdout))
    assert subs and "first importance" in " ".join(c.content for c in subs).lower()


def test_bad_requests_get_openai_errors(cluster, client, token):
    with pytest.raises(AuthenticationError, match="device token"):
        OpenAI(base_url=f"{cluster.url}/v1", api_key="nope", max_retries=0).audio.transcriptions.create(
            model="whisper-1", file=CLIPS[1].open("rb")
        )
    with pytest.raises(BadRequestError, match="response_format"):
        client.audio.transcriptions.create(model="whisper-1", file=CLIPS[1].open("rb"), response_format="docx")
    with pytest.raises(BadRequestError, match="not served"):
        client.audio.transcriptions.create(model="whisper-large", file=CLIPS[1].open("rb"))
    with pytest.raises(BadRequestError, match="language 'english' is not served"):
        client.audio.transcriptions.create(model="whisper-1", file=CLIPS[1].open("rb"), language="english")
    with pytest.raises(BadRequestError, match="cannot decode"):
        client.audio.transcriptions.create(model="whisper-1", file=("noise.bin", b"\x00garbage" * 500))
    with pytest.raises(BadRequestError, match="word timestamps"):
        client.audio.transcriptions.create(
            model="whisper-1",
            file=CLIPS[1].open("rb"),
            response_format="verbose_json",
            timestamp_granularities=["word"],
        )
    big = subprocess.run(  # one byte over the 25 MB limit, streamed: refused without buffering it all
        ["curl", "-sS", "-o", "-", "-w", "%{http_code}", "-H", f"Authorization: Bearer {token}"]
        + ["-F", "file=@-;filename=big.wav", f"{cluster.url}/v1/audio/transcriptions"],
        input=b"\x00" * (25 * 1024 * 1024 + 1),
        capture_output=True,
        timeout=120,
    )
    assert big.stdout.endswith(b"413"), big.stdout[-300:]
    assert cluster.get("/v1/pools")["pools"][0]["model"] == "tiny.en"  # the coordinator is still serving


def test_a_client_that_leaves_stops_its_transcription(cluster, token, tmp_path):
    """aiohttp does not cancel a handler when its client disconnects: the API notices the closed
    connection and stops the upload's session (answer 499, counted), instead of streaming minutes
    of audio through the cluster for nobody. The client leaves once its session is on a shard."""
    import socket
    import urllib.parse
    import urllib.request

    import numpy as np
    import soundfile as sf

    from splitasr.shared.audio import load_audio
    from tests.cluster import wait_until

    def gone() -> float:
        with urllib.request.urlopen(f"{cluster.url}/metrics", timeout=10) as resp:
            body = resp.read().decode()
        line = 'splitasr_api_transcriptions_total{format="json",status="499"} '
        return next((float(x.split(" ")[-1]) for x in body.splitlines() if x.startswith(line)), 0.0)

    def sessions() -> int:
        return sum(s["sessions"] for s in cluster.stage0())

    long = tmp_path / "long.flac"  # 175 s: five times a 35 s recording
    sf.write(long, np.tile(load_audio(CLIPS[0]), 5), 16000)
    before = gone()
    wait_until(lambda: sessions() == 0, 30, "no session from earlier tests")
    boundary = "splitasr-test-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\ntiny.en\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.flac"\r\n'
            "Content-Type: audio/flac\r\n\r\n"
        ).encode()
        + long.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    url = urllib.parse.urlsplit(cluster.url)
    head = (
        f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(head.encode() + body)
        wait_until(lambda: sessions() >= 1, 60, "the upload's session on a shard")
    # the connection is closed, unanswered: the session ends and the request counts as 499
    wait_until(lambda: gone() > before, 30, "the abandoned transcription to be stopped")
    wait_until(lambda: sessions() == 0, 30, "the abandoned session to leave its shard")
