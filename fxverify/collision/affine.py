"""Collisions at the input cut and at affine cuts (no piece before the cut).

Input cut: eps = ||u - v|| / 2 in the analysis' norm, the collision is the midpoint (no
collision can do better: ||u - v|| <= ||delta|| + ||delta'||; the midpoint lies in any convex
input domain that holds u and v).

Affine cut f(x) = L x + k: any collision has L(delta - delta') = L(v - u), and with
d = delta - delta' the best is eps = min{||d|| : L d = L(v - u)} / 2 at delta = d/2, delta' = -d/2.

* l2 without an input domain: closed form. With L = U S V^T (nonzero singular values),
  d = V V^T (v - u) and eps = ||V^T (v - u)|| / 2.
* l-inf, l1, or any norm with an input domain: an LP (or cone LP) per pair, solved exactly by
  the analysis' LP backend (:func:`affine_problem`).
"""

from __future__ import annotations

import numpy as np

from ..backends.base import MinMaxNormProblem
from .plan import CutPlan, RowSpace

#: Rows of the first point set processed at once by :func:`all_pairs_eps`: bounds the
#: temporary (block x n2) matrices to ``block * n2 * 8`` bytes.
DEFAULT_BLOCK = 1024


def closed_form(plan: CutPlan) -> bool:
    """Whether the plan's eps has a closed form (else :func:`affine_problem` per pair)."""
    if plan.kind == "identity":
        return True
    return plan.kind == "affine" and plan.norm.closed_form_affine and plan.domain is None


def row_space(plan: CutPlan) -> RowSpace:
    """The row space of the affine cut's map L (computed once per plan)."""
    return plan.affine_row_space


def pair_collision(plan: CutPlan, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The optimal collision points (u + delta, v + delta') where :func:`closed_form` holds."""
    if plan.kind == "identity":
        mid = (u + v) / 2.0
        return mid, mid.copy()
    V = row_space(plan).V
    delta = V @ (V.T @ (v - u)) / 2.0
    return u + delta, v - delta


def affine_problem(plan: CutPlan, u: np.ndarray, v: np.ndarray) -> MinMaxNormProblem:
    """min max(||x_u||, ||x_v||) s.t. L x_u - L x_v = L (v - u) (and the domain box), with the
    equalities as an orthonormal basis of L's row space."""
    Q = row_space(plan).V.T  # r x d
    r = plan.input_dim
    A = np.hstack([Q, -Q])
    b = Q @ (v - u)
    lb = ub = None
    if plan.domain is not None:
        (lu, hu), (lv, hv) = plan.box(u), plan.box(v)
        lb, ub = np.concatenate([lu, lv]), np.concatenate([hu, hv])
    return MinMaxNormProblem(C=np.zeros((0, 2 * r)), h=np.zeros(0), A=A if A.shape[0] else None,
                             b=b if A.shape[0] else None, norm=plan.norm.name, lb=lb, ub=ub)


#: Pixels scaled by 1/255 are handled in the integer domain at the input cut, where float64
#: products of integers are exact (784 * 255^2 < 2^53): ties at a budget are then decided
#: exactly as in exact arithmetic (edge iff |u - v| <= 2 eps).
PIXEL_LEVELS = 255.0


def _integer_pixels(X: np.ndarray) -> bool:
    S = X * PIXEL_LEVELS
    return bool(np.all(np.abs(S - np.round(S)) <= 1e-9)) and X.shape[1] * PIXEL_LEVELS**2 * 4 < 2.0**53


def projection(plan: CutPlan, X: np.ndarray) -> np.ndarray:
    """Coordinates in which the l2 affine-cut eps is half the Euclidean distance."""
    if plan.kind == "identity":
        return np.asarray(X, dtype=np.float64)
    return np.asarray(X, dtype=np.float64) @ row_space(plan).V


def all_pairs_eps(plan: CutPlan, Xa: np.ndarray, Xb: np.ndarray, block: int = DEFAULT_BLOCK,
                  out: np.ndarray | None = None) -> np.ndarray:
    """The n1 x n2 matrix of closed-form eps for every pair (Xa[i], Xb[j]).

    l2: projects both sets once (n x r), then computes distances block by block with one matrix
    product per block: |a - b|^2 = |a|^2 + |b|^2 - 2 a.b. Entries whose expanded value is within
    rounding of the cancellation are recomputed directly, so the result matches a direct
    difference to ~1e-15 relative. Pixel data (multiples of 1/255) at the input cut is computed
    exactly. Other norms (input cut only): half the pairwise distance, block by block.
    """
    if not closed_form(plan):
        raise ValueError(f"{plan.cut} has no closed form under {plan.norm.name}")
    na, nb = len(Xa), len(Xb)
    if out is None:
        out = np.empty((na, nb))
    if plan.norm.name != "l2":
        for i0 in range(0, na, block):
            out[i0:i0 + block] = plan.norm.pairwise_half_distance(Xa[i0:i0 + block], Xb)
        return out
    Pa, Pb = projection(plan, Xa), projection(plan, Xb)
    unit = 1.0
    if plan.kind == "identity" and _integer_pixels(Pa) and _integer_pixels(Pb):
        unit = PIXEL_LEVELS
        Pa, Pb = np.round(Pa * unit), np.round(Pb * unit)
    sa = np.einsum("ij,ij->i", Pa, Pa)
    sb = np.einsum("ij,ij->i", Pb, Pb)
    # one set of block buffers for the whole matrix: fresh temporaries per block cost more in
    # page faults (the kernel zero-fills them) than the arithmetic itself
    rows = min(block, na)
    G, S = np.empty((rows, nb)), np.empty((rows, nb))
    R = np.empty((rows, nb), dtype=bool)
    PbT = Pb.T
    for i0 in range(0, na, block):
        i1 = min(na, i0 + block)
        g, sc, risky = G[:i1 - i0], S[:i1 - i0], R[:i1 - i0]
        np.matmul(Pa[i0:i1], PbT, out=g)
        np.add(sa[i0:i1, None], sb[None, :], out=sc)
        g *= -2.0
        g += sc  # d2 = |a|^2 + |b|^2 - 2 a.b
        # cancellation: where d2 is tiny compared with |a|^2 + |b|^2, recompute exactly
        sc *= 1e-8
        np.less(g, sc, out=risky)
        if risky.any():
            ii, jj = np.nonzero(risky)
            diff = Pa[i0 + ii] - Pb[jj]
            g[ii, jj] = np.einsum("ij,ij->i", diff, diff)
        np.maximum(g, 0.0, out=g)
        np.sqrt(g, out=out[i0:i1])
        out[i0:i1] /= 2.0 * unit
    return out


def residual_bound(plan: CutPlan, max_distance: float) -> float:
    """Largest possible |f(u') - f(v')| over closed-form collisions of pairs at most
    ``max_distance`` apart, from the singular values the projection drops (0 for the input cut)."""
    if plan.kind == "identity":
        return 0.0
    return row_space(plan).dropped * max_distance
