"""Collision finding at every cut.

``collide(network, cut, u, v)`` returns a verified :class:`~fxverify.results.Collision`. Methods:

* ``closed_form``: input and affine cuts (exact);
* ``descent`` (default): closed forms where they apply, cone-LP descent at ReLU cuts, started
  at the midpoint's patterns (profile ``start``; or from the collision found at the previous
  cut); a collision at a shallower cut is one at every deeper cut and is kept when it is
  better, so eps never grows with depth;
* ``faithful``: the paper's descent exactly (midpoint start, its stopping rule), a baseline;
* ``exact``: the MIQCP optimum (see ``fxverify.collision.miqcp``).

A :class:`Collider` keeps what every pair shares (SVDs, reduced weights, the onnxruntime
session), so use one for many pairs.
"""

from __future__ import annotations

import math
import time

import numpy as np

from dataclasses import replace

from ..backends.base import Capability, SolverOptions, Termination
from ..backends.registry import get_backend
from ..errors import DataError, SolverError
from ..ir import Network
from ..profiles import SolverProfile, load_profile
from ..results import Collision, CollisionStatus
from .chain import Chain, chain_of
from .closed_form import pair_collision
from .cone_lp import ReluDescent
from .verify import Verifier

__all__ = ["Collider", "collide", "Collision", "CollisionStatus"]


