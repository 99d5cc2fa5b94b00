"""Distances for all pairs: closed forms at input/affine cuts, descent at ReLU cuts, the store."""

from __future__ import annotations

import time

import numpy as np
import pytest

import fxverify
from fxverify.collision import Collider
from fxverify.data import load_embedded, select_points
from fxverify.collision.affine import all_pairs_eps
from fxverify.config import resolve_engine
from fxverify.errors import FxverifyError
from fxverify.executors import ProcessExecutor, SerialExecutor
from fxverify.pipeline import compute_distances, promise_order
from fxverify.store import ResultStore, StoreError


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from conftest import MODELS

    net = fxverify.load_model(MODELS / "fcnn_tiny_mnist_3v7_benign.onnx")
    pts = select_points(load_embedded("mnist"), (3, 7), 4)
    return net, pts, resolve_engine()


def test_all_pairs_all_cuts_match_single_pairs(setup, tmp_path):
    net, pts, prof = setup
    d = compute_distances(net, pts, net.cuts, prof, tmp_path)
    assert d.complete and d.cuts == net.cuts
    col = Collider(net, prof)
    for i, j in [(0, 0), (1, 3), (3, 2)]:
        chain = col.collide_cuts(pts.X_a[i], pts.X_b[j])
        for c in net.cuts:
            assert d.by_cut[c].eps[i, j] == pytest.approx(chain[c].eps, rel=1e-9), c
    for c in net.cuts:
        assert d.by_cut[c].n_found == 16 and d.by_cut[c].n_failed == 0
    # eps never grows with depth, pair by pair
    stack = np.stack([d.by_cut[c].eps for c in net.cuts])
    assert np.all(np.diff(stack, axis=0) <= 1e-12)


def test_rerun_recomputes_nothing(setup, tmp_path, monkeypatch):
    net, pts, prof = setup
    first = compute_distances(net, pts, net.cuts, prof, tmp_path)

    def boom(*a, **k):
        raise AssertionError("recomputed a stored pair")

    monkeypatch.setattr(Collider, "collide_cuts", boom)
    monkeypatch.setattr("fxverify.pipeline.all_pairs_eps", boom)
    again = compute_distances(net, pts, net.cuts, prof, tmp_path)
    for c in net.cuts:
        np.testing.assert_array_equal(first.by_cut[c].eps, again.by_cut[c].eps)


def test_time_budget_gives_a_partial_result_that_resumes(setup, tmp_path):
    net, pts, prof = setup
    part = compute_distances(net, pts, net.cuts, prof, tmp_path, time_budget=0.0)
    assert not part.complete and part.by_cut["relu1"].n_done == 0
    assert part.by_cut["input"].complete  # closed forms are done at once
    assert np.isinf(part.by_cut["relu1"].eps).all()
    full = compute_distances(net, pts, net.cuts, prof, tmp_path)
    assert full.complete


def test_store_refuses_results_of_another_run(setup, tmp_path):
    net, pts, prof = setup
    compute_distances(net, pts, ("input",), prof, tmp_path)
    other = select_points(load_embedded("mnist"), (3, 7), 5)
    with pytest.raises(StoreError, match=r"holds results for different settings \(the data points \(spec data, classes, "
                                         r"n, selection\): stored 4 \+ 4 points, sha256 \w+, this run 5 \+ 5 points"):
        compute_distances(net, other, ("input",), prof, tmp_path)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "results.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError, match="not a usable fxverify result store"):
        ResultStore(tmp_path / "x", "abc")


def test_promise_order_puts_every_points_nearest_partners_first():
    rng = np.random.default_rng(3)
    eps = rng.uniform(1, 5, size=(6, 9))
    order = promise_order(eps)
    assert sorted(order) == [(i, j) for i in range(6) for j in range(9)]  # a permutation
    nearest = {(i, int(np.argmin(eps[i]))) for i in range(6)} | {(int(np.argmin(eps[:, j])), j) for j in range(9)}
    head = order[:len(nearest)]
    assert set(head) == nearest, "rank-0 pairs (a nearest partner of one of their points) come first"
    # within rank 0, smaller budgets first
    assert [eps[p] for p in head] == sorted(eps[p] for p in head)
    # a pair's position never precedes one of lower rank
    rank = {p: min(sorted(eps[p[0]]).index(eps[p]), sorted(eps[:, p[1]]).index(eps[p])) for p in order}
    assert [rank[p] for p in order] == sorted(rank[p] for p in order)
    # a subset keeps the same relative order; NaN sorts last
    sub = order[::3]
    assert promise_order(eps, sorted(sub)) == sub
    eps[0, 0] = np.nan
    assert promise_order(eps)[-1] == (0, 0)


class _Recording(SerialExecutor):
    """Records the (pair, cut) tasks in the order they start."""

    def __init__(self):
        self.tasks = []

    def run(self, job, source, deadline=None):
        outer = self

        class Spy:
            def next_task(self):
                t = source.next_task()
                if t is not None:
                    outer.tasks.append(t)
                return t

        return super().run(job, Spy(), deadline)

    def sent(self, cut: str) -> list[tuple[int, int]]:
        return [(t.i, t.j) for t in self.tasks if t.cuts[-1] == cut]


