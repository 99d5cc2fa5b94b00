"""K-class bounds: the 0-1 LP and the cross-entropy program on general (non-bipartite) conflict
graphs against a general LP solver (HiGHS), a general convex solver (Clarabel) and brute force;
K = 2 equal to :func:`lower_bounds` bit for bit; the dual certificate."""

from __future__ import annotations

import itertools
import math

import clarabel
import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import linprog

from fxverify.bounds import (CE_GAP_TOL, ClassPairBudgets, ce_dual_value, ce_general, ce_lower_bound,
                             ce_lower_bound_certified, ce_optimal_q_general, double_cover_matching,
                             loss01_lower_hypergraph, lower_bounds, lower_bounds_multiclass, max_matching,
                             packing_optimal_q)
from fxverify.data import load_embedded, select_points
from fxverify.errors import FxverifyError

TOL = 1e-9  # independent solvers and brute force agree with the exact values to this


def adjacency(N: int, edges) -> sp.csr_matrix:
    edges = list(edges)
    if not edges:
        return sp.csr_matrix((N, N), dtype=np.int32)
    i, j = np.array(edges).T
    return sp.csr_matrix((np.ones(2 * len(edges), dtype=np.int32), (np.r_[i, j], np.r_[j, i])), shape=(N, N))


def random_graphs(count: int, max_n: int = 9, max_k: int = 4, seed: int = 0):
    """Random labelled graphs: N points of K classes, each cross-class pair an edge with a random
    density. Yields (labels, edges)."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        N, K = int(rng.integers(2, max_n + 1)), int(rng.integers(3, max_k + 1))
        labels = rng.integers(0, K, N)
        p = rng.uniform(0.1, 0.8)
        yield labels, [(i, j) for i, j in itertools.combinations(range(N), 2)
                       if labels[i] != labels[j] and rng.uniform() < p]


GRAPHS = list(random_graphs(40, seed=11))


def lp_packing(N: int, edges) -> float:
    """max sum q s.t. q_u + q_v <= 1 on edges, 0 <= q <= 1 by HiGHS."""
    A = np.zeros((max(len(edges), 1), N))
    for k, (i, j) in enumerate(edges):
        A[k, i] = A[k, j] = 1
    r = linprog(-np.ones(N), A_ub=A, b_ub=np.ones(len(A)), bounds=[(0, 1)] * N, method="highs")
    assert r.status == 0
    return -r.fun


def brute_packing(N: int, edges, values) -> float:
    """max sum q over q in values^N with q_u + q_v <= 1 on every edge (exhaustive)."""
    Q = np.array(list(itertools.product(values, repeat=N)))
    ok = np.ones(len(Q), dtype=bool)
    for i, j in edges:
        ok &= Q[:, i] + Q[:, j] <= 1
    return float(Q[ok].sum(1).max())


def convex_ce(N: int, edges) -> float:
    """min (1/N) sum -log q s.t. q_u + q_v <= 1 on edges, q <= 1 by Clarabel (an interior-point
    conic solver): variables (q, t), minimise sum t with (-t_v, 1, q_v) in the exponential cone
    (q_v >= exp(-t_v))."""
    if not edges:
        return 0.0
    m = len(edges)
    lin = np.zeros((m + N, 2 * N))
    for k, (i, j) in enumerate(edges):
        lin[k, i] = lin[k, j] = 1
    lin[m:, :N] = np.eye(N)
    cone = np.zeros((3 * N, 2 * N))
    h = np.zeros(3 * N)
    for v in range(N):  # s = h - cone @ x = (-t_v, 1, q_v)
        cone[3 * v, N + v], h[3 * v + 1], cone[3 * v + 2, v] = 1.0, 1.0, -1.0
    for tol in (1e-10, 1e-9):  # the tightest tolerances Clarabel reaches ("Solved", not "AlmostSolved")
        settings = clarabel.DefaultSettings()
        settings.verbose = False
        settings.tol_gap_abs = settings.tol_gap_rel = settings.tol_feas = tol
        sol = clarabel.DefaultSolver(sp.csc_matrix((2 * N, 2 * N)), np.r_[np.zeros(N), np.ones(N)],
                                     sp.csc_matrix(np.vstack([lin, cone])), np.r_[np.ones(m + N), h],
                                     [clarabel.NonnegativeConeT(m + N)] + [clarabel.ExponentialConeT()] * N,
                                     settings).solve()
        if str(sol.status) == "Solved":
            return sol.obj_val / N
    raise AssertionError(f"Clarabel: {sol.status}")


# ---- 0-1: the fractional packing LP -------------------------------------------------------------
@pytest.mark.parametrize("labels,edges", GRAPHS)
def test_loss01_against_highs_and_brute_force(labels, edges):
    N = len(labels)
    A = adjacency(N, edges)
    packing = N - double_cover_matching(A) / 2  # the LP optimum by the double cover
    assert packing == pytest.approx(lp_packing(N, edges), abs=TOL)
    # the LP is half-integral: exhaustive search over q in {0, 1/2, 1}^N reaches it exactly
    assert packing == brute_packing(N, edges, (0.0, 0.5, 1.0))
    # deterministic classifiers (q in {0, 1}: independent sets) can do no better, and do as well
    # exactly when the graph has no odd cycle
    deterministic = brute_packing(N, edges, (0.0, 1.0))
    assert deterministic <= packing
    bipartite = sp.csgraph.connected_components(A)[0] * 2 == sp.csgraph.connected_components(
        sp.bmat([[None, A], [A, None]]))[0]
    assert (deterministic == packing) or not bipartite
    # a half-integral optimal point: feasible, with the optimal sum
    q = packing_optimal_q(A)
    assert set(np.unique(q)) <= {0.0, 0.5, 1.0}
    assert all(q[i] + q[j] <= 1 for i, j in edges)
    assert q.sum() == packing


def test_odd_cycle_randomised_beats_deterministic():
    """Three points of three classes, every pair colliding (at three different points): a
    classifier answering 1/2 - 1/2 at each collision is right on each point with probability
    1/2 (0-1 loss 1/2, cross-entropy log 2); a deterministic one loses two of the three."""
    labels = np.array([0, 1, 2])
    rec, = lower_bounds_multiclass({(0, 1): [[1.0]], (0, 2): [[1.0]], (1, 2): [[1.0]]}, labels, [1.0])
    assert rec.edges == 3 and rec.loss01_lower == 0.5
    assert rec.ce_lower == pytest.approx(math.log(2), abs=1e-15)
    assert 1 - brute_packing(3, [(0, 1), (0, 2), (1, 2)], (0.0, 1.0)) / 3 == pytest.approx(2 / 3)


# ---- cross-entropy ------------------------------------------------------------------------------------
@pytest.mark.parametrize("labels,edges", GRAPHS)
def test_ce_against_clarabel_with_certificate(labels, edges):
    N = len(labels)
    A = adjacency(N, edges)
    value, dual = ce_general(A)
    assert value == pytest.approx(convex_ce(N, edges), abs=TOL)
    assert dual <= value + 1e-15 and value - dual <= 1e-12  # the certificate: below, and tight
    # the optimal point: feasible, with the optimal value
    q = ce_optimal_q_general(A)
    assert np.all((q > 0) & (q <= 1)) and all(q[i] + q[j] <= 1 + 1e-15 for i, j in edges)
    assert -np.log(q).sum() / N == pytest.approx(value, abs=1e-14)


def test_ce_dual_value_is_a_lower_bound_at_any_multipliers():
    """Weak duality: arbitrary lambda >= 0 on the edges give values below the optimum."""
    rng = np.random.default_rng(5)
    for labels, edges in GRAPHS[:15]:
        if not edges:
            continue
        N = len(labels)
        value = ce_general(adjacency(N, edges))[0]
        for _ in range(20):
            lam = rng.exponential(rng.uniform(0.1, 3), len(edges))
            load = np.zeros(N)
            for (i, j), x in zip(edges, lam):
                load[i] += x
                load[j] += x
            assert ce_dual_value(load, lam.sum()) <= value + 1e-12


def test_bipartite_graphs_through_the_double_cover_equal_the_bipartite_solution():
    """The K > 2 path on a bipartite graph: the same numbers as the bipartite algorithm."""
    rng = np.random.default_rng(2)
    for _ in range(20):
        na, nb = (int(x) for x in rng.integers(1, 12, 2))
        B = sp.csr_matrix((rng.uniform(size=(na, nb)) < rng.uniform(0.05, 0.6)).astype(np.int32))
        A = sp.bmat([[None, B], [B.T, None]], format="csr")
        N = na + nb
        assert double_cover_matching(A) / (2 * N) == max_matching(B) / N
        value, dual = ce_general(A)
        assert value == pytest.approx(ce_lower_bound(B), abs=1e-14)
        bvalue, bdual = ce_lower_bound_certified(B)
        assert bvalue == ce_lower_bound(B) and bvalue - bdual <= 1e-12 and bdual <= bvalue + 1e-15


# ---- lower_bounds_multiclass ------------------------------------------------------------------------
def random_pairs(counts, seed: int, p_inf: float = 0.3):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(counts)), counts)
    rng.shuffle(labels)
    pairs = {}
    for a, b in itertools.combinations(range(len(counts)), 2):
        E = rng.uniform(0, 3, (counts[a], counts[b]))
        E[rng.uniform(size=E.shape) < p_inf] = np.inf
        pairs[(a, b)] = E
    return labels, pairs


def test_two_classes_equal_lower_bounds_bit_for_bit():
    rng = np.random.default_rng(4)
    grid = np.linspace(0, 3.5, 12)
    for na, nb in ((30, 20), (7, 13), (25, 25), (1, 9)):
        E = rng.uniform(0, 3, (na, nb))
        E[rng.uniform(size=E.shape) < 0.3] = np.inf
        labels = np.r_[np.full(na, 3), np.full(nb, 7)]
        rng.shuffle(labels)  # the positions of the points do not matter
        for got, want in zip(lower_bounds_multiclass({(3, 7): E}, labels, grid), lower_bounds(E, grid)):
            assert (got.eps, got.edges, got.loss01_lower, got.ce_lower) == \
                   (want.eps, want.edges, want.loss01_lower, want.ce_lower)
            assert -1e-15 <= got.ce_gap <= 1e-12


def test_two_classes_mnist_input_cut_equal_lower_bounds():
    """Embedded MNIST 3 vs 7, n = 200 per class, input cut: K = 2 equals today's bounds."""
    pts = select_points(load_embedded("mnist"), (3, 7), 200)
    D = np.sqrt(((pts.X_a[:, None, :] - pts.X_b[None, :, :]) ** 2).sum(-1)) / 2
    grid = [2.5, 3.0, 3.5, 4.0, 4.5]
    labels = np.r_[np.full(200, 3), np.full(200, 7)]
    got, want = lower_bounds_multiclass({(3, 7): D}, labels, grid), lower_bounds(D, grid)
    assert [(r.edges, r.loss01_lower, r.ce_lower) for r in got] == \
           [(r.edges, r.loss01_lower, r.ce_lower) for r in want]
    assert want[-1].edges > 1000


