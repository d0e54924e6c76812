"""int8 quantisation of ONNX stages the way CTranslate2 (faster-whisper) does it.

Each quantised ``MatMul(x, W)`` becomes: weights int8, symmetric, one scale per output column;
activations int8, symmetric, one scale per **row** (per token/frame), computed at run time; an
integer matrix product scaled by the column scales (onnxruntime's ``MatMulIntegerToFloat``, u8 x s8
with the activations shifted by 128); then the row scale. ORT's ``quantize_dynamic`` instead
quantises activations with one asymmetric scale per tensor, so one loud frame coarsens every other
frame's activations; on the real dev set that scheme cost Whisper base 2.3 points of WER against
faster-whisper int8, this one none (``docs/decoding.md``).

Encoder stages multiply many frames by each weight, so every constant-weight MatMul is quantised.
A decoder step multiplies one row per sequence: quantising the activations of a small MatMul costs
more than it saves, so only the wide ones (FFN and vocabulary projection) are quantised there.
A MatMul input shared by several weights (the attention's q/k/v projections) is quantised once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

QMAX = 127.0
AMAX_FLOOR = 1e-30
SHIFT = 128  # activations in [-127, 127] are stored as uint8 in [1, 255] with zero point 128


def fold_transposed_weights(model: onnx.ModelProto) -> None:
    """Turn ``MatMul(x, Transpose(W))`` into ``MatMul(x, W')`` with a constant ``W'`` (quantisable)."""
    inits = {i.name: i for i in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    for node in model.graph.node:
        if node.op_type != "MatMul":
            continue
        source = producers.get(node.input[1])
        if source is None or source.op_type != "Transpose" or source.input[0] not in inits:
            continue
        name = f"{source.input[0]}__transposed"
        if name not in inits:
            weight = numpy_helper.to_array(inits[source.input[0]])
            inits[name] = numpy_helper.from_array(weight.T.copy(), name)
            model.graph.initializer.append(inits[name])
        node.input[1] = name


def constant_matmuls(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Names of MatMul nodes whose second input is a 2-D weight, with the weight's shape."""
    shapes = {i.name: tuple(i.dims) for i in model.graph.initializer}
    return {
        n.name: shapes[n.input[1]]
        for n in model.graph.node
        if n.op_type == "MatMul" and len(shapes.get(n.input[1], ())) == 2
    }


def quantize_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 of a ``[K, N]`` weight with one scale per column: ``(w_q, scale)``, ``w ≈ w_q * scale``."""
    scale = np.maximum(np.abs(w).max(axis=0), AMAX_FLOOR) / QMAX
    return np.clip(np.round(w / scale), -QMAX, QMAX).astype(np.int8), scale.astype(np.float32)


def _constants() -> list[onnx.TensorProto]:
    return [
        numpy_helper.from_array(np.array([-1], np.int64), "q8_last_axis"),
        numpy_helper.from_array(np.array(QMAX, np.float32), "q8_qmax"),
        # the smallest row maximum: 127 / it stays finite in float32 (an all-zero row stays exactly zero)
        numpy_helper.from_array(np.array(AMAX_FLOOR, np.float32), "q8_floor"),
        numpy_helper.from_array(np.array(1.0, np.float32), "q8_one"),
        numpy_helper.from_array(np.array(SHIFT, np.uint8), "q8_zero_point"),
    ]


def _quantize_rows(x: str, p: str) -> tuple[list[onnx.NodeProto], str, str]:
    """Nodes that quantise activation ``x`` per row: returns (nodes, uint8 tensor, row scale tensor)."""
    nodes = [
        helper.make_node("Abs", [x], [p + "abs"]),
        helper.make_node("ReduceMax", [p + "abs", "q8_last_axis"], [p + "amax"], keepdims=1),
        helper.make_node("Max", [p + "amax", "q8_floor"], [p + "amax_nz"]),
        helper.make_node("Div", [p + "amax_nz", "q8_qmax"], [p + "scale"]),
        helper.make_node("Div", ["q8_qmax", p + "amax_nz"], [p + "inv"]),
        helper.make_node("Mul", [x, p + "inv"], [p + "scaled"]),
        # rounds half to even and saturates; with zero point 128 this is round(x / scale) + 128
        helper.make_node("QuantizeLinear", [p + "scaled", "q8_one", "q8_zero_point"], [p + "q"]),
    ]
    return nodes, p + "q", p + "scale"


def quantize_model(model: onnx.ModelProto, nodes: set[str]) -> onnx.ModelProto:
    """Rewrite the named constant-weight MatMuls of ``model`` in place (see the module docstring)."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    graph.initializer.extend(_constants())
    quantised_inputs: dict[str, tuple[str, str]] = {}
    out: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.name not in nodes:
            out.append(node)
            continue
        x, weight = node.input
        if x not in quantised_inputs:
            added, xq, xs = _quantize_rows(x, f"q8_in{len(quantised_inputs)}_")
            out += added
            quantised_inputs[x] = (xq, xs)
        xq, xs = quantised_inputs[x]
        wq, ws = quantize_weight(numpy_helper.to_array(inits[weight]).astype(np.float32))
        p = f"{node.name}_q8_"
        graph.initializer.extend([numpy_helper.from_array(wq, p + "w"), numpy_helper.from_array(ws, p + "w_scale")])
        out += [
            # ORT's fused integer product scaled per column (b_scale); then the per-row scale
            helper.make_node(
                "MatMulIntegerToFloat",
                [xq, p + "w", "q8_one", p + "w_scale", "q8_zero_point"],
                [p + "cols"],
                domain="com.microsoft",
            ),
            helper.make_node("Mul", [p + "cols", xs], [node.output[0]]),
        ]
    del graph.node[:]
    graph.node.extend(out)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [i for i in graph.initializer if i.name in used]  # the float weights that were replaced go
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return model


def quantize_stage(src: Path, dst: Path, min_weight_dim: int = 0) -> list[str]:
    """Quantise ``src`` into ``dst``; only MatMuls with a weight dimension >= ``min_weight_dim``."""
    model = onnx.load(str(src))
    fold_transposed_weights(model)
    nodes = [name for name, shape in constant_matmuls(model).items() if max(shape) >= min_weight_dim]
    quantize_model(model, set(nodes))
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(dst))
    return nodes
