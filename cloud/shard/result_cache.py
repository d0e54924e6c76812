"""Recent results by feature hash: retries, replays and duplicate uploads of the same audio are common.

Entries live ``ttl_s`` seconds and at most ``max_entries`` are kept (oldest evicted first). The clock
is injectable for tests.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np


def feature_key(features: np.ndarray, *context: object) -> str:
    """Hash of a feature array's bytes and shape plus context (language, model version)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((features.shape, str(features.dtype), context)).encode())
    h.update(np.ascontiguousarray(features).tobytes())
    return h.hexdigest()


class ResultCache:
    def __init__(self, ttl_s: float = 30.0, max_entries: int = 1024, clock: Callable[[], float] = time.monotonic):
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Any | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] < self._clock():
            del self._entries[key]
            return None
        self.hits += 1
        return entry[1]

    def put(self, key: str, value: Any) -> None:
        if self.ttl_s <= 0:
            return
        self._entries[key] = (self._clock() + self.ttl_s, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