def test_multiclass_against_independent_solvers_on_class_pair_matrices():
    labels, pairs = random_pairs([3, 4, 2, 3], seed=8, p_inf=0.5)
    N = len(labels)
    members = {c: np.flatnonzero(labels == c) for c in range(4)}
    grid = [0.0, 0.3, 0.8, 1.5]
    for rec in lower_bounds_multiclass(pairs, labels, grid):
        edges = [(int(members[a][i]), int(members[b][j])) for (a, b), E in pairs.items()
                 for i, j in zip(*np.nonzero(E <= rec.eps))]
        assert rec.edges == len(edges)
        assert rec.loss01_lower == pytest.approx(1 - lp_packing(N, edges) / N, abs=TOL)
        assert rec.ce_lower == pytest.approx(convex_ce(N, edges), abs=TOL)
        assert rec.ce_dual <= rec.ce_lower + 1e-15 and rec.ce_gap <= CE_GAP_TOL


def test_multiclass_monotone_and_limits():
    labels, pairs = random_pairs([15, 12, 10, 8], seed=3)
    recs = lower_bounds_multiclass(pairs, labels, np.linspace(0, 3.5, 9))
    for a, b in zip(recs, recs[1:]):
        assert b.edges >= a.edges and b.loss01_lower >= a.loss01_lower and b.ce_lower >= a.ce_lower - 1e-12
    assert recs[0].edges == 0 and recs[0].loss01_lower == 0 and recs[0].ce_lower == 0.0
    assert recs[-1].edges == sum(int(np.isfinite(E).sum()) for E in pairs.values())
    # each point at most one unit of fractional matching: 0-1 at most 1/2, CE at most log 2 a point
    assert recs[-1].loss01_lower <= 0.5 and recs[-1].ce_lower <= math.log(2) + 1e-12