def test_pairs_run_in_promise_order_and_the_order_changes_no_result(setup, tmp_path):
    net, pts, prof = setup
    ex = _Recording()
    promise = compute_distances(net, pts, net.cuts, prof, tmp_path / "p", executor=ex)
    expected = promise_order(all_pairs_eps(Collider(net, prof).plan("linear1"), pts.X_a, pts.X_b))
    assert ex.sent("relu1") == expected and expected != sorted(expected)
    # shallow cuts first: every pair's relu1 before any pair's deeper cut (each starts from them)
    kinds = [t.cuts[-1] for t in ex.tasks]
    assert kinds == sorted(kinds, key=("relu1", "linear2", "relu2", "linear3").index)
    ex_file = _Recording()
    by_file = compute_distances(net, pts, net.cuts, prof, tmp_path / "f", executor=ex_file, order="file")
    assert ex_file.sent("relu1") == sorted(ex_file.sent("relu1"))
    for c in net.cuts:
        np.testing.assert_array_equal(promise.by_cut[c].eps, by_file.by_cut[c].eps)
    # a descent cut alone (linear1 not requested): linear1's closed form still orders the pairs
    ex_alone = _Recording()
    compute_distances(net, pts, ("relu1",), prof, tmp_path / "r", executor=ex_alone)
    assert ex_alone.sent("relu1") == expected
    with pytest.raises(FxverifyError, match="unknown pair order 'random'"):
        compute_distances(net, pts, net.cuts, prof, tmp_path / "x", order="random")


def test_without_witnesses_a_pair_runs_its_cuts_in_turn_and_results_are_the_same(setup, tmp_path):
    """--witnesses none: a pair's deeper cut starts from collisions kept in memory (pair by
    pair), or recomputed when a resumed run has no witness: the same results either way."""
    net, pts, prof = setup
    ref = compute_distances(net, pts, net.cuts, prof, tmp_path / "w", executor=SerialExecutor())
    ex = _Recording()
    none = compute_distances(net, pts, net.cuts, prof, tmp_path / "n", executor=ex, witnesses=False)
    assert [t.cuts[-1] for t in ex.tasks[:4]] == ["relu1", "linear2", "relu2", "linear3"]
    import sqlite3

    with sqlite3.connect(tmp_path / "n" / "results.sqlite") as con:
        assert con.execute("SELECT COUNT(*) FROM witnesses WHERE cut LIKE 'relu%'").fetchone()[0] == 0
        con.execute("DELETE FROM pairs WHERE cut IN ('relu2', 'linear3')")
    again = _Recording()
    resumed = compute_distances(net, pts, net.cuts, prof, tmp_path / "n", executor=again, witnesses=False)
    # relu2 needs relu1 and linear2 as starts: without their witnesses they are computed again
    assert all(t.cuts == ("relu1", "linear2", "relu2") for t in again.tasks if t.cuts[-1] == "relu2")
    for c in net.cuts:
        np.testing.assert_array_equal(ref.by_cut[c].eps, none.by_cut[c].eps)
        np.testing.assert_array_equal(ref.by_cut[c].eps, resumed.by_cut[c].eps)


def _edges_at(eps, grid):
    return [np.asarray(eps) <= g for g in grid if g > 0]


def test_grid_stop_never_changes_an_edge_at_a_grid_value(setup):
    """A grid-limited descent stops once eps is below every positive grid value: the edges at
    every grid value are those of the exhaustive descent, and it did stop somewhere."""
    net, pts, prof = setup
    col = Collider(net, prof)
    grid = (0.0, 2.0, 4.0)
    stopped = 0
    for i in range(4):
        for j in range(4):
            full = col.collide_cuts(pts.X_a[i], pts.X_b[j])
            fast = col.collide_cuts(pts.X_a[i], pts.X_b[j], grid=grid)
            for c in net.cuts:
                a, b = fast[c].eps, full[c].eps
                assert a >= b - 1e-9, (c, i, j)  # the same descent, stopped no later
                for g in grid[1:]:
                    assert (a <= g) == (b <= g), (c, i, j, g, a, b)
                stopped += "below every positive grid value" in (fast[c].message or "")
    assert stopped > 0


