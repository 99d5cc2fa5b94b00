"""Collision finding at every cut.

``collide(network, cut, u, v)`` returns a verified :class:`~fxverify.results.Collision`.
Methods:

* ``closed_form``: input and affine cuts (exact; an LP per pair under l-inf / l1 or with an
  input domain);
* ``descent`` (default): closed forms where they apply, the pattern descent at piecewise-linear
  cuts (:mod:`fxverify.collision.descent`), started at the midpoint's patterns (profile
  ``start``; or from the collision found at a shallower cut). A collision at a cut that
  determines this one (a dominator: in a chain, any shallower cut) is one here too and is kept
  when it is better, so eps never grows with depth;
* ``faithful``: the paper's descent exactly (midpoint start, its stopping rule), a baseline;
* ``exact``: the mixed-integer optimum (see :mod:`fxverify.collision.exact`);
* ``apgd``: the Auto-PGD baseline, a gradient attack on the feature distance polished by one LP
  (:mod:`fxverify.collision.apgd`; l2 only, no fallback to the closed forms).

A :class:`Collider` takes a resolved :class:`~fxverify.config.Engine` and keeps what every pair
shares (plans with their SVDs, descents, the onnxruntime session); ``collide`` caches one per
network and engine, so one-off calls cost about what a reused collider does.
"""

from __future__ import annotations

import math
import time
import weakref
from dataclasses import replace

import numpy as np

from ..backends.base import SolverOptions, Termination, with_fallbacks
from ..errors import ArgumentError, DataError, SolverError
from ..ir import Network
from ..results import Collision, CollisionStatus
from .affine import affine_problem, closed_form, pair_collision
from .descent import GridStop, PatternDescent
from .plan import CutPlan
from .verify import Verifier

__all__ = ["Collider", "collide", "Collision", "CollisionStatus"]


