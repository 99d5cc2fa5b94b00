"""The structured interior-point backend (fxverify.backends.ipm) against reference solvers."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import fxverify
from fxverify.backends.base import MinMaxNormProblem, SolverOptions, Termination
from fxverify.backends.registry import get_backend
from fxverify.collision import Collider
from fxverify.config import resolve_engine
from fxverify.data import load_embedded, select_points

IPM = get_backend("ipm")


def _reference(p: MinMaxNormProblem):
    ref = get_backend("activeset" if p.norm == "l2" else "highs").solve_min_max_norm(p, SolverOptions())
    if not ref.ok:  # the active set gives up on a few random instances: cvxopt then
        ref = get_backend("cvxopt").solve_min_max_norm(p, SolverOptions())
    return ref


def _random(rng, norm: str, box: bool, sparse: bool) -> MinMaxNormProblem:
    r = int(rng.integers(3, 25))
    mu, mv, q = int(rng.integers(0, 3 * r)), int(rng.integers(0, 3 * r)), int(rng.integers(0, r))
    x0 = rng.standard_normal(2 * r) * 0.3
    C = np.zeros((mu + mv, 2 * r))
    C[:mu, :r] = rng.standard_normal((mu, r))
    C[mu:, r:] = rng.standard_normal((mv, r))
    h = C @ x0 + rng.uniform(0.01, 1, mu + mv)
    A = rng.standard_normal((q, 2 * r)) if q else None
    lb = ub = None
    if box:
        lb, ub = x0 - rng.uniform(0.1, 1, 2 * r), x0 + rng.uniform(0.1, 1, 2 * r)
    return MinMaxNormProblem(C=sp.csr_matrix(C) if sparse else C, h=h, A=A, b=None if A is None else A @ x0,
                             norm=norm, lb=lb, ub=ub)


def _check_point(p: MinMaxNormProblem, sol, tol=1e-7):
    x = sol.x[1:]
    scale = max(1.0, float(np.abs(x).max()))
    assert float(np.max(p.C @ x - p.h, initial=0.0)) <= tol * scale
    if p.n_eq:
        assert float(np.max(np.abs(p.A @ x - p.b))) <= tol * scale
    if p.lb is not None:
        assert np.all(x >= p.lb - tol * scale) and np.all(x <= p.ub + tol * scale)


@pytest.mark.parametrize("norm", ["l2", "linf", "l1"])
def test_random_instances_agree_with_a_reference_solver(norm):
    rng = np.random.default_rng({"l2": 1, "linf": 2, "l1": 3}[norm])
    for trial in range(30):
        p = _random(rng, norm, box=bool(trial % 2), sparse=bool(trial % 3 == 1))
        ref, sol = _reference(p), IPM.solve_min_max_norm(p, SolverOptions())
        assert ref.ok, ref.message
        assert sol.ok, (trial, sol.message)
        assert sol.objective == pytest.approx(ref.objective, rel=1e-8, abs=1e-10), trial
        _check_point(p, sol)
        # duals of C x <= h: non-negative, zero off the tight rows, and (where the optimum is
        # not degenerate) the reference's; the objective's sensitivity to h is what the
        # descent reads, so check it against a finite difference instead of the (possibly
        # non-unique) reference duals
        assert np.all(sol.z >= 0)
        slack = p.h - p.C @ sol.x[1:]
        assert np.all(sol.z[slack > 1e-5] <= 1e-6 * max(1.0, sol.z.max(initial=0.0)))


def test_duals_are_the_objective_sensitivity():
    rng = np.random.default_rng(7)
    for norm in ("l2", "linf", "l1"):
        p = _random(rng, norm, box=False, sparse=False)
        while p.n_linear == 0:
            p = _random(rng, norm, box=False, sparse=False)
        sol = IPM.solve_min_max_norm(p, SolverOptions())
        k = int(np.argmax(sol.z))
        if sol.z[k] < 1e-6:
            continue
        d = 1e-6
        h2 = p.h.copy()
        h2[k] += d
        up = IPM.solve_min_max_norm(MinMaxNormProblem(C=p.C, h=h2, A=p.A, b=p.b, norm=norm), SolverOptions())
        # relaxing a binding row by d lowers the optimum by about z d (cone-LP convention)
        assert (sol.objective - up.objective) / d == pytest.approx(sol.z[k], rel=2e-2, abs=1e-6), norm


def test_real_descent_lps_of_the_shipped_model():
    from conftest import MODELS

    net = fxverify.load_model(MODELS / "fcnn_mnist_3v7_benign.onnx")
    pts = select_points(load_embedded("mnist"), (3, 7), 2)
    for norm in ("linf", "l1", "l2"):
        col = Collider(net, resolve_engine(None, norm))
        for cut in ("relu1", "linear3"):  # the dense first-layer rows and the deepest cut
            d = col._descent(cut)
            u, v = pts.X_a[0], pts.X_b[1]
            mid = (u + v) / 2
            p = d.build(u, v, d.patterns_at(mid, mid)).problem
            ref = get_backend("cvxopt" if norm == "l2" else "highs").solve_min_max_norm(p, SolverOptions())
            sol = IPM.solve_min_max_norm(p, SolverOptions())
            assert sol.ok and ref.ok
            assert sol.objective == pytest.approx(ref.objective, rel=1e-7), (norm, cut)
            _check_point(p, sol)


def test_infeasible_patterns_and_points_that_collide_unperturbed():
    # x_u0 <= -1 and -x_u0 <= -1 contradict each other: tau* = 0
    p = MinMaxNormProblem(C=np.array([[1.0, 0.0], [-1.0, 0.0]]), h=np.array([-1.0, -1.0]), norm="linf")
    assert IPM.solve_min_max_norm(p, SolverOptions()).termination is Termination.INFEASIBLE
    # nothing constrains the points: eps = 0 (the homogenised problem is unbounded)
    p = MinMaxNormProblem(C=np.array([[1.0, 0.0]]), h=np.array([1.0]), A=np.array([[1.0, -1.0]]),
                          b=np.array([0.0]), norm="l2")
    sol = IPM.solve_min_max_norm(p, SolverOptions())
    assert sol.ok and sol.objective <= 1e-9


def test_time_limit_is_honoured():
    rng = np.random.default_rng(0)
    p = _random(rng, "linf", box=False, sparse=False)
    sol = IPM.solve_min_max_norm(p, SolverOptions(time_limit=1e-9))
    assert sol.termination is Termination.TIME_LIMIT
    with pytest.raises(fxverify.FxverifyError):
        IPM.check_options(SolverOptions(threads=2))  # not a portable option it honours


def _pinned(rng, norm: str, gap: float = 0.0, sparse: bool = False) -> MinMaxNormProblem:
    """Sign rows that the equalities fix at their bound (no interior: a unit pinned to its kink),
    ``gap`` above it (violated by every point of the equalities) when positive."""
    r, k = int(rng.integers(4, 12)), 3
    Au, Av = rng.standard_normal((k, r)), rng.standard_normal((k, r))
    A = np.block([[Au, np.zeros((k, r))], [np.zeros((k, r)), Av]])
    x0 = np.linalg.lstsq(A, rng.standard_normal(2 * k) * 0.5, rcond=None)[0]
    C = np.block([[Au[:2], np.zeros((2, r))], [np.zeros((2, r)), -Av[1:]]])
    slack = rng.standard_normal((2, 2 * r))
    slack[0, r:] = slack[1, :r] = 0.0
    C = np.vstack([C, slack])
    h = np.concatenate([C[:4] @ x0 - gap, slack @ x0 + 0.3])
    return MinMaxNormProblem(C=sp.csr_matrix(C) if sparse else C, h=h, A=A, b=A @ x0, norm=norm)


@pytest.mark.parametrize("norm", ["l2", "linf", "l1"])
def test_rows_the_equalities_pin_to_their_bound_are_solved_without_them(norm):
    # no interior: the central path does not exist and the plain solve stalls; the rows are
    # dropped (satisfied by every feasible point), the optimum agrees with the simplex's
    rng = np.random.default_rng({"l2": 11, "linf": 12, "l1": 13}[norm])
    for trial in range(6):
        p = _pinned(rng, norm, sparse=bool(trial % 2))
        ref, sol = _reference(p), IPM.solve_min_max_norm(p, SolverOptions())
        assert ref.ok and sol.ok, (trial, ref.message, sol.message)
        assert sol.objective == pytest.approx(ref.objective, rel=1e-8, abs=1e-10), trial
        _check_point(p, sol)
        assert np.all(sol.z >= 0) and sol.z.shape == (p.n_linear,)
    assert "fixed by the equalities" in sol.message  # the path this test is about was taken


def test_rows_the_equalities_fix_above_their_bound_are_infeasible():
    rng = np.random.default_rng(5)
    for norm in ("linf", "l1", "l2"):
        p = _pinned(rng, norm, gap=1e-3)
        if norm != "l2":
            assert get_backend("highs").solve_min_max_norm(p, SolverOptions()).termination is Termination.INFEASIBLE
        assert IPM.solve_min_max_norm(p, SolverOptions()).termination is Termination.INFEASIBLE
