"""The artefact cache of exported ONNX stages: one directory per (model, weights, split) with a manifest."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from splitasr.models.sources import ModelFiles, cache_root, locate
from splitasr.shared.errors import ExportError, ModelFormatError
from splitasr.shared.features import DEFAULT_SPEC, FeatureSpec

log = logging.getLogger(__name__)

# Bump when the stage graphs' inputs/outputs change, so old caches are not reused.
# 4: cross keys/values split into heads; 5: int8 per row (models/quantize.py); 6: built without torch
STAGE_FORMAT = 6
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class StageArtifacts:
    """A ready directory of ONNX stages plus everything needed to run them (tokenizer, config)."""

    directory: Path
    manifest: dict

    @property
    def model(self) -> str:
        return self.manifest["model"]

    @property
    def version(self) -> str:
        """Model version string: model name, weights hash prefix, split and stage format."""
        return f"{self.model}@{self.manifest['weights_sha256'][:8]}-s{self.manifest['split_layer']}"

    @property
    def decoder_layers(self) -> int:
        return self.manifest["dims"]["n_text_layer"]

    @property
    def feature_spec(self) -> FeatureSpec:
        return FeatureSpec.from_dict(self.manifest["feature_spec"])

    def stage_path(self, stage: str, int8: bool = False) -> Path:
        entry = self.manifest["stages"][stage]
        return self.directory / (entry["int8_file"] if int8 else entry["file"])

    @property
    def tokenizer_json(self) -> Path:
        return self.directory / "tokenizer.json"

    @property
    def config_json(self) -> Path:
        return self.directory / "config.json"


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("splitasr", "torch", "onnx", "onnxruntime"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Exclusive inter-process lock so concurrent shards export a model once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def stage_dir(files: ModelFiles, split_layer: int | None) -> Path:
    split = "mid" if split_layer is None else str(split_layer)
    return cache_root() / files.name / f"{files.sha256[:12]}-split{split}-f{STAGE_FORMAT}"


def _load_manifest(directory: Path) -> dict | None:
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise ModelFormatError(f"corrupt stage manifest in {directory}: {exc}; delete the directory") from exc
    missing = [s["file"] for s in manifest["stages"].values() if not (directory / s["file"]).exists()]
    if missing:
        log.warning("stage cache %s lacks %s; exporting again", directory, missing)
        return None
    return manifest


def _export(files: ModelFiles, directory: Path, split_layer: int | None, spec: FeatureSpec, show_progress: bool):
    from tqdm import tqdm

    from splitasr.models.ct2 import read_ct2
    from splitasr.models.dims import WhisperDims
    from splitasr.models.export import OPSET, STAGES
    from splitasr.models.graphs import build_stages

    started = time.perf_counter()
    ct2 = read_ct2(files.model_bin)
    dims = WhisperDims.from_ct2(ct2)
    split = dims.n_audio_layer // 2 if split_layer is None else split_layer
    if not 0 < split < dims.n_audio_layer:
        raise ExportError(f"split layer {split} out of range: {files.name} has {dims.n_audio_layer} encoder layers")
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=directory.parent))
    bar = tqdm(total=len(STAGES), desc=f"exporting {files.name} stages", unit="stage", disable=not show_progress)
    try:

        def progress(stage: str) -> None:
            bar.set_postfix_str(stage)
            bar.update(0 if stage == STAGES[0] else 1)

        paths = build_stages(ct2, tmp, split, progress=progress)  # onnx.helper graphs: no torch
        bar.update(1)
        for name in ("tokenizer.json", "config.json"):
            shutil.copyfile(files.directory / name, tmp / name)
        manifest = {
            "model": files.name,
            "weights_sha256": files.sha256,
            "split_layer": split,
            "dims": dims.to_dict(),
            "feature_spec": spec.to_dict(),
            "opset": OPSET,
            "exporter": "onnx-graphs",  # models/graphs.py (the torch export is the tests' reference)
            "stage_format": STAGE_FORMAT,
            "stages": {
                s: {"file": p.name, "int8_file": f"{s}.int8.onnx", "bytes": p.stat().st_size} for s, p in paths.items()
            },
            "versions": _versions(),
            "export_seconds": round(time.perf_counter() - started, 2),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    finally:
        bar.close()
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("exported %s stages in %.1f s to %s", files.name, manifest["export_seconds"], directory)
    return manifest


def _quantize(artifacts: StageArtifacts) -> None:
    from splitasr.models.quantize import quantize_stage

    # decoder steps see one row per sequence: only its wide MatMuls (FFN, vocabulary) gain from int8
    min_dim = {"dec_step": 4 * artifacts.manifest["dims"]["n_state"]}
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser logs a "consider pre-processing" notice per stage
    try:
        for stage in artifacts.manifest["stages"]:
            target = artifacts.stage_path(stage, int8=True)
            if target.exists():
                continue
            tmp = target.with_suffix(".tmp.onnx")
            nodes = quantize_stage(artifacts.stage_path(stage), tmp, min_dim.get(stage, 0))
            os.replace(tmp, target)
            log.info("quantised %d MatMuls of %s to int8", len(nodes), stage)
    finally:
        root.setLevel(level)


def ensure_stages(
    model: str,
    split_layer: int | None = None,
    int8: bool = False,
    show_progress: bool = True,
    spec: FeatureSpec = DEFAULT_SPEC,
) -> StageArtifacts:
    """Return cached stages of ``model``, exporting (and quantising) them on first use."""
    files = locate(model)
    directory = stage_dir(files, split_layer)
    manifest = _load_manifest(directory)
    if manifest is None or (
        int8 and not all((directory / s["int8_file"]).exists() for s in manifest["stages"].values())
    ):
        with _locked(directory.with_name(directory.name + ".lock")):
            manifest = _load_manifest(directory) or _export(files, directory, split_layer, spec, show_progress)
            artifacts = StageArtifacts(directory, manifest)
            if int8:
                _quantize(artifacts)
            return artifacts
    return StageArtifacts(directory, manifest)
