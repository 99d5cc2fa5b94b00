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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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


def _closure(adj: sp.csr_matrix, a_idx: np.ndarray, b_idx: np.ndarray, wa: int, wb: int) -> np.ndarray:
    """Max-weight closure of the bipartite sub-graph on (a_idx, b_idx): choosing a class-a vertex
    gains ``wa`` and forces its neighbours, each costing ``wb``. Returns a boolean mask over
    a_idx + b_idx (the minimal optimal closure: reachable from the source after a max flow)."""
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
    return reach[: na + nb]


def ce_blocks(adj: sp.csr_matrix) -> list[tuple[np.ndarray, np.ndarray]]:
    """The blocks of the cross-entropy optimum: lists of (class-a indices, class-b indices)."""
    adj = sp.csr_matrix(adj, dtype=np.int32)
    na, nb = adj.shape
    full = sp.bmat([[None, adj], [adj.T, None]], format="csr") if (na and nb) else sp.csr_matrix((na + nb,) * 2)
    ncomp, labels = connected_components(full, directed=False)
    blocks = []
    work = [(np.flatnonzero(labels[:na] == c), np.flatnonzero(labels[na:] == c)) for c in range(ncomp)]
    while work:
        a_idx, b_idx = work.pop()
        p, q = len(a_idx), len(b_idx)
        if p == 0 or q == 0:
            blocks.append((a_idx, b_idx))
            continue
        g = math.gcd(p, q)
        mask = _closure(adj, a_idx, b_idx, q // g, p // g)
        in_a, in_b = mask[:p], mask[p:]
        if not in_a.any() and not in_b.any() or (in_a.all() and in_b.all()):
            blocks.append((a_idx, b_idx))
            continue
        work.append((a_idx[in_a], b_idx[in_b]))
        work.append((a_idx[~in_a], b_idx[~in_b]))
    return blocks


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
