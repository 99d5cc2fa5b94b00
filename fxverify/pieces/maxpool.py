"""MaxPool: each output is the maximum over a window of its input. The pattern is, per window,
the position (0 .. window size - 1) of the entry taken as the maximum; overlapping windows,
windows cut by the input's edge and padding (entries marked -1, never the maximum) are all
described by the window table. Ties (several entries at the maximum) are resolved to the
first; their rows are tight, so the descent can move to any of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from .. import linops
from ..ir import _frozen
from .base import Piece, Rows, rows


@dataclass(frozen=True)
class MaxPool(Piece):
    """``window[i]`` lists the flat input indices pooled into output ``i``; ``-1`` marks
    padding."""

    kind: ClassVar[str] = "maxpool"
    window: np.ndarray = field(repr=False, default=None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "window", _frozen(self.window, dtype=np.int64))
        if self.window.ndim != 2 or self.window.shape[0] != self.out_dim:
            raise ValueError(f"{self.name}: window table {self.window.shape} does not match {self.out_shape}")
        if np.any((self.window >= 0).sum(axis=1) == 0):
            raise ValueError(f"{self.name}: a window lies entirely in the padding")

    @property
    def n_aux(self) -> int:
        return self.window.shape[1]

    def apply(self, x: np.ndarray) -> np.ndarray:
        padded = np.concatenate([x, np.full((x.shape[0], 1), -np.inf)], axis=1)
        return padded[:, self.window].max(axis=2)

    def _taken(self, pattern) -> np.ndarray:
        return self.window[np.arange(self.window.shape[0]), pattern]

    # ---- descent ----------------------------------------------------------------------------
    def pattern_of(self, z: np.ndarray) -> np.ndarray:
        vals = np.where(self.window >= 0, np.concatenate([z, [0.0]])[self.window], -np.inf)
        return np.argmax(vals, axis=1)

    def through(self, pattern, c, J):
        idx = self._taken(pattern)
        return c[idx], linops.take_rows(J, idx)

    def region(self, pattern, c, J) -> Rows:
        """in[j] - in[k] <= 0 for every other entry j of each window (k: the pattern's)."""
        win = self.window
        other = (win >= 0)
        other[np.arange(win.shape[0]), pattern] = False
        i, j = np.nonzero(other)
        k = self._taken(pattern)[i]
        src = win[i, j]
        R = linops.take_rows(J, src) - linops.take_rows(J, k)
        return rows(R, c[k] - c[src], i, j)

    def moves(self, pattern, r: Rows, dual, take):
        if not take.any():
            return None
        # per window, the entry whose row has the largest dual
        i, j, d = r.unit[take], r.aux[take], dual[take]
        order = np.lexsort((-d, i))
        first = np.ones(order.size, dtype=bool)
        first[1:] = i[order][1:] != i[order][:-1]
        new = pattern.copy()
        new[i[order][first]] = j[order][first]
        return new

    # ---- exact model ------------------------------------------------------------------------
    def bounds(self, lo, hi):
        w = self.window
        lo_w = np.where(w >= 0, np.concatenate([lo, [-np.inf]])[w], -np.inf)
        hi_w = np.where(w >= 0, np.concatenate([hi, [-np.inf]])[w], -np.inf)
        return lo_w.max(axis=1), hi_w.max(axis=1)

    def encode(self, m, z, lo, hi, tag):
        import pyomo.environ as pe

        w = self.window
        out_lo, out_hi = self.bounds(lo, hi)
        yv = pe.Var(range(w.shape[0]), bounds=lambda _m, i: (float(out_lo[i]), float(out_hi[i])))
        cons = pe.ConstraintList()
        m.add_component(f"y_{tag}", yv)
        m.add_component(f"c_{tag}", cons)
        n_bin = n_fixed = 0
        out = []
        for i in range(w.shape[0]):
            entries = [int(s) for s in w[i] if s >= 0]
            # an entry whose upper bound is below another's lower bound is never the maximum
            cand = [s for s in entries if hi[s] >= out_lo[i]]
            if len(cand) == 1:
                cons.add(yv[i] == z[cand[0]])
                n_fixed += 1
            else:
                d = pe.Var(range(len(cand)), domain=pe.Binary)
                m.add_component(f"d_{tag}_{i}", d)
                cons.add(sum(d[k] for k in range(len(cand))) == 1)
                for k, s in enumerate(cand):
                    cons.add(yv[i] >= z[s])
                    cons.add(yv[i] <= z[s] + float(out_hi[i] - lo[s]) * (1 - d[k]))
                n_bin += len(cand)
            out.append(yv[i])
        return out, n_bin, n_fixed
