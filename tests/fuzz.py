"""A seeded, structure-aware fuzzer: hostile variants of valid messages (msgpack frames, JSON bodies,
query strings) for the endpoint fuzz tests. Deterministic for a seed, so a failure replays.

Each input starts from a valid message and gets one to three mutations: a field replaced by a
hostile value (wrong types, NaN/inf, huge and negative numbers, long or control-character strings,
deep or long containers), a field removed, a junk field added, a nested field mutated, or the
encoded bytes flipped, truncated or extended.
"""

from __future__ import annotations

import copy
import json
import math
import random
from typing import Any

import msgpack

HOSTILE: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1,
    2**31,
    -(2**31) - 1,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
    0.5,
    -0.0,
    1e308,
    -1e308,
    math.nan,
    math.inf,
    -math.inf,
    "",
    " ",
    "x" * 5000,
    "\x00\x01\xff",
    "é✓🙂",
    "../../etc/passwd",
    "ws://127.0.0.1:1",
    "wss://[::1]:0/x?y",
    "http://127.0.0.1:9",
    "NaN",
    "-1",
    [],
    [None],
    [1] * 200,
    [[[[[[[[[[]]]]]]]]]],
    {},
    {"a": {"b": [1, "2", None]}},
    b"",
    b"\x00" * 64,
    b"\xff" * 3,
]


class Mutator:
    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def hostile(self) -> Any:
        r = self.rng.random()
        if r < 0.6:
            return copy.deepcopy(self.rng.choice(HOSTILE))
        if r < 0.75:
            return self.rng.randint(-(2**40), 2**40)
        if r < 0.85:
            return self.rng.uniform(-1e6, 1e6)
        if r < 0.95:
            return "".join(chr(self.rng.randint(1, 0x2FFF)) for _ in range(self.rng.randint(0, 40)))
        return bytes(self.rng.getrandbits(8) for _ in range(self.rng.randint(0, 40)))

    def mutate(self, value: Any, depth: int = 0) -> Any:
        """One structural mutation of ``value`` (a copy)."""
        value = copy.deepcopy(value)
        if isinstance(value, dict) and value and depth < 4:
            key = self.rng.choice(list(value))
            op = self.rng.random()
            if op < 0.45:
                value[key] = self.hostile()
            elif op < 0.6:
                del value[key]
            elif op < 0.7:
                value[self.rng.choice(["x", "", "v", "t", key + "_", "\x00"])] = self.hostile()
            else:
                value[key] = self.mutate(value[key], depth + 1)
            return value
        if isinstance(value, list) and value and depth < 4:
            i = self.rng.randrange(len(value))
            op = self.rng.random()
            if op < 0.4:
                value[i] = self.hostile()
            elif op < 0.6:
                del value[i]
            elif op < 0.8:
                value.append(self.hostile())
            else:
                value[i] = self.mutate(value[i], depth + 1)
            return value
        if isinstance(value, int | float) and not isinstance(value, bool) and self.rng.random() < 0.5:
            out = self.rng.choice([value + 1, value - 1, -value, value * 1000, value // 2 if value else 1])
            return min(max(out, -(2**63)), 2**64 - 1) if isinstance(out, int) else out  # what msgpack can carry
        return self.hostile()

    def mutate_bytes(self, data: bytes) -> bytes:
        data = bytearray(data)
        op = self.rng.random()
        if op < 0.4 and data:
            for _ in range(self.rng.randint(1, 4)):
                data[self.rng.randrange(len(data))] = self.rng.getrandbits(8)
        elif op < 0.7 and data:
            del data[self.rng.randrange(len(data)) :]
        else:
            data[self.rng.randint(0, len(data)) : 0] = bytes(self.rng.getrandbits(8) for _ in range(8))
        return bytes(data)

    def variant(self, seed: dict) -> dict:
        out = seed
        for _ in range(self.rng.randint(1, 3)):
            out = self.mutate(out)
        return out if isinstance(out, dict) else {"v": out}

    def frame_body(self, seed: dict) -> dict:
        """A hostile variant of a frame's body; most keep the valid version and type, so that they
        reach the frame's own checks rather than stop at the envelope."""
        body = self.variant(seed)
        if self.rng.random() < 0.8:
            body.update({k: seed[k] for k in ("v", "t") if k in seed})
        return body

    def frame(self, seed: dict) -> bytes:
        """A hostile msgpack frame from a valid frame's body ``seed`` (with its "v" and "t")."""
        if self.rng.random() < 0.15:
            return self.mutate_bytes(msgpack.packb(seed, use_bin_type=True))
        return msgpack.packb(self.frame_body(seed), use_bin_type=True)

    def json_body(self, seed: dict) -> bytes:
        """A hostile JSON body (NaN and Infinity included, as Python's json writes them)."""
        body = self.variant(seed)
        text = json.dumps(body, default=lambda b: b.decode("latin-1")).encode()
        return self.mutate_bytes(text) if self.rng.random() < 0.15 else text

    def query(self, seed: dict[str, str]) -> dict[str, str]:
        params = dict(seed)
        for _ in range(self.rng.randint(1, 3)):
            key = self.rng.choice([*params, "zone", "language", "x"])
            value = self.hostile()
            if isinstance(value, bytes):
                value = value.decode("latin-1")
            params[key] = str(value)
        return params
