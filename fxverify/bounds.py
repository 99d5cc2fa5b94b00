"""Loss lower bounds from the conflict graph.

The conflict graph at budget eps is bipartite: class-a points on one side, class-b points on
the other, an edge where a verified collision has eps_f(u, v) <= eps. With n = n_a + n_b points
weighted 1/n each:

* **0-1 loss** >= (size of a maximum matching) / n: each matched pair costs at least one error,
  and matched pairs are disjoint (Hopcroft-Karp from scipy).
* **cross-entropy** >= min (1/n) sum_v -log q_v  s.t.  0 <= q <= 1,  q_u + q_v <= 1 on edges.

The cross-entropy optimum is computed exactly. Substituting x_u = q_u for class a and
x_v = 1 - q_v for class b turns the constraints into x_u <= x_v along edges: an isotonic
problem with separable convex costs -log x (class a) and -log(1 - x) (class b). Its optimum is
constant on blocks; a block B with a points of class a and b of class b takes x = a / (a + b),
so q = a/(a+b) on its class-a points and b/(a+b) on its class-b points. The blocks are found
by recursive splitting: at the ratio theta = a / (a + b) of a vertex set W, a maximum-weight
closure (a minimum cut with integer capacities: b for each class-a vertex, a for each class-b
vertex) is the set of vertices whose optimal value exceeds theta; if it is empty, W is one
block, otherwise both parts are solved recursively. Components are solved separately.

**K classes** (:func:`lower_bounds_multiclass`): points of K classes, an edge between points of
different classes whose budget is <= eps. The graph is no longer bipartite; both programs are
solved exactly on its bipartite double cover (points v_L and v_R, edges u_L v_R and v_L u_R),
whose biadjacency is the graph's symmetric adjacency matrix:

* **0-1 loss** >= (fractional matching number) / N: the packing LP max sum q s.t.
  q_u + q_v <= 1, 0 <= q <= 1 has value N - (fractional vertex cover) = N - (fractional
  matching) by LP duality, and the fractional matching number is half a maximum matching of
  the double cover (half-integral LP). For a bipartite graph it is the matching number.
* **cross-entropy**: the program equals its copy on the double cover with the objective
  halved (a solution q gives (q, q); averaging the two copies of a cover solution is feasible
  and, -log being convex, no worse), which the bipartite algorithm above solves exactly. The
  max flows of its final blocks give edge multipliers whose dual value (:func:`ce_dual_value`)
  certifies the result independently of the algorithm.

Both bounds hold for any classifier whose output at a common feature point of two colliding
points is one distribution over the K classes (soft or randomised classifiers included).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import breadth_first_order, connected_components, maximum_bipartite_matching, maximum_flow

from .errors import FxverifyError


@dataclass(frozen=True)
class BoundRecord:
    """Lower bounds at one budget of the grid."""

    eps: float
    edges: int
    loss01_lower: float
    ce_lower: float


def conflict_graph(eps_matrix: np.ndarray, eps: float) -> sp.csr_matrix:
    """Biadjacency (n_a x n_b, 0/1) of the conflict graph at budget ``eps``."""
    return sp.csr_matrix(np.asarray(eps_matrix) <= eps, dtype=np.int32)


def max_matching(adj: sp.csr_matrix) -> int:
    if adj.nnz == 0:
        return 0
    match = maximum_bipartite_matching(adj.tocsr(), perm_type="column")
    return int(np.sum(match >= 0))


def _closure(adj: sp.csr_matrix, a_idx: np.ndarray, b_idx: np.ndarray, wa: int, wb: int,
             flows: bool = False):
    """Max-weight closure of the bipartite sub-graph on (a_idx, b_idx): choosing a class-a vertex
    gains ``wa`` and forces its neighbours, each costing ``wb``. Returns a boolean mask over
    a_idx + b_idx (the minimal optimal closure: reachable from the source after a max flow), and
    with ``flows`` also the positive flow on the sub-graph's edges as (rows of adj, columns of
    adj, integer flow)."""
    na, nb = len(a_idx), len(b_idx)
    sub = adj[a_idx][:, b_idx].tocoo()
    n = na + nb + 2
    s, t = na + nb, na + nb + 1
    inf = wa * na + 1  # larger than any cut made of finite edges
    rows = np.concatenate([np.full(na, s), sub.row, na + np.arange(nb)])
    cols = np.concatenate([np.arange(na), na + sub.col, np.full(nb, t)])
    caps = np.concatenate([np.full(na, wa), np.full(sub.nnz, inf), np.full(nb, wb)]).astype(np.int64)
    if caps.max(initial=0) >= 2**31:
        raise FxverifyError("conflict graph too large for the exact cross-entropy bound (capacity overflow)")
    G = sp.csr_matrix((caps.astype(np.int32), (rows, cols)), shape=(n, n))
    flow = maximum_flow(G, s, t, method="dinic").flow  # antisymmetric: f(v, u) = -f(u, v)
    residual = (G - flow).tocsr()  # c - f: forward capacity left, and f on the reverse edges
    residual.eliminate_zeros()
    reach = np.zeros(n, dtype=bool)
    reach[breadth_first_order(residual, s, directed=True, return_predecessors=False)] = True
    if not flows:
        return reach[: na + nb]
    F = flow.tocoo()
    on = (F.row < na) & (F.col >= na) & (F.col < na + nb) & (F.data > 0)
    return reach[: na + nb], (a_idx[F.row[on]], b_idx[F.col[on] - na], F.data[on].astype(np.int64))


def _members(labels: np.ndarray, count: int) -> list[np.ndarray]:
    """For each label 0..count-1 the ascending indices that carry it (np.flatnonzero(labels == c)
    for every c, in one sort)."""
    if count == 0:
        return []
    order = np.argsort(labels, kind="stable")
    return np.split(order, np.cumsum(np.bincount(labels, minlength=count))[:-1])


def ce_blocks(adj: sp.csr_matrix) -> list[tuple[np.ndarray, np.ndarray]]:
    """The blocks of the cross-entropy optimum: lists of (class-a indices, class-b indices)."""
    return _ce_solve(adj, duals=False)[0]


def _ce_solve(adj: sp.csr_matrix, duals: bool):
    """The blocks of the cross-entropy optimum and, with ``duals``, optimal edge multipliers.

    A block (p class-a, q class-b points, both > 0) is final when the closure test's max flow
    saturates every source edge (capacity q/g at each class-a point) and so every sink edge
    (p/g at each class-b point). Scaled by g (p + q) / (p q), that flow is a multiplier lambda
    >= 0 on the block's edges with sum_e lambda_e = 1 / q_v at every point v of the block: the
    KKT condition of the cross-entropy program (see :func:`ce_dual_value`). Returns (blocks, edges)
    with edges a list of (rows, columns, lambda) arrays, one per block (empty without ``duals``)."""
    adj = sp.csr_matrix(adj, dtype=np.int32)
    na, nb = adj.shape
    full = sp.bmat([[None, adj], [adj.T, None]], format="csr") if (na and nb) else sp.csr_matrix((na + nb,) * 2)
    ncomp, labels = connected_components(full, directed=False)
    blocks, edges = [], []
    work = list(zip(_members(labels[:na], ncomp), _members(labels[na:], ncomp)))
    while work:
        a_idx, b_idx = work.pop()
        p, q = len(a_idx), len(b_idx)
        if p == 0 or q == 0:
            blocks.append((a_idx, b_idx))
            continue
        g = math.gcd(p, q)
        if duals:
            mask, (fr, fc, f) = _closure(adj, a_idx, b_idx, q // g, p // g, flows=True)
        else:
            mask = _closure(adj, a_idx, b_idx, q // g, p // g)
        in_a, in_b = mask[:p], mask[p:]
        if not in_a.any() and not in_b.any() or (in_a.all() and in_b.all()):
            blocks.append((a_idx, b_idx))
            if duals:
                edges.append((fr, fc, f * (g * (p + q) / (p * q))))
            continue
        work.append((a_idx[in_a], b_idx[in_b]))
        work.append((a_idx[~in_a], b_idx[~in_b]))
    return blocks, edges


def _xlogx(k: int, total: int) -> float:
    return 0.0 if k == 0 else -k * math.log(k / total)


def ce_lower_bound(adj: sp.csr_matrix, n: int | None = None) -> float:
    """Exact minimum of (1/n) sum -log q over the cross-entropy polytope of the graph."""
    na, nb = adj.shape
    n = n if n is not None else na + nb
    if n == 0:
        return 0.0
    total = 0.0
    for a_idx, b_idx in ce_blocks(adj):
        p, q = len(a_idx), len(b_idx)
        total += _xlogx(p, p + q) + _xlogx(q, p + q)
    return total / n


def ce_optimal_q(adj: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """The optimal q for class-a and class-b points (for inspection and tests)."""
    na, nb = adj.shape
    qa, qb = np.ones(na), np.ones(nb)
    for a_idx, b_idx in ce_blocks(adj):
        p, q = len(a_idx), len(b_idx)
        if p and q:
            qa[a_idx] = p / (p + q)
            qb[b_idx] = q / (p + q)
    return qa, qb


def lower_bounds(eps, grid) -> list[BoundRecord]:
    """Bounds at every budget of ``grid`` from the n_a x n_b matrix ``eps`` of per-pair budgets
    (``inf`` where no verified collision exists). Uniform weight 1/n over n = n_a + n_b points."""
    from . import _checks

    E = _checks.real_array(eps, "eps").astype(np.float64)
    if E.ndim != 2:
        raise FxverifyError(f"eps must be an n_a x n_b matrix, got shape {E.shape}")
    if np.isnan(E).any():
        raise FxverifyError("eps contains NaN (use inf for pairs without a verified collision)")
    if E.size and E.min() < 0:
        raise FxverifyError(f"eps holds negative budgets (the smallest is {E.min():g}); a budget is a distance, "
                            f"at least 0 (inf where no verified collision)")
    grid = _checks.budget_grid(grid, "grid")
    n = E.shape[0] + E.shape[1]
    out = []
    for g in grid:
        adj = conflict_graph(E, g)
        out.append(BoundRecord(eps=g, edges=int(adj.nnz), loss01_lower=max_matching(adj) / n if n else 0.0,
                               ce_lower=ce_lower_bound(adj, n)))
    return out


# ---- K classes -------------------------------------------------------------------------------
#: Largest primal-dual gap of the cross-entropy bound (per point, absolute) that is accepted: the
#: optimum is computed exactly, so a larger gap is a defect, reported as an error.
CE_GAP_TOL = 1e-9


@dataclass(frozen=True)
class MulticlassBoundRecord:
    """Lower bounds at one budget of the grid, for points of any number of classes.

    ``loss01_lower`` and ``ce_lower`` are the exact optima of the pairwise programs (0-1: the
    fractional vertex packing LP; cross-entropy: the convex program). ``ce_dual`` is the value
    of an explicit dual-feasible point of the cross-entropy program: a lower bound on the
    optimum by weak duality that does not depend on the solver being right. ``ce_gap`` =
    ``ce_lower - ce_dual`` (rounding, ~1e-15; never above :data:`CE_GAP_TOL`)."""

    eps: float
    edges: int
    loss01_lower: float
    ce_lower: float
    ce_dual: float

    @property
    def ce_gap(self) -> float:
        return self.ce_lower - self.ce_dual


def _phi(d: np.ndarray) -> np.ndarray:
    """max over mu >= 0 of 1 + log(d + mu) - mu: d for d <= 1 (mu = 1 - d), else 1 + log d."""
    d = np.asarray(d, dtype=np.float64)
    return np.where(d <= 1.0, d, 1.0 + np.log(np.maximum(d, 1.0)))


def ce_dual_value(load: np.ndarray, lambda_sum: float, n: int | None = None) -> float:
    """The Lagrange dual of min (1/n) sum_v -log q_v s.t. q_u + q_v <= 1 on edges, q_v <= 1, at
    edge multipliers lambda >= 0, given through ``load`` (per point: the sum of lambda over its
    edges) and ``lambda_sum`` (the sum of lambda over the edges):

        (1/n) (sum_v phi(load_v) - lambda_sum),   phi(d) = d (d <= 1), 1 + log d (d >= 1),

    where the multiplier of q_v <= 1 is chosen optimally (max(0, 1 - load_v)). Every lambda >= 0
    gives a lower bound on the minimum (weak duality)."""
    load = np.asarray(load, dtype=np.float64)
    n = len(load) if n is None else n
    if n == 0:
        return 0.0
    return (math.fsum(_phi(load).tolist()) - lambda_sum) / n


def _loads(size: int, idx: np.ndarray, lam: np.ndarray) -> np.ndarray:
    return np.bincount(idx, weights=lam, minlength=size) if len(idx) else np.zeros(size)


def _ce_certified(adj: sp.csr_matrix):
    """sum over the optimum's blocks of -sum log q (in ce_lower_bound's order: the same float) and
    the multipliers of the final blocks as (row loads, column loads, sum of lambda)."""
    na, nb = adj.shape
    blocks, edges = _ce_solve(adj, duals=True)
    total = 0.0
    for a_idx, b_idx in blocks:
        p, q = len(a_idx), len(b_idx)
        total += _xlogx(p, p + q) + _xlogx(q, p + q)
    rows = np.concatenate([e[0] for e in edges]) if edges else np.zeros(0, dtype=np.int64)
    cols = np.concatenate([e[1] for e in edges]) if edges else np.zeros(0, dtype=np.int64)
    lam = np.concatenate([e[2] for e in edges]) if edges else np.zeros(0)
    return total, _loads(na, rows, lam), _loads(nb, cols, lam), math.fsum(lam.tolist())


def ce_lower_bound_certified(adj: sp.csr_matrix, n: int | None = None) -> tuple[float, float]:
    """:func:`ce_lower_bound` of the bipartite graph (the same number) and the dual value of the
    multipliers the max flows give (:func:`ce_dual_value`)."""
    na, nb = adj.shape
    n = n if n is not None else na + nb
    if n == 0:
        return 0.0, 0.0
    total, row_load, col_load, lambda_sum = _ce_certified(adj)
    return total / n, ce_dual_value(np.concatenate([row_load, col_load]), lambda_sum, n)


def _symmetric(adj: sp.spmatrix) -> sp.csr_matrix:
    """The 0/1 adjacency of the undirected graph with an edge where ``adj`` has an entry in
    either direction (the diagonal dropped: no point conflicts with itself)."""
    A = sp.csr_matrix(adj, dtype=np.int32)
    if A.shape[0] != A.shape[1]:
        raise FxverifyError(f"the adjacency matrix of a graph must be square, got shape {A.shape}")
    A = ((A + A.T) > 0).astype(np.int32).tocsr()
    A.setdiag(0)
    A.eliminate_zeros()
    return A


def double_cover_matching(adj: sp.spmatrix) -> int:
    """Size of a maximum matching of the bipartite double cover of the graph (vertices v_L and
    v_R, edges u_L v_R and v_L u_R for every edge uv): twice the fractional matching number. Its
    biadjacency is the graph's symmetric adjacency matrix."""
    return max_matching(_symmetric(adj))


