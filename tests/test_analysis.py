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