class Collider:
    """Finds and verifies collisions for one network with one solver profile."""

    def __init__(self, net: Network, solver: str | SolverProfile | None = None, method: str | None = None,
                 check_solver: str | None = None) -> None:
        self.net = net
        if isinstance(solver, SolverProfile):
            self.profile = solver if method is None else solver.with_overrides({"method": method})
        else:
            self.profile = load_profile(solver, method)
        self.method = self.profile.method
        self._backend = None
        self._fallback = None
        self._helper: Collider | None = None  # the exact method's descent
        self.check_backend = None
        if check_solver is not None:
            cb = get_backend(check_solver)
            if Capability.CONE_LP not in cb.capabilities and Capability.CONE_LP_PRIMAL not in cb.capabilities:
                raise SolverError(f"backend {check_solver!r} cannot solve cone LPs, so it cannot check the descent")
            cb.require(Capability.CONE_LP if Capability.CONE_LP in cb.capabilities else Capability.CONE_LP_PRIMAL)
            self.check_backend = cb
        self.verifier = Verifier(net)
        self._chains: dict[str, Chain] = {}
        self._descents: dict[str, ReluDescent] = {}

    @property
    def backend(self):
        if self._backend is None:
            b = get_backend(self.profile.backend)
            b.require(Capability.MIQCP if self.method == "exact" else Capability.CONE_LP)
            b.check_options(self.profile.options)
            self._backend = b
        return self._backend

    def chain(self, cut: str) -> Chain:
        if cut not in self._chains:
            self.net.cut_index(cut)  # raises CutError for unknown cuts
            self._chains[cut] = chain_of(self.net, cut)
        return self._chains[cut]

    @property
    def fallback(self):
        """(backend, options) that re-solves cone LPs the main backend fails on, or None."""
        if self.profile.fallback is None:
            return None
        if self._fallback is None:
            b = get_backend(self.profile.fallback)
            b.require(Capability.CONE_LP)
            b.check_options(self.profile.fallback_options)
            self._fallback = (b, self.profile.fallback_options)
        return self._fallback

    def _descent(self, cut: str) -> ReluDescent:
        if cut not in self._descents:
            self._descents[cut] = ReluDescent(self.chain(cut), self.backend, self.profile.options,
                                              faithful=self.method == "faithful",
                                              max_iter=self.profile.max_iterations, fallback=self.fallback,
                                              risky_flips=self.profile.risky_flips)
        return self._descents[cut]

    # ----------------------------------------------------------------------------------
    def _point(self, x, name: str) -> np.ndarray:
        X, single = self.net.as_batch(x)
        if not single:
            raise DataError(f"{name} must be one sample, got a batch of {X.shape[0]}")
        if not np.all(np.isfinite(X)):
            raise DataError(f"{name} contains NaN or infinite values")
        return X[0]

    def _verified(self, cut, u, v, u_adv, v_adv, method, t0, iterations=0, objective=math.nan, note="") -> Collision:
        verdict = self.verifier.check(cut, u, v, u_adv, v_adv)
        common = dict(cut=cut, method=method, solver=self.profile.name, iterations=iterations,
                      seconds=time.perf_counter() - t0, residual=verdict.residual,
                      residual_onnx=verdict.residual_onnx, objective=objective)
        if not verdict.ok:
            return Collision(status=CollisionStatus.FAILED, message=f"verification failed: {verdict.message}",
                             **common)
        return Collision(status=CollisionStatus.FOUND, eps=verdict.eps, u_adv=u_adv, v_adv=v_adv, verified=True,
                         message=note, **common)

    def collide(self, cut: str, u, v, start: Collision | None = None) -> Collision:
        """One pair at one cut. ``start``: a verified collision at a shallower cut (descent only)."""
        u, v = self._point(u, "u"), self._point(v, "v")
        return self._collide(cut, u, v, start)

    def _collide(self, cut: str, u: np.ndarray, v: np.ndarray, start: Collision | None) -> Collision:
        t0 = time.perf_counter()
        ch = self.chain(cut)
        usable = start if (start is not None and start.status is CollisionStatus.FOUND
                           and self.method == "descent") else None
        try:
            if ch.kind in ("identity", "affine"):
                ua, va = pair_collision(ch, u, v)
                return self._verified(cut, u, v, ua, va, "closed_form", t0)
            if ch.kind == "unsupported":
                if usable is not None:  # a shallower collision is a collision here too
                    return self._verified(cut, u, v, usable.u_adv, usable.v_adv, self.method, t0,
                                          note=f"inherited from {usable.cut} ({ch.reason})")
                return Collision(cut=cut, status=CollisionStatus.NOT_APPLICABLE, method=self.method,
                                 solver=self.profile.name, message=ch.reason, seconds=time.perf_counter() - t0)
            if self.method == "closed_form":
                return Collision(cut=cut, status=CollisionStatus.NOT_APPLICABLE, method="closed_form",
                                 solver=self.profile.name,
                                 message=f"{cut} is a ReLU feature extractor: no closed form (use descent)")
            if self.method == "exact":
                return self._exact(cut, u, v, t0)
            d = self._descent(cut)
            mid = (u + v) / 2.0
            chained = [(usable.u_adv, usable.v_adv)] if usable is not None else []
            if self.method == "faithful":
                starts = [(mid, mid)]
            elif self.profile.start == "shallower":
                starts = chained + [(mid, mid)]  # the second start only if the first fails
            else:
                starts = [(mid, mid)] + chained
            out = d.run(u, v, starts)
        except np.linalg.LinAlgError as err:  # numerical trouble in the set-up of one pair
            return Collision(cut=cut, status=CollisionStatus.FAILED, method=self.method, solver=self.profile.name,
                             message=f"linear algebra failed: {err}", seconds=time.perf_counter() - t0)
        result = None
        if out.found:
            result = self._verified(cut, u, v, out.u_adv, out.v_adv, self.method, t0, out.lp_solves, out.objective,
                                    note=out.message)
        if usable is not None and (result is None or result.status is not CollisionStatus.FOUND
                                   or result.eps > usable.eps):
            kept = self._verified(cut, u, v, usable.u_adv, usable.v_adv, self.method, t0, out.lp_solves,
                                  note=f"kept the collision found at {usable.cut}")
            if kept.status is CollisionStatus.FOUND:
                return kept
        if result is None:
            return Collision(cut=cut, status=CollisionStatus.FAILED, method=self.method, solver=self.profile.name,
                             iterations=out.lp_solves, seconds=time.perf_counter() - t0,
                             message=out.message or "no collision found")
        if self.check_backend is not None and out.problem is not None:
            result = self._check(result, out.problem)
        return result

    def _check(self, result: Collision, problem) -> Collision:
        """Re-solve the descent's final cone LP with the check backend; record its budget."""
        sol = self.check_backend.solve_cone(problem.to_cone(), SolverOptions())
        eps = float(sol.objective) if sol.ok else math.nan
        note = f"check by {self.check_backend.name}: " + (f"eps {eps:.9g} (difference {eps - result.objective:+.2e})"
                                                           if sol.ok else f"{sol.termination.value} ({sol.message})")
        return replace(result, check_solver=self.check_backend.name, check_eps=eps,
                       message="; ".join(m for m in (result.message, note) if m))

    def _exact(self, cut: str, u: np.ndarray, v: np.ndarray, t0: float) -> Collision:
        """eps* by the MIQCP, started from (and bounded by) the descent's verified collision."""
        from ..backends.pyomo_backends import require_solvable
        from .miqcp import build_exact_model, eps_from_s, model_size

        if self._backend is None:  # once per collider: discovering backends reads entry points
            b = get_backend(self.profile.backend)
            require_solvable(b)
            self._backend = b
        backend = self._backend
        if self._helper is None:
            self._helper = Collider(self.net, "descent-activeset")
        start = self._helper.collide_cuts(u, v, (cut,))[cut]
        if start.status is not CollisionStatus.FOUND:
            return replace(start, method="exact", solver=self.profile.name,
                           message=f"no descent collision to bound the exact model: {start.message}")
        d = self._helper._descent(cut)
        radius = start.eps * (1 + 1e-9) + 1e-12
        refusal = backend.precheck(*model_size(d.chain, d.V, u, v, radius))
        if refusal:
            raise SolverError(refusal)
        em = build_exact_model(d.chain, d.V, u, v, radius)
        res = backend.solve_model(em.model, self.profile.options)
        if res.termination is Termination.ERROR and not res.has_incumbent:
            raise SolverError(res.message)
        best = start
        notes = [f"{em.n_binary} binaries, {em.n_fixed} stable units fixed; {res.message}"]
        if res.has_incumbent:
            au, av = em.perturbations()
            ua, va = u + d.V @ au, v + d.V @ av
            raw = self._verified(cut, u, v, ua, va, "exact", t0)
            polished = d.run(u, v, [(ua, va)])  # the incumbent's patterns, solved to LP precision
            cands = [raw]
            if polished.found:
                cands.append(self._verified(cut, u, v, polished.u_adv, polished.v_adv, "exact", t0))
            for c in cands:
                if c.status is CollisionStatus.FOUND and c.eps < best.eps:
                    best = c
        lower = min(eps_from_s(res.bound), best.eps)
        if res.termination is Termination.OPTIMAL and self.profile.options.rel_gap is None:
            notes.append(f"optimal: eps* in [{lower:.9g}, {best.eps:.9g}]")
        return replace(best, method="exact", solver=self.profile.name, eps_lower=lower,
                       termination=res.termination.value, iterations=res.nodes, seconds=time.perf_counter() - t0,
                       message="; ".join(notes))

    def collide_cuts(self, u, v, cuts: tuple[str, ...] | None = None) -> dict[str, Collision]:
        """All requested cuts (default: every cut) for one pair, each started from the
        previous cut's collision; also computes the shallower cuts the chain passes through."""
        u, v = self._point(u, "u"), self._point(v, "v")
        wanted = self.net.cuts if cuts is None else tuple(cuts)
        last = max(self.net.cut_index(c) for c in wanted)
        out: dict[str, Collision] = {}
        best: Collision | None = None
        for cut in self.net.cuts[: last + 1]:
            res = self._collide(cut, u, v, best)
            out[cut] = res
            if res.status is CollisionStatus.FOUND and (best is None or res.eps <= best.eps):
                best = res
        return {c: out[c] for c in wanted}


def collide(network: Network, cut: str, u, v, method: str | None = None, solver: str | None = None,
            check_solver: str | None = None) -> Collision:
    """Find and verify a collision of ``u`` and ``v`` at ``cut``.

    ``method``: ``descent`` (default), ``faithful``, ``closed_form`` or ``exact``; ``solver``: a
    profile name or file, or a backend name (default: the ``descent-cvxopt`` profile).
    The descent also runs at the shallower cuts, so the result is never worse than theirs.
    """
    if method == "exact" and solver is None:
        solver = "exact-scip"
    collider = Collider(network, solver, method, check_solver=check_solver)
    if collider.method == "descent":
        return collider.collide_cuts(u, v, (cut,))[cut]
    return collider.collide(cut, u, v)