def test_absent_pair_and_orientation():
    """An absent pair of classes has no edges (the same as an all-inf matrix); a pair may be
    given as (b, a) with the transposed matrix."""
    labels, pairs = random_pairs([6, 5, 4], seed=1)
    grid = [0.5, 1.0, 2.0]
    without = dict(pairs)
    E12 = without.pop((1, 2))
    inf = without | {(1, 2): np.full_like(E12, np.inf)}
    assert lower_bounds_multiclass(without, labels, grid) == lower_bounds_multiclass(inf, labels, grid)
    flipped = without | {(2, 1): E12.T}
    assert [(r.edges, r.loss01_lower) for r in lower_bounds_multiclass(flipped, labels, grid)] == \
           [(r.edges, r.loss01_lower) for r in lower_bounds_multiclass(pairs, labels, grid)]
    for x, y in zip(lower_bounds_multiclass(flipped, labels, grid), lower_bounds_multiclass(pairs, labels, grid)):
        assert x.ce_lower == pytest.approx(y.ce_lower, abs=1e-14)


def test_budgets_graph_matches_the_matrices():
    labels, pairs = random_pairs([5, 6, 7], seed=6)
    budgets = ClassPairBudgets.of(pairs, labels)
    A = budgets.graph(1.2).toarray()
    assert (A == A.T).all() and not A.diagonal().any()
    members = {c: np.flatnonzero(labels == c) for c in range(3)}
    for (a, b), E in pairs.items():
        np.testing.assert_array_equal(A[np.ix_(members[a], members[b])], (E <= 1.2).astype(int))
    for c in range(3):
        assert not A[np.ix_(members[c], members[c])].any()


