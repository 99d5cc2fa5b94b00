"""The exact eps* at a piecewise-linear cut: one solver-neutral Pyomo mixed-integer program.

Variables per point: the perturbation (``a`` in the first linear map's row space for l2, ``delta``
in input space otherwise) and the budget; every piece of both points by its big-M encoding
(:meth:`fxverify.pieces.base.Piece.encode`), whose M are interval bounds of its input; equal
features at the cut. The ball is

* l2: ``||a_u||^2 <= s``, ``||a_v||^2 <= s``, minimise s (an MIQCP; eps = sqrt(s));
* l-inf: ``-t <= delta_i <= t``, minimise t (a MILP);
* l1: ``-sigma <= delta <= sigma``, ``sum(sigma) <= t``, minimise t (a MILP);

and an input domain, when set, bounds every coordinate of the perturbed points.

E is the budget of a verified collision (the descent's), so the optimum lies in the ball of
radius E and the bounds may assume ``||perturbation|| <= E``: exact per unit on the first linear
map (``c +- dual_norm(row) * E``, intersected with the domain's interval bound), interval
arithmetic beyond. Big-M values are these bounds, never a constant; units whose piece the
bounds decide are fixed (no binary). The solver's proven bound gives a lower bound on eps*, its
incumbent a candidate collision that is re-verified like any other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .. import linops
from ..ir import INPUT_CUT, Linear
from ..pieces.maxpool import MaxPool
from .plan import CutPlan


def _split(W):
    if sp.issparse(W):
        W = W.tocsr()
        return W.maximum(0), W.minimum(0)
    return np.maximum(W, 0), np.minimum(W, 0)


def node_bounds(plan: CutPlan, p: np.ndarray, radius: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Interval bounds of every node's output over the perturbed points of ``p`` with budget at
    most ``radius`` (and inside the domain)."""
    d = plan.input_dim
    box_lo, box_hi = p - radius, p + radius
    if plan.domain is not None:
        box_lo, box_hi = np.maximum(box_lo, plan.domain.lo), np.minimum(box_hi, plan.domain.hi)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {INPUT_CUT: (box_lo, box_hi)}
    for n in plan.nodes:
        if isinstance(n, Linear):
            lo = hi = n.bias
            for w, src in zip(n.weights, n.inputs):
                slo, shi = out[src]
                wp, wn = _split(w)
                ilo, ihi = wp @ slo + wn @ shi, wp @ shi + wn @ slo
                if src == INPUT_CUT:  # exact over the ball, per unit
                    c = w @ p
                    rad = plan.norm.dual(plan.first_jacobian if n is plan.first else w) * radius
                    ilo, ihi = np.maximum(ilo, c - rad), np.minimum(ihi, c + rad)
                lo, hi = lo + ilo, hi + ihi
            out[n.name] = (np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64))
        else:
            out[n.name] = n.bounds(*out[n.inputs[0]])
    return out


@dataclass(frozen=True)
class ModelSize:
    variables: int
    binaries: int
    constraints: int
    quadratic: bool


def model_size(plan: CutPlan, u: np.ndarray, v: np.ndarray, radius: float) -> ModelSize:
    """The size of :func:`build_exact_model`'s model, without building it."""
    nv, nc = _ball_size(plan)
    nb = 0
    for p in (u, v):
        b = node_bounds(plan, p, radius)
        for n in plan.nodes:
            if not n.is_piece:
                continue
            lo, hi = b[n.inputs[0]]
            if isinstance(n, MaxPool):
                out_lo = n.bounds(lo, hi)[0]
                w = n.window
                cand = np.where(w >= 0, np.concatenate([hi, [-np.inf]])[w] >= out_lo[:, None], False).sum(axis=1)
                single = cand == 1
                nv += w.shape[0] + int(cand[~single].sum())
                nb += int(cand[~single].sum())
                nc += int(single.sum()) + int((1 + 2 * cand[~single]).sum())
            else:
                act, ina = lo >= 0, hi <= 0
                uns = ~(act | ina)
                nv += 2 * int(uns.sum()) + int(act.sum()) + (int(ina.sum()) if n.leaky else 0)
                nb += int(uns.sum())
                nc += (4 if n.leaky else 3) * int(uns.sum()) + int(act.sum()) + (int(ina.sum()) if n.leaky else 0)
    nc += plan.cut_node.out_dim
    return ModelSize(nv, nb, nc, plan.norm.name == "l2")


def _ball_size(plan: CutPlan) -> tuple[int, int]:
    r = plan.n_vars
    if plan.norm.name == "l2":
        return 2 * r + 1, 2
    if plan.norm.name == "linf":
        return 2 * r + 1, 4 * r
    return 4 * r + 1, 4 * r + 2


