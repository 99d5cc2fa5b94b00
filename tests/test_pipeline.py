"""Distances for all pairs: closed forms at input/affine cuts, descent at ReLU cuts, the store."""

from __future__ import annotations

import numpy as np
import pytest

import fxverify
from fxverify.collision import Collider
from fxverify.data import load_embedded, select_points
from fxverify.pipeline import compute_distances
from fxverify.profiles import load_profile
from fxverify.store import ResultStore, StoreError


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from conftest import MODELS

    net = fxverify.load_model(MODELS / "fcnn_tiny_mnist_3v7_benign.onnx")
    pts = select_points(load_embedded("mnist"), (3, 7), 4)
    return net, pts, load_profile(None)


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
    with pytest.raises(StoreError, match="holds results for a different model, data or solver"):
        compute_distances(net, other, ("input",), prof, tmp_path)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "results.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError, match="not a usable fxverify result store"):
        ResultStore(tmp_path / "x", "abc")
