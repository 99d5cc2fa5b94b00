from __future__ import annotations

import numpy as np

from fxverify.analysis import bounds_from_distances
from fxverify.pipeline import CutDistances, Distances


def _cut(name, eps):
    return CutDistances(name, eps, np.ones(eps.shape, bool), int(np.isfinite(eps).sum()), 0, 0, "descent", 0.0)


def test_deeper_cut_bounds_never_below_shallower():
    rng = np.random.default_rng(0)
    shallow = rng.uniform(1, 3, (6, 5))
    deep = shallow - rng.uniform(0, 1, shallow.shape)
    deep[0, 0] = np.inf  # the descent failed here: the shallower collision still counts
    deep[1, 1] = shallow[1, 1] + 0.5  # a worse value cannot raise the budget
    d = Distances(("a", "b"), {"a": _cut("a", shallow), "b": _cut("b", deep)}, 6, 5)
    per_cut, mats = bounds_from_distances(d, np.linspace(0, 3, 7))
    assert mats["b"][0, 0] == shallow[0, 0] and mats["b"][1, 1] == shallow[1, 1]
    for ra, rb in zip(per_cut[0].records, per_cut[1].records):
        assert rb.edges >= ra.edges and rb.loss01_lower >= ra.loss01_lower and rb.ce_lower >= ra.ce_lower - 1e-12
    assert "2 pairs take a shallower cut's collision" in per_cut[1].note


def test_bounds_take_only_the_collisions_of_cuts_that_determine_the_cut(tmp_path):
    """In a residual graph a branch's collision is no collision after the Add."""
    from onnx import helper

    import fxverify
    from builders import make, rand, save

    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Relu", ["m"], ["r"]),
             helper.make_node("MatMul", ["r", "W2"], ["m2"]), helper.make_node("Add", ["m2", "r"], ["y"])]
    net = fxverify.load_model(save(tmp_path, make(nodes, ["N", 4], inits={"W": rand(4, 4), "W2": rand(4, 4)})))
    assert net.cuts == ("input", "linear1", "relu1", "linear2", "add1")
    e = {c: np.full((2, 2), 5.0) for c in net.cuts}
    e["linear2"] = np.full((2, 2), 0.1)  # the branch alone collides cheaply: no collision at add1
    e["relu1"][0, 0] = 1.0  # relu1 determines add1: its collision counts there
    d = Distances(net.cuts, {c: _cut(c, m) for c, m in e.items()}, 2, 2)
    _, mats = bounds_from_distances(d, [1.0], net)
    assert mats["add1"][0, 0] == 1.0 and mats["add1"][1, 1] == 5.0
    assert mats["linear2"][1, 1] == 0.1
