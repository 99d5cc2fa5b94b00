"""cvxopt's ``conelp`` as a cone-LP backend (the default for collision descent)."""

from __future__ import annotations

import time

import numpy as np

from .base import Backend, Capability, Opt, ConeProblem, ConeSolution, SolverOptions, Termination

_STATUS = {
    "optimal": Termination.OPTIMAL,
    "primal infeasible": Termination.INFEASIBLE,
    "dual infeasible": Termination.UNBOUNDED,
    "unknown": Termination.NUMERICAL_ERROR,
}


class CvxoptBackend(Backend):
    name = "cvxopt"
    capabilities = frozenset({Capability.CONE_LP, Capability.LP})
    required_modules = ("cvxopt",)
    install_hint = "pip install cvxopt"
    native_options = {"kkt": Opt(str, choices=("chol", "chol2", "ldl", "ldl2", "qr")),
                      "abstol": Opt(float, positive=True), "reltol": Opt(float, positive=True),
                      "feastol": Opt(float, positive=True), "maxiters": Opt(int, low=1, high=100_000),
                      "refinement": Opt(int, low=0, high=100), "kktreg": Opt(float, low=0.0)}
    portable_options = frozenset()  # no time limit in conelp; its gaps are the native abstol/reltol
    #: tighter than cvxopt's defaults (1e-7, 1e-6, 1e-7): collisions must hold to ~1e-8
    defaults = {"abstol": 1e-8, "reltol": 1e-8, "feastol": 1e-8, "maxiters": 200}

    def version(self) -> str:
        import cvxopt

        return cvxopt.__version__

    def solve_cone(self, problem: ConeProblem, options: SolverOptions) -> ConeSolution:
        import scipy.sparse as sp
        from cvxopt import matrix, solvers, spmatrix

        self.check_options(options)
        native = dict(self.defaults)
        native.update(options.native)
        kkt = native.pop("kkt", None)
        native["show_progress"] = False
        t0 = time.perf_counter()
        args = dict(dims={"l": problem.n_linear, "q": list(problem.soc_sizes), "s": []})
        if problem.A is not None and problem.A.shape[0] > 0:
            args["A"], args["b"] = matrix(np.asfortranarray(problem.A)), matrix(problem.b)
        try:
            # options= is per call: cvxopt's global solvers.options is never touched
            if sp.issparse(problem.G):
                Gc = problem.G.tocoo()
                G = spmatrix(Gc.data.tolist(), Gc.row.tolist(), Gc.col.tolist(), Gc.shape)
            else:
                G = matrix(np.asfortranarray(problem.G))
            res = solvers.conelp(matrix(problem.c), G, matrix(problem.h),
                                 kktsolver=kkt, options=native, **args)
        except (ArithmeticError, ValueError) as err:  # singular KKT system, rank conditions
            return ConeSolution(Termination.ERROR, seconds=time.perf_counter() - t0, solver=self.name,
                                message=f"cvxopt: {err}")
        seconds = time.perf_counter() - t0
        term = _STATUS.get(res["status"], Termination.NUMERICAL_ERROR)
        iters = int(res.get("iterations", 0))
        if term is Termination.NUMERICAL_ERROR and iters >= native["maxiters"]:
            term = Termination.ITERATION_LIMIT
        if res["x"] is None:
            return ConeSolution(term, iterations=iters, seconds=seconds, solver=self.name,
                                message=f"cvxopt status {res['status']!r}")
        return ConeSolution(term, x=np.array(res["x"]).ravel(), z=np.array(res["z"]).ravel(),
                            y=np.array(res["y"]).ravel() if res["y"] is not None else None,
                            objective=float(res["primal objective"]), iterations=iters, seconds=seconds,
                            solver=self.name, message=f"cvxopt status {res['status']!r}")
