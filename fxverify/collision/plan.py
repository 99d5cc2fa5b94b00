"""The feature extractor at a cut, as the collision methods see it (one :class:`CutPlan` per
network, cut, norm and input domain; shared by every pair).

* ``identity``: the input cut;
* ``affine``: no piece among the cut's ancestors: one affine map ``f(x) = L x + k``;
* ``pieces``: piecewise linear. At fixed activation patterns every node is affine in the
  perturbation variables ``a`` of each point (``x = p + V a``), and :meth:`CutPlan.forms`
  gives each node's value as ``c + J a``.

Perturbations live in the row space of the first linear map when the norm allows it (l2
without an input domain; ``V`` from its SVD): components in its null space change no feature
and only add norm. Otherwise ``V`` is the identity (``basis`` is None) and the sparse structure
of convolutions is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import scipy.sparse as sp

from .. import linops
from ..ir import INPUT_CUT, Linear, Network, Node, first_linear
from ..norms import Domain, Norm
from ..pieces import Piece

#: a map with at most this many entries and fewer than twice as many rows as columns gets an
#: exact SVD; others (convolutions, tall maps) an eigendecomposition of their Gram matrix
SVD_ENTRIES = 20_000_000


@dataclass(frozen=True)
class RowSpace:
    """Thin SVD of a matrix W = U diag(s) V^T restricted to its numerical rank."""

    V: np.ndarray  # d x r, orthonormal columns spanning the row space
    s: np.ndarray  # r singular values kept
    dropped: float  # largest singular value dropped (0 if none)

    @staticmethod
    def of(W) -> RowSpace:
        m, d = W.shape
        if m * d <= SVD_ENTRIES and m < 2 * d:
            _, s, Vt = np.linalg.svd(linops.to_dense(W), full_matrices=False)
            tol = max(W.shape) * np.finfo(float).eps * (s[0] if s.size else 0.0)
            r = int(np.sum(s > tol))
            return RowSpace(V=np.ascontiguousarray(Vt[:r].T), s=s[:r], dropped=float(s[r]) if r < s.size else 0.0)
        # a tall map (a convolution): the eigenvectors of W'W (d x d) span the same row space
        G = linops.to_dense(W.T @ W) if sp.issparse(W) else W.T @ W
        lam, U = np.linalg.eigh(G)
        lam, U = lam[::-1], U[:, ::-1]
        s = np.sqrt(np.maximum(lam, 0.0))
        # eigenvalues below this are rounding of W'W (its relative precision is eps * s_max^2)
        tol = np.sqrt(max(W.shape) * np.finfo(float).eps) * (s[0] if s.size else 0.0)
        r = int(np.sum(s > tol))
        return RowSpace(V=np.ascontiguousarray(U[:, :r]), s=s[:r], dropped=float(s[r]) if r < s.size else 0.0)

    @property
    def rank(self) -> int:
        return self.V.shape[1]


@dataclass(frozen=True, eq=False)
class CutPlan:
    net: Network
    cut: str
    norm: Norm
    domain: Domain | None = None
    nodes: tuple[Node, ...] = field(default=(), repr=False)

    @staticmethod
    def of(net: Network, cut: str, norm: Norm, domain: Domain | None = None) -> CutPlan:
        return CutPlan(net, cut, norm, domain, net.ancestors(cut))

    # ---- structure ---------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        if not self.nodes:
            return "identity"
        return "pieces" if any(n.is_piece for n in self.nodes) else "affine"

    @property
    def cut_node(self) -> Node | None:
        return self.nodes[-1] if self.nodes else None

    @property
    def shared(self) -> bool:
        """The cut is a piece whose pattern both points share (ReLU)."""
        n = self.cut_node
        return n is not None and n.is_piece and n.shares_pattern_at_cut

    @cached_property
    def hidden(self) -> tuple[Piece, ...]:
        """Pieces with a pattern per point, in topological order."""
        return tuple(n for n in self.nodes if n.is_piece and not (self.shared and n is self.cut_node))

    @property
    def input_dim(self) -> int:
        return self.net.input_dim

    @cached_property
    def first(self) -> Linear | None:
        return first_linear(self.net, self.cut) if self.nodes else None

    @cached_property
    def row_space(self) -> RowSpace | None:
        """The first linear map's row space, when perturbations may be restricted to it."""
        if not (self.norm.row_space_reduction and self.domain is None and self.first is not None):
            return None
        W = self.first.weight
        if sp.issparse(W) and W.shape[0] >= W.shape[1]:
            # a convolution with at least as many outputs as inputs: keep its sparsity (no
            # reduction; the null-space components, if any, are set to zero by the solver)
            return None
        return RowSpace.of(W)

    @property
    def basis(self) -> np.ndarray | None:
        """V (d x r) with x = p + V a, or None for the identity."""
        rs = self.row_space
        return None if rs is None else rs.V

    @property
    def n_vars(self) -> int:
        """Perturbation variables per point."""
        b = self.basis
        return self.input_dim if b is None else b.shape[1]

    @cached_property
    def first_jacobian(self):
        """The first linear map in the perturbation variables: W V (or W)."""
        W = self.first.weight
        V = self.basis
        return W if V is None else linops.matmul(W, V, f"{self.first.name} times its row space")

    @cached_property
    def affine_row_space(self) -> RowSpace:
        """The row space of an affine cut's map L."""
        return RowSpace.of(affine_map(self)[0])

    def lift(self, a: np.ndarray) -> np.ndarray:
        """The input-space perturbation of variables a."""
        V = self.basis
        return a if V is None else V @ a

    def box(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Bounds on the variables of point p that keep it in the domain (identity basis only)."""
        if self.domain is None:
            return None
        return self.domain.lo - p, self.domain.hi - p

    # ---- affine forms at fixed patterns ---------------------------------------------------------
    def forms(self, p: np.ndarray, patterns: dict[str, np.ndarray], stop_before_cut: bool = False,
              jac=None) -> dict[str, tuple]:
        """Each node's value ``c + J a`` for the point ``p`` at the given patterns (hidden pieces
        by name). ``stop_before_cut``: skip the cut node (a shared-pattern cut needs only its
        input). ``jac``: a cache of Jacobians behind a first piece (see :class:`JacobianCache`)."""
        vals: dict[str, tuple] = {}
        cut = self.cut_node
        identity = None
        for n in self.nodes:
            if stop_before_cut and n is cut:
                break
            if isinstance(n, Linear):
                c = None
                J = None
                for w, src in zip(n.weights, n.inputs):
                    if src == INPUT_CUT:
                        ci = linops.apply(w, p[None, :])[0]
                        Ji = self.first_jacobian if n is self.first else self._input_jacobian(w)
                    else:
                        cs, Js = vals[src]
                        ci = linops.apply(w, cs[None, :])[0] if linops.is_sparse(w) else w @ cs
                        Ji = jac.get(self, n, src, patterns) if jac is not None else None
                        if Ji is None:
                            Ji = linops.matmul(w, Js, f"the Jacobian of {n.name}")
                    c = ci if c is None else c + ci
                    J = Ji if J is None else _add(J, Ji)
                vals[n.name] = (c + n.bias, J)
            else:
                src = n.inputs[0]
                if src == INPUT_CUT:
                    if identity is None:
                        identity = self._identity()
                    cs, Js = p, identity
                else:
                    cs, Js = vals[src]
                vals[n.name] = n.through(patterns[n.name], cs, Js)
        return vals

    def _identity(self):
        V = self.basis
        if V is not None:
            return V
        d = self.input_dim
        return np.eye(d) if d <= 1024 else sp.identity(d, format="csr")

    def _input_jacobian(self, w):
        V = self.basis
        return w if V is None else linops.matmul(w, V, "a map of the input times the row space")

    def values(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every node's value at the point x (float64)."""
        names = [n.name for n in self.nodes]
        out = self.net.evaluate(x[None, :], names)
        return {k: v[0] for k, v in out.items()}

    def patterns_at(self, xu: np.ndarray, xv: np.ndarray) -> tuple[dict, dict, np.ndarray | None]:
        """(patterns of u, patterns of v, shared cut pattern) of the pieces containing xu, xv."""
        vu, vv = self.values(xu), self.values(xv)
        pu = {n.name: n.pattern_of(_input_value(n, vu, xu)) for n in self.hidden}
        pv = {n.name: n.pattern_of(_input_value(n, vv, xv)) for n in self.hidden}
        shared = None
        if self.shared:
            n = self.cut_node
            shared = n.shared_pattern_of(_input_value(n, vu, xu), _input_value(n, vv, xv))
        return pu, pv, shared


