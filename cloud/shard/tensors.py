"""numpy arrays <-> the ``tensors`` maps of STAGE_REQ / STAGE_RES frames."""

from __future__ import annotations

import numpy as np

from splitasr.shared.errors import ProtocolError
from splitasr.shared.protocol import E_FIELD

WIRE_DTYPES = {"float16", "float32", "int64", "int32"}


def pack(arrays: dict[str, np.ndarray], float_dtype: str = "float32") -> dict[str, dict]:
    """Encode arrays; floating arrays travel as ``float_dtype`` (fp16 halves activation bytes)."""
    out = {}
    for name, array in arrays.items():
        array = np.asarray(array)
        if np.issubdtype(array.dtype, np.floating):
            array = array.astype(float_dtype, copy=False)
        out[name] = {
            "dtype": str(array.dtype),
            "shape": list(array.shape),
            "data": np.ascontiguousarray(array).tobytes(),
        }
    return out


def unpack(
    tensors: dict, name: str, as_float32: bool = True, expect: tuple[int | tuple[int, int], ...] | None = None
) -> np.ndarray:
    """The array ``name`` of a tensors map; ProtocolError unless well formed, finite, and shaped as
    ``expect`` says (per axis: an exact size, or an inclusive (low, high) range)."""
    try:
        spec = tensors[name]
        dtype, shape, data = spec["dtype"], spec["shape"], spec["data"]
        if not (isinstance(shape, list) and all(type(d) is int and 0 <= d < 2**31 for d in shape)):
            raise ValueError(f"shape {shape!r} is not a list of sizes")
        if not isinstance(data, bytes | bytearray):
            raise TypeError("data is not binary")
        if not isinstance(dtype, str):
            raise TypeError(f"dtype {dtype!r} is not a name")
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(E_FIELD, f"tensor {name!r} missing or malformed ({exc})") from None
    if dtype not in WIRE_DTYPES:
        raise ProtocolError(E_FIELD, f"tensor {name!r} has unsupported dtype {dtype!r}")
    if expect is not None and not _fits(shape, expect):
        raise ProtocolError(E_FIELD, f"tensor {name!r} has shape {shape}, want {list(expect)}")
    if len(data) != int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize:
        raise ProtocolError(E_FIELD, f"tensor {name!r}: {len(data)} bytes do not match shape {shape}")
    array = np.frombuffer(data, dtype=dtype).reshape(shape)
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise ProtocolError(E_FIELD, f"tensor {name!r} has NaN or infinite values")
    if as_float32 and np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32)
    return array


def _fits(shape: list[int], expect: tuple[int | tuple[int, int], ...]) -> bool:
    if len(shape) != len(expect):
        return False
    return all(d == e if isinstance(e, int) else e[0] <= d <= e[1] for d, e in zip(shape, expect, strict=True))
