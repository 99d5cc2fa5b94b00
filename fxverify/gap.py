"""How far is the descent from the true minimum? Descent and exact eps* on the same pairs.

``gap_study`` runs the descent profile and the exact profile on ``n_pairs`` cross-class pairs
(drawn without replacement with a fixed seed, so the same command gives the same pairs) and
returns an immutable :class:`GapReport`: per pair the descent eps, the exact eps* or, when the
exact solver stopped early, its proven bracket [lower, incumbent], the relative gap and the
times; and a summary.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import __version__
from .collision import Collider
from .data import Points
from .ir import Network
from .results import CollisionStatus


@dataclass(frozen=True)
class GapRow:
    i: int
    j: int
    descent_eps: float
    exact_eps: float  # the best verified collision the exact method found (an upper bound on eps*)
    exact_lower: float  # proven: no collision below it
    solved: bool  # exact_lower == exact_eps up to the solver's tolerance
    termination: str
    relative_gap: float  # (descent - eps*) / eps*, against the lower bound when not solved
    descent_seconds: float
    exact_seconds: float
    message: str = ""


@dataclass(frozen=True)
class GapReport:
    model: str
    model_sha256: str
    cut: str
    descent_profile: str
    exact_profile: str
    rows: tuple[GapRow, ...]

    @property
    def summary(self) -> dict:
        gaps = np.array([r.relative_gap for r in self.rows if math.isfinite(r.relative_gap)])
        return {"pairs": len(self.rows), "fraction_exact": float(np.mean([r.solved for r in self.rows])) if self.rows
                else math.nan,
                "mean_relative_gap": float(gaps.mean()) if gaps.size else math.nan,
                "max_relative_gap": float(gaps.max()) if gaps.size else math.nan,
                "fraction_descent_optimal": float(np.mean(gaps <= 1e-6)) if gaps.size else math.nan,
                "descent_seconds": float(sum(r.descent_seconds for r in self.rows)),
                "exact_seconds": float(sum(r.exact_seconds for r in self.rows))}

    def write(self, out_dir: Path) -> list[Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        doc = {"fxverify_version": __version__, "model": {"path": self.model, "sha256": self.model_sha256},
               "cut": self.cut, "descent_profile": self.descent_profile, "exact_profile": self.exact_profile,
               "summary": self.summary, "pairs": [asdict(r) for r in self.rows]}
        pj, pc = out_dir / "gap.json", out_dir / "gap.csv"
        pj.write_text(json.dumps(doc, indent=2, allow_nan=True))
        with pc.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(GapRow.__dataclass_fields__))
            w.writeheader()
            for r in self.rows:
                w.writerow(asdict(r))
        return [pj, pc]


def choose_pairs(n_a: int, n_b: int, n_pairs: int, seed: int = 0) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    flat = rng.choice(n_a * n_b, size=min(n_pairs, n_a * n_b), replace=False)
    return [divmod(int(f), n_b) for f in flat]


def gap_study(net: Network, points: Points, cut: str, n_pairs: int, exact, descent, *, progress=None,
              seed: int = 0) -> GapReport:
    """``exact`` and ``descent``: resolved engines (:func:`fxverify.config.resolve_engine`)."""
    net.cut_index(cut)
    ex, de = Collider(net, exact), Collider(net, descent)
    rows = []
    pairs = choose_pairs(len(points.X_a), len(points.X_b), n_pairs, seed)
    for k, (i, j) in enumerate(pairs):
        u, v = points.X_a[i], points.X_b[j]
        t0 = time.perf_counter()
        d = de.collide_cuts(u, v, (cut,))[cut]  # the descent walks the shallower cuts too: time all
        t_descent = time.perf_counter() - t0
        e = ex.collide(cut, u, v)
        found = e.status is CollisionStatus.FOUND
        ub = e.eps if found else math.inf
        lower = e.eps_lower if found else 0.0
        solved = found and (ub - lower) <= 1e-6 * max(1.0, ub)
        ref = ub if solved else lower
        gap = (d.eps - ref) / ref if ref > 0 and math.isfinite(d.eps) else math.nan
        rows.append(GapRow(i, j, d.eps, ub, lower, solved, e.termination or e.status.value, gap, t_descent,
                           e.seconds, e.message))
        if progress:
            progress("pairs", k + 1, len(pairs))
    return GapReport(net.source.path, net.source.sha256, cut, descent.name, exact.name, tuple(rows))
