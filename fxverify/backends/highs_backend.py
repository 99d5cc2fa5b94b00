"""HiGHS (MIT licence, pip ``highspy``): the LP backend of the descent under l-inf and l1 budgets,
and a MILP backend for the exact method under those norms (through Pyomo's ``highs`` interface).

The descent's problem  min max(||x_u||, ||x_v||)  s.t.  C x <= h, A x = b, lb <= x <= ub  is
an LP for polyhedral norms: with an epigraph variable t,

* l-inf: ``-t <= x_i <= t`` for every coordinate;
* l1: ``-s <= x <= s``, ``sum(s_u) <= t``, ``sum(s_v) <= t``.

HiGHS returns row duals with the sign of d(objective)/d(bound): for the ``C x <= h`` rows of a
minimisation they are <= 0, so the duals handed to the descent (cone-LP convention, >= 0) are
their negatives. Large problems (a convolution's rows) go to the interior-point solver with
crossover, which still ends at a basic solution with exact duals; small ones to the simplex.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

import numpy as np
import scipy.sparse as sp

from .base import Backend, Capability, ConeSolution, Opt, MinMaxNormProblem, SolverOptions, Termination
from .pyomo_backends import PyomoBackend

#: problems with more rows than this use HiGHS's interior-point method (with crossover)
IPM_ROWS = 20_000


@contextlib.contextmanager
def _quiet_stdout():
    """HiGHS prints a banner on the process's stdout (file descriptor 1) whenever a solver object
    is created, before any option can turn output off: keep it out of fxverify's own output
    (``--json``) by pointing fd 1 at /dev/null meanwhile."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


