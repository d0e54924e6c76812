"""The four ONNX stages built directly from CTranslate2 weights with ``onnx.helper``: no torch.

The same computation as ``models/whisper_torch.py`` (the reference, exported by torch in tests),
with the same input and output names and shapes (``models/export.py`` ``STAGE_IO``), so a serving
install (``pip install splitasr``, no extras) exports its stages from an empty cache. Linear
weights are stored transposed (``[in, out]``) so every projection is a ``MatMul`` with a constant
weight, which ``models/quantize.py`` quantises; the vocabulary projection reuses the token
embedding through a ``Transpose``, as the torch export does.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from splitasr.models.ct2 import CT2Model
from splitasr.models.dims import WhisperDims
from splitasr.models.export import OPSET, STAGES

IR_VERSION = 9  # opset 18; read by every onnxruntime splitasr supports (>= 1.18)
NEG = -1e9  # additive mask of an invisible key


class Graph:
    """A small builder: nodes with generated output names, constants and weights as initializers."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._names: set[str] = set()
        self._n = 0

    def op(self, op_type: str, *inputs: str, outputs: int = 1, name: str | None = None, **attrs) -> str | list[str]:
        self._n += 1
        outs = [name] if name and outputs == 1 else [f"{op_type.lower()}_{self._n}_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=f"{op_type}_{self._n}", **attrs))
        return outs[0] if outputs == 1 else outs

    def weight(self, name: str, array: np.ndarray) -> str:
        if name not in self._names:
            self._names.add(name)
            self.inits.append(numpy_helper.from_array(np.array(array, order="C"), name))  # keeps 0-d
        return name

    def const(self, value, dtype=np.int64) -> str:
        self._n += 1
        return self.weight(f"const_{self._n}", np.asarray(value, dtype=dtype))

    def model(self, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto]) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "splitasr_stage", inputs, outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="splitasr")
        model.ir_version = IR_VERSION
        return model


