"""The int8 scheme of models/quantize.py, run by onnxruntime on a small graph."""

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from splitasr.models.quantize import QMAX, constant_matmuls, quantize_model, quantize_weight


def matmul_model(weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """``x [B, T, K]`` times each weight; two weights share the input (as q/k/v projections do)."""
    k = next(iter(weights.values())).shape[0]
    nodes = [helper.make_node("MatMul", ["x", name], [f"y_{name}"], name=f"mm_{name}") for name in weights]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", k])],
        [helper.make_tensor_value_info(f"y_{n}", TensorProto.FLOAT, None) for n in weights],
        [numpy_helper.from_array(w, n) for n, w in weights.items()],
    )
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets)


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def reference(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The scheme in numpy: symmetric int8 rows of x, symmetric int8 columns of w, integer product."""
    amax = np.abs(x).max(axis=-1, keepdims=True)
    xq = np.round(x * (QMAX / amax))
    wq, ws = quantize_weight(w)
    return (xq @ wq.astype(np.float32)) * (amax / QMAX) * ws


def test_rows_are_quantised_alone_and_match_the_numpy_scheme():
    rng = np.random.default_rng(0)
    weights = {"a": rng.normal(size=(64, 96)).astype(np.float32), "b": rng.normal(size=(64, 32)).astype(np.float32)}
    model = matmul_model(weights)
    assert constant_matmuls(model) == {"mm_a": (64, 96), "mm_b": (64, 32)}
    quantize_model(model, {"mm_a", "mm_b"})
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMul") == 0 and ops.count("MatMulIntegerToFloat") == 2
    assert ops.count("QuantizeLinear") == 1  # the shared input is quantised once
    assert {i.name for i in model.graph.initializer}.isdisjoint(weights)  # float weights dropped
    sess = session(model)

    x = rng.normal(size=(2, 5, 64)).astype(np.float32)
    x[1, 3] *= 1000  # one loud row
    got = sess.run(None, {"x": x})
    for name, y in zip(weights, got, strict=True):
        exact = x @ weights[name]
        np.testing.assert_allclose(y, reference(x, weights[name]), rtol=1e-4, atol=1e-3 * np.abs(exact).max())
        # per-row scales: the quiet rows keep their precision next to the loud one
        quiet = np.ones(x.shape[:2], bool)
        quiet[1, 3] = False
        err = np.abs(y - exact)[quiet].max() / np.abs(exact[quiet]).max()
        assert err < 0.03, err
    # a row's result does not depend on the other rows of the batch
    alone = sess.run(None, {"x": x[:1, :2]})[0]
    np.testing.assert_array_equal(alone, got[0][:1, :2])


def test_a_zero_row_gives_zeros_not_nan():
    w = np.eye(8, dtype=np.float32)
    model = matmul_model({"w": w})
    quantize_model(model, {"mm_w"})
    y = session(model).run(None, {"x": np.zeros((1, 3, 8), np.float32)})[0]
    assert np.array_equal(y, np.zeros_like(y))  # quantised to the zero point exactly, no NaN on the way
