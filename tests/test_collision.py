"""Collision finding: closed forms, the cone-LP descent, verification, failure handling."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.linalg
from cvxopt import matrix, solvers
from onnx import helper

import fxverify
from fxverify.backends.base import Backend, ConeSolution, Termination
from fxverify.collision import Collider, collide
from fxverify.collision.affine import all_pairs_eps
from fxverify.collision.descent import _independent_rows, _row_space_equalities
from fxverify.collision.plan import CutPlan
from fxverify.config import resolve_engine
from fxverify.norms import get_norm
from fxverify.results import CollisionStatus

from builders import make, min_max_norm_cones, save
from conftest import REAL_ONNX


# ------------------------------------------------------------------ helpers ---------------
def collider(net, solver=None, method=None, **kw):
    return Collider(net, resolve_engine(solver, method=method, **kw))


def plan(net, cut, norm="l2"):
    return CutPlan.of(net, cut, get_norm(norm))


def fcnn(tmp_path, weights, biases, final_affine=False, name="net.onnx"):
    """An ONNX MatMul/Add/Relu chain with the given (out x in) weights; last layer ReLU unless
    final_affine (then the last weight is a plain affine map)."""
    nodes, inits, prev = [], {}, "x"
    n = len(weights)
    for k, (W, b) in enumerate(zip(weights, biases)):
        inits[f"W{k}"] = np.asarray(W, np.float32).T.copy()
        inits[f"b{k}"] = np.asarray(b, np.float32)
        nodes += [helper.make_node("MatMul", [prev, f"W{k}"], [f"m{k}"]),
                  helper.make_node("Add", [f"m{k}", f"b{k}"], [f"a{k}"])]
        prev = f"a{k}"
        if not (final_affine and k == n - 1):
            nodes.append(helper.make_node("Relu", [prev], [f"r{k}"]))
            prev = f"r{k}"
    nodes[-1].output[0] = "y"
    return fxverify.load_model(save(tmp_path, make(nodes, ["N", np.asarray(weights[0]).shape[1]], inits=inits),
                                    name))


def float32_weights(ws):
    """The weights as the model stores them (float32), for the independent computations."""
    return [np.asarray(np.asarray(w, np.float32), np.float64) for w in ws]


def exact_eps(Ws, bs, u, v, final_affine=False):
    """Exact eps* by enumerating activation regions; each region's cone LP is built here
    independently of fxverify (input-space variables, equalities as two inequalities) and
    its *dual* objective is used, a lower bound even if the solver stops early."""
    Ws, bs = float32_weights(Ws), float32_weights(bs)
    d = Ws[0].shape[1]
    n = 1 + 2 * d
    L = len(Ws) - (1 if final_affine else 0)  # ReLU layers
    widths = [W.shape[0] for W in Ws[:L]]
    hidden = L - (0 if final_affine else 1)
    free = sum(widths[:hidden]) * 2 + (0 if final_affine else widths[-1])
    best = math.inf
    for bits in itertools.product([False, True], repeat=free):
        bits = np.array(bits)
        pos = 0
        pats = []
        for k in range(hidden):
            pu, pv = bits[pos:pos + widths[k]], bits[pos + widths[k]:pos + 2 * widths[k]]
            pos += 2 * widths[k]
            pats.append((pu, pv))
        shared = None if final_affine else bits[pos:]
        # affine expressions z = C + D x for x = (t, du, dv)
        rows, rhs = [], []

        def expr(point, k_layer):
            sel = slice(1, 1 + d) if point == 0 else slice(1 + d, n)
            x0 = u if point == 0 else v
            C = Ws[0] @ x0 + bs[0]
            D = np.zeros((Ws[0].shape[0], n))
            D[:, sel] = Ws[0]
            for k in range(1, k_layer + 1):
                s = pats[k - 1][point].astype(float)
                C = Ws[k] @ (s * C) + bs[k]
                D = Ws[k] @ (s[:, None] * D)
            return C, D

        for k in range(hidden):
            for point in (0, 1):
                C, D = expr(point, k)
                sg = np.where(pats[k][point], 1.0, -1.0)
                rows.append(-sg[:, None] * D)
                rhs.append(sg * C)
        if final_affine:
            su, sv = (pats[-1][0].astype(float), pats[-1][1].astype(float))
            Cu, Du = expr(0, hidden - 1)
            Cv, Dv = expr(1, hidden - 1)
            E = Ws[-1] @ (su[:, None] * Du) - Ws[-1] @ (sv[:, None] * Dv)
            e = Ws[-1] @ (sv * Cv) - Ws[-1] @ (su * Cu)
        else:
            Cu, Du = expr(0, L - 1)
            Cv, Dv = expr(1, L - 1)
            a = shared
            rows += [-Du[a], Du[~a], Dv[~a]]
            rhs += [Cu[a], -Cu[~a], -Cv[~a]]
            E, e = Du[a] - Dv[a], Cv[a] - Cu[a]
        A, b = _orth_equalities(E, e) if E.shape[0] else (np.zeros((0, n)), np.zeros(0))
        if A is None:
            continue  # the equalities have no solution in this region
        Gl = np.vstack(rows)
        hl = np.concatenate(rhs)
        soc, c = min_max_norm_cones(d)
        try:
            eq = dict(A=matrix(A), b=matrix(b)) if A.shape[0] else {}
            r = solvers.conelp(matrix(c), matrix(np.vstack([Gl, soc])), matrix(np.concatenate([hl, np.zeros(2 + 2 * d)])),
                               dims={"l": Gl.shape[0], "q": [1 + d, 1 + d], "s": []},
                               options={"show_progress": False, "abstol": 1e-9, "reltol": 1e-9, "feastol": 1e-9},
                               **eq)
        except (ArithmeticError, ValueError):
            continue
        if r["status"] in ("primal infeasible", "dual infeasible"):
            continue
        if r["status"] == "optimal":
            best = min(best, float(r["dual objective"]))
        else:  # not converged: its dual objective may be garbage, but eps* >= 0 always holds
            best = min(best, max(0.0, float(r["dual objective"] or 0.0)))
    return best


# ------------------------------------------------------------------ closed forms ----------
def test_figure_1_of_the_paper(tmp_path):
    """f(x0, x1) = (max(x0, 0), max(x1, 0)), u = (1, 4), v = (9, -5): eps = 5, u~ = (4, 0), v~ = (4, -5)."""
    net = fcnn(tmp_path, [np.eye(2)], [np.zeros(2)])
    for method in ("descent", "faithful"):
        c = collide(net, "relu1", [1.0, 4.0], [9.0, -5.0], method=method)
        assert c.status is CollisionStatus.FOUND and c.verified
        assert c.eps == pytest.approx(5.0, abs=1e-6)
        np.testing.assert_allclose(c.u_adv, [4.0, 0.0], atol=1e-6)
        np.testing.assert_allclose(c.v_adv, [4.0, -5.0], atol=1e-6)
        assert c.method == method and c.residual <= 1e-6


def test_input_cut_is_the_midpoint(tmp_path):
    net = fcnn(tmp_path, [np.eye(3)], [np.zeros(3)])
    u, v = np.array([0.0, 1.0, 2.0]), np.array([3.0, 5.0, 2.0])
    c = collide(net, "input", u, v)
    assert c.eps == pytest.approx(2.5) and c.method == "closed_form"
    np.testing.assert_allclose(c.u_adv, (u + v) / 2)
    np.testing.assert_allclose(c.v_adv, (u + v) / 2)


def _generic_affine_eps(W, u, v):
    """min t s.t. |du| <= t, |dv| <= t, W(u + du) = W(v + dv), as a generic cone program."""
    d = W.shape[1]
    E = np.hstack([np.zeros((W.shape[0], 1)), W, -W])
    e = W @ (v - u)
    soc, c = min_max_norm_cones(d)
    A, b = _orth_equalities(E, e)
    r = solvers.conelp(matrix(c), matrix(soc), matrix(np.zeros(2 + 2 * d)), dims={"l": 0, "q": [1 + d, 1 + d], "s": []},
                       A=matrix(A), b=matrix(b),
                       options={"show_progress": False, "abstol": 1e-9, "reltol": 1e-9, "feastol": 1e-9})
    assert r["status"] == "optimal"
    return float(r["primal objective"])


def _orth_equalities(E, e):
    """E x = e as Q'E x = Q'e with Q an orthonormal basis of range(E) (scipy's SVD-based orth);
    None when e is not in range(E) (no solution)."""
    import scipy.linalg

    Q = scipy.linalg.orth(E)
    if np.linalg.norm(Q @ (Q.T @ e) - e) > 1e-9 * max(1.0, np.linalg.norm(e)):
        return None, None
    return Q.T @ E, Q.T @ e


@pytest.mark.parametrize("m, d, rank", [(3, 6, 3), (6, 4, 4), (5, 5, 2)])
def test_affine_closed_form_equals_generic_convex_solve(tmp_path, m, d, rank):
    rng = np.random.default_rng(m * 10 + d)
    W = rng.standard_normal((m, rank)) @ rng.standard_normal((rank, d))
    net = fcnn(tmp_path, [W], [rng.standard_normal(m)], final_affine=True)
    W32 = float32_weights([W])[0]
    for _ in range(3):
        u, v = rng.standard_normal(d), rng.standard_normal(d)
        c = collide(net, "linear1", u, v)
        assert c.status is CollisionStatus.FOUND
        assert c.eps == pytest.approx(_generic_affine_eps(W32, u, v), rel=1e-6, abs=1e-8)
        assert c.eps <= 0.5 * np.linalg.norm(u - v) + 1e-12


def test_all_pairs_matrix_matches_pairs_and_is_chunked(tmp_path):
    rng = np.random.default_rng(3)
    net = fcnn(tmp_path, [rng.standard_normal((4, 9))], [np.zeros(4)], final_affine=True)
    ch = plan(net, "linear1")
    Xa, Xb = rng.uniform(0, 1, (7, 9)), rng.uniform(0, 1, (5, 9))
    Xb[2] = Xa[3] + 1e-9  # a near-duplicate: exercises the cancellation guard
    full = all_pairs_eps(ch, Xa, Xb)
    chunked = all_pairs_eps(ch, Xa, Xb, block=2)
    np.testing.assert_allclose(full, chunked, rtol=1e-14, atol=1e-16)
    col = collider(net)
    for i, j in [(0, 0), (3, 2), (6, 4)]:
        assert full[i, j] == pytest.approx(col.collide("linear1", Xa[i], Xb[j]).eps, rel=1e-12, abs=1e-15)
    inp = all_pairs_eps(plan(net, "input"), Xa, Xb)
    np.testing.assert_allclose(inp, 0.5 * np.linalg.norm(Xa[:, None] - Xb[None], axis=2), rtol=1e-13, atol=1e-15)


# ------------------------------------------------------------------ ReLU descent ----------
def test_relu_active_everywhere_gives_the_affine_value(tmp_path):
    rng = np.random.default_rng(5)
    W = rng.standard_normal((4, 6))
    net = fcnn(tmp_path, [W], [np.full(4, 100.0)])  # every unit active near the data
    for _ in range(3):
        u, v = rng.uniform(0, 1, 6), rng.uniform(0, 1, 6)
        lin = collide(net, "linear1", u, v)
        rel = collide(net, "relu1", u, v)
        assert rel.eps == pytest.approx(lin.eps, rel=1e-6)


TINY = [  # (input, widths, final_affine)
    (4, (5,), False), (6, (6,), False), (8, (4,), False), (3, (6,), False),
    (4, (3, 3), False), (5, (3, 2), False), (4, (3,), True), (3, (3, 2), True),
]


def random_tiny_net(tmp_path, d, widths, final):
    """A seeded random ReLU net of ``TINY``'s shape: (rng for the points, weights, biases, network)."""
    rng = np.random.default_rng(sum(widths) * 7 + d)
    dims = (d,) + widths + ((2,) if final else ())
    Ws = [rng.standard_normal((dims[k + 1], dims[k])) for k in range(len(dims) - 1)]
    bs = [rng.standard_normal(dims[k + 1]) * 0.5 for k in range(len(dims) - 1)]
    return rng, Ws, bs, fcnn(tmp_path, Ws, bs, final_affine=final)


@pytest.mark.parametrize("d, widths, final", TINY)
def test_descent_never_beats_exact_enumeration(tmp_path, d, widths, final, capsys):
    rng, Ws, bs, net = random_tiny_net(tmp_path, d, widths, final)
    cut = net.cuts[-1]
    col = collider(net)
    gaps = []
    for _ in range(4):
        u, v = rng.uniform(-1, 1, d), rng.uniform(-1, 1, d)
        c = col.collide_cuts(u, v, (cut,))[cut]
        star = exact_eps(Ws, bs, u, v, final_affine=final)
        assert c.status is CollisionStatus.FOUND
        assert c.eps >= star - 1e-6, (c.eps, star)
        gaps.append(c.eps - star)
    with capsys.disabled():
        print(f"\n  tiny net d={d} widths={widths} final_affine={final} cut={cut}: "
              f"descent - exact gaps {np.round(gaps, 5).tolist()}")


def test_eps_never_grows_with_depth_on_the_shipped_model(shipped_model):
    net = fxverify.load_model(shipped_model)
    from fxverify.data import load_embedded, select_points

    pts = select_points(load_embedded("mnist"), (3, 7), 3)
    col = collider(net)
    order = ("input", "linear1", "relu1", "linear2", "relu2")
    for i in range(2):
        res = col.collide_cuts(pts.X_a[i], pts.X_b[i], order)
        eps = [res[c].eps for c in order]
        assert all(res[c].status is CollisionStatus.FOUND and res[c].verified for c in order)
        assert all(b <= a + 1e-12 for a, b in zip(eps, eps[1:])), eps
        assert eps[2] < eps[1], "the ReLU cut should merge strictly more than the linear one here"


def test_wide_layer_with_redundant_equalities(tmp_path):
    """A layer wider than its input: more active units than the rank. cvxopt returns a wrong
    'unknown' answer on such equality systems unless the dependent rows are removed."""
    rng = np.random.default_rng(11)
    W = rng.standard_normal((9, 3))
    net = fcnn(tmp_path, [W], [np.full(9, 5.0)])  # all active: 9 equalities of rank 3
    u, v = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    c = collide(net, "relu1", u, v)
    assert c.status is CollisionStatus.FOUND
    assert c.eps == pytest.approx(collide(net, "linear1", u, v).eps, rel=1e-6)
    A = rng.standard_normal((2, 5))
    A3 = np.vstack([A, A[0] + 2 * A[1]])
    red = _independent_rows(A3, A3 @ np.ones(5))
    assert red is not None and red[0].shape[0] == 2
    assert _independent_rows(A3, A3 @ np.ones(5) + np.array([0, 0, 1.0])) is None  # inconsistent


@pytest.mark.parametrize("rank", [6, 4])
@pytest.mark.parametrize("same", [True, False])
def test_many_equalities_become_an_orthonormal_basis_of_their_span(rank, same):
    # full rank: the identity's basis (a Cholesky); rank-deficient: the eigenvectors kept
    rng = np.random.default_rng(rank + 10 * same)
    n = 6
    Eu = rng.standard_normal((40, rank)) @ rng.standard_normal((rank, n))
    Ev = Eu if same else rng.standard_normal((40, n))
    x = rng.standard_normal(2 * n)
    b = Eu @ x[:n] - Ev @ x[n:]
    Q, c = _row_space_equalities(Eu, Ev, b)
    np.testing.assert_allclose(Q @ Q.T, np.eye(Q.shape[0]), atol=1e-12)
    span = rank if same else min(2 * n, rank + n)
    assert Q.shape == (span, 2 * n)
    np.testing.assert_allclose(Q @ x, c, atol=1e-9)  # the original solution solves the basis' system
    # and every solution of the basis' system solves the original one
    N = scipy.linalg.null_space(Q)
    other = x + N @ rng.standard_normal(N.shape[1])
    np.testing.assert_allclose(Eu @ other[:n] - Ev @ other[n:], b, atol=1e-8)
    assert _row_space_equalities(Eu, Ev, b + rng.standard_normal(40)) is None  # inconsistent


def test_first_layer_equalities_skip_the_independence_check_only_when_sound(tmp_path, shipped_model):
    rng = np.random.default_rng(2)
    wide = collider(fcnn(tmp_path, [rng.standard_normal((9, 3))], [np.full(9, 5.0)]))
    assert not wide._descent("relu1")._first_rows_independent  # 9 rows in 3 dimensions
    net = fxverify.load_model(shipped_model)
    from fxverify.data import load_embedded, select_points

    pts = select_points(load_embedded("mnist"), (3, 7), 2)
    col = collider(net)
    d = col._descent("relu1")
    assert d._first_rows_independent
    u, v = pts.X_a[0], pts.X_b[1]
    pat = d.patterns_at((u + v) / 2, (u + v) / 2)
    fast = d.build(u, v, pat).problem
    d._first_rows_independent = False
    checked = d.build(u, v, pat).problem
    np.testing.assert_array_equal(fast.A, checked.A)
    np.testing.assert_array_equal(fast.b, checked.b)


# ------------------------------------------------------------------ failures --------------
def test_a_fake_collision_fails_verification(tmp_path):
    net = fcnn(tmp_path, [np.eye(2)], [np.zeros(2)])
    col = collider(net)
    u, v = np.array([1.0, 4.0]), np.array([9.0, -5.0])
    verdict = col.verifier.check("relu1", u, v, u, v)
    assert not verdict.ok and "features differ" in verdict.message
    res = col._verified("relu1", u, v, u, v, "descent", 0.0)
    assert res.status is CollisionStatus.FAILED and not res.verified and math.isinf(res.eps)


class _Broken(Backend):
    """A backend whose every cone LP ends with the given result (or raises it)."""

    def __init__(self, result):
        self.result = result

    def solve_cone(self, problem, options):
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


@pytest.mark.parametrize("solution", [
    ConeSolution(Termination.NUMERICAL_ERROR, message="cvxopt status 'unknown'"),
    ConeSolution(Termination.ERROR, message="cvxopt: singular KKT matrix"),
])
def test_solver_trouble_gives_a_failed_collision_not_an_exception(tmp_path, solution):
    net = fcnn(tmp_path, [np.eye(2)], [np.zeros(2)])
    col = collider(net, method="faithful")
    d = col._descent("relu1")
    d.backend, d.fallbacks = _Broken(solution), ()
    res = col.collide("relu1", [1.0, 4.0], [9.0, -5.0])
    assert res.status is CollisionStatus.FAILED and not res.verified and math.isinf(res.eps)
    assert solution.termination.value in res.message


def test_a_failed_solve_is_a_failed_pair_not_a_silent_fallback(tmp_path):
    """Every LP fails: the pair fails at relu1 (counted, with the solver's message), although
    the linear1 collision would be a valid edge there (bounds still take it: see the
    analysis tests); it is never silently reported as found."""
    net = fcnn(tmp_path, [np.eye(2)], [np.zeros(2)])
    col = collider(net)
    d = col._descent("relu1")
    d.backend, d.fallbacks = _Broken(ConeSolution(Termination.NUMERICAL_ERROR, message="bogus")), ()
    res = col.collide_cuts([1.0, 4.0], [9.0, -5.0], ("linear1", "relu1"))
    assert res["linear1"].status is CollisionStatus.FOUND
    assert res["relu1"].status is CollisionStatus.FAILED and math.isinf(res["relu1"].eps)
    assert "numerical error (bogus)" in res["relu1"].message


def _conv_pool_net(tmp_path, overlap=False):
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[1, 1] if overlap else [2, 2]),
             helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("Gemm", ["f", "G"], ["y"], transB=1)]
    rng = np.random.default_rng(0)
    W = rng.standard_normal((2, 1, 2, 2)).astype(np.float32)
    n_pool = 2 * (3 * 3 if overlap else 2 * 2)
    G = rng.standard_normal((2, n_pool)).astype(np.float32)
    return fxverify.load_model(save(tmp_path, make(nodes, ["N", 1, 5, 5], inits={"W": W, "G": G}))), rng


