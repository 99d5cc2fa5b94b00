"""experiments/multiclass.py --smoke: the summary's structure and relations every correct run
satisfies (embedded data: no download needed)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from conftest import ROOT


def test_multiclass_smoke(tmp_path):
    figs = tmp_path / "figs"
    res = subprocess.run([sys.executable, str(ROOT / "experiments" / "multiclass.py"), "--smoke", "--out",
                          str(tmp_path / "out"), "--figures", str(figs)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert doc["smoke"] and doc["commit"] and doc["machine"] and doc["wall_seconds"] >= 0
    assert doc["threat_model"] == "l2 ball in R^784 (no box)"
    eps = doc["eps"]
    assert eps[0] == 0.0 and eps == sorted(eps)
    n = doc["n_closed"]
    runs = {(r["model"], r["class_set"]): r for r in doc["runs"]}
    assert set(runs) == {(m, c) for m in doc["models"].values() for c in ("10-class", "3 vs 7")}
    for (model, label), r in runs.items():
        k = 10 if label == "10-class" else 2
        assert r["classes"] == (list(range(10)) if k == 10 else [3, 7])
        assert r["n_per_class"] == n and r["points"] == k * n and r["pairs"] == k * (k - 1) // 2 * n * n
        assert list(r["cuts"]) == doc["cuts_closed"]
        for cut, c in r["cuts"].items():
            assert c["eps"] == eps and c["pairs_done"] == r["pairs"]
            l01, ce, edges = (np.array(c[x]) for x in ("loss01_lower", "ce_lower", "edges"))
            # distinct points: no collision at eps = 0
            assert edges[0] == 0 and l01[0] == 0 and ce[0] == 0
            # a larger ball keeps every collision
            assert np.all(np.diff(edges) >= 0) and np.all(np.diff(l01) >= -1e-12) and np.all(np.diff(ce) >= -1e-12)
            # pairwise constraints only: q = 1/2 is feasible, so 0-1 <= 1/2 and CE <= log 2 for any K
            assert np.all((0 <= l01) & (l01 <= 0.5 + 1e-12)) and np.all((0 <= ce) & (ce <= np.log(2) + 1e-12))
            # one edge already forces a positive loss
            assert np.all((l01 > 0) == (edges > 0)) and np.all((ce > 0) == (edges > 0))
    for model in doc["models"].values():
        ten, two = runs[(model, "10-class")], runs[(model, "3 vs 7")]
        for cut in doc["cuts_closed"]:
            # the 10-class graph holds every 3-7 pair of the same points
            assert np.all(np.array(ten["cuts"][cut]["edges"]) >= np.array(two["cuts"][cut]["edges"]))
            assert ten["cuts"][cut]["edges"][-1] > two["cuts"][cut]["edges"][-1]  # these points, eps = 5
    # the input cut does not depend on the model
    a, b = (runs[(m, "10-class")]["cuts"]["input"] for m in doc["models"].values())
    assert a == b
    for name in ("loss01.png", "cross_entropy.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
        assert (figs / f"multiclass_{name}").stat().st_size > 0
