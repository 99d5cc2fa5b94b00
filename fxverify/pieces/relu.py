"""ReLU and Leaky ReLU: ``out = z`` where the unit is active (z >= 0), ``alpha * z`` where it is not
(alpha = 0 for ReLU). The pattern is a boolean per unit (True: active).

At a cut that is a ReLU the features of two points agree only when each unit is active for
both (equal pre-activations) or inactive for both (any non-positive ones), so the descent
shares one pattern between the points there (:meth:`Relu.shared_region`). A Leaky ReLU is
injective: its features agree exactly when its inputs do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .. import linops
from .base import Piece, Rows, rows

#: row types of a shared pattern at a ReLU cut
SHARED_ACTIVE, SHARED_INACTIVE = 1, 2


@dataclass(frozen=True)
class Relu(Piece):
    kind: ClassVar[str] = "relu"
    shares_pattern_at_cut: ClassVar[bool] = True
    alpha: float = 0.0  # Leaky ReLU's negative slope (0 < alpha < 1); 0 for ReLU

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha < 1.0:
            raise ValueError(f"{self.name}: leaky slope {self.alpha} outside [0, 1)")

    @property
    def leaky(self) -> bool:
        return self.alpha != 0.0

    def apply(self, x: np.ndarray) -> np.ndarray:
        return np.maximum(x, 0.0) if not self.leaky else np.where(x >= 0, x, self.alpha * x)

    # ---- descent ----------------------------------------------------------------------------
    def pattern_of(self, z: np.ndarray) -> np.ndarray:
        return z > 0

    def through(self, pattern, c, J):
        if not self.leaky:
            return np.where(pattern, c, 0.0), linops.scale_rows(J, pattern.astype(np.float64))
        slope = np.where(pattern, 1.0, self.alpha)
        return slope * c, linops.scale_rows(J, slope)

    def region(self, pattern, c, J) -> Rows:
        sigma = np.where(pattern, 1.0, -1.0)  # active: -z <= 0; inactive: z <= 0
        return rows(linops.scale_rows(J, -sigma), sigma * c, np.arange(len(c)))

    def moves(self, pattern, r: Rows, dual, take):
        flip = np.zeros(pattern.shape, dtype=bool)
        flip[r.unit[take]] = True
        if not flip.any():
            return None
        return pattern ^ flip

    # ---- a shared pattern at a ReLU cut -------------------------------------------------------
    def shared_pattern_of(self, zu: np.ndarray, zv: np.ndarray) -> np.ndarray:
        return (zu > 0) & (zv > 0)

    def shared_region(self, pattern, cu, Ju, cv, Jv):
        """Rows keeping both points in the shared pattern, as (point, type, Rows) blocks, and the
        equalities ``Eu a_u - Ev a_v = e`` that make the features equal."""
        act = np.flatnonzero(pattern)
        ina = np.flatnonzero(~pattern)
        blocks = [(0, SHARED_ACTIVE, rows(-linops.take_rows(Ju, act), cu[act], act)),
                  (0, SHARED_INACTIVE, rows(linops.take_rows(Ju, ina), -cu[ina], ina)),
                  (1, SHARED_INACTIVE, rows(linops.take_rows(Jv, ina), -cv[ina], ina))]
        if self.leaky:  # injective: the inactive units must agree too
            eq = (Ju, Jv, cv - cu)
        else:
            eq = (linops.take_rows(Ju, act), linops.take_rows(Jv, act), cv[act] - cu[act])
        return blocks, eq

    def shared_moves(self, pattern, types, units, dual, want, tight, faithful: bool, tol: float):
        """(safe, risky) flips of a shared pattern. Safe ones keep the current point feasible:
        an active unit whose row is tight (z = 0), an inactive one whose rows are tight for
        both points; risky ones leave it infeasible (the paper flips both)."""
        m = pattern.size
        safe = np.zeros(m, dtype=bool)
        a = want & (types == SHARED_ACTIVE) & (tight | faithful)
        safe[units[a]] = True
        ina = types == SHARED_INACTIVE
        tight_count = np.bincount(units[ina & tight], minlength=m)
        rows_count = np.bincount(units[ina], minlength=m)
        dual_sum = np.bincount(units[ina], weights=dual[ina], minlength=m)
        wants = dual_sum > tol
        both_tight = (tight_count == rows_count) & (rows_count > 0)
        safe |= wants & both_tight
        return safe, wants & ~both_tight

    # ---- exact model ------------------------------------------------------------------------
    def bounds(self, lo, hi):
        return self.apply(lo[None])[0], self.apply(hi[None])[0]

    def encode(self, m, z, lo, hi, tag):
        import pyomo.environ as pe

        width = len(z)
        a = self.alpha
        out_hi = np.maximum(hi, 0.0) if not self.leaky else self.apply(hi[None])[0]
        out_lo = np.zeros(width) if not self.leaky else self.apply(lo[None])[0]
        hv = pe.Var(range(width), bounds=lambda _m, j: (float(out_lo[j]), float(out_hi[j])))
        dv = pe.Var(range(width), domain=pe.Binary)
        cons = pe.ConstraintList()
        m.add_component(f"h_{tag}", hv)
        m.add_component(f"d_{tag}", dv)
        m.add_component(f"c_{tag}", cons)
        out, n_bin, n_fixed = [], 0, 0
        for j in range(width):
            l, u = float(lo[j]), float(hi[j])
            if l >= 0:  # stably active: h = z
                dv[j].fix(1)
                cons.add(hv[j] == z[j])
                n_fixed += 1
            elif u <= 0:  # stably inactive: h = alpha z
                dv[j].fix(0)
                if self.leaky:
                    cons.add(hv[j] == a * z[j])
                else:
                    hv[j].fix(0.0)
                n_fixed += 1
            else:  # big-M from the bounds
                cons.add(hv[j] >= z[j])
                if self.leaky:
                    cons.add(hv[j] >= a * z[j])
                    cons.add(hv[j] <= z[j] - (1 - a) * l * (1 - dv[j]))
                    cons.add(hv[j] <= a * z[j] + (1 - a) * u * dv[j])
                else:
                    cons.add(hv[j] <= z[j] - l * (1 - dv[j]))
                    cons.add(hv[j] <= u * dv[j])
                n_bin += 1
            out.append(hv[j])
        return out, n_bin, n_fixed