class Collider:
    """Finds and verifies collisions for one network with one resolved engine."""

    def __init__(self, net: Network, engine, plans: dict[str, CutPlan] | None = None) -> None:
        """``plans``: cut plans already prepared for ``net`` and this engine's norm and domain
        (another collider's, e.g. a run's, sent to its workers): taken as they are."""
        from .. import _checks
        from ..config import Engine

        _checks.network(net, "Collider's network")
        if not isinstance(engine, Engine):
            raise ArgumentError(f"Collider needs a resolved Engine (fxverify.resolve_engine(...)), not "
                                f"{type(engine).__name__}")
        self.net = net
        self.engine = engine
        self.method = self.engine.method
        self.verifier = Verifier(net, self.engine.norm, self.engine.domain)
        self._plans: dict[str, CutPlan] = {c: p for c, p in (plans or {}).items()
                                           if p.net is net and p.norm == engine.norm and p.domain == engine.domain}
        self._descents: dict[str, PatternDescent] = {}
        self._helper: Collider | None = None  # the exact method's descent

    @property
    def profile(self):
        return self.engine.profile

    @property
    def plans(self) -> dict[str, CutPlan]:
        """The cut plans prepared so far (with their row spaces), for another collider of the
        same network and engine (``Collider(net, engine, plans=...)``)."""
        return dict(self._plans)

    def plan(self, cut: str) -> CutPlan:
        if cut not in self._plans:
            self.net.cut_index(cut)  # raises CutError for unknown cuts
            self._plans[cut] = CutPlan.of(self.net, cut, self.engine.norm, self.engine.domain)
        return self._plans[cut]

    def _descent(self, cut: str) -> PatternDescent:
        if cut not in self._descents:
            e = self.engine
            self._descents[cut] = PatternDescent(self.plan(cut), e.lp, e.lp_options, faithful=self.method == "faithful",
                                                 max_iter=e.max_iterations, fallbacks=e.fallbacks,
                                                 risky_flips=e.risky_flips)
        return self._descents[cut]

    # ----------------------------------------------------------------------------------
    def _point(self, x, name: str) -> np.ndarray:
        from .. import _checks

        X, single = self.net.as_batch(_checks.real_array(x, name))
        if not single:
            raise DataError(f"{name} must be one sample, got a batch of {X.shape[0]}")
        if not np.all(np.isfinite(X)):
            raise DataError(f"{name} contains NaN or infinite values")
        d = self.engine.domain
        if d is not None and not d.contains(X[0]):
            raise DataError(f"{name} lies outside the input domain [{d.lo:g}, {d.hi:g}] "
                            f"(values in [{X.min():g}, {X.max():g}])")
        return X[0]

    def _verified(self, cut, u, v, u_adv, v_adv, method, t0, iterations=0, objective=math.nan, note="") -> Collision:
        u_adv, v_adv = _reachable(u, self.verifier.clip(u_adv)), _reachable(v, self.verifier.clip(v_adv))
        verdict = self.verifier.check(cut, u, v, u_adv, v_adv)
        common = dict(cut=cut, method=method, solver=self.engine.name, iterations=iterations,
                      seconds=time.perf_counter() - t0, residual=verdict.residual,
                      residual_onnx=verdict.residual_onnx, objective=objective)
        if not verdict.ok:
            return Collision(status=CollisionStatus.FAILED, message=f"verification failed: {verdict.message}",
                             **common)
        return Collision(status=CollisionStatus.FOUND, eps=verdict.eps, u_adv=u_adv, v_adv=v_adv, verified=True,
                         message=note, **common)

    def _failed(self, cut, t0, message, iterations=0) -> Collision:
        return Collision(cut=cut, status=CollisionStatus.FAILED, method=self.method, solver=self.engine.name,
                         iterations=iterations, seconds=time.perf_counter() - t0, message=message)

    def _timed_out(self, cut, t0, iterations=0) -> Collision:
        return Collision(cut=cut, status=CollisionStatus.TIMED_OUT, method=self.method, solver=self.engine.name,
                         iterations=iterations, seconds=time.perf_counter() - t0,
                         message="the time budget ended before this cut's computation did (not a result)")

    def collide(self, cut: str, u, v) -> Collision:
        """One pair at one cut. The descent keeps the collision of a closed-form cut that
        determines this one when it is better."""
        cut = self._cut_name(cut)
        if self.method == "descent":
            return self.collide_cuts(u, v, (cut,))[cut]
        u, v = self._point(u, "u"), self._point(v, "v")
        return self._collide(cut, u, v, None)

    @staticmethod
    def _cut_name(cut) -> str:
        if not isinstance(cut, str):
            raise ArgumentError(f"cut must be a cut name (a string, see Network.cuts), not {type(cut).__name__}")
        return cut

    def _collide(self, cut: str, u: np.ndarray, v: np.ndarray, start: Collision | None,
                 stop: GridStop | None = None, deadline: float | None = None) -> Collision:
        t0 = time.perf_counter()
        plan = self.plan(cut)
        usable = start if (start is not None and start.status is CollisionStatus.FOUND
                           and self.method == "descent") else None
        try:
            if plan.kind in ("identity", "affine") and closed_form(plan):
                ua, va = pair_collision(plan, u, v)
                return self._verified(cut, u, v, ua, va, "closed_form", t0)
            if _past(deadline):
                return self._timed_out(cut, t0)
            if plan.kind in ("identity", "affine"):
                return self._affine_lp(cut, plan, u, v, t0, deadline)
            if self.method == "closed_form":
                return Collision(cut=cut, status=CollisionStatus.NOT_APPLICABLE, method="closed_form",
                                 solver=self.engine.name,
                                 message=f"{cut} is piecewise linear: no closed form (use descent)")
            if self.method == "exact":
                return self._exact(cut, u, v, t0, deadline)
            if self.method == "apgd":  # the Auto-PGD baseline, polished by one LP (collision/apgd.py)
                from .apgd import apgd_collision

                return apgd_collision(self, cut, u, v, t0)
            if stop is not None:
                fu, fv = self.net.forward(np.stack([u, v]), cut=cut)
                if np.array_equal(fu, fv):  # the points themselves collide: eps = 0
                    return self._verified(cut, u, v, u.copy(), v.copy(), self.method, t0,
                                          note="equal features at the points themselves")
            if stop is not None and usable is not None and stop.reached(usable.eps):
                # the collision of a cut that determines this one is below every grid value: the
                # descent here cannot change an edge
                return self._verified(cut, u, v, usable.u_adv, usable.v_adv, self.method, t0,
                                      note=f"kept the collision found at {usable.cut} (below the grid)")
            multi = self.engine.multistart is not None and self.method == "descent"
            out = self._descent(cut).run(u, v, self._starts(cut, u, v, usable), stop, deadline=deadline, every=multi)
        except np.linalg.LinAlgError as err:  # numerical trouble in the set-up of one pair
            return self._failed(cut, t0, f"linear algebra failed: {err}")
        if out.timed_out:
            return self._timed_out(cut, t0, out.lp_solves)
        if out.failed:
            # a solver failure is a failure of the pair at this cut, counted as such; its
            # shallower collisions still count as edges here (bounds take the minimum over them)
            return self._failed(cut, t0, out.message, out.lp_solves)
        return self._descended(cut, u, v, out, usable, t0)

    def _starts(self, cut: str, u, v, usable: Collision | None) -> list[tuple[np.ndarray, np.ndarray]]:
        """The descent's starts: the midpoint, and the collision of a determining cut (first
        with profile ``start: shallower``; a later start only runs if the first fails), then the
        profile's ``multistart`` starts (:mod:`fxverify.collision.starts`; all are descended)."""
        mid = (u + v) / 2.0
        chained = [(usable.u_adv, usable.v_adv)] if usable is not None else []
        if self.method == "faithful":
            return [(mid, mid)]
        starts = chained + [(mid, mid)] if self.engine.start == "shallower" else [(mid, mid)] + chained
        if self.engine.multistart is not None:
            from .starts import extra_starts

            starts += extra_starts(self.plan(cut), u, v, self.engine.multistart)
        return starts

    def _descended(self, cut, u, v, out, usable: Collision | None, t0) -> Collision:
        """The verified result of a descent that ended (or the determining cut's collision,
        kept when it is better)."""
        result = self._first_verified(cut, u, v, out, t0) if out.found else None
        if usable is not None and (result is None or result.status is not CollisionStatus.FOUND
                                   or result.eps > usable.eps):
            kept = self._verified(cut, u, v, usable.u_adv, usable.v_adv, self.method, t0, out.lp_solves,
                                  note=f"kept the collision found at {usable.cut}")
            if kept.status is CollisionStatus.FOUND:
                return kept
        if result is None:
            return self._failed(cut, t0, out.message or "no collision found", out.lp_solves)
        problem = next((c.problem for c in out.candidates if c.objective == result.objective), out.problem)
        if self.engine.check is not None and problem is not None:
            result = self._check(result, problem)
        return result

    def _first_verified(self, cut, u, v, out, t0) -> Collision:
        """The descent's best collision that verifies (a multi-start descent's candidates in
        order of their budget; else its one point); the best one's failure when none does."""
        cands = out.candidates or [None]
        first = None
        for c in cands:
            ua, va, obj = (out.u_adv, out.v_adv, out.objective) if c is None else (c.u_adv, c.v_adv, c.objective)
            r = self._verified(cut, u, v, ua, va, self.method, t0, out.lp_solves, obj, note=out.message)
            if r.status is CollisionStatus.FOUND:
                return r
            first = first or r
        return first

    def _affine_lp(self, cut: str, plan: CutPlan, u, v, t0, deadline: float | None = None) -> Collision:
        """An affine cut without a closed form (l-inf / l1, or an input domain): one LP."""
        problem = affine_problem(plan, u, v)
        sol = self.engine.lp.solve_min_max_norm(problem, _limited(self.engine.lp, self.engine.lp_options, deadline))
        if _past(deadline) and not sol.ok:
            return self._timed_out(cut, t0, sol.iterations)
        sol = with_fallbacks(sol, problem, self.engine.fallbacks)
        if not sol.ok:
            return Collision(cut=cut, status=CollisionStatus.FAILED, method="lp", solver=self.engine.name,
                             seconds=time.perf_counter() - t0,
                             message=f"LP failed: {sol.termination.value} ({sol.message})")
        r = plan.input_dim
        x = sol.x
        return self._verified(cut, u, v, u + x[1:1 + r], v + x[1 + r:1 + 2 * r], "lp", t0, sol.iterations,
                              float(sol.objective))

    def _check(self, result: Collision, problem) -> Collision:
        """Re-solve the descent's final LP with the check backend; record its budget."""
        sol = self.engine.check.solve_min_max_norm(problem, SolverOptions())
        eps = float(sol.objective) if sol.ok else math.nan
        note = f"check by {self.engine.check.name}: " + (f"eps {eps:.9g} (difference {eps - result.objective:+.2e})"
                                                           if sol.ok else f"{sol.termination.value} ({sol.message})")
        return replace(result, check_solver=self.engine.check.name, check_eps=eps,
                       message="; ".join(m for m in (result.message, note) if m))

    def _exact(self, cut: str, u: np.ndarray, v: np.ndarray, t0: float, deadline: float | None = None) -> Collision:
        """eps* by the mixed-integer program, started from (and bounded by) the descent's
        verified collision."""
        from .exact import build_exact_model, model_size

        backend = self.engine.exact
        if self._helper is None:
            self._helper = Collider(self.net, self.engine.descent)
        start = self._helper.collide_cuts(u, v, (cut,), deadline=deadline)[cut]
        if start.status is CollisionStatus.TIMED_OUT:
            return self._timed_out(cut, t0)
        if start.status is not CollisionStatus.FOUND:
            return replace(start, method="exact", solver=self.engine.name,
                           message=f"no descent collision to bound the exact model: {start.message}")
        plan = self.plan(cut)
        radius = start.eps * (1 + 1e-9) + 1e-12
        size = model_size(plan, u, v, radius)
        refusal = backend.precheck(size.variables, size.binaries, size.constraints, size.quadratic)
        if refusal:
            raise SolverError(refusal)
        em = build_exact_model(plan, u, v, radius)
        res = backend.solve_model(em.model, _limited(backend, self.engine.exact_options, deadline))
        if _past(deadline) and res.termination in (Termination.TIME_LIMIT, Termination.ERROR):
            return self._timed_out(cut, t0, res.nodes)
        if res.termination is Termination.ERROR and not res.has_incumbent:
            raise SolverError(res.message)
        best = start
        notes = [f"{em.n_binary} binaries, {em.n_fixed} units fixed by their bounds; {res.message}"]
        if res.has_incumbent:
            au, av = em.perturbations()
            ua, va = u + plan.lift(au), v + plan.lift(av)
            raw = self._verified(cut, u, v, ua, va, "exact", t0)
            d = self._helper._descent(cut)
            polished = d.run(u, v, [(ua, va)])  # the incumbent's patterns, solved to LP precision
            cands = [raw]
            if polished.found and not polished.failed:
                cands.append(self._verified(cut, u, v, polished.u_adv, polished.v_adv, "exact", t0))
            for c in cands:
                if c.status is CollisionStatus.FOUND and c.eps < best.eps:
                    best = c
        lower = min(em.eps(res.bound), best.eps)
        if res.termination is Termination.OPTIMAL and self.engine.exact_options.rel_gap is None:
            notes.append(f"optimal: eps* in [{lower:.9g}, {best.eps:.9g}]")
        return replace(best, method="exact", solver=self.engine.name, eps_lower=lower,
                       termination=res.termination.value, iterations=res.nodes, seconds=time.perf_counter() - t0,
                       message="; ".join(notes))

    def collide_cuts(self, u, v, cuts: tuple[str, ...] | None = None, grid=None, *, deadline: float | None = None,
                     known: dict[str, Collision] | None = None) -> dict[str, Collision]:
        """All requested cuts (default: every cut) for one pair, in network order. The collision
        of a cut that determines another (requested, or with a closed form) is one there too:
        each descent may start from the best of those and keeps it when it is better -- this is
        the one place the walk over shallower cuts is decided. ``grid``: the budgets the results
        are for; a descent stops once its eps is below every positive one
        (:class:`~fxverify.collision.descent.GridStop`; None: every descent runs to its local
        optimum). ``deadline`` (a :func:`time.monotonic` time): a cut whose method is still
        running at it, and every later one, is returned ``timed-out`` (not a result).
        ``known``: this pair's results already found at some cuts (a resumed run's stored ones,
        found collisions with their points): taken as they are, exactly as if computed here."""
        from .. import _checks

        stop = None if grid is None else GridStop(tuple(sorted(_checks.budget_grid(grid, "grid"))))
        u, v = self._point(u, "u"), self._point(v, "v")
        wanted = self.net.cuts if cuts is None else tuple(self._cut_name(c) for c in _checks.sequence(cuts, "cuts",
                                                                                                       "cut names"))
        for c in wanted:
            self.net.cut_index(c)
        if self.method != "descent":
            return {c: self._collide(c, u, v, None, deadline=deadline) for c in wanted}
        out = {c: r for c, r in (known or {}).items()
               if r.status is not CollisionStatus.FOUND or r.u_adv is not None}
        for cut in self._walk(wanted):
            if cut not in out:
                out[cut] = self._collide(cut, u, v, self._best_start(cut, out), stop, deadline)
        return {c: out[c] for c in wanted}

    def _walk(self, wanted: tuple[str, ...]) -> list[str]:
        """The requested cuts and the cuts with a closed form that determine them (cheap), in
        network order: each descent may start from, and keeps, the best collision among those."""
        need = set(wanted)
        for c in wanted:
            need.update(d for d in self.net.dominators(c) if closed_form(self.plan(d)))
        return [c for c in self.net.cuts if c in need]

    def _best_start(self, cut: str, out: dict[str, Collision]) -> Collision | None:
        """The found collision with the smallest eps among the cuts that determine ``cut`` (the
        deepest of equal ones)."""
        best = None
        for dom in self.net.dominators(cut)[:-1]:
            r = out.get(dom)
            if r is not None and r.status is CollisionStatus.FOUND and (best is None or r.eps <= best.eps):
                best = r
        return best


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


