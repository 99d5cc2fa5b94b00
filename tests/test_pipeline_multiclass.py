"""K classes through the pipeline: every cross-class pair at every cut, keyed by global point
index; K-class bounds from the stored budgets; K = 2 through this path equals the two-class path."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import linprog

import fxverify
from fxverify.analysis import bounds_from_distances
from fxverify.bounds import lower_bounds_multiclass
from fxverify.collision import Collider
from fxverify.config import resolve_engine
from fxverify.data import load_embedded, select_points
from fxverify.errors import FxverifyError
from fxverify.executors import SerialExecutor
from fxverify.pipeline import compute_distances, promise_order, promise_order_multiclass
from fxverify.store import StoreError

GRID = (0.0, 1.0, 2.0, 3.0, 4.0)
CUTS = ("input", "linear1", "relu1", "relu2")


@pytest.fixture(scope="module")
def setup():
    from conftest import MODELS

    net = fxverify.load_model(MODELS / "fcnn_tiny_mnist_3v7_benign.onnx")
    return net, load_embedded("mnist"), resolve_engine()


@pytest.fixture(scope="module")
def three(setup, tmp_path_factory):
    """Classes 3, 7, 8 with 3 points each: the K-class distances and their bounds."""
    net, ds, engine = setup
    pts = select_points(ds, (3, 7, 8), 3)
    d = compute_distances(net, pts, CUTS, engine, tmp_path_factory.mktemp("k3"), executor=SerialExecutor(),
                          grid=GRID)
    return pts, d


def _blocks(pts, eps):
    members = pts.class_members()
    return {(pts.classes[a], pts.classes[b]): eps[np.ix_(members[a], members[b])]
            for a in range(len(members)) for b in range(a + 1, len(members))}


def _labels(pts):
    return np.asarray(pts.classes)[pts.labels]


def _packing_lp(eps, mask, g):
    """0-1 bound by an independent LP: 1 - max{sum q : q_u + q_v <= 1 on edges, 0 <= q <= 1} / N."""
    ii, jj = np.nonzero(mask & (eps <= g))
    N = len(mask)
    if ii.size == 0:
        return 0.0
    A = np.zeros((ii.size, N))
    A[np.arange(ii.size), ii] = 1.0
    A[np.arange(ii.size), jj] = 1.0
    r = linprog(-np.ones(N), A_ub=A, b_ub=np.ones(ii.size), bounds=(0, 1), method="highs")
    assert r.status == 0
    return 1.0 + r.fun / N


def test_every_cross_class_pair_is_computed_once_by_global_index(three):
    pts, d = three
    assert pts.multiclass and len(pts.X_a) == 9 and pts.X_a is pts.X_b
    assert d.n_a == d.n_b == 9 and d.classes == (3, 7, 8)
    for cut in CUTS:
        c = d.by_cut[cut]
        assert c.n_pairs == 27 and c.complete  # 3 pairs of classes x 3 x 3
        assert np.all(np.isinf(c.eps[~pts.pair_mask()]))  # same-class entries are no pair
        assert c.n_found == 27 and c.n_failed == 0


def test_the_bounds_are_the_k_class_bounds_of_the_stored_budgets(setup, three):
    net, _, _ = setup
    pts, d = three
    per_cut, mats = bounds_from_distances(d, GRID, net)
    mask = pts.pair_mask()
    for cb in per_cut:
        want = lower_bounds_multiclass(_blocks(pts, mats[cb.cut]), _labels(pts), GRID)
        assert [(r.eps, r.edges, r.loss01_lower, r.ce_lower) for r in cb.records] == \
            [(r.eps, r.edges, r.loss01_lower, r.ce_lower) for r in want]
        for r in cb.records:  # an independent LP
            assert r.loss01_lower == pytest.approx(_packing_lp(mats[cb.cut], mask, r.eps), abs=1e-9)
            assert r.ce_lower - r.ce_dual <= 1e-9
    assert any(r.loss01_lower > 0 for cb in per_cut for r in cb.records)  # the check is not vacuous


def test_each_block_is_the_two_class_run_and_the_k_class_bound_dominates_it(setup, three, tmp_path):
    """The (3, 7) block of the K-class run is the two-class run's matrix, bit for bit; the
    K-class bound is at least each pair of classes' bound scaled by its share of the points
    (the other classes' points only add constraints)."""
    net, ds, engine = setup
    pts, d = three
    per_cut, mats = bounds_from_distances(d, GRID, net)
    members = pts.class_members()
    for a, b in ((0, 1), (0, 2), (1, 2)):
        two = select_points(ds, (pts.classes[a], pts.classes[b]), 3)
        d2 = compute_distances(net, two, CUTS, engine, tmp_path / f"{a}{b}", executor=SerialExecutor(), grid=GRID)
        b2, _ = bounds_from_distances(d2, GRID, net)
        for k, cut in enumerate(CUTS):
            np.testing.assert_array_equal(d.by_cut[cut].eps[np.ix_(members[a], members[b])], d2.by_cut[cut].eps)
            for rk, r2 in zip(per_cut[k].records, b2[k].records):
                assert rk.loss01_lower >= r2.loss01_lower * 6 / 9 - 1e-12
                assert rk.ce_lower >= r2.ce_lower * 6 / 9 - 1e-12


def test_two_classes_through_the_k_class_path_equal_the_two_class_path(setup, tmp_path):
    net, ds, engine = setup
    two = select_points(ds, (7, 3), 4)  # not sorted: the order of the classes is kept
    multi = two.as_multiclass()
    d2 = compute_distances(net, two, CUTS, engine, tmp_path / "two", executor=SerialExecutor(), grid=GRID)
    dk = compute_distances(net, multi, CUTS, engine, tmp_path / "k", executor=SerialExecutor(), grid=GRID)
    b2, _ = bounds_from_distances(d2, GRID, net)
    bk, _ = bounds_from_distances(dk, GRID, net)
    for cut in CUTS:
        np.testing.assert_array_equal(dk.by_cut[cut].eps[:4, 4:], d2.by_cut[cut].eps)
    for x, y in zip(b2, bk):
        assert (x.cut, x.pairs_total, x.pairs_done) == (y.cut, y.pairs_total, y.pairs_done) == (x.cut, 16, 16)
        assert [(r.eps, r.edges, r.loss01_lower, r.ce_lower) for r in x.records] == \
            [(r.eps, r.edges, r.loss01_lower, r.ce_lower) for r in y.records]


def test_promise_order_for_two_classes_is_the_two_class_order():
    rng = np.random.default_rng(0)
    E = rng.random((5, 4))
    E[1, 2] = E[1, 3]  # a tie
    labels = np.repeat([0, 1], [5, 4])
    big = np.full((9, 9), np.inf)
    big[:5, 5:] = E
    assert promise_order_multiclass(big, labels) == [(i, j + 5) for i, j in promise_order(E)]


def test_promise_order_ranks_partners_of_every_class():
    # point 2 (class 1) has its nearest partner in class 0 (a column) and one in class 2 (a row)
    labels = np.array([0, 0, 1, 2])
    E = np.full((4, 4), np.inf)
    E[0, 2], E[1, 2], E[0, 3], E[1, 3], E[2, 3] = 5.0, 1.0, 2.0, 9.0, 0.5
    order = promise_order_multiclass(E, labels)
    assert sorted(order) == [(0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert order[:3] == [(2, 3), (1, 2), (0, 3)]  # a nearest partner of some point each
    assert order[-1] == (1, 3)


def test_a_k_class_run_resumes_and_recomputes_nothing(setup, three, tmp_path, monkeypatch):
    net, ds, engine = setup
    pts, _ = three
    first = compute_distances(net, pts, CUTS[:3], engine, tmp_path, executor=SerialExecutor(), grid=GRID)
    assert first.complete and "relu2" not in first.by_cut  # a partial store: relu2 is computed on resuming
    again = compute_distances(net, pts, CUTS, engine, tmp_path, executor=SerialExecutor(), grid=GRID)
    assert again.complete

    def boom(*a, **k):
        raise AssertionError("recomputed a stored pair")

    monkeypatch.setattr(Collider, "collide_cuts", boom)
    monkeypatch.setattr("fxverify.pipeline.all_pairs_eps", boom)
    third = compute_distances(net, pts, CUTS, engine, tmp_path, executor=SerialExecutor(), grid=GRID)
    for c in CUTS:
        np.testing.assert_array_equal(again.by_cut[c].eps, third.by_cut[c].eps)
        np.testing.assert_array_equal(again.by_cut[c].eps, three[1].by_cut[c].eps)


def test_a_two_class_store_is_never_a_k_class_one(setup, tmp_path):
    net, ds, engine = setup
    two = select_points(ds, (3, 7), 2)
    compute_distances(net, two, ("input",), engine, tmp_path / "a", executor=SerialExecutor())
    with pytest.raises(StoreError, match=r"the classes .*stored two classes \(a two-class store\), this run "
                                         r"\[3, 7\]"):
        compute_distances(net, two.as_multiclass(), ("input",), engine, tmp_path / "a", executor=SerialExecutor())
    three = select_points(ds, (3, 7, 8), 2)
    compute_distances(net, three, ("input",), engine, tmp_path / "b", executor=SerialExecutor())
    with pytest.raises(StoreError, match=r"the classes .*stored \[3, 7, 8\], this run two classes"):
        compute_distances(net, two, ("input",), engine, tmp_path / "b", executor=SerialExecutor())
    with pytest.raises(StoreError, match=r"stored \[3, 7, 8\], this run \[3, 7, 9\]"):
        compute_distances(net, select_points(ds, (3, 7, 9), 2), ("input",), engine, tmp_path / "b",
                          executor=SerialExecutor())


def test_pair_selection_is_refused_for_k_classes(setup, three, tmp_path):
    net, _, engine = setup
    with pytest.raises(FxverifyError, match=r"--select-pairs\) is for two classes"):
        compute_distances(net, three[0], CUTS, engine, tmp_path, grid=GRID, select_pairs=True)


def test_bound_reports_k_classes_and_check_verifies_their_witnesses(tmp_path):
    from conftest import MODELS

    from fxverify import witnesses
    from fxverify.report import validate_results

    import json

    a = fxverify.bound(MODELS / "fcnn_tiny_mnist_3v7_benign.onnx", "specs/mnist_3v7.json", n=2, classes=[3, 7, 8],
                       cuts=["linear1", "relu2"], out=tmp_path, jobs=1)
    assert a.classes == (3, 7, 8) and a.n == 6 and a.pairs == 12 and a.complete
    doc = json.loads((tmp_path / "results.json").read_text())
    validate_results(doc)
    assert doc["points"] == {"classes": [3, 7, 8], "n_per_class": [2, 2, 2], "n": 6, "pairs": 12}
    assert doc["spec"]["classes"] == [3, 7, 8] and doc["cuts"][0]["pairs_total"] == 12
    report = witnesses.check(tmp_path)
    assert report.ok and report.checked > 0
    w = dict(np.load(tmp_path / "witnesses.npz"))
    assert list(w["classes"]) == [3, 7, 8] and np.all(w["labels"][w["i"]] != w["labels"][w["j"]])
    w["labels"][w["j"][0]] = w["labels"][w["i"][0]]  # one witness now joins two points of one class
    np.savez(tmp_path / "witnesses.npz", **w)
    same = (w["labels"][w["i"]] == w["labels"][w["j"]]) & (w["eps"] <= w["grid"].max())
    bad = witnesses.check(tmp_path)
    assert same.sum() >= 1 and bad.failed == same.sum() and "same class label" in bad.examples[0]


def test_distances_npz_of_k_classes_names_the_points_classes(three, tmp_path):
    from fxverify.cli import _distances_npz

    pts, d = three
    _distances_npz(tmp_path, d, pts)
    z = np.load(tmp_path / "distances.npz")
    assert list(z["classes"]) == [3, 7, 8] and list(z["labels"]) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    np.testing.assert_array_equal(z["relu2"], d.by_cut["relu2"].eps)
    assert z["relu2"].shape == (9, 9) and np.isinf(z["relu2"][~pts.pair_mask()]).all()
