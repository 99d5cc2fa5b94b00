"""MIQCP backends through Pyomo: SCIP, Gurobi and MOSEK solve the same solver-neutral model.

The exact collision model (``fxverify.collision.miqcp``) and the cone-LP check model are plain
Pyomo ``ConcreteModel`` objects with an objective to minimise; a backend here only solves one
and reports, apart from each other, why the solver stopped (``termination``) and what it has:
the incumbent (loaded into the model's variables) and the proven bound.

* ``scip``: Pyomo's ``scip_direct`` (pyscipopt; no licence).
* ``gurobi``: Pyomo's ``gurobi_direct_minlp`` (gurobipy). The pip wheel carries a size-limited
  licence (with quadratic terms at most 200 variables); availability says ``limited`` and a
  model over the limit fails with a message giving its size.
* ``mosek``: Pyomo's ``mosek_direct`` (the older solver interface; Pyomo's new one has no MOSEK).
  Without a licence file MOSEK refuses to solve: availability says ``bad licence``.
"""

from __future__ import annotations

import math
import time
from typing import ClassVar

import numpy as np

from ..errors import SolverError
from .base import (Availability, Backend, Capability, ConeProblem, ConeSolution, MipResult, SolverOptions,
                   Termination)


def model_size(model) -> tuple[int, int, int, bool]:
    """(variables, binaries, constraints, has quadratic terms) of a Pyomo model."""
    import pyomo.environ as pe
    from pyomo.repn.standard_repn import generate_standard_repn

    nv = nb = nc = 0
    quad = False
    for v in model.component_data_objects(pe.Var, active=True, descend_into=True):
        if not v.fixed:
            nv += 1
            nb += v.is_binary()
    for c in model.component_data_objects(pe.Constraint, active=True, descend_into=True):
        nc += 1
        if not quad and generate_standard_repn(c.body, quadratic=True).quadratic_vars:
            quad = True
    return nv, nb, nc, quad


def _pyomo_termination(tc) -> Termination:
    from pyomo.contrib.solver.common.results import TerminationCondition as TC

    return {
        TC.convergenceCriteriaSatisfied: Termination.OPTIMAL,
        TC.maxTimeLimit: Termination.TIME_LIMIT,
        TC.iterationLimit: Termination.ITERATION_LIMIT,
        TC.objectiveLimit: Termination.ITERATION_LIMIT,
        TC.provenInfeasible: Termination.INFEASIBLE,
        TC.locallyInfeasible: Termination.INFEASIBLE,
        TC.infeasibleOrUnbounded: Termination.INFEASIBLE,
        TC.unbounded: Termination.UNBOUNDED,
    }.get(tc, Termination.NUMERICAL_ERROR)


