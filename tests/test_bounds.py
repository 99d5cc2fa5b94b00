"""Loss lower bounds: matching and the exact cross-entropy optimum against brute force and a
generic convex solver; the published input-space numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
from cvxopt import log, matrix, solvers, spdiag

from fxverify.bounds import ce_lower_bound, ce_optimal_q, conflict_graph, lower_bounds, max_matching
from fxverify.collision.affine import all_pairs_eps
from fxverify.collision.plan import CutPlan
from fxverify.norms import get_norm
from fxverify.data import load_embedded, load_idx_dir, select_points
from fxverify.errors import FxverifyError

from conftest import FULL_DATA


def brute_matching(A: np.ndarray) -> int:
    """Exhaustive: every way to give each class-a point a distinct neighbour or none (DP over
    the set of used class-b points)."""
    from functools import lru_cache

    na, nb = A.shape

    @lru_cache(maxsize=None)
    def best(i: int, used: int) -> int:
        if i == na:
            return 0
        out = best(i + 1, used)
        for j in range(nb):
            if A[i, j] and not used >> j & 1:
                out = max(out, 1 + best(i + 1, used | 1 << j))
        return out

    return best(0, 0)


def generic_ce(A: np.ndarray) -> float:
    """min (1/n) sum -log q s.t. q_u + q_v <= 1 on edges, q <= 1: cvxopt's nonlinear solver."""
    na, nb = A.shape
    n = na + nb
    E = np.argwhere(A)
    if len(E) == 0:
        return 0.0
    G = np.zeros((len(E) + n, n))
    h = np.ones(len(E) + n)
    for k, (i, j) in enumerate(E):
        G[k, i] = G[k, na + j] = 1
    G[len(E):] = np.eye(n)

    def F(x=None, z=None):
        if x is None:
            return 0, matrix(0.5, (n, 1))
        if min(x) <= 0:
            return None
        f, Df = -sum(log(x)), -(x ** -1).T
        return (f, Df) if z is None else (f, Df, spdiag(z[0] * x ** -2))

    r = solvers.cp(F, G=matrix(G), h=matrix(h),
                   options={"show_progress": False, "abstol": 1e-11, "reltol": 1e-11, "feastol": 1e-11})
    assert r["status"] == "optimal"
    return float(r["primal objective"]) / n


def random_graphs(count, max_side=7, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        na, nb = int(rng.integers(1, max_side + 1)), int(rng.integers(1, max_side + 1))
        yield (rng.uniform(size=(na, nb)) < rng.uniform(0.05, 0.7)).astype(int)


@pytest.mark.parametrize("A", list(random_graphs(40, seed=1)))
def test_ce_and_matching_against_generic_and_brute_force(A):
    adj = sp.csr_matrix(A)
    assert max_matching(adj) == brute_matching(A)
    assert ce_lower_bound(adj) == pytest.approx(generic_ce(A), abs=2e-8)


def test_ce_structure_unequal_classes_and_isolated_vertices():
    # one class-a point against three class-b points, plus an isolated point on each side
    A = np.zeros((2, 4), dtype=int)
    A[0, :3] = 1
    adj = sp.csr_matrix(A)
    qa, qb = ce_optimal_q(adj)
    np.testing.assert_allclose(qa, [1 / 4, 1.0])
    np.testing.assert_allclose(qb, [3 / 4, 3 / 4, 3 / 4, 1.0])
    expected = (-math.log(1 / 4) - 3 * math.log(3 / 4)) / 6
    assert ce_lower_bound(adj) == pytest.approx(expected)
    assert ce_lower_bound(adj) == pytest.approx(generic_ce(A), abs=1e-8)
    assert max_matching(adj) == 1
    # the optimum is feasible and tight on every edge of a block
    for i, j in np.argwhere(A):
        assert qa[i] + qb[j] <= 1 + 1e-12


def test_bounds_are_monotone_in_eps():
    rng = np.random.default_rng(4)
    E = rng.uniform(0, 3, (30, 20))
    E[rng.uniform(size=E.shape) < 0.3] = np.inf
    recs = lower_bounds(E, np.linspace(0, 3.5, 12))
    for a, b in zip(recs, recs[1:]):
        assert b.edges >= a.edges and b.loss01_lower >= a.loss01_lower and b.ce_lower >= a.ce_lower - 1e-12
    assert recs[0].edges == 0 and recs[0].ce_lower == 0.0
    assert recs[-1].edges == int(np.isfinite(E).sum())
    # every point in a matched pair: the 0-1 bound can't exceed 1/2, and the CE bound is at most log 2 per point
    assert recs[-1].loss01_lower <= 0.5 and recs[-1].ce_lower <= math.log(2) + 1e-12


def test_lower_bounds_rejects_bad_input():
    with pytest.raises(FxverifyError, match="NaN"):
        lower_bounds(np.array([[np.nan]]), [1.0])
    with pytest.raises(FxverifyError, match="not a finite non-negative"):
        lower_bounds(np.ones((2, 2)), [-1.0])
    with pytest.raises(FxverifyError, match="n_a x n_b matrix"):
        lower_bounds(np.ones(3), [1.0])


def _input_plan():
    """The input cut's plan (only the norm matters there)."""
    from conftest import MODELS

    return CutPlan.of(fxverify_load(MODELS / "fcnn_tiny_mnist_3v7_benign.onnx"), "input", get_norm("l2"))


def fxverify_load(path):
    import fxverify

    return fxverify.load_model(path)


def test_input_cut_edges_follow_the_published_convention():
    """Embedded MNIST 3 vs 7, pixels / 255, edge iff |u - v| <= 2 eps (counted independently)."""
    pts = select_points(load_embedded("mnist"), (3, 7), 500)
    E = all_pairs_eps(_input_plan(), pts.X_a, pts.X_b)
    A = np.round(pts.X_a * 255).astype(np.int64)
    B = np.round(pts.X_b * 255).astype(np.int64)
    D2 = (A * A).sum(1)[:, None] + (B * B).sum(1)[None, :] - 2 * A @ B.T  # exact integers
    for eps in (3.0, 3.8, 4.5, 5.0):
        assert conflict_graph(E, eps).nnz == int((D2 <= (2 * eps * 255) ** 2).sum())


def test_published_numbers_n2000():
    """n = 2000 per class, eps = 3.8: 35,055 edges and minimum cross-entropy 0.24986."""
    if not (FULL_DATA / "mnist").is_dir():
        pytest.skip(f"full MNIST IDX files not at {FULL_DATA / 'mnist'} (scripts/fetch_data.sh)")
    pts = select_points(load_idx_dir(FULL_DATA / "mnist"), (3, 7), 2000)
    E = all_pairs_eps(_input_plan(), pts.X_a, pts.X_b)
    (rec,) = lower_bounds(E, [3.8])
    assert rec.edges == 35055
    assert round(rec.ce_lower, 5) == 0.24986
