"""Graph IR: a network as a graph of typed nodes on flat vectors.

Every tensor is handled flat, in the C order of its ONNX shape at batch size 1. Layout
operations (Flatten, Reshape, Transpose, ...) and constant arithmetic are folded into the
adjacent linear node by :mod:`fxverify.onnx_import`, so the graph has two sorts of nodes:

* :class:`Linear` ``y = sum_i W_i x_i + b`` over one or more inputs (a Conv, Gemm, MatMul+Add,
  AveragePool, residual Add or Concat with everything linear folded into it). ``W_i`` is a
  dense array or a sparse matrix (:mod:`fxverify.linops`). Named ``linearK`` (``poolK`` for an
  average pool, ``addK`` for an Add/Sub of two activations, ``concatK`` for a Concat);
* *pieces* (:mod:`fxverify.pieces`): piecewise-linear nodes with one input whose linear piece is
  chosen per unit by an activation *pattern*: ReLU and Leaky ReLU (``reluK``), MaxPool (``poolK``).

Nodes are kept in topological order. A *cut* is the name of a node, or ``input``; the feature
extractor at a cut is the sub-graph of the cut's ancestors. Evaluation is float64 throughout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import ClassVar

import numpy as np

from . import linops
from .errors import CutError, DataError

INPUT_CUT = "input"


def _frozen(a: np.ndarray, dtype=np.float64) -> np.ndarray:
    a = np.array(a, dtype=dtype, copy=True)
    a.setflags(write=False)
    return a


@dataclass(frozen=True)
class Node:
    """Common fields of every graph node.

    ``inputs`` names the producing nodes (``input`` for the network input); ``out_shape`` is
    the ONNX tensor shape at batch size 1; ``ops`` names the ONNX nodes folded into the node;
    ``onnx_tensor`` is the ONNX tensor holding the node's output (the same numbers in the same
    flat order), used to compare with onnxruntime.
    """

    kind: ClassVar[str] = "node"
    name: str
    inputs: tuple[str, ...]
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

    @property
    def is_piece(self) -> bool:
        return False

    def apply(self, *xs: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        """Outputs for a batch: each ``xs[i]`` is (n, dim of input i); returns (n, out_dim)."""
        raise NotImplementedError


@dataclass(frozen=True)
class Linear(Node):
    """``y = sum_i weights[i] @ x_i + bias`` on flat vectors (``weights[i]`` is out x in_i, dense
    or sparse)."""

    kind: ClassVar[str] = "linear"
    weights: tuple = field(repr=False, default=())
    bias: np.ndarray = field(repr=False, default=None)
    source_params: int = 0

    def __post_init__(self) -> None:
        ws = tuple(w if linops.is_sparse(w) else _frozen(w) for w in self.weights)
        object.__setattr__(self, "weights", ws)
        object.__setattr__(self, "bias", _frozen(self.bias))
        if len(ws) != len(self.inputs) or not ws:
            raise ValueError(f"{self.name}: {len(ws)} weights for {len(self.inputs)} inputs")
        for w in ws:
            if w.shape[0] != self.out_dim:
                raise ValueError(f"{self.name}: weight {w.shape} does not give {self.out_shape}")
        if self.bias.shape != (self.out_dim,):
            raise ValueError(f"{self.name}: bias {self.bias.shape} does not match {self.out_shape}")

    @property
    def weight(self):
        """The weight of a one-input node."""
        if len(self.weights) != 1:
            raise ValueError(f"{self.name} has {len(self.weights)} inputs")
        return self.weights[0]

    @property
    def n_params(self) -> int:
        """Parameters of the ONNX nodes folded into this node (not of its lowering)."""
        return self.source_params

    def apply(self, *xs: np.ndarray) -> np.ndarray:
        out = None
        for w, x in zip(self.weights, xs):
            y = linops.apply(w, x)
            out = y if out is None else out + y
        return out + self.bias


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
    input_dtype: str = "float32"

    @property
    def dynamic_batch(self) -> bool:
        return bool(self.onnx_input_shape) and isinstance(self.onnx_input_shape[0], str)


@dataclass(frozen=True)
class InputMap:
    """The model is fed ``scale * x + offset`` (per input value) for a point ``x``: spec
    ``normalize`` for models that expect normalised inputs. Budgets stay in x's space."""

    scale: np.ndarray = field(repr=False)
    offset: np.ndarray = field(repr=False)
    description: str = ""

    def __call__(self, X: np.ndarray) -> np.ndarray:
        return X * self.scale + self.offset