def packing_optimal_q(adj: sp.spmatrix) -> np.ndarray:
    """An optimal point of max sum q s.t. q_u + q_v <= 1 on edges, 0 <= q <= 1 (half-integral).

    König's theorem on the double cover: from a maximum matching, the vertices Z reachable from
    unmatched left vertices by alternating paths give a minimum vertex cover (L \\ Z) + (R & Z);
    x_v = (|{v_L, v_R} & cover|) / 2 is a fractional vertex cover of the graph of value
    matching / 2, and q = 1 - x is feasible with sum q = N - matching / 2: the LP optimum, by
    duality with the fractional matching."""
    A = _symmetric(adj)
    N = A.shape[0]
    if A.nnz == 0:
        return np.ones(N)
    to_col = maximum_bipartite_matching(A, perm_type="column")  # left v -> matched right vertex
    to_row = np.full(N, -1)
    to_row[to_col[to_col >= 0]] = np.flatnonzero(to_col >= 0)
    zl, zr = to_col < 0, np.zeros(N, dtype=bool)
    frontier = zl.copy()
    while frontier.any():
        reach = (A.T @ frontier.astype(np.int32)) > 0  # right vertices next to the frontier
        new_r = reach & ~zr
        zr |= new_r
        nxt = np.zeros(N, dtype=bool)
        nxt[to_row[new_r]] = True  # every newly reached right vertex is matched (else: augmenting path)
        frontier = nxt & ~zl
        zl |= frontier
    x = ((~zl).astype(np.float64) + zr) / 2.0
    return 1.0 - x


