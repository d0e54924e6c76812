"""The CTranslate2 v6 reader on files the test writes, and on the shipped tiny.en weights."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from splitasr.models.ct2 import read_ct2, write_ct2
from splitasr.models.dims import WhisperDims
from splitasr.models.sources import locate
from splitasr.shared.errors import ModelFormatError


def _variables() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "encoder/conv1/weight": rng.standard_normal((8, 4, 3)).astype(np.float16),
        "encoder/num_heads": np.array(2, dtype=np.int16),
        "decoder/embeddings/weight": rng.standard_normal((10, 8)).astype(np.float32),
        "flags": np.array([1, 0, 1], dtype=np.int8),
        "ids": np.arange(5, dtype=np.int32),
    }


def test_round_trip_with_alias(tmp_path):
    path = tmp_path / "model.bin"
    variables = _variables()
    write_ct2(path, "WhisperSpec", variables, aliases={"decoder/projection/weight": "decoder/embeddings/weight"})
    model = read_ct2(path)
    assert model.spec_name == "WhisperSpec"
    for name, array in variables.items():
        assert model[name].dtype == array.dtype
        np.testing.assert_array_equal(model[name], array)
    np.testing.assert_array_equal(model["decoder/projection/weight"], variables["decoder/embeddings/weight"])
    assert int(model["encoder/num_heads"]) == 2


def test_truncated_file_is_a_format_error(tmp_path):
    path = tmp_path / "model.bin"
    write_ct2(path, "WhisperSpec", _variables())
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(ModelFormatError, match="truncated"):
        read_ct2(path)


def test_unsupported_version_is_a_format_error(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(struct.pack("<I", 5) + b"\0" * 16)
    with pytest.raises(ModelFormatError, match="version 5"):
        read_ct2(path)


def test_missing_variable_names_itself(tmp_path):
    path = tmp_path / "model.bin"
    write_ct2(path, "WhisperSpec", _variables())
    with pytest.raises(ModelFormatError, match="encoder/conv2/weight"):
        read_ct2(path)["encoder/conv2/weight"]


def test_real_tiny_en_dims():
    dims = WhisperDims.from_ct2(read_ct2(locate("tiny.en").model_bin))
    assert (dims.n_state, dims.n_audio_layer, dims.n_text_layer, dims.n_audio_head) == (384, 4, 4, 6)
    assert (dims.n_vocab, dims.n_audio_ctx, dims.n_text_ctx) == (51864, 1500, 448)
