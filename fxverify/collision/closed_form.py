"""Closed-form collisions at the input cut and at affine cuts.

Input cut: eps = ||u - v|| / 2, the collision is the midpoint.
Affine cut f(x) = W x + b with W = U S V^T (nonzero singular values): eps = ||V^T (v - u)|| / 2,
with delta = V V^T (v - u) / 2 and delta' = -delta. No smaller budget exists: any collision has
P(delta - delta') = P(v - u) for the projector P = V V^T, so max(|delta|, |delta'|) >=
|P(v - u)| / 2.
"""

from __future__ import annotations

import numpy as np

from .chain import Chain

#: Rows of the first point set processed at once by :func:`all_pairs_eps`: bounds the
#: temporary (block x n2) matrices to ``block * n2 * 8`` bytes.
DEFAULT_BLOCK = 1024


def pair_collision(chain: Chain, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The optimal collision points (u + delta, v + delta') for an identity or affine chain."""
    diff = v - u
    if chain.kind == "identity":
        mid = (u + v) / 2.0
        return mid, mid.copy()
    V = chain.first_svd.V
    delta = V @ (V.T @ diff) / 2.0
    return u + delta, v - delta


#: Pixels scaled by 1/255 are handled in the integer domain at the input cut, where float64
#: products of integers are exact (784 * 255^2 < 2^53): ties at a budget are then decided
#: exactly as in exact arithmetic (edge iff |u - v| <= 2 eps).
PIXEL_LEVELS = 255.0


def _integer_pixels(X: np.ndarray) -> bool:
    S = X * PIXEL_LEVELS
    return bool(np.all(np.abs(S - np.round(S)) <= 1e-9)) and X.shape[1] * PIXEL_LEVELS**2 * 4 < 2.0**53


def projection(chain: Chain, X: np.ndarray) -> np.ndarray:
    """Coordinates in which the affine-cut eps is half the Euclidean distance."""
    if chain.kind == "identity":
        return np.asarray(X, dtype=np.float64)
    return np.asarray(X, dtype=np.float64) @ chain.first_svd.V


def all_pairs_eps(chain: Chain, Xa: np.ndarray, Xb: np.ndarray, block: int = DEFAULT_BLOCK,
                  out: np.ndarray | None = None) -> np.ndarray:
    """The n1 x n2 matrix of closed-form eps for every pair (Xa[i], Xb[j]).

    Projects both sets once (n x r), then computes distances block by block with one matrix
    product per block: |a - b|^2 = |a|^2 + |b|^2 - 2 a.b. Entries whose expanded value is
    within rounding of the cancellation are recomputed directly, so the result matches a
    direct difference to ~1e-15 relative. Pixel data (multiples of 1/255) at the input cut is
    computed exactly.
    """
    Pa, Pb = projection(chain, Xa), projection(chain, Xb)
    unit = 1.0
    if chain.kind == "identity" and _integer_pixels(Pa) and _integer_pixels(Pb):
        unit = PIXEL_LEVELS
        Pa, Pb = np.round(Pa * unit), np.round(Pb * unit)
    na, nb = Pa.shape[0], Pb.shape[0]
    if out is None:
        out = np.empty((na, nb))
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


def residual_bound(chain: Chain, max_distance: float) -> float:
    """Largest possible |f(u') - f(v')| over pairs at most ``max_distance`` apart, from the
    singular values the projection drops (0 for the input cut)."""
    if chain.kind == "identity":
        return 0.0
    return chain.first_svd.dropped * max_distance