@pytest.mark.parametrize("overlap", [False, True])
@pytest.mark.parametrize("norm", ["l2", "linf", "l1"])
def test_maxpool_cuts_are_computed_and_never_worse_than_the_shallower(tmp_path, overlap, norm):
    net, rng = _conv_pool_net(tmp_path, overlap)
    col = collider(net, norm=norm)
    for _ in range(3):
        u, v = rng.uniform(0, 1, 25), rng.uniform(0, 1, 25)
        res = col.collide_cuts(u, v)
        assert all(r.status is CollisionStatus.FOUND and r.verified for r in res.values())
        order = ("input", "linear1", "relu1", "pool1", "linear2")
        eps = [res[c].eps for c in order]
        assert all(b <= a + 1e-9 for a, b in zip(eps, eps[1:])), eps
        assert res["pool1"].method == "descent" and "inherited" not in res["pool1"].message
        fu, fv = net.forward(np.stack([res["pool1"].u_adv, res["pool1"].v_adv]), cut="pool1")
        np.testing.assert_allclose(fu, fv, atol=1e-6)
    cf = collider(net, method="closed_form").collide("relu1", u, v)
    assert cf.status is CollisionStatus.NOT_APPLICABLE


def test_domain_keeps_points_inside(tmp_path):
    net, rng = _conv_pool_net(tmp_path)
    free, boxed = collider(net), collider(net, domain=(0.0, 1.0))
    u, v = rng.uniform(0, 1, 25), rng.uniform(0, 1, 25)
    for cut in ("linear1", "relu1", "pool1", "linear2"):
        a, b = free.collide(cut, u, v), boxed.collide(cut, u, v)
        assert b.status is CollisionStatus.FOUND
        assert b.u_adv.min() >= 0 and b.u_adv.max() <= 1 and b.v_adv.min() >= 0 and b.v_adv.max() <= 1
        assert b.eps >= a.eps - 1e-7  # a constraint can only raise the budget
    with pytest.raises(fxverify.FxverifyError, match="outside the input domain"):
        boxed.collide("relu1", u + 2.0, v)


