"""The shard's per-session utterance bookkeeping (cloud/shard/session.py), without a server."""

import numpy as np
import pytest

from splitasr.cloud.shard.session import Session
from splitasr.shared.errors import ProtocolError


def frames(n: int) -> np.ndarray:
    return np.zeros((80, n), np.float32)


def test_refused_frames_do_not_open_utterances():
    """A frame refused for its seq/start (or size) leaves no empty open utterance behind, so a hostile
    or confused edge cannot use up the open-utterance limit with frames that never counted."""
    s = Session("s", "dev", "en", max_frames=100, max_open_utterances=2)
    for utt in range(10):
        with pytest.raises(ProtocolError):
            s.add_features(utt, seq=3, start=0, raw=frames(10))  # not the first frame of an utterance
        with pytest.raises(ProtocolError):
            s.add_features(utt, seq=0, start=0, raw=frames(101))  # over the size limit
        with pytest.raises(ProtocolError):
            s.end(utt, last_seq=5)  # an EOU after frames that never came
    assert s.open_utterances() == 0
    assert s.add_features(0, 0, 0, frames(10)) is not None and s.add_features(1, 0, 0, frames(10)) is not None
    with pytest.raises(ProtocolError, match="2 utterances are open"):
        s.add_features(2, 0, 0, frames(10))
