"""Cone-LP backends: one shared suite runs every available backend on the same instances."""

from __future__ import annotations

import math

import numpy as np
import pytest

import fxverify
from fxverify.backends.base import Availability, ConeProblem, MinMaxNormProblem, SolverOptions, Termination
from fxverify.backends.registry import backend_classes, get_backend
from fxverify.collision import Collider
from fxverify.config import resolve_engine
from fxverify.data import load_embedded, select_points

from builders import min_max_norm_cones

CONE_BACKENDS = ["cvxopt", "activeset", "clarabel"]


def _instances():
    """Real descent LPs of the shipped model at three cuts (midpoint patterns)."""
    from conftest import MODELS

    net = fxverify.load_model(MODELS / "fcnn_mnist_3v7_benign.onnx")
    pts = select_points(load_embedded("mnist"), (3, 7), 3)
    col = Collider(net, resolve_engine())
    out = []
    for j, cut in enumerate(("relu1", "relu2", "linear3")):
        d = col._descent(cut)
        for k in (j % 2,):  # one pair a cut, a different one at the middle cut (CI time)
            u, v = pts.X_a[k], pts.X_b[k + 1]
            mid = (u + v) / 2
            out.append((cut, d.build(u, v, d.patterns_at(mid, mid))))
    return out


@pytest.fixture(scope="module")
def instances():
    return _instances()


@pytest.fixture(scope="module")
def reference(instances):
    cv = get_backend("cvxopt")
    return [cv.solve_cone(lp.problem.to_cone(), SolverOptions(native={"kkt": "chol"})) for _, lp in instances]


@pytest.mark.parametrize("name", CONE_BACKENDS)
def test_backend_agrees_with_the_reference_on_real_descent_lps(name, instances, reference):
    b = get_backend(name)
    if not b.availability():
        pytest.skip(f"{name}: {b.availability_detail()}")
    for (cut, lp), ref in zip(instances, reference):
        p = lp.problem
        # the cone form, and the descent's own form (native where the backend has it)
        for sol in (b.solve_cone(p.to_cone(), SolverOptions()), b.solve_min_max_norm(p, SolverOptions())):
            assert sol.ok, (cut, sol.message)
            assert sol.objective == pytest.approx(ref.objective, rel=1e-7), cut
            nl = p.n_linear
            # duals of the sign constraints, the ones the descent reads, agree
            np.testing.assert_allclose(sol.z[:nl], ref.z[:nl], atol=2e-5 * max(1.0, np.abs(ref.z[:nl]).max()))
            # primal feasibility of the returned point
            x = sol.x
            assert np.max(p.C @ x[1:] - p.h) <= 1e-7
            if p.A is not None:
                assert np.max(np.abs(p.A @ x[1:] - p.b)) <= 1e-7
            r = p.r
            assert max(np.linalg.norm(x[1:1 + r]), np.linalg.norm(x[1 + r:])) <= x[0] * (1 + 1e-9)


def test_activeset_warm_start_gives_the_same_optimum(instances, reference):
    b = get_backend("activeset")
    for (cut, lp), ref in zip(instances, reference):
        cold = b.solve_min_max_norm(lp.problem, SolverOptions())
        bad = {"active": list(range(0, lp.problem.n_linear, 7)), "weight": 0.9}  # a poor guess
        for hints in (cold.hints, bad):
            warm = b.solve_min_max_norm(lp.warm(lp.row_keys[hints["active"]], hints["weight"]), SolverOptions())
            assert warm.ok and warm.objective == pytest.approx(ref.objective, rel=1e-7), cut


def test_activeset_solves_a_figure_1_like_instance_exactly():
    # min t s.t. ||a|| <= t, ||b|| <= t, a - b = (8, -9) ... collision of (1, 4) and (9, -5) at identity
    r = 2
    G, c = min_max_norm_cones(r)
    A = np.hstack([np.zeros((r, 1)), np.eye(r), -np.eye(r)])
    b = np.array([8.0, -9.0])
    p = ConeProblem(c=c, G=G, h=np.zeros(2 * (1 + r)), n_linear=0, soc_sizes=(1 + r, 1 + r), A=A, b=b)
    sol = get_backend("activeset").solve_cone(p, SolverOptions())
    assert sol.ok and sol.objective == pytest.approx(math.hypot(8, 9) / 2, rel=1e-12)


