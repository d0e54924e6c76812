"""Wire protocol: every frame type round-trips; malformed input raises a coded ProtocolError."""

from __future__ import annotations

import msgpack
import pytest

from splitasr.shared import protocol as p
from splitasr.shared.errors import ProtocolError

SAMPLES = [
    p.Hello(device_id="dev-1", token="t", language="en", zone="a", resume=[3, 4]),
    p.Hello(device_id="dev-1", split="enc_a", encoder="tiny.en@3d9b0b5f-s2", qos="batch"),
    p.Welcome(session_id="s1", feature_spec={"n_mels": 80}, limits={"max_frame_bytes": 65536}),
    p.Features(utt=1, seq=0, start=0, dtype="int8", scale=0.05, shape=[80, 50], payload=bytes(4000)),
    p.EndOfUtterance(utt=1, last_seq=7),
    p.EndOfUtterance(utt=2, last_seq=-1, speech_end=300, frames=420),
    p.Partial(utt=1, text="hello wor", stable=5),
    p.Final(
        utt=1,
        text="hello world",
        language="en",
        model_version="tiny.en@1a5a",
        timings={"decode_ms": 3.0},
        segments=[[0.0, 0.8, "hello"], [0.8, 1.5, "world"]],
    ),
    p.Ack(utt=1, seq=7),
    p.Error(code=p.E_SESSION, message="no such session", retryable=True),
    p.Drain(reason="scale-in", route=["ws://127.0.0.1:1"]),
    p.Ping(nonce=9),
    p.Pong(nonce=9),
    p.EdgeFlags(values={"endpoint_silence_s": 1.2}),
    p.Encode(req=3, utt=1, start=0, end=420, mode="trimmed", pad_s=2.0),
    p.Activations(req=3, index=0, count=1, dtype="float16", shape=[2, 3], payload=bytes(12)),
    p.StageRequest(
        req_id="r1",
        model="tiny.en",
        stage="enc_b",
        deadline_ms=200.0,
        tensors={"hidden": {"dtype": "float16", "shape": [1, 2, 3], "data": bytes(12)}},
    ),
    p.StageResponse(req_id="r1", tensors={}),
]


@pytest.mark.parametrize("frame", SAMPLES, ids=lambda f: f.TYPE)
def test_round_trip(frame):
    assert p.decode(p.encode(frame), max_bytes=p.MAX_STAGE_FRAME_BYTES) == frame


def test_every_type_is_covered():
    assert {f.TYPE for f in SAMPLES} == set(p.FRAME_TYPES)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"\xc1", p.E_MALFORMED),
        (msgpack.packb([1, 2]), p.E_MALFORMED),
        (msgpack.packb({"v": 99, "t": "PING"}), p.E_VERSION),
        (msgpack.packb({"t": "PING"}), p.E_VERSION),
        (msgpack.packb({"v": 1, "t": "NOPE"}), p.E_TYPE),
        (msgpack.packb({"v": 1, "t": "ACK", "utt": "x", "seq": 1}), p.E_FIELD),
        (msgpack.packb({"v": 1, "t": "ACK", "utt": True, "seq": 1}), p.E_FIELD),
        (msgpack.packb({"v": 1, "t": "ACK"}), p.E_FIELD),
        (b"\x00" * (p.MAX_FRAME_BYTES + 1), p.E_TOO_LARGE),
    ],
)
def test_malformed(data, code):
    with pytest.raises(ProtocolError) as info:
        p.decode(data)
    assert info.value.code == code
    assert p.error_frame(info.value).code == code


def test_oversized_bin_inside_a_small_limit_is_rejected_before_unpacking():
    frame = p.encode(SAMPLES[2])
    with pytest.raises(ProtocolError) as info:
        p.decode(frame, max_bytes=len(frame) - 1)
    assert info.value.code == p.E_TOO_LARGE


def test_unknown_keys_are_ignored_for_forward_compatibility():
    data = msgpack.packb({"v": 1, "t": "PING", "nonce": 1, "future": "x"})
    assert p.decode(data) == p.Ping(nonce=1)