@dataclass
class ExactModel:
    model: object  # pyomo ConcreteModel
    vars_u: object
    vars_v: object
    n_binary: int
    n_fixed: int
    squared: bool  # the objective is eps^2 (l2)

    def perturbations(self) -> tuple[np.ndarray, np.ndarray]:
        import pyomo.environ as pe

        r = len(self.vars_u)
        return (np.array([pe.value(self.vars_u[i]) for i in range(r)]),
                np.array([pe.value(self.vars_v[i]) for i in range(r)]))

    def eps(self, objective: float) -> float:
        """eps from a value (or bound) of the objective."""
        if not math.isfinite(objective):
            return 0.0 if objective < 0 else math.inf
        return math.sqrt(max(0.0, objective)) if self.squared else max(0.0, objective)


def _linear_exprs(W, x: list, const: np.ndarray) -> list:
    """const + W x as Pyomo expressions (only the non-zeros)."""
    W = sp.csr_matrix(W)
    out = []
    for j in range(W.shape[0]):
        lo, hi = W.indptr[j], W.indptr[j + 1]
        out.append(float(const[j]) + sum(float(W.data[k]) * x[W.indices[k]] for k in range(lo, hi)))
    return out


def build_exact_model(plan: CutPlan, u: np.ndarray, v: np.ndarray, radius: float) -> ExactModel:
    """The mixed-integer program for the pair (u, v) at the plan's cut, restricted to budgets
    <= ``radius``."""
    import pyomo.environ as pe

    R = float(radius)
    r = plan.n_vars
    m = pe.ConcreteModel()
    reduced = plan.basis is not None
    if plan.domain is None:
        bounds_u = bounds_v = (np.full(r, -R), np.full(r, R))
    else:
        (lu, hu), (lv, hv) = plan.box(u), plan.box(v)
        bounds_u = (np.maximum(lu, -R), np.minimum(hu, R))
        bounds_v = (np.maximum(lv, -R), np.minimum(hv, R))
    m.a_u = pe.Var(range(r), bounds=lambda _m, i: (float(bounds_u[0][i]), float(bounds_u[1][i])))
    m.a_v = pe.Var(range(r), bounds=lambda _m, i: (float(bounds_v[0][i]), float(bounds_v[1][i])))
    m.ball = pe.ConstraintList()
    if plan.norm.name == "l2":
        m.t = pe.Var(bounds=(0.0, R * R))
        for a in (m.a_u, m.a_v):
            m.ball.add(sum(a[i] * a[i] for i in range(r)) <= m.t)
    else:
        m.t = pe.Var(bounds=(0.0, R))
        if plan.norm.name == "linf":
            for a in (m.a_u, m.a_v):
                for i in range(r):
                    m.ball.add(a[i] <= m.t)
                    m.ball.add(-a[i] <= m.t)
        else:
            m.sig_u = pe.Var(range(r), bounds=(0.0, R))
            m.sig_v = pe.Var(range(r), bounds=(0.0, R))
            for a, s in ((m.a_u, m.sig_u), (m.a_v, m.sig_v)):
                for i in range(r):
                    m.ball.add(a[i] <= s[i])
                    m.ball.add(-a[i] <= s[i])
                m.ball.add(sum(s[i] for i in range(r)) <= m.t)
    n_bin = n_fixed = 0
    outs = []
    for tag, p, a in (("u", u, m.a_u), ("v", v, m.a_v)):
        b = node_bounds(plan, p, R)
        avars = [a[i] for i in range(r)]
        if reduced:
            x_in = None  # the input is only read by the first linear map, through W V
        else:
            x_in = [float(p[i]) + avars[i] for i in range(r)]
        vals: dict[str, list] = {}
        for k, n in enumerate(plan.nodes):
            if isinstance(n, Linear):
                expr = None
                for w, src in zip(n.weights, n.inputs):
                    if src == INPUT_CUT and reduced:
                        e = _linear_exprs(plan.first_jacobian, avars, w @ p)
                    elif src == INPUT_CUT:
                        e = _linear_exprs(w, x_in, np.zeros(n.out_dim))
                    else:
                        e = _linear_exprs(w, vals[src], np.zeros(n.out_dim))
                    expr = e if expr is None else [x + y for x, y in zip(expr, e)]
                vals[n.name] = [e + float(bb) for e, bb in zip(expr, n.bias)]
            else:
                src = n.inputs[0]
                z = x_in if src == INPUT_CUT else vals[src]
                lo, hi = b[src]
                out, nb, nf = n.encode(m, z, lo, hi, f"{tag}{k}")
                vals[n.name] = out
                n_bin += nb
                n_fixed += nf
        outs.append(vals[plan.cut])
    m.cut = pe.ConstraintList()
    for eu, ev in zip(*outs):
        m.cut.add(eu - ev == 0)
    m.obj = pe.Objective(expr=m.t, sense=pe.minimize)
    return ExactModel(m, m.a_u, m.a_v, n_bin, n_fixed, plan.norm.name == "l2")