def test_activeset_refuses_other_problem_shapes_and_reports_infeasible():
    b = get_backend("activeset")
    p = ConeProblem(c=np.array([1.0, 0.0]), G=-np.eye(2), h=np.zeros(2), n_linear=2, soc_sizes=())
    assert b.solve_cone(p, SolverOptions()).termination is Termination.ERROR
    # sign constraints that contradict each other: a_0 <= -1 and -a_0 <= -1
    soc, _ = min_max_norm_cones(1)
    G = np.vstack([[[0.0, 1, 0], [0.0, -1, 0]], soc])
    p = ConeProblem(c=np.array([1.0, 0, 0]), G=G, h=np.array([-1.0, -1.0, 0, 0, 0, 0]), n_linear=2,
                    soc_sizes=(2, 2))
    assert b.solve_cone(p, SolverOptions()).termination is Termination.INFEASIBLE


def _implied_row_problem(violation: float) -> MinMaxNormProblem:
    """Equalities A x = b and, among sign rows, one that is a combination of the equality rows
    whose right-hand side sits ``violation`` (per unit row norm) below what they imply: the
    shape of a descent LP whose pattern row the equal-features rows fix (FCNN pair (3, 3) at
    linear2)."""
    rng = np.random.default_rng(3)
    r, m = 12, 5
    A = rng.standard_normal((m, 2 * r))
    b = rng.standard_normal(m) * 0.1
    row = rng.standard_normal(m) @ A
    implied = float(row @ np.linalg.lstsq(A, b, rcond=None)[0])  # row . x on every x with A x = b
    loose = rng.standard_normal((6, 2 * r)) * 0.01  # far from tight
    C = np.vstack([loose, row])
    h = np.concatenate([np.ones(6), [implied - violation * np.linalg.norm(row)]])
    return MinMaxNormProblem(C=C, h=h, A=A, b=b)


def test_activeset_leaves_out_a_row_the_equalities_imply_up_to_rounding():
    """A sign row that the equalities fix, violated by rounding (5e-10 of its norm), is not a
    proof of infeasibility: the active set solved no such LP and its cvxopt fallback hit its
    iteration limit, a failed pair in the README's main job."""
    b = get_backend("activeset")
    near = _implied_row_problem(5e-10)  # above the active set's 1e-10 tolerance
    sol = b.solve_min_max_norm(near, SolverOptions())
    assert sol.ok, sol.message
    ref = get_backend("cvxopt").solve_min_max_norm(
        MinMaxNormProblem(C=near.C[:-1], h=near.h[:-1], A=near.A, b=near.b), SolverOptions())
    assert ref.ok and sol.objective == pytest.approx(ref.objective, rel=1e-7)
    # a real contradiction is still one
    far = _implied_row_problem(1e-3)
    assert b.solve_min_max_norm(far, SolverOptions()).termination is Termination.INFEASIBLE


def test_activeset_drops_equality_rows_that_depend_on_the_others():
    """Equality rows whose Gram matrix is singular to rounding (a rank test upstream kept a
    dependent row): consistent ones are dropped and the LP solved, inconsistent ones are
    infeasible (the FCNN pair (3, 3) at linear2 had 200 rows of rank 199)."""
    rng = np.random.default_rng(4)
    r = 6
    A = rng.standard_normal((3, 2 * r))
    A = np.vstack([A, A[0] + A[1]])  # the fourth row is the sum of the first two
    b = rng.standard_normal(3)
    C, h = rng.standard_normal((4, 2 * r)) * 0.01, np.ones(4)
    ok = MinMaxNormProblem(C=C, h=h, A=A, b=np.concatenate([b, [b[0] + b[1]]]))
    sol = get_backend("activeset").solve_min_max_norm(ok, SolverOptions())
    ref = get_backend("cvxopt").solve_min_max_norm(MinMaxNormProblem(C=C, h=h, A=A[:3], b=b), SolverOptions())
    assert sol.ok, sol.message
    assert ref.ok and sol.objective == pytest.approx(ref.objective, rel=1e-7)
    bad = MinMaxNormProblem(C=C, h=h, A=A, b=np.concatenate([b, [b[0] + b[1] + 0.1]]))
    assert get_backend("activeset").solve_min_max_norm(bad, SolverOptions()).termination is Termination.INFEASIBLE


def test_every_builtin_backend_declares_itself():
    for name, cls in backend_classes().items():
        b = cls()
        assert b.name == name and b.capabilities
        assert isinstance(b.availability(), Availability)
        assert isinstance(b.availability_detail(), str)