class HighsBackend(PyomoBackend):
    name = "highs"
    pyomo_name = "highs"
    capabilities = frozenset({Capability.LP, Capability.MILP})
    required_modules = ("highspy",)
    install_hint = "pip install highspy (and pyomo for the exact method: pip install 'fxverify[highs]')"
    native_options = {"solver": Opt(str, choices=("choose", "simplex", "ipm", "pdlp")),
                      "primal_feasibility_tolerance": Opt(float, positive=True),
                      "dual_feasibility_tolerance": Opt(float, positive=True),
                      "simplex_strategy": Opt(int, low=0, high=4)}

    #: time_limit and threads in the LP solves; rel_gap only in the exact method's MILPs
    #: (through Pyomo): an LP is solved to optimality
    portable_options = frozenset({"time_limit", "rel_gap", "threads"})

    def check_options(self, options: SolverOptions) -> None:
        """The listed options are checked by type and range; any other must be a HiGHS option
        that accepts the value (HiGHS itself would ignore a misspelt one with a warning)."""
        from ..errors import SolverError

        self.check_portable(options)
        for k, v in options.native.items():
            if k in self.native_options:
                self.native_options[k].check(self.name, k, v)
                continue
            if not self.is_installed():
                continue
            import highspy

            h = self._highs()
            try:
                with _quiet_stdout():
                    ok = h.setOptionValue(k, v) == highspy.HighsStatus.kOk
            except Exception:  # a value of a type the option does not take
                ok = False
            h.resetOptions()
            h.setOptionValue("output_flag", False)
            if not ok:
                raise SolverError(f"backend {self.name!r}: {k}={v!r} is not a HiGHS option with a valid value")

    def version(self) -> str:
        if not self.is_installed():
            return ""
        from importlib.metadata import version

        return version("highspy")

    def _highs(self):
        """One HiGHS object per backend instance and process (created quietly, then reused)."""
        h = self.__dict__.get("_h")
        if h is None or self.__dict__.get("_pid") != os.getpid():
            import highspy

            with _quiet_stdout():
                h = highspy.Highs()
            self.__dict__["_h"], self.__dict__["_pid"] = h, os.getpid()
        h.clearModel()
        h.resetOptions()
        h.setOptionValue("output_flag", False)
        return h

    def __getstate__(self):  # the HiGHS object stays in its process
        return {k: v for k, v in self.__dict__.items() if k not in ("_h", "_pid")}

    def availability(self):
        from .base import Availability

        return Availability.FULL if self.is_installed() else Availability.NOT_FOUND

    def solve_model(self, model, options: SolverOptions):
        import importlib.util

        from ..errors import SolverError

        if importlib.util.find_spec("pyomo") is None:
            raise SolverError("the exact method with highs needs Pyomo: pip install 'fxverify[highs]'")
        with _quiet_stdout():
            return super().solve_model(model, options)

    def solve_min_max_norm(self, problem: MinMaxNormProblem, options: SolverOptions) -> ConeSolution:
        import highspy

        t0 = time.perf_counter()
        self.check_options(options)
        if problem.norm not in ("linf", "l1"):
            return ConeSolution(Termination.ERROR, solver=self.name, seconds=time.perf_counter() - t0,
                                message=f"highs solves LPs (l-inf and l1 budgets), not {problem.norm} problems")
        r = problem.r
        n2 = 2 * r
        l1 = problem.norm == "l1"
        n = n2 + 1 + (n2 if l1 else 0)  # columns: x (2r), t, [s (2r)]
        m = problem.n_linear
        C = sp.csr_matrix(problem.C)
        blocks = [sp.hstack([C, sp.csr_matrix((m, n - n2))], format="csr")]
        lo, hi = [np.full(m, -np.inf)], [np.asarray(problem.h, dtype=np.float64)]
        if problem.n_eq:
            A = sp.csr_matrix(problem.A)
            blocks.append(sp.hstack([A, sp.csr_matrix((A.shape[0], n - n2))], format="csr"))
            lo.append(np.asarray(problem.b, dtype=np.float64))
            hi.append(np.asarray(problem.b, dtype=np.float64))
        I = sp.identity(n2, format="csr")
        tcol = sp.csr_matrix(np.ones((n2, 1)))
        if l1:
            blocks += [sp.hstack([I, sp.csr_matrix((n2, 1)), -I], format="csr"),
                       sp.hstack([-I, sp.csr_matrix((n2, 1)), -I], format="csr")]
            sums = np.zeros((2, n))
            sums[:, n2] = -1.0
            sums[0, n2 + 1:n2 + 1 + r] = 1.0
            sums[1, n2 + 1 + r:] = 1.0
            blocks.append(sp.csr_matrix(sums))
            k = 2 * n2 + 2
        else:
            blocks += [sp.hstack([I, -tcol], format="csr"), sp.hstack([-I, -tcol], format="csr")]
            k = 2 * n2
        lo.append(np.full(k, -np.inf))
        hi.append(np.zeros(k))
        M = sp.vstack(blocks, format="csc")
        col_lo = np.concatenate([np.full(n2, -np.inf) if problem.lb is None else np.asarray(problem.lb, float),
                                 np.zeros(n - n2)])
        col_hi = np.concatenate([np.full(n2, np.inf) if problem.ub is None else np.asarray(problem.ub, float),
                                 np.full(n - n2, np.inf)])
        cost = np.zeros(n)
        cost[n2] = 1.0
        inf = highspy.kHighsInf
        lp = highspy.HighsLp()
        lp.num_col_, lp.num_row_ = n, M.shape[0]
        lp.col_cost_ = cost
        lp.col_lower_ = np.where(np.isfinite(col_lo), col_lo, -inf)
        lp.col_upper_ = np.where(np.isfinite(col_hi), col_hi, inf)
        rl, ru = np.concatenate(lo), np.concatenate(hi)
        lp.row_lower_ = np.where(np.isfinite(rl), rl, -inf)
        lp.row_upper_ = np.where(np.isfinite(ru), ru, inf)
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_ = M.indptr
        lp.a_matrix_.index_ = M.indices
        lp.a_matrix_.value_ = M.data
        lp.a_matrix_.num_col_, lp.a_matrix_.num_row_ = n, M.shape[0]
        h = self._highs()
        h.setOptionValue("threads", int(options.threads or 1))
        if M.shape[0] > IPM_ROWS:
            h.setOptionValue("solver", "ipm")
        if options.time_limit is not None:
            h.setOptionValue("time_limit", float(options.time_limit))
        for key, val in options.native.items():
            h.setOptionValue(key, val)
        try:
            h.passModel(lp)
            h.run()
        except Exception as err:  # highspy raises its own errors for malformed models
            return ConeSolution(Termination.ERROR, solver=self.name, seconds=time.perf_counter() - t0,
                                message=f"highs: {err}")
        status = h.getModelStatus()
        S = highspy.HighsModelStatus
        term = {S.kOptimal: Termination.OPTIMAL, S.kInfeasible: Termination.INFEASIBLE,
                S.kUnbounded: Termination.UNBOUNDED, S.kUnboundedOrInfeasible: Termination.INFEASIBLE,
                S.kTimeLimit: Termination.TIME_LIMIT, S.kIterationLimit: Termination.ITERATION_LIMIT}.get(
            status, Termination.NUMERICAL_ERROR)
        info = h.getInfo()
        iters = int(info.simplex_iteration_count) + int(info.ipm_iteration_count)
        message = f"highs {h.modelStatusToString(status)}"
        if term is not Termination.OPTIMAL:
            return ConeSolution(term, solver=self.name, seconds=time.perf_counter() - t0, iterations=iters,
                                message=message)
        sol = h.getSolution()
        col = np.asarray(sol.col_value)
        dual = -np.asarray(sol.row_dual)
        x = np.concatenate([[col[n2]], col[:n2]])
        z = np.maximum(dual[:m], 0.0)
        y = dual[m:m + problem.n_eq] if problem.n_eq else None
        return ConeSolution(Termination.OPTIMAL, x=x, z=z, y=y, objective=float(col[n2]), iterations=iters,
                            seconds=time.perf_counter() - t0, solver=self.name, message=message)