def ce_general(adj: sp.spmatrix, n: int | None = None) -> tuple[float, float]:
    """Exact min (1/n) sum_v -log q_v s.t. q_u + q_v <= 1 on edges, 0 <= q <= 1, on any graph
    (given by its adjacency matrix), and the value of a dual certificate (:func:`ce_dual_value`).

    The program equals its relaxation on the bipartite double cover (points v_L, v_R; edges
    u_L v_R and v_L u_R; objective halved): a solution q gives (q, q), and averaging
    (q_L + q_R) / 2 of a cover solution is feasible and no worse (-log is convex). The double
    cover is solved exactly by the bipartite algorithm (:func:`ce_blocks`, on the symmetric
    adjacency as biadjacency); its optimal multipliers, averaged over the two copies of each
    edge, are dual feasible for the graph with a value at least the cover's (phi is concave)."""
    A = _symmetric(adj)
    N = A.shape[0]
    n = n if n is not None else N
    if n == 0:
        return 0.0, 0.0
    total, left_load, right_load, lambda_sum = _ce_certified(A)
    # lambda_uv = (lambda'(u_L, v_R) + lambda'(v_L, u_R)) / 2: each cover edge adds half of its
    # multiplier to the load of both of its ends
    return total / (2 * n), ce_dual_value((left_load + right_load) / 2.0, lambda_sum / 2.0, n)