@pytest.mark.parametrize("pairs,labels,grid,match", [
    ({(0, 1): [[np.nan]]}, [0, 1], [1.0], "NaN"),
    ({(0, 1): [[1.0]]}, [0, 1], [-1.0], "not a finite non-negative"),
    ({(0, 1): [[1.0, 2.0]]}, [0, 1], [1.0], r"shape \(1, 2\), expected \(1, 1\)"),
    ({(0, 0): [[1.0]]}, [0, 1], [1.0], "must differ"),
    ({(0, 5): [[1.0]]}, [0, 1], [1.0], "class 5, which is not in labels"),
    ({(0, 1): [[1.0]], (1, 0): [[1.0]]}, [0, 1], [1.0], "twice"),
    ({(0, 1): [[1.0]]}, [0, 0], [1.0], "at least two classes"),
    ({(0, 1): [[1.0]]}, [0.5, 1.0], [1.0], "integer class labels"),
    ({0: [[1.0]]}, [0, 1], [1.0], "pairs of class labels"),
])
def test_multiclass_rejects_bad_input(pairs, labels, grid, match):
    with pytest.raises(FxverifyError, match=match):
        lower_bounds_multiclass(pairs, np.asarray(labels), grid)


# ---- hyperedges ----------------------------------------------------------------------------------------
def test_hypergraph_lp_without_triples_is_the_pairwise_bound():
    for labels, edges in GRAPHS[:20]:
        N = len(labels)
        certified, primal = loss01_lower_hypergraph(N, [np.array(edges).reshape(-1, 2)])
        exact = double_cover_matching(adjacency(N, edges)) / (2 * N)
        assert certified <= primal + 1e-12
        assert certified == pytest.approx(exact, abs=TOL) and primal == pytest.approx(exact, abs=TOL)