@dataclass(frozen=True)
class Unavailable:
    """A cut the importer named but cannot represent, and why."""

    cut: str
    reason: str


@dataclass(frozen=True, eq=False)
class Network:
    """An imported network: its nodes in topological order, its input shape and provenance.

    ``unavailable`` lists the cuts after an unsupported operation (they depend on it); every
    other cut is computed exactly."""

    nodes: tuple[Node, ...]
    input_tensor_shape: tuple[int, ...]
    source: ModelSource
    agreement: Agreement | None = None
    unavailable: tuple[Unavailable, ...] = ()
    input_map: InputMap | None = None
    unsupported: tuple[str, ...] = ()  # the graph's nodes fxverify cannot represent, and why
    _index: dict = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        index = {}
        for k, n in enumerate(self.nodes):
            if n.name in index or n.name == INPUT_CUT:
                raise ValueError(f"duplicate node name {n.name!r}")
            for x in n.inputs:
                if x != INPUT_CUT and x not in index:
                    raise ValueError(f"{n.name} reads {x!r} before it is computed")
            index[n.name] = k
        object.__setattr__(self, "_index", index)

    # ---- cuts -----------------------------------------------------------------------------
    @property
    def cuts(self) -> tuple[str, ...]:
        return (INPUT_CUT,) + tuple(n.name for n in self.nodes)

    def node(self, cut: str) -> Node:
        self.cut_index(cut)
        return self.nodes[self._index[cut]]

    def cut_index(self, cut: str) -> int:
        """Position of ``cut`` in :attr:`cuts` (0 for ``input``)."""
        if cut == INPUT_CUT:
            return 0
        k = self._index.get(cut)
        if k is None:
            gone = next((u for u in self.unavailable if u.cut == cut), None)
            if gone is not None:
                raise CutError(f"cut {cut!r} is unavailable: {gone.reason}")
            more = ""
            if self.unavailable:
                more = (f"; unavailable: {', '.join(u.cut for u in self.unavailable)} "
                        f"({self.unavailable[0].reason})")
            raise CutError(f"unknown cut {cut!r}; this network's cuts are: {', '.join(self.cuts)}{more}")
        return k + 1

    def ancestors(self, cut: str) -> tuple[Node, ...]:
        """The nodes the feature extractor at ``cut`` consists of, in topological order."""
        if self.cut_index(cut) == 0:
            return ()
        need = {cut}
        for n in reversed(self.nodes[: self._index[cut] + 1]):
            if n.name in need:
                need.update(x for x in n.inputs if x != INPUT_CUT)
        return tuple(n for n in self.nodes[: self._index[cut] + 1] if n.name in need)

    @cached_property
    def _dominators(self) -> dict[str, tuple[str, ...]]:
        dom: dict[str, tuple[str, ...]] = {INPUT_CUT: (INPUT_CUT,)}
        for n in self.nodes:
            common = set(dom[n.inputs[0]])
            for x in n.inputs[1:]:
                common &= set(dom[x])
            order = [c for c in dom[n.inputs[0]] if c in common]
            dom[n.name] = tuple(order) + (n.name,)
        return dom

    def dominators(self, cut: str) -> tuple[str, ...]:
        """The cuts whose features determine the features at ``cut`` (every path from the input
        to ``cut`` passes through them), from ``input`` to ``cut`` itself. A collision at any of
        them is a collision at ``cut``; in a chain these are all the shallower cuts."""
        self.cut_index(cut)
        return self._dominators[cut]

    def consumers(self, name: str) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if name in n.inputs)

    def cut_shape(self, cut: str) -> tuple[int, ...]:
        return self.input_tensor_shape if self.cut_index(cut) == 0 else self.node(cut).out_shape

    def cut_dim(self, cut: str) -> int:
        return int(np.prod(self.cut_shape(cut), dtype=np.int64))

    def onnx_tensor(self, cut: str) -> str:
        return self.source.input_name if self.cut_index(cut) == 0 else self.node(cut).onnx_tensor

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
    def linear_nodes(self) -> tuple[Linear, ...]:
        return tuple(n for n in self.nodes if isinstance(n, Linear))

    @property
    def pieces(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.is_piece)

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

    def evaluate(self, X: np.ndarray, cuts) -> dict[str, np.ndarray]:
        """Features of a batch X (n, input_dim) at several cuts in one pass (only the nodes
        the cuts need are evaluated)."""
        cuts = tuple(cuts)
        need = set()
        for c in cuts:
            need.update(n.name for n in self.ancestors(c))
        vals = {INPUT_CUT: X}
        for n in self.nodes:
            if n.name in need:
                vals[n.name] = n.apply(*(vals[x] for x in n.inputs))
        return {c: vals[c] for c in cuts}

    def forward(self, x, cut: str | None = None) -> np.ndarray:
        """Evaluate the network (up to ``cut``, default: the last node) in float64.

        Returns flat features: shape (cut_dim,) for a single sample, (n, cut_dim) for a batch.
        """
        X, single = self.as_batch(x)
        cut = cut if cut is not None else self.cuts[-1]
        out = self.evaluate(X, (cut,))[cut]
        return out[0] if single else out


