"""Per-pair collision budgets for every cross-class pair at every requested cut.

``compute_distances`` fills the result store of a run directory and returns, per cut, the
n_a x n_b matrix of verified budgets (``inf`` where no verified collision exists). Input and
affine cuts are computed for all pairs at once in closed form; ReLU cuts pair by pair, each
pair walking the cuts in network order so that every cut starts from the previous one's
collision. Pairs already in the store are not recomputed.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from . import __version__
from .collision import Collider
from .collision.affine import all_pairs_eps, closed_form, residual_bound
from .collision.verify import IR_TOLERANCE
from .data import Points
from .errors import FxverifyError
from .ir import Network
from .results import CollisionStatus
from .store import PairRow, ResultStore, fingerprint

#: pairs of a closed-form cut re-verified one by one (onnxruntime included) when it is computed
CLOSED_FORM_SAMPLE = 8

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class CutDistances:
    """Budgets at one cut. ``eps[i, j]`` is the verified budget of pair (a_i, b_j), inf if none."""

    cut: str
    eps: np.ndarray = field(repr=False)
    computed: np.ndarray = field(repr=False)  # pairs the method has run on
    n_found: int
    n_failed: int
    n_not_applicable: int
    method: str
    seconds: float
    message: str = ""
    n_skipped: int = 0  # counted in n_done: decided, not computed (see PairSelector)

    @property
    def n_pairs(self) -> int:
        return self.eps.size

    @property
    def n_done(self) -> int:
        return int(self.computed.sum())

    @property
    def complete(self) -> bool:
        return self.n_done == self.n_pairs


@dataclass(frozen=True)
class Distances:
    cuts: tuple[str, ...]
    by_cut: dict[str, CutDistances]
    n_a: int
    n_b: int

    @property
    def complete(self) -> bool:
        return all(c.complete for c in self.by_cut.values())


def _closed_form(collider: Collider, points: Points, cut: str, store: ResultStore) -> None:
    t0 = time.perf_counter()
    ch = collider.plan(cut)
    eps = all_pairs_eps(ch, points.X_a, points.X_b)
    message = ""
    # a proof for every pair: the singular values the projection drops leave at most this
    # much feature difference (|u - v| <= max|a| + max|b|)
    span = np.linalg.norm(points.X_a, axis=1).max(initial=0) + np.linalg.norm(points.X_b, axis=1).max(initial=0)
    bound = residual_bound(ch, float(span))
    ok = bound <= IR_TOLERANCE
    if not ok:
        message = f"the closed form leaves feature differences up to {bound:.3g} (> {IR_TOLERANCE:g})"
    # onnxruntime and the IR on a fixed sample of pairs
    rng = np.random.default_rng(0)
    flat = rng.choice(eps.size, size=min(CLOSED_FORM_SAMPLE, eps.size), replace=False)
    for f in flat:
        i, j = divmod(int(f), eps.shape[1])
        c = collider.collide(cut, points.X_a[i], points.X_b[j])
        if c.status is not CollisionStatus.FOUND or not math.isclose(c.eps, eps[i, j], rel_tol=1e-9, abs_tol=1e-12):
            ok = False
            message = f"pair ({i}, {j}) failed re-verification: {c.message or c.status.value}"
            break
    if not ok:
        eps = np.full_like(eps, np.inf)
    store.add_matrix(cut, eps, "closed_form", time.perf_counter() - t0,
                     message or f"closed form; {len(flat)} pairs re-verified in onnxruntime")


class PairSelector:
    """Bound-driven pair selection: which pairs a grid-limited run still needs to compute.

    A pair's budget at a cut matters only at grid values where the bounds are not yet at their
    largest possible values (*saturated*: a matching covering the smaller class, and the
    cross-entropy optimum of the complete graph). The edges known so far (the computed pairs
    and, for every pair, the collision of the closed-form cut that determines the cut) give,
    per cut, the largest unsaturated grid value g*. A pair is skipped when at every paired cut
    even the smallest ratio of descent budget to closed-form budget seen so far (over at least
    :attr:`min_observed` computed pairs; pairs run in promise order, so these are near pairs)
    would leave it above g*. Skipping is sound (any subset of the edges gives valid bounds);
    how much it loosens the bounds is measured against ``--exhaustive`` runs."""

    min_observed: int = 200
    #: the saturation check is redone after this many newly observed pairs
    refresh: int = 1000

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
        # the edges the run's bounds will have: computed pairs, and the closed forms they count
        self.eps = {c: m.copy() if counted is None or c in counted else np.full_like(m, np.inf)
                    for c, m in self.upper.items()}
        self.ratio_min = {c: np.inf for c in self.cuts}
        self.observed = 0
        self._since = 0
        self.g_star = {c: max(self.grid) for c in self.cuts}

    def observe(self, rows) -> None:
        seen = set()
        for r in rows:
            if r.cut not in self.eps or r.status != CollisionStatus.FOUND.value:
                continue
            u = self.upper[r.cut][r.i, r.j]
            self.eps[r.cut][r.i, r.j] = min(self.eps[r.cut][r.i, r.j], r.eps)
            if u > 0 and math.isfinite(u):
                self.ratio_min[r.cut] = min(self.ratio_min[r.cut], r.eps / u)
            seen.add((r.i, r.j))
        self.observed += len(seen)
        self._since += len(seen)
        if self._since >= self.refresh:
            self.saturation()

    def saturation(self) -> None:
        """Recompute, per cut, the largest grid value whose bounds are not yet saturated."""
        from .bounds import lower_bounds

        self._since = 0
        for c in self.cuts:
            recs = lower_bounds(self.eps[c], self.grid)
            open_ = [r.eps for r in recs if r.eps > 0 and not (r.loss01_lower >= self._max01 - 1e-12
                                                               and r.ce_lower >= self._maxce - 1e-9)]
            self.g_star[c] = max(open_) if open_ else None

    def wanted(self, i: int, j: int) -> tuple[str, ...]:
        """The cuts at which the pair may still change a bound (all until enough are observed)."""
        if self.observed < self.min_observed:
            return self.cuts
        return tuple(c for c in self.cuts if self.g_star[c] is not None
                     and self.ratio_min[c] * self.upper[c][i, j] <= self.g_star[c])


#: orders in which the descent pairs can be computed (see :func:`compute_distances`)
ORDERS = ("promise", "file")

#: pairs per task sent to a worker (small: a stop after the time budget wastes little); fewer
#: when there are few pairs, so that every worker gets some
CHUNK = 4


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


def promise_cut(collider: Collider, cut: str) -> str:
    """The deepest cut with a closed form that determines ``cut`` (its budgets bound ``cut``'s)."""
    shallow = [c for c in collider.net.dominators(cut)[:-1] if closed_form(collider.plan(c))]
    return shallow[-1] if shallow else "input"


def _closed_form_budgets(collider: Collider, points: Points, cut: str,
                         store: ResultStore | None) -> tuple[np.ndarray, bool]:
    """The closed-form budgets at ``cut`` and whether they are the run's verified ones (from
    ``store``; else computed here, unverified)."""
    stored = store.matrix(cut, (len(points.X_a), len(points.X_b))) if store is not None else None
    if stored is not None and np.isfinite(stored[0]).all():
        return stored[0], True
    return all_pairs_eps(collider.plan(cut), points.X_a, points.X_b), False


def promise_budgets(collider: Collider, points: Points, first_paired: str,
                    store: ResultStore | None = None) -> np.ndarray:
    """Upper bounds on every pair's budget at the paired cut ``first_paired``, to order pairs
    by: the closed form at :func:`promise_cut` (from ``store`` when the run computed it there)."""
    return _closed_form_budgets(collider, points, promise_cut(collider, first_paired), store)[0]


def compute_distances(net: Network, points: Points, cuts: tuple[str, ...], engine,
                      out_dir, *, progress: Progress | None = None, time_budget: float | None = None,
                      info: dict | None = None, executor=None, order: str = "promise",
                      normalize=None, grid=None) -> Distances:
    """Compute (or resume) the budgets of all pairs at ``cuts`` into the store in ``out_dir``.

    ``engine``: the resolved collision method (:func:`fxverify.config.resolve_engine`);
    ``grid``: the budgets the distances are for: a descent stops when its next steps cannot
    cross one of them (None: every descent runs to its local optimum, ``--exhaustive``);
    ``normalize``: the spec's input normalisation, already applied to ``net`` (workers apply it
    again to the model they load). ``executor``: where the pair tasks run
    (:func:`fxverify.executors.make_executor`; default: a process pool over the local cores).
    ``time_budget``: seconds after which the run stops, abandoning the pairs in flight; the
    result then covers the pairs done. ``order``:
    ``"promise"`` computes the pairs in :func:`promise_order` (nearest partners of every point
    first, so a budget-limited run covers the pairs that matter most), ``"file"`` row by row;
    the order never changes a pair's result."""
    if order not in ORDERS:
        raise FxverifyError(f"unknown pair order {order!r}; orders: {', '.join(ORDERS)}")
    from .executors import PairJob, SerialExecutor, make_executor

    t_start = time.perf_counter()
    collider = Collider(net, engine)
    grid = None if grid is None else tuple(sorted(float(g) for g in grid))
    settings = {**engine.describe(), "normalize": None if normalize is None else [list(x) for x in normalize],
                "grid": None if grid is None else list(grid)}
    fp = fingerprint(net.source.sha256, points.X_a, points.X_b, settings)
    meta = {"fxverify": __version__, "model": net.source.path, "model_sha256": net.source.sha256,
            "profile": engine.profile.to_dict(), "engine": settings, **(info or {})}
    n_a, n_b = len(points.X_a), len(points.X_b)
    cuts = tuple(c for c in net.cuts if c in cuts)
    closed = [c for c in cuts if closed_form(collider.plan(c))]
    paired = [c for c in cuts if c not in closed]
    with ResultStore(out_dir, fp, meta) as store:
        for k, cut in enumerate(closed):
            if progress:
                progress(f"closed form {cut}", k, len(closed))
            if store.matrix(cut, (n_a, n_b)) is None:
                _closed_form(collider, points, cut, store)
        if progress and closed:
            progress("closed form", len(closed), len(closed))
        if paired:
            done = set.intersection(*(store.done_pairs(c) for c in paired))
            todo = [(i, j) for i in range(n_a) for j in range(n_b) if (i, j) not in done]
            # per paired cut, the closed-form budgets that bound it (loaded once per closed-form cut)
            pcut = {c: promise_cut(collider, c) for c in paired}
            budgets = {pc: _closed_form_budgets(collider, points, pc, store)
                       for pc in (dict.fromkeys(pcut.values()) if todo else ())}
            if todo and order == "promise":
                todo = promise_order(budgets[pcut[paired[0]]][0], todo)
            total = n_a * n_b
            if progress:
                progress("descent", len(done), total)
            if executor is None:
                executor = make_executor("local")
            if not (net.source.path and os.path.isfile(net.source.path)):
                executor = SerialExecutor()  # workers load the model from its file
            job = PairJob(net.source.path, net.source.sha256, engine, points.X_a, points.X_b, tuple(paired),
                          normalize, grid)

            # the time budget is hard: at the deadline the executor abandons the pairs in flight
            # (never stored: a pair's rows are stored whole, in one transaction) and stops
            deadline = None if time_budget is None else \
                time.monotonic() + time_budget - (time.perf_counter() - t_start)

            selector = None
            if grid is not None and todo:
                # a paired cut's bounds take the closed-form edges of its promise cut only when the
                # run computed that cut and its budgets were verified (a failed one is stored as inf)
                selector = PairSelector(grid, {c: budgets[pcut[c]][0] for c in paired},
                                        counted={c for c in paired if pcut[c] in cuts and budgets[pcut[c]][1]})
                # a wanted cut needs the paired cuts that determine it (its descent starts from,
                # and keeps, their collisions; its bounds take their budgets)
                determining = {c: {d for d in net.dominators(c)[:-1] if d in paired} for c in paired}
                for c in paired:
                    selector.observe(store.pair_rows(c))
                selector.saturation()

            def skip_rows(items):
                return [PairRow(c, i, j, math.inf, CollisionStatus.SKIPPED.value, engine.method, engine.name, 0.0,
                                math.nan, math.nan, 0, "skipped: by the run's pair selection it cannot change a bound")
                        for i, j, cuts in items for c in cuts]

            pending_skips: list = []

            def chunks():
                size = max(1, min(CHUNK, len(todo) // (4 * max(1, getattr(executor, "workers", 1)))))
                batch = []
                for pair in todo:
                    if deadline is not None and time.monotonic() >= deadline:
                        return
                    if selector is not None:
                        want = set(selector.wanted(*pair))
                        want |= {d for c in want for d in determining[c]}
                        cuts = tuple(c for c in paired if c in want)
                        if len(cuts) < len(paired):
                            pending_skips.append((*pair, tuple(c for c in paired if c not in want)))
                        if not cuts:
                            continue
                        pair = (*pair, cuts)
                    batch.append(pair)
                    if len(batch) == size:
                        yield tuple(batch)
                        batch = []
                if batch:
                    yield tuple(batch)

            n_done = len(done)
            if todo:
                # executors without a deadline parameter still run (with the budget checked
                # between chunks only)
                running = executor.run(job, chunks(), net=net, **({} if deadline is None else {"deadline": deadline}))
                try:
                    for rows in running:
                        # pairs computed by this task, and pairs skipped at every cut meanwhile (a
                        # pair skipped at some cuts is counted when its computed rows arrive)
                        n_done += len({(r.i, r.j) for r in rows})
                        if pending_skips:  # decided while this task ran: stored with it
                            n_done += sum(1 for item in pending_skips if len(item[2]) == len(paired))
                            rows = rows + skip_rows(pending_skips)
                            pending_skips.clear()
                        store.add_pairs(rows)
                        if selector is not None:
                            selector.observe(rows)
                        if progress:
                            progress("descent", n_done, total)
                finally:
                    close = getattr(running, "close", None)  # a generator: stops the workers now
                    if close is not None:                    # (also on an error or an interrupt)
                        close()
                if pending_skips:
                    store.add_pairs(skip_rows(pending_skips))
                    pending_skips.clear()
        by_cut = {}
        for cut in cuts:
            if cut in closed:
                eps, method, seconds, message = store.matrix(cut, (n_a, n_b))
                computed = np.ones((n_a, n_b), dtype=bool)
                found = int(np.isfinite(eps).sum())
                by_cut[cut] = CutDistances(cut, eps, computed, found, eps.size - found, 0, method, seconds, message)
            else:
                eps = np.full((n_a, n_b), np.inf)
                computed = np.zeros((n_a, n_b), dtype=bool)
                counts = {s.value: 0 for s in CollisionStatus}
                seconds = 0.0
                for r in store.pair_rows(cut):
                    computed[r.i, r.j] = True
                    counts[r.status] += 1
                    seconds += r.seconds
                    if r.status == CollisionStatus.FOUND.value:
                        eps[r.i, r.j] = r.eps
                plan = collider.plan(cut)
                method = engine.method if plan.kind == "pieces" else "lp"
                by_cut[cut] = CutDistances(cut, eps, computed, counts["found"], counts["failed"],
                                           counts["not-applicable"], method, seconds, "", counts["skipped"])
    return Distances(cuts, by_cut, n_a, n_b)