def test_bad_points_and_cuts(tmp_path):
    net = fcnn(tmp_path, [np.eye(2)], [np.zeros(2)])
    with pytest.raises(fxverify.FxverifyError, match="NaN"):
        collide(net, "relu1", [np.nan, 1.0], [0.0, 0.0])
    with pytest.raises(fxverify.FxverifyError, match="unknown cut 'relu3'"):
        collide(net, "relu3", [1.0, 1.0], [0.0, 0.0])
    with pytest.raises(fxverify.FxverifyError, match="unknown solver 'nope'"):
        collide(net, "relu1", [1.0, 1.0], [0.0, 0.0], solver="nope")


# ------------------------------------------------------------------ third-party models -----
@pytest.mark.skipif(not REAL_ONNX.is_dir(), reason=f"third-party ONNX corpus not found at {REAL_ONNX}")
@pytest.mark.parametrize("name, cut, data", [
    ("keras_mnist_maxpool.onnx", "pool1", "mnist"),  # NHWC, two convolutions, then a max-pool
    ("verivital_mnist_maxpool.onnx", "pool1", "mnist"),  # 23,328 ReLUs, overlapping 3x3/4 windows
    ("resnet_2b.onnx", "relu3", "random"),  # after the first residual Add
    ("resnet_2b.onnx", "relu5", "random"),  # after the second
])
def test_real_models_collide_at_pool_and_residual_cuts(name, cut, data):
    """One descent step (max_iterations=1, to keep the test short) on models nobody here
    trained: a verified collision (float64 IR and onnxruntime) below the input cut's budget."""
    from fxverify.data import load_embedded, select_points
    from fxverify.profiles import load_profile

    net = fxverify.load_model(REAL_ONNX / name)
    if data == "mnist":
        pts = select_points(load_embedded("mnist"), (3, 7), 1)
        u, v = pts.X_a[0], pts.X_b[0]
    else:  # CIFAR-shaped points in [0, 1] (no CIFAR data ships)
        u, v = np.random.default_rng(0).random((2, int(np.prod(net.input_shape))))
    engine = resolve_engine(load_profile("descent-activeset").with_overrides({"max_iterations": 1}))
    res = Collider(net, engine).collide_cuts(u, v, (cut,))
    r = res[cut]
    assert r.status is CollisionStatus.FOUND and r.verified, r.message
    assert r.residual_onnx is not None and np.isfinite(r.residual_onnx)
    assert 0 < r.eps < 0.5 * np.linalg.norm(np.ravel(u) - np.ravel(v))


