"""experiments/run.py: the smoke mode (every experiment at tiny n, as CI runs it), the budget
files it resumes from, and the bootstrap bands."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import FULL_DATA, ROOT

sys.path.insert(0, str(ROOT / "experiments"))

import bands  # noqa: E402
from budgets import BudgetFile, BudgetKey, load_budgets, round_up32  # noqa: E402

needs_data = pytest.mark.skipif(not (FULL_DATA / "mnist").exists() or not (FULL_DATA / "fashion-mnist").exists(),
                                reason=f"full IDX data not in {FULL_DATA} (scripts/fetch_data.sh data)")


@needs_data
def test_smoke_runs_every_experiment(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "experiments" / "run.py"), "--smoke", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    sys.path.insert(0, str(ROOT / "experiments"))
    import run

    out = tmp_path / "smoke"
    for name, ex in run.EXPERIMENTS.items():
        doc = json.loads((out / name / "summary.json").read_text())
        assert doc["threat_model"] == ex.threat and doc["commit"] and doc["machine"]
        assert (out / name / "cross_entropy.png").stat().st_size > 0 and (out / name / "loss01.png").exists()
        for c in doc["curves"]:
            if c["subset"] == 0:
                lo, hi = c["ce_band95"]
                assert all(0 <= a <= b <= np.log(2) + 1e-9 for a, b in zip(lo, hi))
                assert c["resamples"] == run.SMOKE["resamples"]
    assert "| paper's claim |" in (out / "claims.md").read_text()
    assert any((out / "budgets").rglob("*.npz"))


class _Fake:
    """A collider stand-in: eps = i + j / 10 for the pair of rows (i, j)."""

    def collide_cuts(self, u, v, cuts):
        eps = float(u[0] + v[0] / 10)
        return {cuts[0]: SimpleNamespace(eps=eps, status=SimpleNamespace(value="found"))}


class _Net:
    source = SimpleNamespace(sha256="abc")


def test_budget_files_resume_grow_and_refuse_other_points(tmp_path):
    key = BudgetKey("mnist", "m", "relu1")
    X = np.arange(6, dtype=float)[:, None]
    ia, ib = np.arange(6) + 100, np.arange(6) + 200
    bf = BudgetFile.open(key, tmp_path, _Net(), ia, ib, 4)
    assert bf.fill(_Fake(), X, X, 2) and bf.complete_upto() == 2
    again = BudgetFile.open(key, tmp_path, _Net(), ia, ib, 6)  # grows to n = 6, keeps the 2 x 2 done
    assert again.n == 6 and again.complete_upto() == 2 and again.eps[1, 1] == np.float32(1.1)
    calls = []

    class Counting(_Fake):
        def collide_cuts(self, u, v, cuts):
            calls.append((u[0], v[0]))
            return super().collide_cuts(u, v, cuts)

    assert again.fill(Counting(), X, X, 6) and len(calls) == 36 - 4  # nothing recomputed
    done = load_budgets(key, tmp_path)
    assert done.complete_upto() == 6 and float(done.eps[5, 3]) >= 5.3
    with pytest.raises(SystemExit, match="other points"):
        BudgetFile.open(key, tmp_path, _Net(), ia[::-1], ib, 6)
    with pytest.raises(SystemExit, match="model_sha256"):
        BudgetFile.open(key, tmp_path, SimpleNamespace(source=SimpleNamespace(sha256="other")), ia, ib, 6)


def test_round_up32_never_rounds_down():
    x = np.array([1.1, 2.0 + 1e-12, np.inf, np.nan, 3.3])
    y = round_up32(x)
    assert np.all(y[np.isfinite(x)].astype(np.float64) >= x[np.isfinite(x)])
    assert np.isinf(y[2]) and np.isnan(y[3])


def test_bootstrap_identity_resample_and_paired_difference():
    rng = np.random.default_rng(0)
    E = rng.uniform(1, 4, (8, 8))
    grid = [0.0, 1.5, 2.0, 3.0]
    ident = np.tile(np.arange(8), (3, 1))
    l01, ce = bands.bootstrap(E, grid, ident, ident)
    _, l01_0, ce_0 = bands.bounds(E, grid)
    np.testing.assert_allclose(l01, np.tile(l01_0, (3, 1)))
    np.testing.assert_allclose(ce, np.tile(ce_0, (3, 1)))
    ia, ib = bands.resample_indices("mnist", 8, 8, 50, 1)
    b01, bce = bands.bootstrap(E, grid, ia, ib, cache=None)
    c = bands.Curve("a", "mnist", "m", "relu1", 8, 0, None, np.asarray(grid), *bands.bounds(E, grid), b01, bce)
    d, lo, hi = bands.paired_difference(c, c, 2.0)
    assert d == lo == hi == 0.0
    lo, hi = c.band("ce")
    assert np.all(lo <= hi)


def test_one_writer_per_budget_file(tmp_path):
    from budgets import _Lock

    key = BudgetKey("mnist", "m", "relu1")
    X = np.arange(3, dtype=float)[:, None]
    bf = BudgetFile.open(key, tmp_path, _Net(), np.arange(3), np.arange(3), 3)
    held = _Lock(key.path(tmp_path))
    assert held.acquire()
    try:
        assert not bf.fill(_Fake(), X, X, 3, log=lambda s: None)  # busy: skipped, nothing written
        assert not key.path(tmp_path).exists()
    finally:
        held.release()
    assert bf.fill(_Fake(), X, X, 3, log=lambda s: None) and load_budgets(key, tmp_path).complete_upto() == 3