class PyomoBackend(Backend):
    """A solver reached through ``pyomo.contrib.solver`` (the new Pyomo solver interface)."""

    capabilities = frozenset({Capability.MIQCP, Capability.MILP, Capability.CONE_LP_PRIMAL})
    pyomo_name: ClassVar[str] = ""
    #: portable options map to Pyomo's config; anything else passes to the solver unchanged
    native_options: dict = {}

    def check_options(self, options: SolverOptions) -> None:
        """Solver-specific options pass through to the solver (which validates them)."""
        self.check_portable(options)

    def _solver(self):
        import pyomo.environ  # noqa: F401  (registers the solver plugins)
        from pyomo.contrib.solver.common.factory import SolverFactory

        return SolverFactory(self.pyomo_name)

    def availability(self) -> Availability:
        if not self.is_installed():
            return Availability.NOT_FOUND
        try:
            a = self._solver().available()
        except Exception:  # a solver that cannot even start is broken, whatever it raised
            return Availability.BROKEN
        return {"FullLicense": Availability.FULL, "LimitedLicense": Availability.LIMITED,
                "NotFound": Availability.NOT_FOUND, "BadLicense": Availability.BAD_LICENSE,
                "NeedsCompiledExtension": Availability.BROKEN,
                "BadVersion": Availability.BROKEN}.get(a.name, Availability.BROKEN)

    def version(self) -> str:
        if not self.is_installed():
            return ""
        try:
            return ".".join(str(p) for p in self._solver().version())
        except Exception:
            return "?"

    def precheck(self, nv: int, nb: int, nc: int, quad: bool) -> str | None:
        """Before a model is built: why this backend will refuse a model of that size, or None."""
        return None

    def _refusal(self, err: Exception, model) -> str:
        return f"{self.name}: {type(err).__name__}: {err}"

    def solve_model(self, model, options: SolverOptions) -> MipResult:
        a = self.availability()
        if not a:
            raise SolverError(f"backend {self.name!r} is not usable: {self.availability_detail()}")
        solver = self._solver()
        t0 = time.perf_counter()
        try:
            res = solver.solve(model, load_solutions=False, raise_exception_on_nonoptimal_result=False,
                               time_limit=options.time_limit, rel_gap=options.rel_gap, threads=options.threads,
                               solver_options=dict(options.native))
        except Exception as err:  # licence limits, bad options: one message naming the cause
            return MipResult(Termination.ERROR, False, seconds=time.perf_counter() - t0,
                             message=self._refusal(err, model))
        seconds = time.perf_counter() - t0
        term = _pyomo_termination(res.termination_condition)
        has = res.incumbent_objective is not None
        if has:
            res.solution_loader.load_vars()
        bound = res.objective_bound if res.objective_bound is not None else -math.inf
        nodes = res.extra_info.get("NNodes", 0)
        return MipResult(term, has, incumbent=float(res.incumbent_objective) if has else math.nan,
                         bound=float(bound), seconds=seconds, nodes=int(nodes) if isinstance(nodes, (int, float)) else 0,
                         message=f"{self.name} {res.termination_condition.name}")

    def solve_cone(self, problem: ConeProblem, options: SolverOptions) -> ConeSolution:
        """The cone LP as a quadratically constrained Pyomo model (primal only, for checks)."""
        import pyomo.environ as pe

        model, x = cone_model(problem)
        r = self.solve_model(model, options)
        if not r.has_incumbent:
            return ConeSolution(r.termination, seconds=r.seconds, solver=self.name, message=r.message)
        xv = np.array([pe.value(x[i]) for i in range(problem.n_vars)])
        return ConeSolution(r.termination, x=xv, objective=float(problem.c @ xv), seconds=r.seconds,
                            solver=self.name, message=r.message)


def cone_model(problem: ConeProblem):
    """A cvxopt-layout cone LP as a Pyomo model: linear rows, equalities, and each second-order
    cone (s0, s1) = h - G x as  ||s1||^2 <= s0^2,  s0 >= 0."""
    import pyomo.environ as pe

    n = problem.n_vars
    import scipy.sparse as sp

    G = problem.G.tocsr() if sp.issparse(problem.G) else sp.csr_matrix(problem.G)
    m = pe.ConcreteModel()
    m.x = pe.Var(range(n))
    x = m.x

    def affine(i, const):
        lo, hi = G.indptr[i], G.indptr[i + 1]
        return const - sum(float(G.data[k]) * x[int(G.indices[k])] for k in range(lo, hi))

    m.lin = pe.ConstraintList()
    for i in range(problem.n_linear):
        m.lin.add(affine(i, float(problem.h[i])) >= 0)
    for i in range(problem.n_eq):
        nz = np.flatnonzero(problem.A[i])
        m.lin.add(sum(float(problem.A[i, k]) * x[int(k)] for k in nz) == float(problem.b[i]))
    m.soc = pe.ConstraintList()
    start = problem.n_linear
    for size in problem.soc_sizes:
        s = [affine(start + k, float(problem.h[start + k])) for k in range(size)]
        m.soc.add(s[0] >= 0)
        m.soc.add(sum(e * e for e in s[1:]) <= s[0] * s[0])
        start += size
    nz = np.flatnonzero(problem.c)
    m.obj = pe.Objective(expr=sum(float(problem.c[k]) * x[int(k)] for k in nz), sense=pe.minimize)
    return m, x


class ScipBackend(PyomoBackend):
    name = "scip"
    pyomo_name = "scip_direct"
    required_modules = ("pyomo", "pyscipopt")
    install_hint = "pip install 'fxverify[scip]'"


