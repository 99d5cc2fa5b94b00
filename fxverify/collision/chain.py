"""The feature extractor at a cut, in the normal form the collision methods work on.

Consecutive affine layers are composed into one map. The result is one of:

* ``identity``: the input cut;
* ``affine``: one affine map ``f(x) = W x + b`` (closed form);
* ``relu``: ``z1 = W1 x + b1``, then ``h_k = relu(z_k)``, ``z_{k+1} = W_{k+1} h_k + b_{k+1}``, with
  K ReLU layers, ending either at ``h_K`` (a ReLU cut) or at one more affine map (``final``);
* ``unsupported``: the prefix holds a layer no collision method handles (max-pool).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ..ir import Affine, MaxPool, Network, Relu


@dataclass(frozen=True)
class Chain:
    kind: str  # "identity" | "affine" | "relu" | "unsupported"
    cut: str
    weights: tuple[np.ndarray, ...] = ()
    biases: tuple[np.ndarray, ...] = ()
    n_relu: int = 0
    final: bool = False  # relu chains: the cut is an affine map after the last ReLU
    reason: str = ""
    input_dim: int = 0

    @cached_property
    def first_svd(self) -> "RowSpace":
        return RowSpace.of(self.weights[0])


@dataclass(frozen=True)
class RowSpace:
    """Thin SVD of a matrix W = U diag(s) V^T restricted to its numerical rank."""

    V: np.ndarray  # d x r, orthonormal columns spanning the row space
    s: np.ndarray  # r singular values kept
    dropped: float  # largest singular value dropped (0 if none)

    @staticmethod
    def of(W: np.ndarray) -> "RowSpace":
        _, s, Vt = np.linalg.svd(W, full_matrices=False)
        tol = max(W.shape) * np.finfo(float).eps * (s[0] if s.size else 0.0)
        r = int(np.sum(s > tol))
        return RowSpace(V=np.ascontiguousarray(Vt[:r].T), s=s[:r], dropped=float(s[r]) if r < s.size else 0.0)

    @property
    def rank(self) -> int:
        return self.V.shape[1]


def chain_of(net: Network, cut: str) -> Chain:
    """Normalise the prefix of ``net`` that ends at ``cut``."""
    layers = net.prefix(cut)
    d = net.input_dim
    if not layers:
        return Chain("identity", cut, input_dim=d)
    for layer in layers:
        if isinstance(layer, MaxPool):
            return Chain("unsupported", cut, input_dim=d,
                         reason=f"the feature extractor at {cut} contains the max-pool layer {layer.name}; "
                                f"collision methods handle affine and ReLU layers only")
    stages: list = []  # ("affine", W, b) or ("relu",)
    for layer in layers:
        if isinstance(layer, Affine):
            if stages and stages[-1][0] == "affine":
                _, W, b = stages[-1]
                stages[-1] = ("affine", layer.weight @ W, layer.weight @ b + layer.bias)
            else:
                stages.append(("affine", layer.weight, layer.bias))
        elif isinstance(layer, Relu):
            if not stages or stages[-1][0] == "relu":
                # relu(relu(x)) = relu(x); a leading ReLU acts on the identity map
                if not stages:
                    stages.append(("affine", np.eye(d), np.zeros(d)))
                else:
                    continue
            stages.append(("relu",))
        else:  # pragma: no cover - the IR has no other kinds
            return Chain("unsupported", cut, input_dim=d, reason=f"layer {layer.name} of kind {layer.kind}")
    affines = [(s[1], s[2]) for s in stages if s[0] == "affine"]
    n_relu = sum(1 for s in stages if s[0] == "relu")
    W = tuple(np.asarray(a[0], dtype=np.float64) for a in affines)
    b = tuple(np.asarray(a[1], dtype=np.float64) for a in affines)
    if n_relu == 0:
        return Chain("affine", cut, W, b, input_dim=d)
    return Chain("relu", cut, W, b, n_relu=n_relu, final=stages[-1][0] == "affine", input_dim=d)
