"""The exact eps* at a ReLU cut: one solver-neutral Pyomo MIQCP.

Variables a_u, a_v in R^r (the perturbations in the row space of the first layer, delta = V a:
components outside it change no feature and only add norm) and s = eps^2:

    minimise s  s.t.  ||a_u||^2 <= s,  ||a_v||^2 <= s,  s <= E^2,
                      every ReLU h = max(z, 0) of both points by a big-M encoding,
                      equal features at the cut (h_u = h_v at a ReLU cut, W h_u = W h_v at the
                      affine map after the last ReLU).

E is the budget of a verified collision (the descent's), so the optimum lies in the ball of
radius E and the pre-activation bounds may assume ||a|| <= E: exact per unit on the first layer
(c_j +- ||M_j|| E), interval arithmetic beyond. Big-M values are these bounds, never a constant;
units whose bounds do not straddle 0 are fixed (no binary). The solver's proven bound on s gives
a lower bound on eps*, its incumbent a candidate collision that is re-verified like any other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .chain import Chain


@dataclass(frozen=True)
class LayerBounds:
    lower: np.ndarray
    upper: np.ndarray

    @property
    def unstable(self) -> np.ndarray:
        return (self.lower < 0) & (self.upper > 0)


def preactivation_bounds(chain: Chain, V: np.ndarray, p: np.ndarray, radius: float) -> list[LayerBounds]:
    """Bounds on every ReLU layer's pre-activations over p + V a, ||a|| <= radius."""
    W, b = chain.weights, chain.biases
    M = W[0] @ V
    c = W[0] @ p + b[0]
    w = np.linalg.norm(M, axis=1) * radius
    out = [LayerBounds(c - w, c + w)]
    for k in range(1, chain.n_relu):
        lo, hi = np.maximum(out[-1].lower, 0), np.maximum(out[-1].upper, 0)
        Wp, Wn = np.maximum(W[k], 0), np.minimum(W[k], 0)
        out.append(LayerBounds(Wp @ lo + Wn @ hi + b[k], Wp @ hi + Wn @ lo + b[k]))
    return out


def model_size(chain: Chain, V: np.ndarray, u: np.ndarray, v: np.ndarray, radius: float):
    """(variables, binaries, constraints, quadratic) of ``build_exact_model``, without building it."""
    r = V.shape[1]
    nv, nb, nc = 2 * r + 1, 0, 2
    width = 0
    for p in (u, v):
        for lb in preactivation_bounds(chain, V, p, radius):
            width = len(lb.lower)
            unstable = int(lb.unstable.sum())
            active = int((lb.lower >= 0).sum())
            nv += 2 * unstable + active
            nb += unstable
            nc += 3 * unstable + active
    nc += chain.weights[-1].shape[0] if chain.final else width
    return nv, nb, nc, True


@dataclass
class ExactModel:
    model: object  # pyomo ConcreteModel
    a_u: object
    a_v: object
    n_binary: int
    n_fixed: int

    def perturbations(self) -> tuple[np.ndarray, np.ndarray]:
        import pyomo.environ as pe

        r = len(self.a_u)
        return (np.array([pe.value(self.a_u[i]) for i in range(r)]),
                np.array([pe.value(self.a_v[i]) for i in range(r)]))


def build_exact_model(chain: Chain, V: np.ndarray, u: np.ndarray, v: np.ndarray, radius: float) -> ExactModel:
    """The MIQCP for the pair (u, v) at ``chain``'s cut, restricted to budgets <= ``radius``."""
    import pyomo.environ as pe

    W, b = chain.weights, chain.biases
    r = V.shape[1]
    M = W[0] @ V
    m = pe.ConcreteModel()
    R = float(radius)
    m.a_u = pe.Var(range(r), bounds=(-R, R))
    m.a_v = pe.Var(range(r), bounds=(-R, R))
    m.s = pe.Var(bounds=(0.0, R * R))
    m.budget = pe.ConstraintList()
    m.budget.add(sum(m.a_u[i] * m.a_u[i] for i in range(r)) <= m.s)
    m.budget.add(sum(m.a_v[i] * m.a_v[i] for i in range(r)) <= m.s)
    m.relu = pe.ConstraintList()
    n_bin = n_fixed = 0
    last = []
    for tag, p, a in (("u", u, m.a_u), ("v", v, m.a_v)):
        bounds = preactivation_bounds(chain, V, p, R)
        c0 = W[0] @ p + b[0]
        z = [float(c0[j]) + sum(float(M[j, i]) * a[i] for i in range(r) if M[j, i] != 0) for j in range(len(c0))]
        h = None
        for k in range(chain.n_relu):
            if k > 0:
                z = [float(b[k][j]) + sum(float(W[k][j, i]) * h[i] for i in range(len(h)) if W[k][j, i] != 0)
                     for j in range(W[k].shape[0])]
            lb = bounds[k]
            width = len(z)
            hv = pe.Var(range(width), bounds=lambda _m, j, lb=lb: (0.0, max(0.0, float(lb.upper[j]))))
            dv = pe.Var(range(width), domain=pe.Binary)
            m.add_component(f"h_{tag}{k}", hv)
            m.add_component(f"d_{tag}{k}", dv)
            h = []
            for j in range(width):
                lo, hi = float(lb.lower[j]), float(lb.upper[j])
                if lo >= 0:  # stably active: h = z
                    dv[j].fix(1)
                    m.relu.add(hv[j] == z[j])
                    n_fixed += 1
                elif hi <= 0:  # stably inactive: h = 0
                    dv[j].fix(0)
                    hv[j].fix(0.0)
                    n_fixed += 1
                else:  # h = max(z, 0) with big-M from the bounds
                    m.relu.add(hv[j] >= z[j])
                    m.relu.add(hv[j] <= z[j] - lo * (1 - dv[j]))
                    m.relu.add(hv[j] <= hi * dv[j])
                    n_bin += 1
                h.append(hv[j])
        last.append(h)
    m.cut = pe.ConstraintList()
    hu, hv_ = last
    if chain.final:  # affine cut after the last ReLU: W (h_u - h_v) = 0
        Wf = chain.weights[-1]
        for row in Wf:
            nz = np.flatnonzero(row)
            m.cut.add(sum(float(row[i]) * (hu[i] - hv_[i]) for i in nz) == 0)
    else:
        for j in range(len(hu)):
            m.cut.add(hu[j] == hv_[j])
    m.obj = pe.Objective(expr=m.s, sense=pe.minimize)
    return ExactModel(m, m.a_u, m.a_v, n_bin, n_fixed)


def eps_from_s(s: float) -> float:
    return math.sqrt(max(0.0, s)) if math.isfinite(s) else (0.0 if s < 0 else math.inf)