def test_collide_takes_a_solver_profile_object(shipped_model):
    from fxverify.data import load_embedded, select_points
    from fxverify.profiles import load_profile

    net = fxverify.load_model(shipped_model)
    pts = select_points(load_embedded("mnist"), (3, 7), 1)
    one = load_profile("descent-activeset").with_overrides({"max_iterations": 1})
    a = fxverify.collide(net, "relu2", pts.X_a[0], pts.X_b[0], solver=one)
    b = fxverify.collide(net, "relu2", pts.X_a[0], pts.X_b[0], solver="descent-activeset")
    assert a.verified and b.verified and a.iterations <= 1
    assert b.iterations > 1 and b.eps < a.eps  # not the capped collider of the first call


# ------------------------------------------------------------------ verification at the pair's scale
def test_figure_1_scaled_by_1e_minus_7_rejects_the_points_themselves(tmp_path):
    """f(x) = relu(1e-7 x): f(u) and f(v) are 8e-7 apart, below the old absolute tolerance
    1e-6 x max(1, |f|); judged against the pair's own separation (u, v) is no collision, and the
    collision the descent proves (eps = 5) still is one."""
    from fxverify.collision.verify import Verifier

    net = fcnn(tmp_path, [np.eye(2) * 1e-7], [np.zeros(2)])
    u, v = np.array([1.0, 4.0]), np.array([9.0, -5.0])
    verdict = Verifier(net).check("relu1", u, v, u, v)
    assert not verdict.ok and "separation" in verdict.message
    c = collide(net, "relu1", u, v)
    assert c.status is CollisionStatus.FOUND and c.eps == pytest.approx(5.0, abs=1e-6)
    assert Verifier(net).check("relu1", u, v, c.u_adv, c.v_adv).ok