def ce_optimal_q_general(adj: sp.spmatrix) -> np.ndarray:
    """The optimal q of :func:`ce_general` (unique: the objective is strictly convex)."""
    A = _symmetric(adj)
    q = np.ones(A.shape[0])
    for a_idx, b_idx in ce_blocks(A):
        p, r = len(a_idx), len(b_idx)
        if p and r:
            q[a_idx] = p / (p + r)  # the left copies; the right copies carry the same values
    return q


def _check_grid(grid) -> list[float]:
    out = []
    for g in grid:
        g = float(g)
        if not (g >= 0 and math.isfinite(g)):
            raise FxverifyError(f"budget {g!r} in the grid is not a finite non-negative number")
        out.append(g)
    return out


@dataclass(frozen=True, eq=False)
class ClassPairBudgets:
    """Per-pair budgets of N points of K classes: the finite budgets up to ``cap`` as an edge
    list sorted by budget (points numbered by their position in ``labels``)."""

    labels: np.ndarray = field(repr=False)
    classes: tuple[int, ...]
    u: np.ndarray = field(repr=False)
    v: np.ndarray = field(repr=False)
    eps: np.ndarray = field(repr=False)
    #: the two-class matrix (as given) when K = 2, for the bipartite path
    pair: tuple[tuple[int, int], np.ndarray] | None = field(default=None, repr=False)

    @property
    def n(self) -> int:
        return len(self.labels)

    def graph(self, eps: float) -> sp.csr_matrix:
        """Symmetric N x N adjacency of the conflict graph at budget ``eps`` (eps <= cap)."""
        k = int(np.searchsorted(self.eps, eps, side="right"))
        u, v = self.u[:k], self.v[:k]
        N = self.n
        return sp.csr_matrix((np.ones(2 * k, dtype=np.int32), (np.concatenate([u, v]), np.concatenate([v, u]))),
                             shape=(N, N))

    @classmethod
    def of(cls, eps_pairs, labels, cap: float = math.inf) -> "ClassPairBudgets":
        """From ``eps_pairs``: a mapping (class a, class b) -> n_a x n_b matrix of budgets (``inf``
        where no verified collision), row i for the i-th point of class a in ``labels``, column j
        for the j-th point of class b. Each unordered pair of classes at most once; a pair that
        is absent has no edges. Budgets above ``cap`` are dropped."""
        labels = np.asarray(labels)
        if labels.ndim != 1 or not (np.issubdtype(labels.dtype, np.integer) or labels.size == 0):
            raise FxverifyError(f"labels must be a 1-D array of integer class labels, got {labels.dtype} "
                                f"of shape {labels.shape}")
        labels = labels.astype(np.int64)
        classes = tuple(int(c) for c in np.unique(labels))
        if len(classes) < 2:
            raise FxverifyError(f"labels must hold at least two classes, got {list(classes)}")
        members = {c: np.flatnonzero(labels == c) for c in classes}
        seen: set[frozenset] = set()
        us, vs, es, pair = [], [], [], None
        for key, E in dict(eps_pairs).items():
            try:
                a, b = (int(k) for k in key)
            except (TypeError, ValueError):
                raise FxverifyError(f"eps_pairs keys must be pairs of class labels, got {key!r}") from None
            for c in (a, b):
                if c not in members:
                    raise FxverifyError(f"eps_pairs has class {c}, which is not in labels (classes "
                                        f"{', '.join(map(str, classes))})")
            if a == b:
                raise FxverifyError(f"eps_pairs key {key!r}: the two classes must differ")
            if frozenset((a, b)) in seen:
                raise FxverifyError(f"eps_pairs gives the classes {a} and {b} twice")
            seen.add(frozenset((a, b)))
            E = np.asarray(E, dtype=np.float64)
            want = (len(members[a]), len(members[b]))
            if E.shape != want:
                raise FxverifyError(f"eps_pairs[({a}, {b})] has shape {E.shape}, expected {want} (points of "
                                    f"class {a} by points of class {b})")
            if np.isnan(E).any():
                raise FxverifyError(f"eps_pairs[({a}, {b})] contains NaN (use inf for pairs without a "
                                    f"verified collision)")
            if len(classes) == 2:
                pair = ((a, b), E)
            i, j = np.nonzero(E <= cap)
            us.append(members[a][i])
            vs.append(members[b][j])
            es.append(E[i, j])
        u = np.concatenate(us) if us else np.zeros(0, dtype=np.int64)
        v = np.concatenate(vs) if vs else np.zeros(0, dtype=np.int64)
        e = np.concatenate(es) if es else np.zeros(0)
        order = np.argsort(e, kind="stable")
        return cls(labels=labels, classes=classes, u=u[order], v=v[order], eps=e[order], pair=pair)