def _input_value(n: Node, vals: dict, x: np.ndarray) -> np.ndarray:
    src = n.inputs[0]
    return x if src == INPUT_CUT else vals[src]


def _add(A, B):
    if sp.issparse(A) and sp.issparse(B):
        return (A + B).tocsr()
    return linops.to_dense(A) + linops.to_dense(B)


#: a cached Jacobian is recomputed after this many rank updates (rounding drift)
_MAX_UPDATES = 16


class JacobianCache:
    """Jacobians ``W diag(slope(s)) J0`` of a linear node behind a first diagonal piece (a ReLU
    reading the first linear map, whose Jacobian J0 does not depend on any pattern), keyed by
    that piece's pattern s. A pattern close to a kept one is updated in rank |flips| instead of
    recomputed: descent steps flip a few units. Lives for one pair (results then depend on the
    pair's own steps only)."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._store: dict[tuple, tuple] = {}

    def clear(self) -> None:
        self._store.clear()

    def get(self, plan: CutPlan, n: Linear, src: str, patterns: dict):
        q = next((m for m in plan.nodes if m.name == src), None)
        if q is None or not q.is_piece or q.kind != "relu" or q.inputs[0] != getattr(plan.first, "name", None):
            return None
        W, J0 = n.weights[n.inputs.index(src)], plan.first_jacobian
        if sp.issparse(W) or sp.issparse(J0) or len(n.inputs) != 1:
            return None
        s = patterns[src]
        key = (n.name, s.tobytes())
        hit = self._store.get(key)
        if hit is not None:
            return hit[1]
        slope = np.where(s, 1.0, q.alpha)
        best = None
        for (name, _), (s0, G0, depth) in self._store.items():
            if name != n.name:
                continue
            d = int(np.count_nonzero(s0 != s))
            if depth < _MAX_UPDATES and (best is None or d < best[0]):
                best = (d, s0, G0, depth)
        if best is not None and best[0] <= s.size // 8:
            diff = np.flatnonzero(best[1] != s)
            delta = slope[diff] - np.where(best[1][diff], 1.0, q.alpha)
            G = best[2] + W[:, diff] @ (delta[:, None] * J0[diff])
            depth = best[3] + 1
        else:
            G, depth = W @ (slope[:, None] * J0), 0
        G.flags.writeable = False
        if len(self._store) >= self.size:
            self._store.pop(next(iter(self._store)))
        self._store[key] = (s.copy(), G, depth)
        return G


def affine_map(plan: CutPlan):
    """(L, k): the cut's features as ``L x + k`` (an affine plan: no pieces)."""
    if plan.kind != "affine":
        raise ValueError(f"{plan.cut} is not an affine cut")
    d = plan.input_dim
    vals: dict[str, tuple] = {INPUT_CUT: (np.zeros(d), np.eye(d) if d <= 1024 else sp.identity(d, format="csr"))}
    for n in plan.nodes:
        c, J = None, None
        for w, src in zip(n.weights, n.inputs):
            cs, Js = vals[src]
            ci = w @ cs
            Ji = w if src == INPUT_CUT else linops.matmul(w, Js, f"the map of {n.name}")
            c = ci if c is None else c + ci
            J = Ji if J is None else _add(J, Ji)
        vals[n.name] = (c + n.bias, J)
    k, L = vals[plan.cut]
    return L, k