class GurobiBackend(PyomoBackend):
    name = "gurobi"
    pyomo_name = "gurobi_direct_minlp"
    required_modules = ("pyomo", "gurobipy")
    install_hint = "pip install 'fxverify[gurobi]' (and a Gurobi licence for models beyond the size limit)"
    #: the limits of the size-limited licence that ships with the pip wheel
    LIMITED_QUADRATIC_VARS = 200
    LIMITED_VARS = LIMITED_CONSTRAINTS = 2000

    def fits_limited_licence(self, model) -> tuple[bool, str]:
        return self.size_ok(*model_size(model))

    def size_ok(self, nv: int, nb: int, nc: int, quad: bool) -> tuple[bool, str]:
        size = f"{nv} variables ({nb} binary), {nc} constraints, {'with' if quad else 'no'} quadratic terms"
        if quad:
            ok = nv <= self.LIMITED_QUADRATIC_VARS
            limit = f"at most {self.LIMITED_QUADRATIC_VARS} variables with quadratic terms"
        else:
            ok = nv <= self.LIMITED_VARS and nc <= self.LIMITED_CONSTRAINTS
            limit = f"at most {self.LIMITED_VARS} variables and {self.LIMITED_CONSTRAINTS} constraints"
        return ok, f"the model has {size}; Gurobi's size-limited licence allows {limit}"

    def precheck(self, nv: int, nb: int, nc: int, quad: bool) -> str | None:
        """Before a model is built: why this backend will refuse a model of that size, or None."""
        if self.availability() is Availability.LIMITED:
            ok, why = self.size_ok(nv, nb, nc, quad)
            if not ok:
                return f"gurobi: licence too small: {why}"
        return None

    def solve_model(self, model, options: SolverOptions) -> MipResult:
        if self.availability() is Availability.LIMITED:
            ok, why = self.fits_limited_licence(model)
            if not ok:
                return MipResult(Termination.ERROR, False, message=f"gurobi: licence too small: {why}")
        return super().solve_model(model, options)


class MosekBackend(PyomoBackend):
    """MOSEK through Pyomo's ``mosek_direct`` (the older interface)."""

    name = "mosek"
    required_modules = ("pyomo", "mosek")
    install_hint = "pip install 'fxverify[mosek]' and a MOSEK licence file (MOSEKLM_LICENSE_FILE or ~/mosek/mosek.lic)"

    def availability(self) -> Availability:
        if not self.is_installed():
            return Availability.NOT_FOUND
        try:
            import mosek

            env = mosek.Env()
            try:
                env.checkoutlicense(mosek.feature.pts)
            except mosek.Error:
                return Availability.BAD_LICENSE
        except Exception:  # the native library failed to load
            return Availability.BROKEN
        return Availability.FULL

    def availability_detail(self) -> str:
        a = self.availability()
        if a is Availability.BAD_LICENSE:
            return "installed, but no MOSEK licence was found (set MOSEKLM_LICENSE_FILE or put mosek.lic in ~/mosek)"
        return super().availability_detail()

    def version(self) -> str:
        if not self.is_installed():
            return ""
        try:
            import mosek

            return ".".join(str(p) for p in mosek.Env.getversion())
        except Exception:
            return "?"

    def solve_model(self, model, options: SolverOptions) -> MipResult:
        self.require(Capability.MIQCP)
        import pyomo.environ as pe
        from pyomo.opt import TerminationCondition as OTC

        solver = pe.SolverFactory("mosek_direct")
        opts = dict(options.native)
        if options.time_limit is not None:
            opts["dparam.optimizer_max_time"] = float(options.time_limit)
            opts["dparam.mio_max_time"] = float(options.time_limit)
        if options.rel_gap is not None:
            opts["dparam.mio_tol_rel_gap"] = float(options.rel_gap)
        if options.threads is not None:
            opts["iparam.num_threads"] = int(options.threads)
        t0 = time.perf_counter()
        try:
            res = solver.solve(model, load_solutions=False, options=opts)
        except Exception as err:
            return MipResult(Termination.ERROR, False, seconds=time.perf_counter() - t0,
                             message=f"mosek: {type(err).__name__}: {err}")
        tc = res.solver.termination_condition
        term = {OTC.optimal: Termination.OPTIMAL, OTC.maxTimeLimit: Termination.TIME_LIMIT,
                OTC.infeasible: Termination.INFEASIBLE, OTC.unbounded: Termination.UNBOUNDED}.get(
            tc, Termination.NUMERICAL_ERROR)
        has = len(res.solution) > 0
        if has:
            model.solutions.load_from(res)
        obj = next(model.component_data_objects(pe.Objective, active=True))
        inc = float(pe.value(obj)) if has else math.nan
        lb = res.problem.lower_bound
        return MipResult(term, has, incumbent=inc, bound=float(lb) if lb is not None else -math.inf,
                         seconds=time.perf_counter() - t0, message=f"mosek {tc}")


def require_solvable(backend: Backend) -> None:
    """Raise a one-line SolverError when ``backend`` cannot solve MIQCPs here."""
    if Capability.MIQCP not in backend.capabilities:
        raise SolverError(f"backend {backend.name!r} cannot solve the exact MIQCP (use scip, gurobi or mosek)")
    backend.require(Capability.MIQCP)
