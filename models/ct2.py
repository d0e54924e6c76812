"""Read CTranslate2 ``model.bin`` files (format v6) into numpy arrays, without ctranslate2."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from splitasr.shared.errors import ModelFormatError

SUPPORTED_BINARY_VERSION = 6

# CTranslate2 dtype codes -> numpy dtypes (bf16 is read as raw uint16 and widened below).
_DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
    5: np.dtype("<u2"),
}
_BF16 = 5


@dataclass(frozen=True)
class CT2Model:
    """Variables of one CTranslate2 model, with aliases resolved."""

    spec_name: str
    spec_revision: int
    variables: dict[str, np.ndarray]

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self.variables[name]
        except KeyError:
            raise ModelFormatError(f"variable {name!r} missing from the {self.spec_name} model") from None

    def __contains__(self, name: str) -> bool:
        return name in self.variables


def _read(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ModelFormatError(f"model.bin truncated: wanted {n} bytes at offset {f.tell()}")
    return data


def _u8(f: BinaryIO) -> int:
    return _read(f, 1)[0]


def _u16(f: BinaryIO) -> int:
    return struct.unpack("<H", _read(f, 2))[0]


def _u32(f: BinaryIO) -> int:
    return struct.unpack("<I", _read(f, 4))[0]


def _string(f: BinaryIO) -> str:
    n = _u16(f)
    raw = _read(f, n)
    return raw.rstrip(b"\0").decode("utf-8")


def _bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    return (raw.astype(np.uint32) << 16).view(np.float32)


def read_ct2(path: str | Path) -> CT2Model:
    """Read a CTranslate2 v6 ``model.bin``; raises :class:`ModelFormatError` on anything else."""
    path = Path(path)
    with path.open("rb") as f:
        version = _u32(f)
        if version != SUPPORTED_BINARY_VERSION:
            raise ModelFormatError(
                f"{path}: CTranslate2 binary version {version}, only {SUPPORTED_BINARY_VERSION} is supported"
            )
        spec_name = _string(f)
        revision = _u32(f)
        variables: dict[str, np.ndarray] = {}
        for _ in range(_u32(f)):
            name = _string(f)
            rank = _u8(f)
            shape = tuple(_u32(f) for _ in range(rank))
            code = _u8(f)
            if code not in _DTYPES:
                raise ModelFormatError(f"{path}: variable {name!r} has unknown dtype code {code}")
            nbytes = _u32(f)
            dtype = _DTYPES[code]
            expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if nbytes != expected:
                raise ModelFormatError(f"{path}: variable {name!r} has {nbytes} bytes, shape {shape} needs {expected}")
            array = np.frombuffer(_read(f, nbytes), dtype=dtype).reshape(shape)
            variables[name] = _bf16_to_f32(array) if code == _BF16 else array
        for _ in range(_u32(f)):
            alias, target = _string(f), _string(f)
            if target not in variables:
                raise ModelFormatError(f"{path}: alias {alias!r} points at missing {target!r}")
            variables[alias] = variables[target]
    return CT2Model(spec_name=spec_name, spec_revision=revision, variables=variables)


def write_ct2(
    path: str | Path, spec_name: str, variables: dict[str, np.ndarray], aliases: dict[str, str] | None = None
) -> None:
    """Write a v6 ``model.bin`` (used by tests and by tiny random models)."""
    codes = {np.dtype(v): k for k, v in _DTYPES.items() if k != _BF16}

    def string(s: str) -> bytes:
        raw = s.encode("utf-8") + b"\0"
        return struct.pack("<H", len(raw)) + raw

    with Path(path).open("wb") as f:
        f.write(struct.pack("<I", SUPPORTED_BINARY_VERSION) + string(spec_name) + struct.pack("<I", 1))
        f.write(struct.pack("<I", len(variables)))
        for name, array in variables.items():
            array = np.asarray(array).copy(order="C")
            f.write(string(name) + struct.pack("<B", array.ndim))
            f.write(struct.pack(f"<{array.ndim}I", *array.shape))
            f.write(struct.pack("<BI", codes[array.dtype], array.nbytes))
            f.write(array.tobytes())
        aliases = aliases or {}
        f.write(struct.pack("<I", len(aliases)))
        for alias, target in aliases.items():
            f.write(string(alias) + string(target))
