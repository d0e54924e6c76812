"""The stage contract (names, inputs, outputs) and the torch export of the four ONNX stages of a
split Whisper (``enc_a``, ``enc_b``, ``cross_kv``, ``dec_step``).

Serving builds its stages without torch (``models/graphs.py``); this export (the ``export`` extra:
torch, onnxscript) is the reference the tests compare those graphs with.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path

from splitasr.models.ct2 import CT2Model
from splitasr.shared.errors import ExportError

log = logging.getLogger(__name__)

STAGES = ("enc_a", "enc_b", "cross_kv", "dec_step")
OPSET = 18

# Input/output names of each stage: the contract between export and runtime.
STAGE_IO: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "enc_a": (("mel",), ("hidden",)),
    "enc_b": (("hidden",), ("audio",)),
    "cross_kv": (("audio",), ("cross_k", "cross_v")),
    "dec_step": (
        ("tokens", "offset", "past_k", "past_v", "past_mask", "cross_mask"),
        ("logits", "new_k", "new_v"),
    ),
}
# dec_step also takes each decoder layer's cross keys and values as inputs of their own
# (``cross_k_0`` … ``cross_v_{L-1}``): one stacked input is split, i.e. copied, at every step, and
# on CPU that copy took a third to a half of the step.
LAYER_INPUTS = {"dec_step": ("cross_k", "cross_v")}


def input_names(stage: str, layers: int) -> list[str]:
    """The ONNX input names of ``stage`` for a model with ``layers`` decoder layers, in order."""
    per_layer = [f"{name}_{i}" for name in LAYER_INPUTS.get(stage, ()) for i in range(layers)]
    return [*STAGE_IO[stage][0], *per_layer]


def _import_torch():
    try:
        import torch
    except ImportError as exc:
        raise ExportError(
            "exporting ONNX stages needs torch; install the export extra: pip install 'splitasr[export]' "
            "(CPU wheels: --extra-index-url https://download.pytorch.org/whl/cpu)"
        ) from exc
    return torch


def export_stages(
    ct2: CT2Model,
    out_dir: Path,
    split_layer: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Path]:
    """Export all stages of ``ct2`` into ``out_dir``; returns stage name -> ONNX path."""
    torch = _import_torch()
    from splitasr.models.whisper_torch import Whisper, stage_module

    whisper = Whisper.from_ct2(ct2, split_layer)
    dims = whisper.dims
    L, d, h = dims.n_text_layer, dims.n_state, dims.n_text_head
    batch = torch.export.Dim("batch", min=1, max=256)
    frames = torch.export.Dim("frames_half", min=2, max=dims.n_audio_ctx)
    ctx = torch.export.Dim("ctx", min=2, max=dims.n_audio_ctx)
    past = torch.export.Dim("past", min=0, max=dims.n_text_ctx)
    ntok = torch.export.Dim("ntok", min=1, max=dims.n_text_ctx)
    B, T = 2, 200
    examples = {
        "enc_a": ((torch.randn(B, dims.n_mels, 2 * T),), ({0: batch, 2: 2 * frames},)),
        "enc_b": ((torch.randn(B, T, d),), ({0: batch, 1: ctx},)),
        "cross_kv": ((torch.randn(B, T, d),), ({0: batch, 1: ctx},)),
        "dec_step": (
            (
                torch.zeros(B, 3, dtype=torch.int64),
                torch.tensor([4, 2]),
                torch.randn(L, B, 4, d),
                torch.randn(L, B, 4, d),
                torch.zeros(B, 4),
                torch.zeros(B, T),
                *(torch.randn(B, h, T, d // h) for _ in range(2 * L)),
            ),
            (
                {0: batch, 1: ntok},
                {0: batch},
                {1: batch, 2: past},
                {1: batch, 2: past},
                {0: batch, 1: past},
                {0: batch, 1: ctx},
                *({0: batch, 2: ctx} for _ in range(2 * L)),
            ),
        ),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for stage in STAGES:
        if progress:
            progress(stage)
        args, shapes = examples[stage]
        inputs, outputs = input_names(stage, L), STAGE_IO[stage][1]
        path = out_dir / f"{stage}.onnx"
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                program = torch.onnx.export(
                    stage_module(whisper, stage),
                    args,
                    dynamo=True,
                    opset_version=OPSET,
                    input_names=list(inputs),
                    output_names=list(outputs),
                    dynamic_shapes=(shapes,),
                    optimize=True,
                    verbose=False,
                )
                program.save(str(path))
        except Exception as exc:  # torch raises many exception types; keep the cause
            raise ExportError(f"exporting stage {stage} failed: {exc}") from exc
        paths[stage] = path
        log.info("exported stage %s to %s", stage, path)
    return paths
