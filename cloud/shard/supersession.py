"""Which partial results are no longer wanted: a newer partial or the FINAL of the same utterance exists.

Stage 0 tags each request with the utterance key (``session/utt``) and a revision (frames covered;
:data:`FINAL_REV` for the FINAL). Every stage notes the revisions it sees; a partial whose revision is
below the newest one seen for its key is dropped before it runs.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

FINAL_REV = 2**31


class Supersession:
    def __init__(self, max_keys: int = 4096):
        self._latest: OrderedDict[str, int] = OrderedDict()
        self._max_keys = max_keys
        self._lock = threading.Lock()

    def note(self, key: str | None, rev: int) -> None:
        if key is None:
            return
        with self._lock:
            self._latest[key] = max(rev, self._latest.get(key, rev))
            self._latest.move_to_end(key)
            while len(self._latest) > self._max_keys:
                self._latest.popitem(last=False)

    def stale(self, key: str | None, rev: int) -> bool:
        if key is None:
            return False
        with self._lock:
            return self._latest.get(key, rev) > rev
