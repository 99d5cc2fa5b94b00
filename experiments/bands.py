"""Bootstrap bands for the bound curves (no new collisions).

A curve is the 0-1 and cross-entropy lower bounds (:func:`fxverify.lower_bounds`) of one n_a x n_b
matrix of per-pair budgets over a grid of budgets. A bootstrap resample draws n_a class-a and
n_b class-b points with replacement and recomputes both bounds on the induced conflict graph
(rows and columns of the matrix taken with repetition: a point drawn twice is two vertices).
The resample indices depend only on the dataset, n and the resample count, so every curve on
the same points uses the same resamples and differences between curves are paired. The band
is the 2.5 and 97.5 percentiles (a percentile bootstrap: it shows the spread from the choice of
the n points; it does not correct for the bounds' growth with n, which the text states).
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import fxverify

LEVEL = 0.95


def resample_indices(dataset: str, n_a: int, n_b: int, resamples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, n_a, n_b, resamples, zlib.crc32(dataset.encode())])
    return rng.integers(0, n_a, size=(resamples, n_a)), rng.integers(0, n_b, size=(resamples, n_b))


def bounds(E: np.ndarray, grid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(edges, loss01, ce) per grid value; budgets below every pair's are 0 without a solve."""
    grid = np.asarray(grid, dtype=np.float64)
    edges, l01, ce = np.zeros(len(grid), np.int64), np.zeros(len(grid)), np.zeros(len(grid))
    lo = float(np.min(E)) if E.size else np.inf
    live = np.flatnonzero(grid >= lo)
    if live.size:
        for k, r in zip(live, fxverify.lower_bounds(E, grid[live])):
            edges[k], l01[k], ce[k] = r.edges, r.loss01_lower, r.ce_lower
    return edges, l01, ce


def bootstrap(E: np.ndarray, grid, ia: np.ndarray, ib: np.ndarray, cache: Path | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """(loss01, ce) of every resample, shape (resamples, len(grid)); cached by content."""
    E = np.asarray(E, dtype=np.float64)
    path = None
    if cache is not None:
        h = hashlib.sha256()
        for a in (E, np.asarray(grid, dtype=np.float64), ia, ib):
            h.update(np.ascontiguousarray(a).tobytes())
            h.update(str(a.shape).encode())
        path = Path(cache) / f"{h.hexdigest()[:24]}.npz"
        if path.exists():
            with np.load(path) as f:
                return f["loss01"], f["ce"]
    l01 = np.zeros((len(ia), len(grid)))
    ce = np.zeros((len(ia), len(grid)))
    for b in range(len(ia)):
        _, l01[b], ce[b] = bounds(E[np.ix_(ia[b], ib[b])], grid)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, loss01=l01, ce=ce)
        tmp.replace(path)
    return l01, ce


def interval(samples: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    a = (1 - LEVEL) / 2
    return np.quantile(samples, a, axis=axis), np.quantile(samples, 1 - a, axis=axis)


@dataclass
class Curve:
    """One curve: its point estimates, its resamples and where it came from."""

    label: str
    dataset: str
    model: str
    cut: str
    n: int
    subset: int
    domain: tuple | None
    grid: np.ndarray
    edges: np.ndarray
    loss01: np.ndarray
    ce: np.ndarray
    boot01: np.ndarray | None = None
    bootce: np.ndarray | None = None
    pairs_failed: int = 0
    cpu_seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def values(self, loss: str) -> np.ndarray:
        return self.ce if loss == "ce" else self.loss01

    def boot(self, loss: str) -> np.ndarray | None:
        return self.bootce if loss == "ce" else self.boot01

    def band(self, loss: str) -> tuple[np.ndarray, np.ndarray] | None:
        b = self.boot(loss)
        return None if b is None else interval(b)

    def at(self, eps: float, loss: str = "ce") -> tuple[float, float, float]:
        """(value, low, high) at a budget of the grid."""
        k = int(np.flatnonzero(np.isclose(self.grid, eps))[0])
        band = self.band(loss)
        v = float(self.values(loss)[k])
        return (v, float(band[0][k]), float(band[1][k])) if band else (v, np.nan, np.nan)

    def to_dict(self) -> dict:
        d = {"label": self.label, "dataset": self.dataset, "model": f"models/{self.model}.onnx", "cut": self.cut,
             "n_per_class": self.n, "subset": self.subset,
             "domain": None if self.domain is None else list(self.domain),
             "eps": self.grid.tolist(), "edges": self.edges.tolist(),
             "loss01_lower": np.round(self.loss01, 6).tolist(), "ce_lower": np.round(self.ce, 6).tolist(),
             "pairs_failed": self.pairs_failed, "cpu_seconds": round(self.cpu_seconds, 1)}
        for loss, key in (("loss01", "loss01"), ("ce", "ce")):
            band = self.band(loss)
            if band is not None:
                d[f"{key}_band95"] = [np.round(band[0], 6).tolist(), np.round(band[1], 6).tolist()]
        if self.boot01 is not None:
            d["resamples"] = int(self.boot01.shape[0])
        d.update(self.extra)
        return d


def paired_difference(a: Curve, b: Curve, eps: float, loss: str = "ce") -> tuple[float, float, float]:
    """a - b at ``eps``: the point estimate and the 95% interval of the paired resamples (the
    two curves must be on the same points with the same resamples)."""
    if a.dataset != b.dataset or a.n != b.n or a.subset != b.subset:
        raise ValueError(f"curves {a.label}/{a.cut} and {b.label}/{b.cut} are not on the same points")
    k = int(np.flatnonzero(np.isclose(a.grid, eps))[0])
    d = float(a.values(loss)[k] - b.values(loss)[k])
    if a.boot(loss) is None or b.boot(loss) is None:
        return d, np.nan, np.nan
    s = a.boot(loss)[:, k] - b.boot(loss)[:, k]
    lo, hi = interval(s)
    return d, float(lo), float(hi)
