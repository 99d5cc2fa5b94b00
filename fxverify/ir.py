"""Layer IR: a network as a chain of affine maps, ReLUs and max-pools on flat vectors.

Every tensor is handled flat, in the C order of its ONNX shape at batch size 1. Layout
operations (Flatten, Reshape, Transpose, ...) and constant arithmetic are folded into the
adjacent affine map by :mod:`fxverify.onnx_import`, so the IR has only three layer kinds:

* :class:`Affine` ``y = W x + b`` (a Conv, Gemm, MatMul+Add or AveragePool with everything
  folded into it), named ``linearK`` (``poolK`` for an average pool);
* :class:`Relu`, named ``reluK``;
* :class:`MaxPool`, named ``poolK``.

A *cut* is the name of a layer, or ``input``; the feature extractor at a cut is the prefix of
the network up to and including that layer. Evaluation is float64 throughout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from .errors import CutError, DataError

INPUT_CUT = "input"


def _frozen(a: np.ndarray, dtype=np.float64) -> np.ndarray:
    a = np.array(a, dtype=dtype, copy=True)
    a.setflags(write=False)
    return a


@dataclass(frozen=True)
class Layer:
    """Common fields of every IR layer.

    ``in_shape``/``out_shape`` are ONNX tensor shapes at batch size 1; ``ops`` names the ONNX
    nodes folded into the layer; ``onnx_tensor`` is the ONNX tensor holding the layer's output
    (the same numbers in the same flat order), used to compare with onnxruntime.
    """

    kind: ClassVar[str] = "layer"
    name: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    ops: tuple[str, ...]
    onnx_tensor: str

    @property
    def in_dim(self) -> int:
        return int(np.prod(self.in_shape, dtype=np.int64))

    @property
    def out_dim(self) -> int:
        return int(np.prod(self.out_shape, dtype=np.int64))

    @property
    def n_params(self) -> int:
        return 0

    def apply(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class Affine(Layer):
    """``y = weight @ x + bias`` on flat vectors (``weight`` is out_dim x in_dim)."""

    kind: ClassVar[str] = "affine"
    weight: np.ndarray = field(repr=False, default=None)
    bias: np.ndarray = field(repr=False, default=None)
    source_params: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight", _frozen(self.weight))
        object.__setattr__(self, "bias", _frozen(self.bias))
        if self.weight.shape != (self.out_dim, self.in_dim) or self.bias.shape != (self.out_dim,):
            raise ValueError(f"{self.name}: weight {self.weight.shape} / bias {self.bias.shape} do not match "
                             f"shapes {self.in_shape} -> {self.out_shape}")

    @property
    def n_params(self) -> int:
        """Parameters of the ONNX nodes folded into this layer (not of the dense lowering)."""
        return self.source_params

    def apply(self, x: np.ndarray) -> np.ndarray:
        return x @ self.weight.T + self.bias


@dataclass(frozen=True)
class Relu(Layer):
    kind: ClassVar[str] = "relu"

    def apply(self, x: np.ndarray) -> np.ndarray:
        return np.maximum(x, 0.0)


@dataclass(frozen=True)
class MaxPool(Layer):
    """Max over windows. ``window[i]`` lists the flat input indices pooled into output ``i``;
    ``-1`` marks padding (never the maximum)."""

    kind: ClassVar[str] = "maxpool"
    window: np.ndarray = field(repr=False, default=None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "window", _frozen(self.window, dtype=np.int64))
        if self.window.ndim != 2 or self.window.shape[0] != self.out_dim:
            raise ValueError(f"{self.name}: window table {self.window.shape} does not match {self.out_shape}")

    def apply(self, x: np.ndarray) -> np.ndarray:
        padded = np.concatenate([x, np.full((x.shape[0], 1), -np.inf)], axis=1)
        return padded[:, self.window].max(axis=2)


@dataclass(frozen=True)
class Agreement:
    """How the float64 IR compares with onnxruntime on random inputs, per cut."""

    max_abs_diff: dict[str, float]
    scale: dict[str, float]
    tolerance: float
    n_inputs: int

    @property
    def worst(self) -> float:
        return max(self.max_abs_diff.values()) if self.max_abs_diff else 0.0

    def ok(self, cut: str) -> bool:
        return self.max_abs_diff[cut] <= self.tolerance * max(1.0, self.scale[cut])


@dataclass(frozen=True)
class ModelSource:
    """Where a network came from: the ONNX file, its hash, and its raw bytes for onnxruntime."""

    path: str
    sha256: str
    input_name: str
    output_name: str
    onnx_input_shape: tuple[int | str, ...]
    onnx_bytes: bytes = field(repr=False)
    producer: str = ""
    opset: int = 0

    @property
    def dynamic_batch(self) -> bool:
        return bool(self.onnx_input_shape) and isinstance(self.onnx_input_shape[0], str)


@dataclass(frozen=True)
class Network:
    """An imported network: the chain of layers, its input shape and its provenance."""

    layers: tuple[Layer, ...]
    input_tensor_shape: tuple[int, ...]
    source: ModelSource
    agreement: Agreement | None = None

    # ---- cuts -----------------------------------------------------------------------------
    @property
    def cuts(self) -> tuple[str, ...]:
        return (INPUT_CUT,) + tuple(layer.name for layer in self.layers)

    def cut_index(self, cut: str) -> int:
        """Number of layers in the prefix that ends at ``cut`` (0 for ``input``)."""
        if cut == INPUT_CUT:
            return 0
        for i, layer in enumerate(self.layers):
            if layer.name == cut:
                return i + 1
        raise CutError(f"unknown cut {cut!r}; this network's cuts are: {', '.join(self.cuts)}")

    def prefix(self, cut: str) -> tuple[Layer, ...]:
        """The layers of the feature extractor that ends at ``cut``."""
        return self.layers[: self.cut_index(cut)]

    def cut_shape(self, cut: str) -> tuple[int, ...]:
        k = self.cut_index(cut)
        return self.input_tensor_shape if k == 0 else self.layers[k - 1].out_shape

    def cut_dim(self, cut: str) -> int:
        return int(np.prod(self.cut_shape(cut), dtype=np.int64))

    def onnx_tensor(self, cut: str) -> str:
        k = self.cut_index(cut)
        return self.source.input_name if k == 0 else self.layers[k - 1].onnx_tensor

    # ---- shapes ---------------------------------------------------------------------------
    @property
    def input_dim(self) -> int:
        return int(np.prod(self.input_tensor_shape, dtype=np.int64))

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample: the ONNX input shape without its batch axis."""
        s = self.input_tensor_shape
        return s[1:] if len(s) >= 2 and s[0] == 1 else s

    @property
    def affine_layers(self) -> tuple[Affine, ...]:
        return tuple(layer for layer in self.layers if isinstance(layer, Affine))

    # ---- evaluation -----------------------------------------------------------------------
    def as_batch(self, x) -> tuple[np.ndarray, bool]:
        """Return ``(X, single)`` with X of shape (n, input_dim), float64.

        Accepts one sample or a batch, flat or in the model's input shape.
        """
        x = np.asarray(x, dtype=np.float64)
        d, shape = self.input_dim, self.input_shape
        if x.shape == shape or x.shape == (d,):
            return x.reshape(1, d), True
        if x.ndim >= 1 and (x.shape[1:] == shape or x.shape[1:] == (d,) or x.shape[1:] == self.input_tensor_shape):
            return x.reshape(x.shape[0], d), False
        raise DataError(
            f"input of shape {x.shape} does not fit the model: expected {shape} or {(d,)} for one sample, "
            f"or (n, {', '.join(map(str, shape))}) / (n, {d}) for a batch")

    def forward(self, x, cut: str | None = None) -> np.ndarray:
        """Evaluate the network (up to ``cut``, default: the whole network) in float64.

        Returns flat features: shape (cut_dim,) for a single sample, (n, cut_dim) for a batch.
        """
        X, single = self.as_batch(x)
        for layer in self.layers[: self.cut_index(cut) if cut is not None else len(self.layers)]:
            X = layer.apply(X)
        return X[0] if single else X