@pytest.mark.parametrize("c", [1e-3, 1e-7])
def test_a_rescaled_network_gives_the_same_eps_and_verdicts(tmp_path, c):
    """The first layer's weights and every bias times c scale every feature by c (ReLU is
    positively homogeneous): the same eps at every cut and the same verdicts, both for the
    collisions found and for the points themselves."""
    from fxverify.collision.verify import Verifier

    rng = np.random.default_rng(11)
    Ws = [rng.standard_normal((8, 6)), rng.standard_normal((6, 8)), rng.standard_normal((3, 6))]
    bs = [rng.standard_normal(8), rng.standard_normal(6), rng.standard_normal(3)]
    net = fcnn(tmp_path, Ws, bs, final_affine=True, name="a.onnx")
    scaled = fcnn(tmp_path, [Ws[0] * c] + Ws[1:], [b * c for b in bs], final_affine=True, name="b.onnx")
    col, col_s = collider(net), collider(scaled)
    ver, ver_s = Verifier(net), Verifier(scaled)
    for _ in range(4):
        u, v = rng.standard_normal(6), rng.standard_normal(6)
        a, b = col.collide_cuts(u, v), col_s.collide_cuts(u, v)
        for cut in net.cuts:
            assert a[cut].status is b[cut].status, (cut, a[cut].message, b[cut].message)
            assert b[cut].eps == pytest.approx(a[cut].eps, rel=1e-6), cut
            assert ver.check(cut, u, v, u, v).ok is ver_s.check(cut, u, v, u, v).ok
            if a[cut].status is CollisionStatus.FOUND:  # each network's collision, judged by the other
                assert ver_s.check(cut, u, v, a[cut].u_adv, a[cut].v_adv).ok
                assert ver.check(cut, u, v, b[cut].u_adv, b[cut].v_adv).ok