def first_linear(net: Network, cut: str) -> Linear | None:
    """The Linear node every path from the input to ``cut`` starts with, or None when the input
    feeds more than one node of the cut's sub-graph or a piece directly."""
    sub = net.ancestors(cut)
    readers = [n for n in sub if INPUT_CUT in n.inputs]
    if len(readers) != 1 or not isinstance(readers[0], Linear) or len(readers[0].inputs) != 1:
        return None
    return readers[0]


def model_summary(net: Network) -> dict:
    """A plain-data description of a network (what ``fxverify inspect`` shows)."""
    ag = net.agreement
    first = next(iter(net.linear_nodes), None)
    rank = None
    if first is not None and len(first.inputs) == 1 and first.inputs[0] == INPUT_CUT:
        W = first.weight
        if 8.0 * W.shape[0] * W.shape[1] <= 1 << 28:
            rank = int(np.linalg.matrix_rank(linops.to_dense(W)))
        else:  # the Gram matrix's rank (numerical rank of W up to sqrt(eps))
            G = linops.to_dense(W.T @ W) if linops.is_sparse(W) else W.T @ W
            ev = np.linalg.eigvalsh(G)
            rank = int(np.sum(ev > ev[-1] * 1e-12)) if ev.size else 0
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
        "input_map": None if net.input_map is None else net.input_map.description,
        "layers": [{"name": n.name, "kind": n.kind, "inputs": list(n.inputs), "ops": list(n.ops),
                    "in_shape": list(n.in_shape), "out_shape": list(n.out_shape), "params": n.n_params,
                    "storage": ("sparse" if any(linops.is_sparse(w) for w in n.weights) else "dense")
                    if isinstance(n, Linear) else "",
                    "max_abs_diff": ag.max_abs_diff[n.name] if ag else None} for n in net.nodes],
        "cuts": list(net.cuts),
        "unavailable": [{"cut": u.cut, "reason": u.reason} for u in net.unavailable],
        "unsupported": list(net.unsupported),
        "params": sum(n.n_params for n in net.nodes),
        "first_affine": None if first is None or rank is None else {
            "name": first.name, "in_dim": first.in_dim, "out_dim": first.out_dim, "rank": rank},
        "agreement": None if ag is None else {
            "ok": all(ag.ok(c) for c in net.cuts), "max_abs_diff": ag.worst, "tolerance": ag.tolerance,
            "n_inputs": ag.n_inputs, "per_cut": ag.max_abs_diff},
    }
