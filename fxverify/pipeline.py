"""Per-(pair, cut) collision budgets for every cross-class pair at every requested cut.

Data flows one way: resolved configuration -> a :class:`RunPlan` (which cuts have a closed
form, which are computed pair by pair, what determines what) -> tasks -> per-(pair, cut)
results in the store -> :class:`~fxverify.results.Distances` (what the bounds use).

``compute_distances`` fills the result store of a run directory and returns, per cut, the
n_a x n_b matrix of verified budgets (``inf`` where no verified collision exists):

* **closed-form cuts** (the input, affine cuts under l2 without a domain): every pair at once;
  every edge (every pair at most the grid's largest budget apart; every pair without a grid)
  has its collision constructed and verified, in batches, like any other collision;
* **paired cuts**: one task per (pair, cut), stored as soon as it is found. A cut of a pair is
  ready once the pair's results at the paired cuts that determine it are stored (its descent
  starts from, and keeps, their collisions, read back exactly from their witnesses), so a
  slow deep cut never holds back the shallower cuts of other pairs: ready tasks go shallow
  cuts first (with ``witnesses=False`` pair by pair, since those collisions are then only
  kept in memory until the pair's deeper cuts have started).

Results never depend on timing or on the order tasks finish in: a cut whose computation the
deadline interrupts is abandoned (not stored; a resumed run computes it, from the same stored
starts), every executor computes with one BLAS thread, and the optional pair selection decides
each block of pairs from the results of the blocks before it only.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ._version import __version__
from .collision import Collider, _reachable
from .collision.affine import all_pairs_eps, closed_form, row_space
from .collision.verify import Verdicts
from .config import ORDERS
from .data import Points
from .errors import FxverifyError
from .executors import PairTask, RunJob, TaskResult, make_executor
from .ir import Network
from .results import CollisionStatus, CutDistances, Distances, Failure, PairRow
from .store import ResultStore, RunSettings, StoreError

Progress = Callable[[str, int, int], None]

#: closed-form collisions constructed and verified per batch
VERIFY_BATCH = 2048


@dataclass(frozen=True)
class RunPlan:
    """What a run computes. ``needs[c]``: the paired cuts of the run that determine the paired
    cut ``c`` (its descent starts from their collisions, so they are computed first)."""

    cuts: tuple[str, ...]
    closed: tuple[str, ...]
    paired: tuple[str, ...]
    needs: dict[str, tuple[str, ...]]
    n_a: int
    n_b: int
    dim: int  # the input dimension (of the witnesses)

    @staticmethod
    def of(collider: Collider, cuts, n_a: int, n_b: int) -> RunPlan:
        net = collider.net
        cuts = tuple(c for c in net.cuts if c in cuts)
        closed = tuple(c for c in cuts if closed_form(collider.plan(c)))
        paired = tuple(c for c in cuts if c not in closed)
        needs = {c: tuple(d for d in net.dominators(c)[:-1] if d in paired) for c in paired}
        return RunPlan(cuts, closed, paired, needs, n_a, n_b, net.input_dim)


# ---- ordering ---------------------------------------------------------------------------------
def promise_order(eps: np.ndarray, pairs=None) -> list[tuple[int, int]]:
    """Pairs in the order a budget-limited run should compute them: most promising first.

    ``eps`` is an n_a x n_b matrix of upper bounds on every pair's budget at the descent cuts
    (a shallower cut's closed form). A pair's rank is the smaller of its rank among the
    partners of a_i and among the partners of b_j (0: a nearest cross-class neighbour of one
    of its points), ties broken by ``eps`` and then by (i, j); so every point gets its nearest
    partners computed before any point gets its far ones, which is what the matching and
    cross-entropy bounds need first. ``pairs`` (default: all) is the subset to order. The order
    changes what a time budget covers, never a pair's result."""
    eps = np.asarray(eps, dtype=float)
    n_a, n_b = eps.shape
    key = np.where(np.isnan(eps), np.inf, eps)
    row_rank = np.empty(key.shape, dtype=np.int64)
    col_rank = np.empty(key.shape, dtype=np.int64)
    ar_b, ar_a = np.arange(n_b), np.arange(n_a)
    for i in range(n_a):
        row_rank[i, np.argsort(key[i], kind="stable")] = ar_b
    for j in range(n_b):
        col_rank[np.argsort(key[:, j], kind="stable"), j] = ar_a
    rank = np.minimum(row_rank, col_rank)
    if pairs is None:
        ii, jj = np.divmod(np.arange(n_a * n_b), n_b)
    else:
        pairs = np.asarray(list(pairs), dtype=np.int64).reshape(-1, 2)
        ii, jj = pairs[:, 0], pairs[:, 1]
    order = np.lexsort((jj, ii, key[ii, jj], rank[ii, jj]))
    return [(int(ii[k]), int(jj[k])) for k in order]


def promise_order_multiclass(eps: np.ndarray, labels: np.ndarray) -> list[tuple[int, int]]:
    """:func:`promise_order` for K-class points (global indices, ``labels[i]`` the class
    position of point i): the pairs (i, j) with labels[i] < labels[j], a pair's rank the smaller
    of its rank among all cross-class partners of i and of j (whichever class they are in),
    ties broken by ``eps`` and then by (i, j). ``eps``: N x N, read at the pairs only."""
    eps = np.asarray(eps, dtype=float)
    pair = labels[:, None] < labels[None, :]
    key = np.where(np.isnan(eps), np.inf, eps)
    sym = np.where(pair, key, key.T)  # both orientations of every pair
    partners = labels[:, None] != labels[None, :]
    sortkey = np.where(partners, sym, np.inf)
    rank = np.empty(sym.shape, dtype=np.int64)
    ar = np.arange(len(labels))
    for i in range(len(labels)):
        rank[i, np.lexsort((~partners[i], sortkey[i]))] = ar  # partners first, by eps, stable
    ii, jj = np.nonzero(pair)
    r = np.minimum(rank[ii, jj], rank[jj, ii])
    order = np.lexsort((jj, ii, key[ii, jj], r))
    return [(int(ii[k]), int(jj[k])) for k in order]


def pair_order(points: Points, eps: np.ndarray | None, order: str) -> list[tuple[int, int]]:
    """The run's pairs in ``order`` ("promise": by the closed-form budgets ``eps``; "file":
    row by row)."""
    if order == "promise":
        return promise_order_multiclass(eps, points.labels) if points.multiclass else promise_order(eps)
    ii, jj = np.nonzero(points.pair_mask())
    return list(zip(ii.tolist(), jj.tolist()))


def all_pairs_budgets(collider: Collider, cut: str, points: Points) -> np.ndarray:
    """The closed-form budgets of every pair at ``cut``: n_a x n_b; K classes: N x N, computed
    per pair of classes (each block exactly as a two-class run computes it), inf off the pairs."""
    plan = collider.plan(cut)
    if not points.multiclass:
        return all_pairs_eps(plan, points.X_a, points.X_b)
    eps = np.full((len(points.X_a), len(points.X_b)), np.inf)
    members = points.class_members()
    for a, ma in enumerate(members):
        for mb in members[a + 1:]:
            eps[np.ix_(ma, mb)] = all_pairs_eps(plan, points.X_a[ma], points.X_b[mb])
    return eps


def promise_cut(collider: Collider, cut: str) -> str:
    """The deepest cut with a closed form that determines ``cut`` (its budgets bound ``cut``'s)."""
    shallow = [c for c in collider.net.dominators(cut)[:-1] if closed_form(collider.plan(c))]
    return shallow[-1] if shallow else "input"


def _closed_form_budgets(collider: Collider, points: Points, cut: str,
                         store: ResultStore | None) -> tuple[np.ndarray, bool]:
    """The closed-form budgets at ``cut`` and whether they are the run's verified ones (from
    ``store``; else computed here, unverified)."""
    stored = store.matrix(cut, (len(points.X_a), len(points.X_b))) if store is not None else None
    if stored is not None:
        return stored[0], True
    return all_pairs_budgets(collider, cut, points), False


def promise_budgets(collider: Collider, points: Points, first_paired: str,
                    store: ResultStore | None = None) -> np.ndarray:
    """Upper bounds on every pair's budget at the paired cut ``first_paired``, to order pairs
    by: the closed form at :func:`promise_cut` (from ``store`` when the run computed it there)."""
    return _closed_form_budgets(collider, points, promise_cut(collider, first_paired), store)[0]


# ---- closed-form cuts ---------------------------------------------------------------------------
def _closed_collisions(collider: Collider, cut: str, U: np.ndarray, V: np.ndarray):
    """The closed-form collisions of the pairs (U[k], V[k]): the midpoint at the input cut,
    (u + d/2, v - d/2) with d the row-space part of v - u at an affine cut; each point moved to
    where its difference from its pair's point reproduces it exactly (as in the descent's)."""
    plan = collider.plan(cut)
    if plan.kind == "identity":
        Ua = Va = (U + V) / 2.0
    else:
        B = row_space(plan).V
        D = ((V - U) @ B) @ B.T / 2.0
        Ua, Va = U + D, V - D
    return _reachable(U, Ua), _reachable(V, Va)



def _verify_closed(collider: Collider, points: Points, cut: str, eps: np.ndarray, limit: float | None,
                   witnesses: list | None) -> tuple[np.ndarray, int, int]:
    """``eps`` with every pair whose collision fails verification set to inf; only the pairs
    with eps <= ``limit`` (every pair when None) are edges anywhere, so only those are checked.
    Their witnesses are appended to ``witnesses`` (when not None). Returns (eps, checked, failed)."""
    eps = eps.copy()
    ii, jj = np.nonzero(np.isfinite(eps) if limit is None else eps <= limit)
    failed = 0
    for k in range(0, ii.size, VERIFY_BATCH):
        bi, bj = ii[k:k + VERIFY_BATCH], jj[k:k + VERIFY_BATCH]
        U, V = points.X_a[bi], points.X_b[bj]
        Ua, Va = _closed_collisions(collider, cut, U, V)
        verdicts: Verdicts = collider.verifier.check_many(cut, U, V, Ua, Va)
        bad = ~verdicts.ok
        eps[bi[bad], bj[bad]] = np.inf
        failed += int(bad.sum())
        if witnesses is not None:
            witnesses.extend((cut, int(i), int(j), Ua[n] - U[n], Va[n] - V[n])
                             for n, (i, j) in enumerate(zip(bi, bj)) if verdicts.ok[n])
    return eps, int(ii.size), failed


def _closed_form(collider: Collider, points: Points, cut: str, store: ResultStore, limit: float | None,
                 witnesses: bool) -> None:
    t0 = time.perf_counter()
    eps = all_pairs_budgets(collider, cut, points)
    kept: list | None = [] if witnesses else None
    eps, checked, failed = _verify_closed(collider, points, cut, eps, limit, kept)
    scope = "every pair" if limit is None else f"every pair with eps <= {limit:g}"
    message = f"closed form; {scope} ({checked}) constructed and verified in the IR and onnxruntime" + \
        (f"; {failed} failed verification (no edge)" if failed else "")
    store.add_witnesses(kept or [])
    store.add_matrix(cut, eps, "closed_form", time.perf_counter() - t0, message)


# ---- pair selection (optional) --------------------------------------------------------------------
class PairSelector:
    """Bound-driven pair selection (``select_pairs``, off by default): which pairs a grid-limited
    run still needs to compute.

    A pair's budget at a cut matters only at grid values where the bounds are not yet at their
    largest possible values (*saturated*: a matching covering the smaller class, and the
    cross-entropy optimum of the complete graph). Pairs are decided in blocks of the promise
    order (:attr:`first_block` pairs, then :attr:`block`), each block from the results of the
    blocks before it only (all finished first), so the decisions never depend on timing, on
    ``--jobs`` or on a resume. From those results and every pair's closed-form budget at the cut
    that determines a paired cut, the largest unsaturated grid value g* per cut follows; a pair
    is skipped at a cut when even the smallest ratio of descent budget to closed-form budget seen
    would leave it above g*. Skipping is sound (any subset of the edges gives valid bounds); how
    much it loosens the bounds is measured against exhaustive runs."""

    first_block: int = 200
    block: int = 1000

    def __init__(self, grid, upper: dict[str, np.ndarray], counted: set[str] | None = None) -> None:
        """``upper``: per paired cut, the closed-form budgets of the cut that determines it
        (upper bounds there); ``counted``: the paired cuts whose bounds take those closed-form
        edges (their closed-form cut is computed in the run; default all)."""
        from .bounds import lower_bounds

        self.grid = tuple(sorted(float(g) for g in grid))
        self.cuts = tuple(upper)
        self.upper = {c: np.asarray(m, dtype=float) for c, m in upper.items()}
        n_a, n_b = next(iter(self.upper.values())).shape
        top = lower_bounds(np.zeros((n_a, n_b)), [max(self.grid)])[0]
        self._max01, self._maxce = top.loss01_lower, top.ce_lower
        self.counted = set(self.cuts) if counted is None else set(counted)
        self.g_star: dict[str, float | None] = {c: max(self.grid) for c in self.cuts}
        self.ratio_min = {c: np.inf for c in self.cuts}
        self.observed = 0

    def blocks(self, n: int):
        """(start, end) of each block of the promise order over ``n`` pairs."""
        start, end = 0, min(n, self.first_block)
        while start < n:
            yield start, end
            start, end = end, min(n, end + self.block)

    def decide(self, found: dict[str, list[tuple[int, int, float]]], n_observed: int) -> None:
        """Set the rule from the found results (cut -> (i, j, eps)) of ``n_observed`` pairs."""
        from .bounds import lower_bounds

        self.observed = n_observed
        for c in self.cuts:
            known = self.upper[c].copy() if c in self.counted else np.full_like(self.upper[c], np.inf)
            ratio = np.inf
            for i, j, e in found.get(c, ()):
                known[i, j] = min(known[i, j], e)
                u = self.upper[c][i, j]
                if u > 0 and math.isfinite(u):
                    ratio = min(ratio, e / u)
            self.ratio_min[c] = ratio
            recs = lower_bounds(known, self.grid)
            open_ = [r.eps for r in recs if r.eps > 0 and not (r.loss01_lower >= self._max01 - 1e-12
                                                               and r.ce_lower >= self._maxce - 1e-9)]
            self.g_star[c] = max(open_) if open_ else None

    def wanted(self, i: int, j: int) -> tuple[str, ...]:
        """The cuts at which the pair may still change a bound (all until enough are observed)."""
        if self.observed < self.first_block:
            return self.cuts
        return tuple(c for c in self.cuts if self.g_star[c] is not None
                     and self.ratio_min[c] * self.upper[c][i, j] <= self.g_star[c])


def _skip_row(cut: str, i: int, j: int, engine) -> PairRow:
    return PairRow(cut, i, j, math.inf, CollisionStatus.SKIPPED.value, engine.method, engine.name, 0.0, math.nan,
                   math.nan, 0, "skipped: by the run's pair selection it cannot change a bound")


# ---- the tasks of the paired cuts -----------------------------------------------------------------
class TaskSource:
    """Hands out the (pair, cut) tasks of a run as they become ready, in a fixed priority order.

    A cut of a pair is ready once the pair's results at every paired cut that determines it
    are stored (or came back in this run). Ready tasks go by (cut depth, promise rank) when the
    witnesses are stored (shallow cuts of every pair first; a deeper task reads its starts back
    from the store), else by (promise rank, cut depth) (a pair's collisions are kept in memory
    only until its last task has started). A determining result without its witness is
    computed again in the task (identically). The consumer calls :meth:`complete` with every
    row that comes back, and stores :meth:`take_rows` (the pair selection's skipped rows)."""

    def __init__(self, plan: RunPlan, order: list[tuple[int, int]], store: ResultStore, engine, witnesses: bool,
                 selector: PairSelector | None = None) -> None:
        self.plan, self.store, self.engine, self.witnesses = plan, store, engine, witnesses
        self.order = order
        self.rank = {p: k for k, p in enumerate(order)}
        self.level = {c: k for k, c in enumerate(plan.paired)}
        self.rows: dict[tuple[int, int], dict[str, PairRow]] = {}  # results of this run and stored ones
        for c in plan.paired:
            for r in store.pair_rows(c, (plan.n_a, plan.n_b)):
                self.rows.setdefault((r.i, r.j), {})[c] = r
        self.memory: dict[tuple[int, int], dict[str, PairRow]] = {}  # witnesses kept when not stored
        self.heap: list = []
        self.queued: set[tuple[int, int, str]] = set()
        self.in_flight: dict[tuple[int, int], int] = {}
        self.abandoned: set[tuple[int, int, str]] = set()  # timed out: computed by a resumed run
        self.skips: list[PairRow] = []
        self.selector = selector
        self.blocks = list(selector.blocks(len(order))) if selector is not None else [(0, len(order))]
        self.opened = 0  # pairs [0, opened) of the order are open
        self._next_block = 0
        self.total = len(order) * len(plan.paired)

    @property
    def done(self) -> int:
        return sum(len(v) for v in self.rows.values())

    def _key(self, p, c):
        r, lv = self.rank[p], self.level[c]
        return (lv, r) if self.witnesses else (r, lv)

    def _push_ready(self, p: tuple[int, int]) -> None:
        have = self.rows.get(p, {})
        for c in self.plan.paired:
            if c not in have and (*p, c) not in self.queued and (*p, c) not in self.abandoned \
                    and all(d in have for d in self.plan.needs[c]):
                self.queued.add((*p, c))
                heapq.heappush(self.heap, (self._key(p, c), p, c))

    def _open_block(self) -> bool:
        """Open the next block of pairs (with the selection, only once every earlier one is
        finished: its decisions read their results). False when none is left."""
        if self._next_block >= len(self.blocks):
            return False
        start, end = self.blocks[self._next_block]
        self._next_block += 1
        if self.selector is not None:
            self._decide(start, end)
        self.opened = end
        for p in self.order[start:end]:
            self._push_ready(p)
        return True

    def _decide(self, start: int, end: int) -> None:
        found: dict[str, list] = {}
        for p in self.order[:start]:
            for c, r in self.rows.get(p, {}).items():
                if r.found:
                    found.setdefault(c, []).append((p[0], p[1], r.eps))
        self.selector.decide(found, start)
        for p in self.order[start:end]:
            want = set(self.selector.wanted(*p))
            want |= {d for c in want for d in self.plan.needs[c]}
            have = self.rows.setdefault(p, {})
            for c in self.plan.paired:
                if c not in want and c not in have:
                    have[c] = _skip_row(c, *p, self.engine)
                    self.skips.append(have[c])

    def take_rows(self) -> list[PairRow]:
        rows, self.skips = self.skips, []
        return rows

    def next_task(self) -> PairTask | None:
        while not self.heap:
            if self.in_flight or not self._open_block():
                return None
        _, p, c = heapq.heappop(self.heap)
        self.queued.discard((*p, c))
        self.in_flight[p] = self.in_flight.get(p, 0) + 1
        return self._task(p, c)

    def _task(self, p: tuple[int, int], c: str) -> PairTask:
        have = self.rows.get(p, {})
        cuts, known = [], []
        stored = {r.cut: r for r in self.store.pair_rows_of(p[0], p[1], self.plan.needs[c], self.plan.dim)} \
            if self.witnesses and self.plan.needs[c] else {}
        for d in self.plan.needs[c]:
            r = self.memory.get(p, {}).get(d) or stored.get(d) or have[d]
            if r.found and not r.has_witness:
                cuts.append(d)  # its collision is a start: computed again, identically
            else:
                known.append(r)
        return PairTask(p[0], p[1], tuple(cuts) + (c,), tuple(known))

    def complete(self, result: TaskResult) -> list[PairRow]:
        """Record the rows of a finished task; returns the new ones (to store)."""
        new = []
        p = (result.task.i, result.task.j)
        returned = {r.cut for r in result.rows}
        self.abandoned.update((*p, c) for c in result.task.cuts if c not in returned)
        for r in result.rows:
            have = self.rows.setdefault((r.i, r.j), {})
            if r.cut not in have:
                have[r.cut] = r.without_witness()
                new.append(r)
            if not self.witnesses and r.found and r.has_witness:
                self.memory.setdefault((r.i, r.j), {})[r.cut] = r
        self.in_flight[p] = self.in_flight.get(p, 1) - 1
        if self.in_flight[p] <= 0:
            del self.in_flight[p]
        self._push_ready(p)
        if p in self.memory and len(self.rows.get(p, ())) == len(self.plan.paired) and p not in self.in_flight:
            del self.memory[p]  # every cut of the pair is done: its collisions are no start any more
        return new


def _run_tasks(source: TaskSource, executor, job: RunJob, store: ResultStore, deadline: float | None,
               witnesses: bool, progress: Progress | None) -> None:
    """Run the source's tasks on ``executor``, storing every result as it comes back."""
    if progress:
        progress("descent", source.done, source.total)
    running = executor.run(job, source, **({} if deadline is None else {"deadline": deadline}))
    try:
        for result in running:
            new = source.complete(result)
            store.add_pairs(source.take_rows() + new, witnesses=witnesses)
            if witnesses:  # a recomputed start whose stored row had no witness gets it now
                again = [r for r in result.rows if r.found and r.has_witness and r not in new]
                store.add_witnesses([(r.cut, r.i, r.j, r.delta_u, r.delta_v) for r in again])
            if progress:
                progress("descent", source.done, source.total)
    finally:
        close = getattr(running, "close", None)  # a generator: stops the workers now
        if close is not None:                    # (also on an error or an interrupt)
            close()
    store.add_pairs(source.take_rows())


def _paired(ctx: _Context, store: ResultStore, executor, deadline: float | None, progress, witnesses: bool,
            select_pairs: bool) -> None:
    plan, collider, points = ctx.plan, ctx.collider, ctx.points
    pcut = {c: promise_cut(collider, c) for c in plan.paired}
    budgets = {pc: _closed_form_budgets(collider, points, pc, store) for pc in dict.fromkeys(pcut.values())}
    order = pair_order(points, budgets[pcut[plan.paired[0]]][0], ctx.order)
    selector = None
    if select_pairs and ctx.grid is not None:
        # a paired cut's bounds take the closed-form edges of its promise cut only when the run
        # computed that cut and its budgets were verified
        selector = PairSelector(ctx.grid, {c: budgets[pcut[c]][0] for c in plan.paired},
                                counted={c for c in plan.paired if pcut[c] in plan.cuts and budgets[pcut[c]][1]})
    source = TaskSource(plan, order, store, ctx.engine, witnesses, selector)
    if source.done == source.total:
        return
    if executor is None:
        executor = make_executor("local")
    job = RunJob(collider.net, ctx.engine, points.X_a, points.X_b, ctx.grid, plans=collider.plans)
    _run_tasks(source, executor, job, store, deadline, witnesses, progress)


@dataclass(frozen=True)
class _Context:
    plan: RunPlan
    collider: Collider
    points: Points
    engine: object
    grid: tuple[float, ...] | None
    order: str


def run_settings(net: Network, points: Points, engine, normalize=None, grid=None,
                 select_pairs: bool = False) -> RunSettings:
    """What the run's stored results depend on (the store's fingerprint); a K-class run's
    settings name its classes (its pairs are keyed by global point index)."""
    labels = (points.classes, points.labels) if points.multiclass else None
    return RunSettings.of(net.source.sha256, points.X_a, points.X_b, engine.describe(), normalize, grid, select_pairs,
                          labels)


def compute_distances(net: Network, points: Points, cuts: tuple[str, ...], engine, out_dir, *,
                      progress: Progress | None = None, time_budget: float | None = None,
                      deadline: float | None = None, info: dict | None = None, executor=None,
                      order: str = "promise", normalize=None, grid=None, bounds_grid=None,
                      witnesses: bool = True, select_pairs: bool = False) -> Distances:
    """Compute (or resume) the budgets of all pairs at ``cuts`` into the store in ``out_dir``.

    ``engine``: the resolved collision method (:func:`fxverify.config.resolve_engine`);
    ``grid``: the budgets a descent may stop at (it stops when its next steps cannot cross one
    of them; None: every descent runs to its local optimum, ``--exhaustive``); ``bounds_grid``
    (default ``grid``): the budgets the bounds are for: closed-form collisions are constructed
    and verified up to its largest (every pair when None). ``normalize``: the spec's input
    normalisation, already applied to ``net``. ``executor``: where the tasks run
    (:func:`fxverify.executors.make_executor`; default: a process pool over the local cores;
    every executor receives ``net`` itself). ``deadline`` (a :func:`time.monotonic` time) or
    ``time_budget`` (seconds from now): hard; the result then covers what was stored, and a
    rerun resumes. ``order``: ``"promise"`` (:func:`promise_order`) or ``"file"``; the order
    never changes a result. ``witnesses``: store every found collision's points (False: only
    their budgets). ``select_pairs``: the optional :class:`PairSelector` (with a grid)."""
    if order not in ORDERS:
        raise FxverifyError(f"unknown pair order {order!r}; orders: {', '.join(ORDERS)}")
    if select_pairs and points.multiclass:
        raise FxverifyError("pair selection (--select-pairs) is for two classes; a K-class run computes every "
                            "cross-class pair (leave --select-pairs out, or pass two classes)")
    if time_budget is not None:
        end = time.monotonic() + time_budget
        deadline = end if deadline is None else min(deadline, end)
    collider = Collider(net, engine)
    grid = None if grid is None else tuple(sorted(float(g) for g in grid))
    limits = grid if bounds_grid is None else tuple(float(g) for g in bounds_grid)
    plan = RunPlan.of(collider, cuts, len(points.X_a), len(points.X_b))
    settings = run_settings(net, points, engine, normalize, grid, select_pairs)
    meta = {"fxverify": __version__, "model": net.source.path, "model_sha256": net.source.sha256,
            "profile": engine.profile.to_dict(), "engine": settings.values, **(info or {})}
    ctx = _Context(plan, collider, points, engine, grid, order)
    with ResultStore(out_dir, settings, meta) as store:
        for k, cut in enumerate(plan.closed):
            if progress:
                progress(f"closed form {cut}", k, len(plan.closed))
            if store.matrix(cut, (plan.n_a, plan.n_b)) is None:
                _closed_form(collider, points, cut, store, max(limits) if limits else None, witnesses)
        if progress and plan.closed:
            progress("closed form", len(plan.closed), len(plan.closed))
        if plan.paired:
            _paired(ctx, store, executor, deadline, progress, witnesses, select_pairs)
        return _distances(store, ctx)


def _distances(store: ResultStore, ctx: _Context) -> Distances:
    """The stored results as budget matrices (every row validated)."""
    plan, points = ctx.plan, ctx.points
    shape = (plan.n_a, plan.n_b)
    mask = points.pair_mask()
    valid = mask if points.multiclass else None
    by_cut = {}
    for cut in plan.cuts:
        if cut in plan.closed:
            eps, method, seconds, message = store.matrix(cut, shape)
            eps = np.where(mask, eps, np.inf)
            found = int(np.isfinite(eps).sum())
            by_cut[cut] = CutDistances(cut, eps, mask.copy(), found, int(mask.sum()) - found, 0, method, seconds,
                                       message, valid=valid)
            continue
        eps, computed = np.full(shape, np.inf), np.zeros(shape, dtype=bool)
        counts = {s: 0 for s in (x.value for x in CollisionStatus)}
        seconds, failures = 0.0, []
        for r in store.pair_rows(cut, shape):
            if not mask[r.i, r.j]:
                raise StoreError(f"{store.path} is damaged: it holds a result at {cut} for ({r.i}, {r.j}), which is "
                                 f"not a cross-class pair of this run; use another --out directory")
            computed[r.i, r.j] = True
            counts[r.status] += 1
            seconds += r.seconds
            if r.found:
                eps[r.i, r.j] = r.eps
            elif r.status == CollisionStatus.FAILED.value:
                failures.append(Failure(r.i, r.j, r.message))
        method = ctx.engine.method if ctx.collider.plan(cut).kind == "pieces" else "lp"
        by_cut[cut] = CutDistances(cut, eps, computed, counts["found"], counts["failed"], counts["not-applicable"],
                                   method, seconds, "", counts["skipped"], tuple(failures), valid)
    return Distances(plan.cuts, by_cut, plan.n_a, plan.n_b, points.classes, points.labels)