def _limited(backend, options: SolverOptions, deadline: float | None) -> SolverOptions:
    """``options`` with the time left before ``deadline`` as its time limit, when the backend
    honours one."""
    if deadline is None or "time_limit" not in backend.portable_options:
        return options
    left = max(1e-3, deadline - time.monotonic())
    return replace(options, time_limit=left if options.time_limit is None else min(left, options.time_limit))


def _reachable(base: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``x`` moved (by at most an ulp per entry) so that ``base + (x - base) == x`` in float64:
    the stored difference (the witness) then reproduces the point bit for bit."""
    for _ in range(4):
        y = base + (x - base)
        if np.array_equal(y, x):
            break
        x = y
    return x


# one collider per (network, engine settings), kept while the network lives
_COLLIDERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def collide(network: Network, cut: str, u, v, method: str | None = None, solver=None,
            check_solver: str | None = None, norm: str = "l2", domain: tuple[float, float] | None = None
            ) -> Collision:
    """Find and verify a collision of ``u`` and ``v`` at ``cut``.

    ``method``: ``descent`` (default), ``faithful``, ``closed_form``, ``exact`` or ``apgd``; ``solver``: a
    profile name or file, a backend name or a :class:`~fxverify.profiles.SolverProfile`
    (default: the ``descent-activeset`` profile; ``exact-scip`` for the exact method); ``norm``: ``"l2"`` (default), ``"linf"`` or ``"l1"``;
    ``domain``: ``(lo, hi)`` keeps the perturbed points in that box (e.g. ``(0, 1)``). The result
    is never worse than the closed forms of the cuts that determine ``cut`` (input, linear maps).
    Everything a network shares across calls (row spaces, onnxruntime sessions) is cached.
    """
    import json

    from .. import _checks
    from ..profiles import METHODS, SolverProfile

    _checks.network(network)
    Collider._cut_name(cut)
    _checks.text(method, "method", METHODS)
    solver = _checks.solver(solver)
    _checks.text(check_solver, "check_solver")
    _checks.text(norm, "norm")
    domain = _checks.domain(domain)
    solver_key = json.dumps(solver.to_dict(), sort_keys=True, default=str) if isinstance(solver, SolverProfile) \
        else solver
    key = (method, solver_key, check_solver, norm, None if domain is None else tuple(float(x) for x in domain))
    cache = _COLLIDERS.setdefault(network, {})
    col = cache.get(key)
    if col is None:
        from ..config import resolve_engine

        col = Collider(network, resolve_engine(solver, norm, domain, method=method, check_solver=check_solver))
        if len(cache) >= 8:
            cache.pop(next(iter(cache)))
        cache[key] = col
    return col.collide(cut, u, v)
