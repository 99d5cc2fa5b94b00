"""Auto-PGD collision baseline (``method="apgd"``): a gradient attack on the feature distance.

For a pair (u, v) and a cut f, the attack minimises ``0.5 * ||f(u + d_u) - f(v + d_v)||^2`` over
``||d_u||_2, ||d_v||_2 <= eps`` (and the input box when a domain is set) with Auto-PGD (Croce &
Hein, ICML 2020: normalised l2 gradient steps with momentum 0.75, step size 2 eps halved at the
checkpoints 0.22, 0.41, ... of the iterations when fewer than 75% of the steps since the last
checkpoint improved the loss or neither the step nor the best loss changed since then,
restarting from the best point). The budget is searched by bisection below the budget at
which both points reach the midpoint of the first linear map's pre-images (½||V^T (u - v)||,
the first linear layer's closed form; ½||u - v|| in the box), where the features collide at
every cut: a budget succeeds when the attack brings the feature distance below ``tol`` times
its value at the points themselves, and each budget starts from the last success pulled into
the smaller ball.
Gradients are numpy backward passes through the float64 graph IR (linear nodes, ReLU / Leaky
ReLU, MaxPool; no torch).

The attack's points are not an exact collision. The smallest successful budget's points are
*polished* by one LP: the activation patterns at those points, fixed, and the smallest budget
with equal features at the cut (one step of :class:`~fxverify.collision.descent.PatternDescent`
started there). The result is verified like every collision, so it is an exact collision (its
eps measured from the points) or none (the patterns admit no collision: status failed).

Under l2 without a domain the attack moves in the first linear map's row space (the variables
the descent uses; a perturbation's component outside it changes no feature and only costs
budget). Only l2 budgets are supported.

For other code (a multi-start descent): :func:`apgd_points` takes the points and returns the
attack's candidate (u~, v~) without the LP; :func:`apgd_collision` adds the polish and the
verification.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..ir import INPUT_CUT, Linear, Network
from ..pieces.maxpool import MaxPool
from ..pieces.relu import Relu
from ..results import Collision, CollisionStatus


@dataclass(frozen=True)
class ApgdSettings:
    """Attack settings (the defaults are the ones measured in benchmarks/bench_apgd.py)."""

    iterations: int = 100  # Auto-PGD iterations per budget tried
    bisections: int = 10  # budgets tried after the upper end
    tol: float = 1e-2  # success: feature distance <= tol * the distance at the points themselves
    momentum: float = 0.75
    rho: float = 0.75


# ------------------------------------------------------------------------------------------
# Features and their gradient through the IR
# ------------------------------------------------------------------------------------------
class FeatureMap:
    """The feature extractor at ``cut`` on a batch, with a backward pass (vector-Jacobian
    products) through its nodes. Subgradients at kinks: a ReLU unit at exactly 0 passes no
    gradient; a max-pool window passes it to its first maximal entry."""

    def __init__(self, net: Network, cut: str) -> None:
        self.net, self.cut = net, cut
        self.nodes = net.ancestors(cut)
        for n in self.nodes:
            if not isinstance(n, (Linear, Relu, MaxPool)):
                raise NotImplementedError(f"apgd: no backward pass for {n.name} ({n.kind})")

    def forward(self, X: np.ndarray) -> tuple[np.ndarray, dict]:
        vals = {INPUT_CUT: X}
        for n in self.nodes:
            vals[n.name] = n.apply(*(vals[x] for x in n.inputs))
        return vals[self.cut], vals

    def backward(self, vals: dict, G: np.ndarray) -> np.ndarray:
        """d<G, f(X)>/dX for the batch the values came from."""
        if not self.nodes:
            return G
        grads = {self.cut: G}
        for n in reversed(self.nodes):
            g = grads.pop(n.name, None)
            if g is None:
                continue
            if isinstance(n, Linear):
                parts = [(x, _vjp(w, g)) for x, w in zip(n.inputs, n.weights)]
            elif isinstance(n, Relu):
                z = vals[n.inputs[0]]
                parts = [(n.inputs[0], g * np.where(z > 0, 1.0, n.alpha))]
            else:  # MaxPool
                z = vals[n.inputs[0]]
                gz = np.zeros_like(z)
                for k in range(z.shape[0]):
                    idx = n.window[np.arange(n.window.shape[0]), n.pattern_of(z[k])]
                    np.add.at(gz[k], idx, g[k])
                parts = [(n.inputs[0], gz)]
            for x, gx in parts:
                grads[x] = gx if x not in grads else grads[x] + gx
        return grads[INPUT_CUT]


def _vjp(W, g: np.ndarray) -> np.ndarray:
    """g @ W (rows of g mapped back through W)."""
    if sp.issparse(W):
        return np.asarray((W.T @ g.T).T)
    return g @ W


# ------------------------------------------------------------------------------------------
# The attack at one budget
# ------------------------------------------------------------------------------------------
class _Problem:
    """Variables a = (a_u, a_v), points p + lift(a); the l2 ball of radius eps on each, and the
    box when a domain is set (identity basis then)."""

    def __init__(self, fmap: FeatureMap, u, v, basis, domain) -> None:
        self.fmap, self.u, self.v, self.V, self.domain = fmap, u, v, basis, domain
        self.calls = 0

    def points(self, a: np.ndarray) -> np.ndarray:
        d = a if self.V is None else a @ self.V.T
        return np.stack([self.u + d[0], self.v + d[1]])

    def loss_grad(self, a: np.ndarray) -> tuple[float, np.ndarray, float]:
        self.calls += 1
        X = self.points(a)
        f, vals = self.fmap.forward(X)
        diff = f[0] - f[1]
        G = np.stack([diff, -diff])
        gx = self.fmap.backward(vals, G)
        ga = gx if self.V is None else gx @ self.V
        dist = float(np.linalg.norm(diff))
        return 0.5 * dist * dist, ga, dist

    def project(self, a: np.ndarray, eps: float) -> np.ndarray:
        out = np.empty_like(a)
        for k, p in enumerate((self.u, self.v)):
            out[k] = _project_ball_box(a[k], eps, None if self.domain is None else
                                       (self.domain.lo - p, self.domain.hi - p))
        return out


def _project_ball_box(y: np.ndarray, eps: float, box) -> np.ndarray:
    """Euclidean projection of y onto {x : ||x|| <= eps, lo <= x <= hi} (0 inside the box):
    x(lam) = clip(y / (1 + lam), lo, hi) with the smallest lam >= 0 that fits the ball."""
    if box is None:
        r = float(np.linalg.norm(y))
        return y if r <= eps else y * (eps / r)
    lo, hi = box
    x = np.clip(y, lo, hi)
    if np.linalg.norm(x) <= eps:
        return x
    a, b = 0.0, 1.0
    while np.linalg.norm(np.clip(y / (1 + b), lo, hi)) > eps:
        b *= 2.0
        if b > 1e12:
            return np.zeros_like(y)
    for _ in range(60):
        m = 0.5 * (a + b)
        if np.linalg.norm(np.clip(y / (1 + m), lo, hi)) > eps:
            a = m
        else:
            b = m
    return np.clip(y / (1 + b), lo, hi)


def _checkpoints(n: int) -> set[int]:
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return {int(math.ceil(x * n)) for x in p[1:] if x < 1}


def _normalised(g: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(g, axis=1, keepdims=True)
    return np.where(n > 0, g / np.maximum(n, 1e-300), 0.0)


def apgd_at(prob: _Problem, a0: np.ndarray, eps: float, settings: ApgdSettings) -> tuple[np.ndarray, float]:
    """Auto-PGD minimising the feature distance within budget eps from a0: (best a, its
    distance)."""
    N = settings.iterations
    checks = _checkpoints(N)
    eta = 2.0 * eps
    x = prob.project(a0, eps)
    fx, g, dist = prob.loss_grad(x)
    best_x, best_f, best_d = x, fx, dist
    if dist == 0.0 or eps == 0.0:
        return best_x, best_d
    x_prev = x
    z = prob.project(x - eta * _normalised(g), eps)
    x_new = z
    last_check, improved, eta_at_check, best_at_check = 0, 0, eta, best_f
    for k in range(N):
        f_new, g_new, d_new = prob.loss_grad(x_new)
        if f_new < fx:
            improved += 1
        if f_new < best_f:
            best_x, best_f, best_d = x_new, f_new, d_new
            if d_new == 0.0:
                break
        x_prev, x, fx, g = x, x_new, f_new, g_new
        if k + 1 in checks:
            span = k + 1 - last_check
            stalled = improved < settings.rho * span or (eta == eta_at_check and best_f == best_at_check)
            eta_at_check, best_at_check = eta, best_f
            if stalled:
                eta /= 2.0
                x, fx = best_x, best_f
                _, g, _ = prob.loss_grad(x)
                x_prev = x
            last_check, improved = k + 1, 0
        z = prob.project(x - eta * _normalised(g), eps)
        a = settings.momentum
        x_new = prob.project(x + a * (z - x) + (1 - a) * (x - x_prev), eps)
    return best_x, best_d


@dataclass(frozen=True)
class ApgdPoints:
    """The attack's candidate: points (not an exact collision), the budget they were found at,
    their feature distance, and the work done."""

    u_adv: np.ndarray
    v_adv: np.ndarray
    eps: float  # the smallest budget that succeeded
    distance: float  # ||f(u_adv) - f(v_adv)||
    gradient_calls: int
    budgets_tried: int


def apgd_points(net: Network, cut: str, u: np.ndarray, v: np.ndarray, *, basis: np.ndarray | None = None,
                domain=None, settings: ApgdSettings | None = None, upper: float | None = None) -> ApgdPoints:
    """The attack for one pair at one cut: bisection on the budget over [0, upper] (default: the
    budget at which both points reach the midpoint in the perturbation variables, where the
    features collide), Auto-PGD at each budget, each budget started from the last success
    pulled into the smaller ball. ``basis``: orthonormal columns V, the
    perturbation is V a (l2 without a domain: the first linear map's row space); ``domain``: a
    :class:`~fxverify.norms.Domain` box."""
    settings = settings or ApgdSettings()
    fmap = FeatureMap(net, cut)
    u, v = np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64)
    prob = _Problem(fmap, u, v, basis, domain)
    f0, _ = fmap.forward(np.stack([u, v]))
    d0 = float(np.linalg.norm(f0[0] - f0[1]))
    if d0 == 0.0:
        return ApgdPoints(u.copy(), v.copy(), 0.0, 0.0, 0, 0)
    thresh = settings.tol * d0
    w = v - u
    wa = w if basis is None else w @ basis
    line = np.stack([wa / 2.0, -wa / 2.0])  # both points to the midpoint (of the first linear map)
    tried = 0
    if upper is None:  # the midpoint collides at every cut: the upper end needs no attack
        best = (float(np.linalg.norm(wa)) / 2.0, line, 0.0)
    else:
        x, dist = apgd_at(prob, line, float(upper), settings)
        tried = 1
        if dist > thresh:
            return ApgdPoints(*prob.points(x), float(upper), dist, prob.calls, tried)
        best = (float(upper), x, dist)
    lo = 0.0
    for _ in range(settings.bisections):
        eps = 0.5 * (lo + best[0])
        x, dist = apgd_at(prob, best[1], eps, settings)  # the last success, pulled into the ball
        tried += 1
        if dist <= thresh:
            best = (eps, x, dist)
        else:
            lo = eps
    e, x, dist = best
    return ApgdPoints(*prob.points(x), e, dist, prob.calls, tried)


# ------------------------------------------------------------------------------------------
# Polished and verified (the Collider's method="apgd")
# ------------------------------------------------------------------------------------------
def apgd_collision(collider, cut: str, u: np.ndarray, v: np.ndarray, t0: float,
                   settings: ApgdSettings | None = None) -> Collision:
    """The attack, then one LP at its points' patterns, verified: an exact collision or none.
    ``collider``: a :class:`~fxverify.collision.Collider` (its plan, LP backend and verifier)."""
    from .descent import PatternDescent

    engine = collider.engine
    if engine.norm.name != "l2":
        return Collision(cut=cut, status=CollisionStatus.NOT_APPLICABLE, method="apgd", solver=engine.name,
                         seconds=time.perf_counter() - t0, message=f"apgd supports l2 budgets, not {engine.norm.label}")
    plan = collider.plan(cut)
    try:
        pts = apgd_points(collider.net, cut, u, v, basis=plan.basis, domain=engine.domain, settings=settings)
    except NotImplementedError as err:
        return Collision(cut=cut, status=CollisionStatus.NOT_APPLICABLE, method="apgd", solver=engine.name,
                         seconds=time.perf_counter() - t0, message=str(err))
    note = (f"attack: eps {pts.eps:.6g} at feature distance {pts.distance:.3g} ({pts.budgets_tried} budgets, "
            f"{pts.gradient_calls} gradients)")
    polish = PatternDescent(plan, engine.lp, engine.lp_options, max_iter=1, fallbacks=engine.fallbacks)
    out = polish.run(u, v, [(pts.u_adv, pts.v_adv)])
    if out.failed or not out.found:
        return Collision(cut=cut, status=CollisionStatus.FAILED, method="apgd", solver=engine.name,
                         iterations=out.lp_solves, seconds=time.perf_counter() - t0,
                         message=f"{note}; polish LP: {out.failed or out.message or 'no collision'}")
    return collider._verified(cut, u, v, out.u_adv, out.v_adv, "apgd", t0, out.lp_solves, out.objective,
                              note=f"{note}; polished by one LP at its patterns")