def test_descent_with_activeset_matches_cvxopt_descent(shipped_model):
    net = fxverify.load_model(shipped_model)
    pts = select_points(load_embedded("mnist"), (3, 7), 2)
    cuts = ("relu1", "relu2", "linear3")
    fast, ref = Collider(net, resolve_engine("descent-activeset")), Collider(net, resolve_engine("descent-cvxopt"))
    diffs, cvxopt_failed = [], 0
    for i, j in [(0, 0), (1, 1)]:
        a = fast.collide_cuts(pts.X_a[i], pts.X_b[j], cuts)
        b = ref.collide_cuts(pts.X_a[i], pts.X_b[j], cuts)
        for c in cuts:
            assert a[c].verified
            if not b[c].verified:  # cvxopt's LPs fail now and then ('unknown'): a failed pair, counted
                assert "LP failed" in b[c].message or "cone LP failed" in b[c].message, b[c].message
                cvxopt_failed += 1
                continue
            diffs.append((a[c].eps - b[c].eps) / b[c].eps)
    print("cvxopt failures:", cvxopt_failed)
    print("relative eps differences activeset - cvxopt:", np.round(diffs, 5))
    # same method, different LP solver: the paths may part on near-ties. cvxopt's interior-point
    # duals are less exact, and at linear3 its descent can stop well above the active-set one
    # (seen: +38 %), so the check is one-sided: the fast backend is never worse by much
    assert max(diffs) < 0.02


def test_min_max_norm_problem_to_cone_is_the_same_problem():
    # min max(|a|, |b|) s.t. a - b = (8, -9), a_0 <= 3: the cone form has the same optimum and duals
    r = 2
    p = MinMaxNormProblem(C=np.array([[1.0, 0, 0, 0]]), h=np.array([3.0]), A=np.hstack([np.eye(r), -np.eye(r)]),
                          b=np.array([8.0, -9.0]))
    cone = p.to_cone()
    assert cone.n_linear == 1 and cone.soc_sizes == (3, 3) and cone.n_vars == 5
    native = get_backend("activeset").solve_min_max_norm(p, SolverOptions())
    via_cone = get_backend("cvxopt").solve_min_max_norm(p, SolverOptions())
    assert native.ok and via_cone.ok
    assert native.objective == pytest.approx(via_cone.objective, rel=1e-7)
    assert native.z[0] == pytest.approx(via_cone.z[0], abs=1e-6)
    assert native.x[1] == pytest.approx(3.0, abs=1e-9)  # the constraint binds: without it a_0 = 4


def test_activeset_fixed_set_root_balances_the_norms_on_the_rows():
    from fxverify.backends.activeset import _LeastNorm

    rng = np.random.default_rng(11)
    r = 20
    for trial in range(20):
        k = int(rng.integers(1, 30))
        C = rng.standard_normal((k, 2 * r)) * rng.uniform(0.1, 10, size=(k, 1))
        h = rng.standard_normal(k)
        ln = _LeastNorm(C, h, np.zeros((0, 2 * r)), np.zeros(0), r, 1e-10)
        w, x, lam = ln.fixed_set_root(list(range(k)), float(rng.uniform(0.05, 0.95)))
        assert 0 < w < 1
        np.testing.assert_allclose(C @ x, h, atol=1e-8 * max(1, np.abs(h).max()))
        assert np.linalg.norm(x[:r]) == pytest.approx(np.linalg.norm(x[r:]), rel=1e-7)
        # stationarity of the weighted least-norm problem at w: D x = -C' lam
        np.testing.assert_allclose(np.concatenate([w * x[:r], (1 - w) * x[r:]]), -C.T @ lam, atol=1e-8 * np.abs(x).max())


def test_activeset_fixed_set_root_on_one_sided_rows_is_a_root_or_none():
    """Rows touching one point only (the descent's sign rows) make phi jump near w = 0 or 1,
    where rounding fakes sign changes: a returned weight must still balance the norms and be
    stationary (else None, and the solver searches the weight with full solves)."""
    from fxverify.backends.activeset import BALANCE_TOL, _LeastNorm

    rng = np.random.default_rng(0)
    r, roots, nones = 20, 0, 0
    for _ in range(300):
        k = int(rng.integers(2, 30))
        C = rng.standard_normal((k, 2 * r))
        nu = int(rng.integers(0, k))
        nv = int(rng.integers(nu, k + 1))
        C[:nu, r:] = 0
        C[nu:nv, :r] = 0
        C *= rng.uniform(0.01, 10, size=(k, 1))
        h = rng.standard_normal(k) * rng.uniform(0.01, 10)
        ln = _LeastNorm(C, h, np.zeros((0, 2 * r)), np.zeros(0), r, 1e-10)
        got = ln.fixed_set_root(list(range(k)), float(rng.uniform(0.01, 0.99)))
        if got is None:
            nones += 1
            continue
        roots += 1
        w, x, lam = got
        nu2, nv2 = x[:r] @ x[:r], x[r:] @ x[r:]
        assert abs(nu2 - nv2) <= BALANCE_TOL * (nu2 + nv2)
        np.testing.assert_allclose(C @ x, h, atol=1e-7 * max(1, np.abs(h).max()))
        np.testing.assert_allclose(np.concatenate([w * x[:r], (1 - w) * x[r:]]), -C.T @ lam,
                                   atol=1e-7 * np.abs(x).max())
    assert roots > 100 and nones > 0