def test_a_found_collisions_points_are_reproduced_exactly_by_their_differences(tmp_path):
    """The stored witness is (u_adv - u, v_adv - v): u + (u_adv - u) gives u_adv bit for bit."""
    rng = np.random.default_rng(2)
    net = fcnn(tmp_path, [rng.standard_normal((5, 4))], [rng.standard_normal(5)])
    col = collider(net)
    for _ in range(5):
        u, v = rng.uniform(0, 1, 4), rng.uniform(0, 1, 4) * 300
        for r in col.collide_cuts(u, v).values():
            if r.status is CollisionStatus.FOUND:
                assert np.array_equal(u + (r.u_adv - u), r.u_adv) and np.array_equal(v + (r.v_adv - v), r.v_adv)


def test_the_readme_main_jobs_failed_pair_solves_every_lp(shipped_model):
    """Pair (3, 3) of the README's main job at linear2 (grid-aware): the active set, on its
    own (no fallback), solves every LP of the descent; it used to call one of them infeasible
    (a pattern row the equalities fix, violated by rounding), and cvxopt then failed the pair."""
    from fxverify.collision.descent import PatternDescent
    from fxverify.config import resolve_run
    from fxverify.analysis import load_inputs
    from fxverify.executors import _one_blas_thread

    run = resolve_run(shipped_model.parent.parent / "specs" / "mnist_3v7.json")
    net, pts = load_inputs(shipped_model, run)
    col = Collider(net, run.engine)
    d = col._descent("linear2")
    d.fallbacks = ()
    seen = []
    real = PatternDescent.solve_lp

    def spy(self, *a, **k):
        lp, sol = real(self, *a, **k)
        if lp is not None and self is d:
            seen.append((sol.termination, sol.message))
        return lp, sol

    with _one_blas_thread():
        PatternDescent.solve_lp = spy
        try:
            res = col.collide_cuts(pts.X_a[3], pts.X_b[3], ("relu1", "linear2"), grid=run.grid)
        finally:
            PatternDescent.solve_lp = real
    assert res["linear2"].status is CollisionStatus.FOUND, res["linear2"].message
    assert seen and all(t is Termination.OPTIMAL for t, _ in seen), seen