def lower_bounds_multiclass(eps_pairs, labels, grid) -> list[MulticlassBoundRecord]:
    """Bounds at every budget of ``grid`` for points of K >= 2 classes, uniform weight 1/N.

    ``labels``: the class of each of the N points; ``eps_pairs``: a mapping (class a, class b)
    -> n_a x n_b matrix of per-pair budgets (``inf`` where no verified collision exists; a pair
    of classes that is absent has none), as :meth:`ClassPairBudgets.of`. The conflict graph at
    eps joins points of different classes whose budget is <= eps.

    * 0-1: 1 - max{sum q : q_u + q_v <= 1 on edges, 0 <= q <= 1} / N = (fractional matching
      number) / N, the maximum matching of the bipartite double cover / 2N (exact, integer).
    * cross-entropy: min (1/N) sum -log q_v under the same constraints (exact, via the double
      cover), with a dual certificate ``ce_dual``.

    For K = 2 the graph is bipartite and both numbers are those of :func:`lower_bounds` on the
    one matrix, bit for bit (the same code runs)."""
    grid = _check_grid(grid)
    budgets = ClassPairBudgets.of(eps_pairs, labels, cap=max(grid, default=0.0))
    N = budgets.n
    out = []
    for g in grid:
        if len(budgets.classes) == 2:
            if budgets.pair is None:
                adj = sp.csr_matrix(tuple(int(np.sum(budgets.labels == c)) for c in budgets.classes), dtype=np.int32)
            else:
                adj = conflict_graph(budgets.pair[1], g)
            edges, loss01 = int(adj.nnz), max_matching(adj) / N
            ce, dual = ce_lower_bound_certified(adj, N)
        else:
            A = budgets.graph(g)
            edges, loss01 = A.nnz // 2, double_cover_matching(A) / (2 * N)
            ce, dual = ce_general(A, N)
        if not ce - dual <= CE_GAP_TOL:
            raise FxverifyError(f"internal error: the cross-entropy bound at eps {g:g} ({ce!r}) is not certified "
                                f"by its dual ({dual!r}); please report it")
        out.append(MulticlassBoundRecord(eps=g, edges=edges, loss01_lower=loss01, ce_lower=ce, ce_dual=dual))
    return out


