"""Small ONNX models built with onnx.helper for the importer tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

RNG = np.random.default_rng(7)


def rand(*shape, scale=0.5):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def make(nodes, in_shape, out_name="y", inits=None, in_name="x", elem=TensorProto.FLOAT, opset=13,
         extra_inputs=(), out_shape=None):
    inits = inits or {}
    graph = helper.make_graph(
        nodes, "test",
        [helper.make_tensor_value_info(in_name, elem, list(in_shape))] + list(extra_inputs),
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def save(tmp_path: Path, model: onnx.ModelProto, name: str = "m.onnx") -> Path:
    p = tmp_path / name
    p.write_bytes(model.SerializeToString())
    return p


def ort_run(path: Path, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x.astype(np.float32)})[0]


def min_max_norm_cones(r: int) -> tuple[np.ndarray, np.ndarray]:
    """(G rows, c) of  min t  s.t. ||a_u|| <= t, ||a_v|| <= t  in cvxopt's layout, variables
    (t, a_u, a_v) with a_u, a_v in R^r; built here independently of fxverify."""
    n = 1 + 2 * r
    soc = np.zeros((2 * (1 + r), n))
    soc[0, 0] = soc[1 + r, 0] = -1
    soc[1:1 + r, 1:1 + r] = -np.eye(r)
    soc[2 + r:, 1 + r:] = -np.eye(r)
    c = np.zeros(n)
    c[0] = 1
    return soc, c
