"""Collision finding at every cut.

``collide(network, cut, u, v)`` returns a verified :class:`~fxverify.results.Collision`. Methods:

* ``closed_form``: input and affine cuts (exact);
* ``descent`` (default): closed forms where they apply, cone-LP descent at ReLU cuts, started
  from the collision found at the previous cut (a collision at a shallower cut is one at every
  deeper cut), so eps never grows with depth;
* ``faithful``: the paper's descent exactly (midpoint start, its stopping rule), a baseline;
* ``exact``: the MIQCP optimum (see ``fxverify.collision.miqcp``).

A :class:`Collider` keeps what every pair shares (SVDs, reduced weights, the onnxruntime
session), so use one for many pairs.
"""

from __future__ import annotations

import math
import time

import numpy as np

from ..backends.base import Capability
from ..backends.registry import get_backend
from ..errors import CutError, DataError
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

    def __init__(self, net: Network, solver: str | SolverProfile | None = None, method: str | None = None) -> None:
        self.net = net
        if isinstance(solver, SolverProfile):
            self.profile = solver if method is None else solver.with_overrides({"method": method})
        else:
            self.profile = load_profile(solver, method)
        self.method = self.profile.method
        self._backend = None
        self._fallback = None
        self.verifier = Verifier(net)
        self._chains: dict[str, Chain] = {}
        self._descents: dict[str, ReluDescent] = {}

    @property
    def backend(self):
        if self._backend is None:
            b = get_backend(self.profile.backend)
            b.require(Capability.CONE_LP)
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
                                              max_iter=self.profile.max_iterations, fallback=self.fallback)
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
                raise CutError("the exact method is not available yet")
            d = self._descent(cut)
            mid = (u + v) / 2.0
            starts = [(mid, mid)] if self.method == "faithful" else \
                ([(usable.u_adv, usable.v_adv)] if usable is not None else []) + [(mid, mid)]
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
        return result

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


def collide(network: Network, cut: str, u, v, method: str | None = None, solver: str | None = None) -> Collision:
    """Find and verify a collision of ``u`` and ``v`` at ``cut``.

    ``method``: ``descent`` (default), ``faithful``, ``closed_form`` or ``exact``; ``solver``: a
    profile name or file, or a backend name (default: the ``descent-cvxopt`` profile).
    The descent also runs at the shallower cuts, so the result is never worse than theirs.
    """
    collider = Collider(network, solver, method)
    if collider.method == "descent":
        return collider.collide_cuts(u, v, (cut,))[cut]
    return collider.collide(cut, u, v)
