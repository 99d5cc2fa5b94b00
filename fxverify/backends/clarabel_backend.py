"""Clarabel (interior point, Rust) as a cone-LP backend for the descent.

Clarabel solves  min q'x  s.t.  A x + s = b,  s in K  with the same cone conventions and dual
signs as cvxopt (c + G'z + A'y = 0, z in K*), so its duals are read exactly like cvxopt's.
"""

from __future__ import annotations

import time

import numpy as np

from .base import Backend, Capability, Opt, ConeProblem, ConeSolution, SolverOptions, Termination

_STATUS = {
    "Solved": Termination.OPTIMAL,
    "PrimalInfeasible": Termination.INFEASIBLE,
    "DualInfeasible": Termination.UNBOUNDED,
    "MaxIterations": Termination.ITERATION_LIMIT,
    "MaxTime": Termination.TIME_LIMIT,
    "NumericalError": Termination.NUMERICAL_ERROR,
    "InsufficientProgress": Termination.NUMERICAL_ERROR,
    "AlmostSolved": Termination.NUMERICAL_ERROR,  # never trusted: collisions must hold to ~1e-8
}


class ClarabelBackend(Backend):
    name = "clarabel"
    capabilities = frozenset({Capability.CONE_LP, Capability.LP})
    required_modules = ("clarabel", "scipy")
    install_hint = "pip install 'fxverify[clarabel]'"
    native_options = {"tol_gap_abs": Opt(float, positive=True), "tol_gap_rel": Opt(float, positive=True),
                      "tol_feas": Opt(float, positive=True), "max_iter": Opt(int, low=1, high=100_000),
                      "direct_solve_method": Opt(str, choices=("qdldl", "faer")), "equilibrate_enable": Opt(bool)}
    defaults = {"tol_gap_abs": 1e-8, "tol_gap_rel": 1e-8, "tol_feas": 1e-8, "max_iter": 200}

    portable_options = frozenset({"time_limit"})

    def version(self) -> str:
        import clarabel

        return clarabel.__version__

    def solve_cone(self, problem: ConeProblem, options: SolverOptions) -> ConeSolution:
        import clarabel
        import scipy.sparse as sp

        self.check_options(options)
        native = dict(self.defaults)
        native.update(options.native)
        settings = clarabel.DefaultSettings()
        settings.verbose = False
        for k, v in native.items():
            setattr(settings, k, v)
        if options.time_limit is not None:
            settings.time_limit = float(options.time_limit)
        n_eq = problem.n_eq
        A = problem.G if n_eq == 0 else sp.vstack([sp.csr_matrix(problem.A), sp.csr_matrix(problem.G)])
        b = problem.h if n_eq == 0 else np.concatenate([problem.b, problem.h])
        cones = ([clarabel.ZeroConeT(n_eq)] if n_eq else []) + \
            ([clarabel.NonnegativeConeT(problem.n_linear)] if problem.n_linear else []) + \
            [clarabel.SecondOrderConeT(k) for k in problem.soc_sizes]
        t0 = time.perf_counter()
        try:
            solver = clarabel.DefaultSolver(sp.csc_matrix((problem.n_vars, problem.n_vars)), problem.c,
                                            sp.csc_matrix(A), b, cones, settings)
            res = solver.solve()
        except (ValueError, RuntimeError) as err:  # malformed data or a panic in the Rust core
            return ConeSolution(Termination.ERROR, seconds=time.perf_counter() - t0, solver=self.name,
                                message=f"clarabel: {err}")
        seconds = time.perf_counter() - t0
        status = str(res.status).split(".")[-1]
        term = _STATUS.get(status, Termination.NUMERICAL_ERROR)
        z = np.asarray(res.z)
        return ConeSolution(term, x=np.asarray(res.x), z=z[n_eq:], y=z[:n_eq] if n_eq else None,
                            objective=float(res.obj_val), iterations=int(res.iterations), seconds=seconds,
                            solver=self.name, message=f"clarabel status {status}")