def model_summary(net: Network) -> dict:
    """A plain-data description of a network (what ``fxverify inspect`` shows)."""
    ag = net.agreement
    first = net.affine_layers[0] if net.affine_layers else None
    return {
        "path": net.source.path,
        "sha256": net.source.sha256,
        "producer": net.source.producer,
        "opset": net.source.opset,
        "input_name": net.source.input_name,
        "onnx_input_shape": list(net.source.onnx_input_shape),
        "input_shape": list(net.input_shape),
        "input_dim": net.input_dim,
        "input_tensor_shape": list(net.input_tensor_shape),
        "layers": [{"name": layer.name, "kind": layer.kind, "ops": list(layer.ops), "in_shape": list(layer.in_shape),
                    "out_shape": list(layer.out_shape), "params": layer.n_params,
                    "max_abs_diff": ag.max_abs_diff[layer.name] if ag else None} for layer in net.layers],
        "cuts": list(net.cuts),
        "params": sum(layer.n_params for layer in net.layers),
        "first_affine": None if first is None else {
            "name": first.name, "in_dim": first.in_dim, "out_dim": first.out_dim,
            "rank": int(np.linalg.matrix_rank(first.weight))},
        "agreement": None if ag is None else {
            "ok": all(ag.ok(c) for c in net.cuts), "max_abs_diff": ag.worst, "tolerance": ag.tolerance,
            "n_inputs": ag.n_inputs, "per_cut": ag.max_abs_diff},
    }