@pytest.mark.parametrize("cuts", [("linear1", "relu1", "relu2"), ("relu1", "relu2")])
def test_pair_selection_skips_only_pairs_that_cannot_change_a_bound(setup, tmp_path, cuts):
    """Pairs skipped by the selection are stored as skipped (counted, never edges); here (every
    descent ratio is observed before any skip) the bounds equal the exhaustive run's, also when
    the closed-form cut the selection reads is not among the run's cuts."""
    from fxverify.analysis import bounds_from_distances
    from fxverify.pipeline import PairSelector

    net, pts, prof = setup
    grid = (0.0, 0.5, 1.0, 4.0)
    ex = compute_distances(net, pts, cuts, prof, tmp_path / "ex", executor=SerialExecutor())
    old = PairSelector.first_block, PairSelector.block
    PairSelector.first_block, PairSelector.block = 2, 3  # decide after two pairs, then in blocks of 3
    try:
        sel = compute_distances(net, pts, cuts, prof, tmp_path / "sel", executor=SerialExecutor(), grid=grid,
                                select_pairs=True)
        # the decisions depend on the earlier blocks' results only: a pool and a resume agree
        pool = compute_distances(net, pts, cuts, prof, tmp_path / "pool", executor=ProcessExecutor(2), grid=grid,
                                 select_pairs=True)
    finally:
        PairSelector.first_block, PairSelector.block = old
    skipped = 0
    for c in ("relu1", "relu2"):
        got = sel.by_cut[c]
        assert got.n_done == 16 and got.n_found + got.n_failed + got.n_skipped == 16
        skipped += got.n_skipped
    assert skipped > 0 or "linear1" not in cuts
    for c in cuts:
        np.testing.assert_array_equal(sel.by_cut[c].eps, pool.by_cut[c].eps)
        np.testing.assert_array_equal(sel.by_cut[c].computed, pool.by_cut[c].computed)
    for a, b in zip(bounds_from_distances(sel, grid, net)[0], bounds_from_distances(ex, grid, net)[0]):
        for ra, rb in zip(a.records, b.records):
            assert ra.loss01_lower == pytest.approx(rb.loss01_lower), (a.cut, ra.eps)
            assert ra.ce_lower == pytest.approx(rb.ce_lower, abs=1e-9), (a.cut, ra.eps)


# ---- per-(pair, cut) results, the deadline ------------------------------------------------------
def _timing_out(cut):
    """PatternDescent.run that reports a timeout at ``cut`` (as a descent interrupted by the deadline)."""
    from fxverify.collision.descent import DescentOutcome, PatternDescent

    real = PatternDescent.run

    def run(self, u, v, starts, stop=None, **kw):
        if self.plan.cut == cut:
            return DescentOutcome(None, None, timed_out=True, message="time budget reached at step 1")
        return real(self, u, v, starts, stop, **kw)

    return run


def test_a_timed_out_cut_is_abandoned_and_every_shallower_cut_is_stored(setup, tmp_path, monkeypatch):
    """A slow deep cut never holds back the shallower ones: relu1 is stored for every pair while
    relu2 times out everywhere (not stored: no result depends on timing); a resumed run computes
    relu2 from the stored relu1 collisions and ends where an uninterrupted run does."""
    from fxverify.collision.descent import PatternDescent

    net, pts, prof = setup
    cuts = ("relu1", "relu2")
    ref = compute_distances(net, pts, cuts, prof, tmp_path / "ref", executor=SerialExecutor())
    monkeypatch.setattr(PatternDescent, "run", _timing_out("relu2"))
    part = compute_distances(net, pts, cuts, prof, tmp_path / "run", executor=SerialExecutor())
    assert part.by_cut["relu1"].complete and part.by_cut["relu2"].n_done == 0
    np.testing.assert_array_equal(part.by_cut["relu1"].eps, ref.by_cut["relu1"].eps)
    monkeypatch.undo()
    done = compute_distances(net, pts, cuts, prof, tmp_path / "run", executor=SerialExecutor())
    for c in cuts:
        np.testing.assert_array_equal(done.by_cut[c].eps, ref.by_cut[c].eps)


def test_the_serial_deadline_interrupts_a_cut_that_ignores_it(setup, tmp_path, monkeypatch):
    """--jobs 1: a computation that does not look at the deadline (a long solve) is interrupted
    shortly after it (a timer signal), abandoned, and the run ends."""
    from fxverify.collision.descent import PatternDescent

    net, pts, prof = setup
    interrupted = []

    def stuck(self, *a, **k):
        try:
            time.sleep(600)
        except BaseException:
            interrupted.append(True)
            raise

    monkeypatch.setattr(PatternDescent, "run", stuck)
    d = compute_distances(net, pts, ("relu2",), prof, tmp_path, time_budget=0.5, executor=SerialExecutor())
    assert interrupted == [True] and d.by_cut["relu2"].n_done == 0


def test_resumed_runs_end_with_the_uninterrupted_results(setup, tmp_path):
    """Runs cut short by tiny budgets (cuts in flight abandoned) and resumed until complete give
    the uninterrupted run's results, bit for bit."""
    net, pts, prof = setup
    grid = (0.0, 1.0, 2.0, 4.0)
    ref = compute_distances(net, pts, net.cuts, prof, tmp_path / "ref", executor=SerialExecutor(), grid=grid)
    for runs in range(1, 200):
        d = compute_distances(net, pts, net.cuts, prof, tmp_path / "cut", executor=SerialExecutor(), grid=grid,
                              time_budget=0.05 * runs)
        if d.complete:
            break
    assert d.complete and runs > 1
    for c in net.cuts:
        np.testing.assert_array_equal(d.by_cut[c].eps, ref.by_cut[c].eps)
