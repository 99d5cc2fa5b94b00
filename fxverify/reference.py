"""onnxruntime as the reference: run the original ONNX model and read any intermediate tensor.

Used twice: when a model is loaded (the float64 IR must agree with onnxruntime at every cut)
and when a collision is verified (the two points must map to the same features in the model
itself, not only in our IR). A cut's features are read by exposing its tensor as an extra
graph output, which computes exactly the sub-graph that ends at that tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from .errors import ModelError
from .ir import InputMap, ModelSource

_ORT_FLOAT = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.FLOAT16: np.float16,
}


def quiet_onnxruntime():
    """onnxruntime, with its C++ log limited to fatal messages: its errors reach fxverify as
    exceptions and are reported as one line, never as coloured log lines before it."""
    import onnxruntime as ort

    ort.set_default_logger_severity(4)
    return ort


class OnnxReference:
    """An onnxruntime session over the original model that also returns ``tensors``."""

    def __init__(self, source: ModelSource, tensors: Sequence[str], input_map: InputMap | None = None) -> None:
        ort = quiet_onnxruntime()
        model = onnx.load_from_string(source.onnx_bytes)
        existing = {o.name for o in model.graph.output}
        for name in tensors:
            if name not in existing:
                model.graph.output.append(onnx.ValueInfoProto(name=name))
                existing.add(name)
        self.tensors = tuple(tensors)
        self.source = source
        self.input_map = input_map
        options = ort.SessionOptions()
        options.log_severity_level = 4
        options.intra_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(
                model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own untyped errors
            raise ModelError(f"onnxruntime cannot load {source.path}: {err}") from err
        inp = self._session.get_inputs()[0]
        elem = model.graph.input[[i.name for i in model.graph.input].index(source.input_name)].type.tensor_type.elem_type
        self._dtype = _ORT_FLOAT.get(elem, np.float32)
        self._input = inp.name
        self._full_shape = tuple(d if isinstance(d, int) else 1 for d in source.onnx_input_shape)
        self._batched = source.dynamic_batch

    def run(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """Evaluate the model on rows of ``X`` (n x input_dim), after the network's input map (spec
        ``normalize``) when it has one. Returns tensor -> (n, dim) float64."""
        X = np.asarray(X)
        if self.input_map is not None:
            X = self.input_map(X)
        n = X.shape[0]
        outs: list[list[np.ndarray]] = []
        try:
            if self._batched and n > 1:
                feed = X.reshape((n,) + self._full_shape[1:]).astype(self._dtype)
                res = self._session.run(list(self.tensors), {self._input: feed})
                outs = [[r.reshape(n, -1)] for r in res]
            else:
                per = [self._session.run(list(self.tensors),
                                         {self._input: X[i].reshape(self._full_shape).astype(self._dtype)})
                       for i in range(n)]
                outs = [[p[k].reshape(1, -1) for p in per] for k in range(len(self.tensors))]
        except Exception as err:  # onnxruntime raises its own untyped errors
            raise ModelError(f"onnxruntime cannot run {self.source.path}: {err}") from err
        return {t: np.concatenate(o, axis=0).astype(np.float64) for t, o in zip(self.tensors, outs)}
