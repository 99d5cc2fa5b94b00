"""The adversary's budget: the norm of the perturbation ball.

A :class:`Norm` says how a budget is measured and what the collision methods need from it:

* :meth:`Norm.size` measures perturbations (the reported eps is always measured this way, from
  the returned points);
* :meth:`Norm.dual` gives the dual norm, for bounds: ``|w . d| <= dual(w) * ||d||``;
* ``closed_form_affine``: whether an affine cut's eps has a closed form (l2: half the length of
  the difference projected on the map's row space; l-inf and l1 need an LP per pair);
* ``row_space_reduction``: whether perturbations may be restricted to the row space of the first
  linear map (l2 only: components in its null space change no feature and only add norm; not
  when an input domain box is imposed, where they can keep a point inside the box);
* ``polyhedral``: the ball is a polytope (each descent step is an LP, the exact model a MILP)
  or a second-order cone (a cone LP, the exact model an MIQCP).

The three norms are l2 (the paper's), l-inf and l1; :func:`get_norm` looks one up by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .errors import SpecError


@dataclass(frozen=True)
class Norm:
    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    ord: ClassVar[float] = 2.0
    polyhedral: ClassVar[bool] = False
    closed_form_affine: ClassVar[bool] = False
    row_space_reduction: ClassVar[bool] = False

    def size(self, X: np.ndarray) -> np.ndarray:
        """The norm of each row of X (or of a vector)."""
        X = np.asarray(X, dtype=np.float64)
        return np.linalg.norm(X, ord=self.ord, axis=-1)

    def dual(self, W) -> np.ndarray:
        """The dual norm of each row of W (dense or sparse)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def pairwise_half_distance(self, A: np.ndarray, B: np.ndarray) -> np.ndarray:
        """0.5 * ||a_i - b_j|| for every pair (the input cut's eps)."""
        from scipy.spatial.distance import cdist

        return 0.5 * cdist(A, B, metric=self._metric)

    _metric: ClassVar[str] = "euclidean"


def _abs_rows(W):
    import scipy.sparse as sp

    return abs(W) if sp.issparse(W) else np.abs(W)


@dataclass(frozen=True)
class L2(Norm):
    name: ClassVar[str] = "l2"
    label: ClassVar[str] = "l2"
    ord: ClassVar[float] = 2.0
    closed_form_affine: ClassVar[bool] = True
    row_space_reduction: ClassVar[bool] = True
    _metric: ClassVar[str] = "euclidean"

    def dual(self, W) -> np.ndarray:
        from .linops import row_norms

        return row_norms(W)


@dataclass(frozen=True)
class Linf(Norm):
    name: ClassVar[str] = "linf"
    label: ClassVar[str] = "l-inf"
    ord: ClassVar[float] = np.inf
    polyhedral: ClassVar[bool] = True
    _metric: ClassVar[str] = "chebyshev"

    def dual(self, W) -> np.ndarray:  # l1 norm of each row
        return np.asarray(_abs_rows(W).sum(axis=1)).ravel()


@dataclass(frozen=True)
class L1(Norm):
    name: ClassVar[str] = "l1"
    label: ClassVar[str] = "l1"
    ord: ClassVar[float] = 1.0
    polyhedral: ClassVar[bool] = True
    _metric: ClassVar[str] = "cityblock"

    def dual(self, W) -> np.ndarray:  # l-inf norm of each row
        return np.asarray(_abs_rows(W).max(axis=1).todense() if hasattr(W, "tocsr") else np.abs(W).max(axis=1)).ravel()


@dataclass(frozen=True)
class Domain:
    """The input domain: perturbed points must stay in the box [lo, hi] (every input value), e.g.
    the valid pixel range [0, 1]. None (no domain) is the paper's setting."""

    lo: float
    hi: float

    def contains(self, x: np.ndarray, tol: float = 0.0) -> bool:
        return bool(np.all(x >= self.lo - tol) and np.all(x <= self.hi + tol))


#: name -> norm; the spec's ``"norm"``, ``--norm`` and ``collide(..., norm=)`` take these names
NORMS: dict[str, Norm] = {n.name: n for n in (L2(), Linf(), L1())}


def get_norm(norm: str | Norm | None) -> Norm:
    if isinstance(norm, Norm):
        return norm
    if norm is None:
        return NORMS["l2"]
    if norm not in NORMS:
        raise SpecError(f"unknown norm {norm!r}; norms: {', '.join(NORMS)}")
    return NORMS[norm]