def test_hyperedges_only_tighten():
    """A triple sharing one perturbed point: q_u + q_v + q_w <= 1 lifts the triangle's 1/2 to 2/3,
    what a deterministic classifier gets; on random hypergraphs the bound never decreases."""
    certified, primal = loss01_lower_hypergraph(3, [np.array([[0, 1], [0, 2], [1, 2]]), np.array([[0, 1, 2]])])
    assert certified == pytest.approx(2 / 3, abs=TOL) and primal == pytest.approx(2 / 3, abs=TOL)
    rng = np.random.default_rng(9)
    for labels, edges in GRAPHS[:20]:
        N = len(labels)
        triangles = [t for t in itertools.combinations(range(N), 3) if len(set(labels[list(t)])) == 3
                     and all(p in edges for p in itertools.combinations(t, 2))]
        chosen = [t for t in triangles if rng.uniform() < 0.5]
        pairwise = loss01_lower_hypergraph(N, [np.array(edges).reshape(-1, 2)])[0]
        with_triples = loss01_lower_hypergraph(N, [np.array(edges).reshape(-1, 2), np.array(chosen).reshape(-1, 3)])
        assert with_triples[0] >= pairwise - 1e-9 and with_triples[0] <= with_triples[1] + 1e-12
        # brute force over deterministic classifiers satisfies every hyperedge: the LP is below it
        assert with_triples[1] <= 1 - brute_packing(N, edges, (0.0, 1.0)) / N + 1e-9


def test_ten_digits_input_cut_against_independent_solvers():
    """Embedded MNIST, 12 images of every digit, input-cut budgets ||u - v|| / 2: the 10-class
    bounds against HiGHS and Clarabel on the same graphs."""
    ds = load_embedded("mnist")
    X = np.concatenate([ds.X[np.flatnonzero(ds.y == c)[:12]] for c in range(10)]) / 255.0
    labels = np.repeat(np.arange(10), 12)
    B = np.sqrt(((X[:, None, :] - X[None, :, :]) ** 2).sum(-1)) / 2
    members = {c: np.flatnonzero(labels == c) for c in range(10)}
    pairs = {(a, b): B[np.ix_(members[a], members[b])] for a, b in itertools.combinations(range(10), 2)}
    recs = lower_bounds_multiclass(pairs, labels, [3.5, 4.0, 4.5])
    assert recs[-1].edges > 500 and recs[-1].loss01_lower > recs[0].loss01_lower
    for rec in recs:
        edges = [(int(i), int(j)) for i, j in zip(*np.nonzero(np.triu(B <= rec.eps, 1))) if labels[i] != labels[j]]
        assert rec.edges == len(edges)
        assert rec.loss01_lower == pytest.approx(1 - lp_packing(120, edges) / 120, abs=TOL)
        assert rec.ce_lower == pytest.approx(convex_ce(120, edges), abs=TOL)
        assert -1e-15 <= rec.ce_gap <= 1e-12