class WhisperGraphs:
    """Builds each stage of one Whisper model split at ``split_layer``."""

    def __init__(self, m: CT2Model, split_layer: int | None = None):
        self.m = m
        self.dims = WhisperDims.from_ct2(m)
        self.split = self.dims.n_audio_layer // 2 if split_layer is None else split_layer
        self.d = self.dims.n_state

    # -- weights -------------------------------------------------------------------------------
    def w(self, name: str) -> np.ndarray:
        return np.asarray(self.m[name], dtype=np.float32)

    # -- layers ----------------------------------------------------------------------------------
    def linear(self, g: Graph, x: str, src: str, rows: slice = slice(None), bias: bool = True) -> str:
        """``x @ W[rows].T + b[rows]`` with CT2's ``[out, in]`` weight stored as ``[in, out]``."""
        tag = f"{src}[{rows.start}:{rows.stop}]"
        y = g.op("MatMul", x, g.weight(f"{tag}/weight_t", self.w(f"{src}/weight")[rows].T))
        if not bias:
            return y
        return g.op("Add", y, g.weight(f"{tag}/bias", self.w(f"{src}/bias")[rows]))

    def norm(self, g: Graph, x: str, src: str) -> str:
        gamma = g.weight(f"{src}/gamma", self.w(f"{src}/gamma"))
        beta = g.weight(f"{src}/beta", self.w(f"{src}/beta"))
        return g.op("LayerNormalization", x, gamma, beta, axis=-1, epsilon=1e-5)

    @staticmethod
    def gelu(g: Graph, x: str) -> str:
        """Exact GELU, ``x * (0.5 * (1 + erf(x / sqrt 2)))``: the form torch exports, which onnxruntime
        fuses into its Gelu kernel (other arrangements are left unfused: slower, and rounded apart)."""
        erf = g.op("Erf", g.op("Div", x, g.const(math.sqrt(2), np.float32)))
        half = g.op("Mul", g.const(0.5, np.float32), g.op("Add", erf, g.const(1.0, np.float32)))
        return g.op("Mul", x, half)

    def heads(self, g: Graph, x: str, n_head: int, keys: bool = False) -> str:
        """(batch, time, state) -> (batch, heads, time, state // heads); ``keys``: (…, state // heads, time)."""
        shaped = g.op("Reshape", x, g.const([0, 0, n_head, self.d // n_head]))
        return g.op("Transpose", shaped, perm=[0, 2, 3, 1] if keys else [0, 2, 1, 3])

    def attention(self, g: Graph, q: str, kt: str, v: str, n_head: int, mask: str | None = None) -> str:
        """Queries (batch, tq, state) over transposed keys (batch, heads, state // heads, tk) and
        values (batch, heads, tk, state // heads); ``mask`` additive; -> (batch, tq, state)."""
        scores = g.op(
            "Mul", g.op("MatMul", self.heads(g, q, n_head), kt), g.const((self.d // n_head) ** -0.5, np.float32)
        )
        if mask is not None:
            scores = g.op("Add", scores, mask)
        out = g.op("MatMul", g.op("Softmax", scores, axis=-1), v)
        return g.op("Reshape", g.op("Transpose", out, perm=[0, 2, 1, 3]), g.const([0, 0, self.d]))

    def mlp(self, g: Graph, x: str, src: str) -> str:
        h = self.norm(g, x, f"{src}/layer_norm")
        h = self.linear(g, self.gelu(g, self.linear(g, h, f"{src}/linear_0")), f"{src}/linear_1")
        return g.op("Add", x, h)

    def encoder_block(self, g: Graph, x: str, i: int) -> str:
        src, d, n = f"encoder/layer_{i}/self_attention", self.d, self.dims.n_audio_head
        h = self.norm(g, x, f"{src}/layer_norm")
        q = self.linear(g, h, f"{src}/linear_0", slice(0, d))
        k = self.heads(g, self.linear(g, h, f"{src}/linear_0", slice(d, 2 * d), bias=False), n, keys=True)
        v = self.heads(g, self.linear(g, h, f"{src}/linear_0", slice(2 * d, 3 * d)), n)
        x = g.op("Add", x, self.linear(g, self.attention(g, q, k, v, n), f"{src}/linear_1"))
        return self.mlp(g, x, f"encoder/layer_{i}/ffn")

    # -- stages ----------------------------------------------------------------------------------
    def enc_a(self) -> onnx.ModelProto:
        g, dims = Graph(), self.dims
        x = "mel"
        for name, stride in (("conv1", 1), ("conv2", 2)):
            src = f"encoder/{name}"
            conv = g.op(
                "Conv",
                x,
                g.weight(f"{src}/weight", self.w(f"{src}/weight")),
                g.weight(f"{src}/bias", self.w(f"{src}/bias")),
                kernel_shape=[3],
                pads=[1, 1],
                strides=[stride],
            )
            x = self.gelu(g, conv)
        x = g.op("Transpose", x, perm=[0, 2, 1])
        frames = g.op("Slice", g.op("Shape", x), g.const([1]), g.const([2]))
        pos = g.op("Slice", g.weight("enc_pos", self.w("encoder/position_encodings/encodings")), g.const([0]), frames)
        x = g.op("Add", x, pos)
        for i in range(self.split):
            x = self.encoder_block(g, x, i)
        g.op("Identity", x, name="hidden")
        return g.model(
            [_input("mel", TensorProto.FLOAT, ["batch", dims.n_mels, "frames"])],
            [_output("hidden", ["batch", "ctx", self.d])],
        )

    def enc_b(self) -> onnx.ModelProto:
        g = Graph()
        x = "hidden"
        for i in range(self.split, self.dims.n_audio_layer):
            x = self.encoder_block(g, x, i)
        g.op("Identity", self.norm(g, x, "encoder/layer_norm"), name="audio")
        return g.model(
            [_input("hidden", TensorProto.FLOAT, ["batch", "ctx", self.d])],
            [_output("audio", ["batch", "ctx", self.d])],
        )

    def cross_kv(self) -> onnx.ModelProto:
        g, d, n = Graph(), self.d, self.dims.n_text_head
        ks, vs = [], []
        for i in range(self.dims.n_text_layer):
            src = f"decoder/layer_{i}/attention/linear_1"
            k = self.heads(g, self.linear(g, "audio", src, slice(0, d), bias=False), n)
            v = self.heads(g, self.linear(g, "audio", src, slice(d, 2 * d)), n)
            ks.append(g.op("Unsqueeze", k, g.const([0])))
            vs.append(g.op("Unsqueeze", v, g.const([0])))
        g.op("Concat", *ks, axis=0, name="cross_k")
        g.op("Concat", *vs, axis=0, name="cross_v")
        return g.model(
            [_input("audio", TensorProto.FLOAT, ["batch", "ctx", d])],
            [_output(name, [self.dims.n_text_layer, "batch", n, "ctx", d // n]) for name in ("cross_k", "cross_v")],
        )

    def dec_step(self) -> onnx.ModelProto:
        g, d, n_head, layers = Graph(), self.d, self.dims.n_text_head, self.dims.n_text_layer
        n = g.op("Slice", g.op("Shape", "tokens"), g.const([1]), g.const([2]))
        idx = g.op("Range", g.const(0), g.op("Squeeze", n, g.const([0])), g.const(1))
        positions = g.op("Add", g.op("Unsqueeze", "offset", g.const([1])), g.op("Unsqueeze", idx, g.const([0])))
        embedding = g.weight("token_embedding", self.w("decoder/embeddings/weight"))
        dec_pos = g.weight("dec_pos", self.w("decoder/position_encodings/encodings"))
        x = g.op("Add", g.op("Gather", embedding, "tokens"), g.op("Gather", dec_pos, positions))
        # new token i sees the visible past and the new tokens <= i
        later = g.op("Greater", g.op("Unsqueeze", idx, g.const([0])), g.op("Unsqueeze", idx, g.const([1])))
        causal = g.op("Mul", g.op("Cast", later, to=TensorProto.FLOAT), g.const(NEG, np.float32))
        batch = g.op("Slice", g.op("Shape", "tokens"), g.const([0]), g.const([1]))
        past = g.op(
            "Expand",
            g.op("Unsqueeze", "past_mask", g.const([1])),
            g.op("Concat", g.const([1]), n, g.const([1]), axis=0),
        )
        new = g.op("Expand", g.op("Unsqueeze", causal, g.const([0])), g.op("Concat", batch, g.const([1, 1]), axis=0))
        mask = g.op("Unsqueeze", g.op("Concat", past, new, axis=2), g.const([1]))
        cross_mask = g.op("Unsqueeze", "cross_mask", g.const([1, 2]))
        new_k, new_v = [], []
        for i in range(layers):
            src = f"decoder/layer_{i}"
            h = self.norm(g, x, f"{src}/self_attention/layer_norm")
            qkv = f"{src}/self_attention/linear_0"
            past_k = g.op("Gather", "past_k", g.const(i), axis=0)
            past_v = g.op("Gather", "past_v", g.const(i), axis=0)
            k = g.op("Concat", past_k, self.linear(g, h, qkv, slice(d, 2 * d), bias=False), axis=1)
            v = g.op("Concat", past_v, self.linear(g, h, qkv, slice(2 * d, 3 * d)), axis=1)
            q = self.linear(g, h, qkv, slice(0, d))
            a = self.attention(g, q, self.heads(g, k, n_head, keys=True), self.heads(g, v, n_head), n_head, mask)
            x = g.op("Add", x, self.linear(g, a, f"{src}/self_attention/linear_1"))
            q = self.linear(g, self.norm(g, x, f"{src}/attention/layer_norm"), f"{src}/attention/linear_0")
            cross_kt = g.op("Transpose", f"cross_k_{i}", perm=[0, 1, 3, 2])
            a = self.attention(g, q, cross_kt, f"cross_v_{i}", n_head, cross_mask)
            x = g.op("Add", x, self.linear(g, a, f"{src}/attention/linear_2"))
            x = self.mlp(g, x, f"{src}/ffn")
            new_k.append(g.op("Unsqueeze", k, g.const([0])))
            new_v.append(g.op("Unsqueeze", v, g.const([0])))
        last = self.norm(g, g.op("Gather", x, g.const(-1), axis=1), "decoder/layer_norm")
        g.op("MatMul", last, g.op("Transpose", embedding, perm=[1, 0]), name="logits")
        g.op("Concat", *new_k, axis=0, name="new_k")
        g.op("Concat", *new_v, axis=0, name="new_v")
        heads = ["batch", n_head, "ctx", d // n_head]
        inputs = [
            _input("tokens", TensorProto.INT64, ["batch", "ntok"]),
            _input("offset", TensorProto.INT64, ["batch"]),
            _input("past_k", TensorProto.FLOAT, [layers, "batch", "past", d]),
            _input("past_v", TensorProto.FLOAT, [layers, "batch", "past", d]),
            _input("past_mask", TensorProto.FLOAT, ["batch", "past"]),
            _input("cross_mask", TensorProto.FLOAT, ["batch", "ctx"]),
            *(_input(f"cross_{kv}_{i}", TensorProto.FLOAT, heads) for kv in "kv" for i in range(layers)),
        ]
        cache = [layers, "batch", "total", d]
        return g.model(
            inputs, [_output("logits", ["batch", self.dims.n_vocab]), _output("new_k", cache), _output("new_v", cache)]
        )


def _input(name: str, dtype: int, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def _output(name: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def build_stages(ct2: CT2Model, out_dir: Path, split_layer: int | None = None, progress=None) -> dict[str, Path]:
    """Write every stage of ``ct2`` into ``out_dir`` (``export_stages`` without torch)."""
    graphs = WhisperGraphs(ct2, split_layer)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for stage in STAGES:
        if progress:
            progress(stage)
        model = getattr(graphs, stage)()
        onnx.checker.check_model(model)
        paths[stage] = out_dir / f"{stage}.onnx"
        onnx.save(model, str(paths[stage]))
    return paths