# ---- hyperedges (optional, general LP) ----------------------------------------------------------
def loss01_lower_hypergraph(n: int, hyperedges) -> tuple[float, float]:
    """0-1 bound with hyperedges: 1 - max{sum q : sum_{v in e} q_v <= 1 for every hyperedge e,
    0 <= q <= 1} / n, by a general LP (HiGHS). Three points of three classes that share one
    perturbed point form a hyperedge of degree 3; pairs are hyperedges of degree 2.

    ``hyperedges``: integer arrays of shape (k, d), one row per hyperedge of degree d. Returns
    (certified, primal): ``primal`` from HiGHS's solution, ``certified`` from its duals y >= 0
    through weak duality, max <= sum y + sum_v max(0, 1 - sum_{e ∋ v} y_e), which holds for any
    y >= 0 and so is a valid bound whatever the solver's tolerances (certified <= primal)."""
    from scipy.optimize import linprog

    arrays = [np.asarray(h, dtype=np.int64).reshape(len(h), -1) for h in hyperedges if len(h)]
    if n == 0 or not arrays:
        return 0.0, 0.0
    rows = np.concatenate([np.repeat(np.arange(len(h)), h.shape[1]) + off
                           for h, off in zip(arrays, np.cumsum([0] + [len(h) for h in arrays[:-1]]))])
    cols = np.concatenate([h.ravel() for h in arrays])
    m = sum(len(h) for h in arrays)
    M = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(m, n))
    r = linprog(-np.ones(n), A_ub=M, b_ub=np.ones(m), bounds=(0, 1), method="highs")
    if r.status != 0:
        raise FxverifyError(f"the hypergraph LP was not solved: {r.message}")
    y = np.maximum(-r.ineqlin.marginals, 0.0)
    upper = math.fsum(y.tolist()) + math.fsum(np.maximum(0.0, 1.0 - M.T @ y).tolist())
    return 1.0 - upper / n, 1.0 + r.fun / n
