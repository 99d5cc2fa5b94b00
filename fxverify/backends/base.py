"""The solver-backend protocol: what a backend declares, and the shared result types.

A backend is a class with class attributes ``name``, ``capabilities`` and
``required_modules``; it imports its solver lazily (only inside ``solve_*``/``version``),
reports a graded :class:`Availability`, and maps its native statuses onto the small shared
:class:`Termination` set. Results keep *why the solver stopped* (``termination``) apart from
*what the point is worth* (objective, primal/dual values, bound).
"""

from __future__ import annotations

import enum
import importlib.util
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from ..errors import SolverError


class Termination(enum.Enum):
    """Why a solver stopped (shared by every backend)."""

    OPTIMAL = "optimal"
    INFEASIBLE = "infeasible"
    UNBOUNDED = "unbounded"
    ITERATION_LIMIT = "iteration limit"
    TIME_LIMIT = "time limit"
    NUMERICAL_ERROR = "numerical error"  # solver gave up or returned an untrustworthy point
    ERROR = "error"  # the solver raised


class Availability(enum.IntEnum):
    """Graded availability (like Pyomo's): positive values can solve."""

    FULL = 2
    LIMITED = 1  # a size-limited licence: small problems only
    NOT_FOUND = 0  # the Python package is not installed
    BAD_LICENSE = -1  # installed, but no usable licence
    BROKEN = -2  # installed, but importing or starting it fails

    def __bool__(self) -> bool:
        return self.value > 0


class Capability(str, enum.Enum):
    CONE_LP = "cone LP with duals"  # linear objective, linear + second-order-cone constraints, duals
    LP = "LP with duals"  # linear objective and constraints, duals
    CONE_LP_PRIMAL = "cone LP (primal only)"  # the same problems, no duals (checks, not descent)
    MIQCP = "MIQCP"  # mixed-integer with quadratic / second-order-cone constraints
    MILP = "MILP"


@dataclass(frozen=True)
class ConeProblem:
    """minimize c'x  s.t.  G x + s = h,  s in K,  A x = b.

    K is ``n_linear`` nonnegative coordinates followed by second-order cones of sizes
    ``soc_sizes`` (each cone (s0, s1) with ||s1|| <= s0). The layout is cvxopt's.
    """

    c: np.ndarray
    G: np.ndarray
    h: np.ndarray
    n_linear: int
    soc_sizes: tuple[int, ...]
    A: np.ndarray | None = None
    b: np.ndarray | None = None
    #: optional warm-start information from a previous related solve (solver-specific; a
    #: backend ignores what it does not understand)
    hints: dict | None = None

    @property
    def n_vars(self) -> int:
        return self.c.shape[0]

    @property
    def n_eq(self) -> int:
        return 0 if self.A is None else self.A.shape[0]


@dataclass(frozen=True)
class MinMaxNormProblem:
    """minimize max(||x_u||, ||x_v||)  s.t.  C x <= h,  A x = b,  lb <= x <= ub,
    x = (x_u, x_v), both of size r, in the norm ``norm`` ("l2", "linf" or "l1").

    The descent's LP in its own terms (no epigraph variable, no cone rows): a backend may solve
    it directly (``Backend.solve_min_max_norm``); any cone-LP backend solves :meth:`to_cone`,
    the same problem with variables (t, x_u, x_v[, s]). Either way the solution's ``x`` is
    (t, x_u, x_v), ``z[:len(h)]`` are the duals of ``C x <= h`` (>= 0) and ``y`` those of
    ``A x = b``, as cone-LP duals. ``C`` may be dense or a scipy sparse matrix; ``A`` is dense.
    """

    C: object
    h: np.ndarray
    A: np.ndarray | None = None
    b: np.ndarray | None = None
    hints: dict | None = None
    norm: str = "l2"
    lb: np.ndarray | None = None
    ub: np.ndarray | None = None

    @property
    def r(self) -> int:
        return self.C.shape[1] // 2

    @property
    def n_linear(self) -> int:
        return self.C.shape[0]

    @property
    def n_eq(self) -> int:
        return 0 if self.A is None else self.A.shape[0]

    @property
    def sparse(self) -> bool:
        return sp.issparse(self.C)

    def to_cone(self) -> ConeProblem:
        """The problem in cvxopt's cone layout (sparse G when C is sparse)."""
        r, m = self.r, self.C.shape[0]
        n2 = 2 * r
        l1 = self.norm == "l1"
        n = 1 + n2 + (n2 if l1 else 0)
        C = sp.csr_matrix(self.C)
        blocks = [sp.hstack([sp.csr_matrix((m, 1)), C, sp.csr_matrix((m, n - 1 - n2))], format="csr")]
        rhs = [np.asarray(self.h, dtype=np.float64)]
        I = sp.identity(n2, format="csr")
        zc = sp.csr_matrix((n2, 1))
        pad = sp.csr_matrix((n2, n - 1 - n2))
        if self.ub is not None:
            blocks.append(sp.hstack([zc, I, pad], format="csr"))
            rhs.append(np.asarray(self.ub, dtype=np.float64))
        if self.lb is not None:
            blocks.append(sp.hstack([zc, -I, pad], format="csr"))
            rhs.append(-np.asarray(self.lb, dtype=np.float64))
        ones = sp.csr_matrix(np.ones((n2, 1)))
        soc_sizes: tuple[int, ...] = ()
        if self.norm == "linf":  # -t <= x_i <= t
            blocks += [sp.hstack([-ones, I], format="csr"), sp.hstack([-ones, -I], format="csr")]
            rhs += [np.zeros(n2), np.zeros(n2)]
        elif l1:  # -s <= x <= s, sum(s_u) <= t, sum(s_v) <= t
            blocks += [sp.hstack([zc, I, -I], format="csr"), sp.hstack([zc, -I, -I], format="csr")]
            rhs += [np.zeros(n2), np.zeros(n2)]
            su = np.zeros((2, n))
            su[:, 0] = -1.0
            su[0, 1 + n2:1 + n2 + r] = 1.0
            su[1, 1 + n2 + r:] = 1.0
            blocks.append(sp.csr_matrix(su))
            rhs.append(np.zeros(2))
        n_linear = sum(b.shape[0] for b in blocks)
        if self.norm == "l2":
            soc = np.zeros((2 * (1 + r), n))
            soc[0, 0] = soc[1 + r, 0] = -1.0
            idx = np.arange(r)
            soc[1 + idx, 1 + idx] = -1.0
            soc[2 + r + idx, 1 + r + idx] = -1.0
            blocks.append(sp.csr_matrix(soc))
            rhs.append(np.zeros(2 * (1 + r)))
            soc_sizes = (1 + r, 1 + r)
        G = sp.vstack(blocks, format="csr")
        if not self.sparse and G.shape[0] * G.shape[1] <= 4_000_000:
            G = G.toarray()
        c = np.zeros(n)
        c[0] = 1.0
        A = b = None
        if self.n_eq:
            A = np.hstack([np.zeros((self.n_eq, 1)), self.A, np.zeros((self.n_eq, n - 1 - n2))])
            b = self.b
        return ConeProblem(c=c, G=G, h=np.concatenate(rhs), n_linear=n_linear, soc_sizes=soc_sizes, A=A, b=b,
                           hints=self.hints)


@dataclass(frozen=True)
class ConeSolution:
    termination: Termination
    x: np.ndarray | None = None
    z: np.ndarray | None = None  # duals of G x + s = h (>= 0 on the linear part)
    y: np.ndarray | None = None  # duals of A x = b
    objective: float = float("nan")
    iterations: int = 0
    seconds: float = 0.0
    solver: str = ""
    message: str = ""
    hints: dict | None = None  # warm-start information for the next related solve

    @property
    def ok(self) -> bool:
        return self.termination is Termination.OPTIMAL and self.x is not None


def with_fallbacks(sol: ConeSolution, problem, fallbacks) -> ConeSolution:
    """``sol`` if it is optimal, else the first optimal solution of ``problem`` by the
    ``fallbacks`` ((backend, options) pairs, in order); a time limit is the user's and final."""
    for backend, options in fallbacks:
        if sol.ok or sol.termination is Termination.TIME_LIMIT:
            break
        sol = backend.solve_min_max_norm(problem, options)
    return sol


@dataclass(frozen=True)
class SolverOptions:
    """Portable options; ``native`` passes solver-specific options through unchanged."""

    time_limit: float | None = None
    rel_gap: float | None = None
    threads: int | None = None
    native: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Opt:
    """The type and range of one backend-specific option (checked before any solve)."""

    type: type
    low: float | None = None  # inclusive
    high: float | None = None  # inclusive
    positive: bool = False  # > 0
    choices: tuple | None = None

    def check(self, backend: str, name: str, value: Any) -> None:
        t = self.type
        ok = isinstance(value, t) and not (t is not bool and isinstance(value, bool))
        if t is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        what = {float: "a number", int: "an integer", bool: "true or false", str: "a string"}[t]
        if not ok:
            raise SolverError(f"backend {backend!r}: option {name}={value!r} must be {what}")
        if t in (int, float):
            if not math.isfinite(value):
                raise SolverError(f"backend {backend!r}: option {name}={value!r} must be finite")
            if self.positive and not value > 0:
                raise SolverError(f"backend {backend!r}: option {name}={value!r} must be > 0")
            if self.low is not None and value < self.low:
                raise SolverError(f"backend {backend!r}: option {name}={value!r} must be >= {self.low:g}")
            if self.high is not None and value > self.high:
                raise SolverError(f"backend {backend!r}: option {name}={value!r} must be <= {self.high:g}")
        if self.choices is not None and value not in self.choices:
            raise SolverError(f"backend {backend!r}: option {name}={value!r} must be one of "
                              f"{', '.join(map(str, self.choices))}")


class Backend:
    """Base class of solver backends. Subclasses set the class attributes and override solve_*."""

    name: ClassVar[str] = ""
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    required_modules: ClassVar[tuple[str, ...]] = ()
    install_hint: ClassVar[str] = ""
    #: options this backend accepts in ``SolverOptions.native``, with their types and ranges
    #: (misspellings and out-of-range values are errors before any solve)
    native_options: ClassVar[dict[str, Opt]] = {}
    #: the portable options (SolverOptions' time_limit, rel_gap, threads) this backend honours;
    #: setting another one is an error, never silently ignored
    portable_options: ClassVar[frozenset[str]] = frozenset({"time_limit", "rel_gap", "threads"})

    @classmethod
    def is_installed(cls) -> bool:
        return all(importlib.util.find_spec(m) is not None for m in cls.required_modules)

    def availability(self) -> Availability:
        return Availability.FULL if self.is_installed() else Availability.NOT_FOUND

    def availability_detail(self) -> str:
        """One line saying why the backend is (not) usable."""
        a = self.availability()
        if a is Availability.NOT_FOUND:
            return f"not installed ({self.install_hint})" if self.install_hint else "not installed"
        return a.name.lower().replace("_", " ")

    def version(self) -> str:
        return ""

    def check_portable(self, options: SolverOptions) -> None:
        """Refuse a portable option this backend would ignore."""
        ignored = [k for k in ("time_limit", "rel_gap", "threads")
                   if getattr(options, k) is not None and k not in self.portable_options]
        if ignored:
            honoured = ", ".join(sorted(self.portable_options)) or "none of them"
            raise SolverError(f"backend {self.name!r} cannot honour {', '.join(ignored)} (of the portable options "
                              f"it honours: {honoured})")

    def check_options(self, options: SolverOptions) -> None:
        self.check_portable(options)
        unknown = sorted(set(options.native) - set(self.native_options))
        if unknown:
            allowed = ", ".join(sorted(self.native_options)) or "none"
            raise SolverError(f"backend {self.name!r} does not know option(s) {', '.join(unknown)} "
                              f"(it accepts: {allowed})")
        for k, v in options.native.items():
            self.native_options[k].check(self.name, k, v)

    def require(self, capability: Capability) -> None:
        if capability not in self.capabilities:
            raise SolverError(f"backend {self.name!r} cannot solve a {capability.value} problem")
        a = self.availability()
        if not a:
            raise SolverError(f"backend {self.name!r} is not usable: {self.availability_detail()}")

    def solve_cone(self, problem: ConeProblem, options: SolverOptions) -> ConeSolution:
        raise SolverError(f"backend {self.name!r} cannot solve cone LPs")

    def solve_min_max_norm(self, problem: MinMaxNormProblem, options: SolverOptions) -> ConeSolution:
        """The descent's LP; backends without a native method solve it as a cone LP (the
        solution's x is cut to (t, x_u, x_v))."""
        sol = self.solve_cone(problem.to_cone(), options)
        if sol.x is not None and sol.x.shape[0] > 1 + 2 * problem.r:
            from dataclasses import replace as _replace

            sol = _replace(sol, x=sol.x[:1 + 2 * problem.r])
        return sol

    def solves(self, norm: str) -> bool:
        """Whether this backend solves the descent's problems under ``norm``."""
        need = Capability.CONE_LP if norm == "l2" else Capability.LP
        return need in self.capabilities

    def solve_model(self, model, options: SolverOptions) -> MipResult:
        """Solve a solver-neutral Pyomo model (MIQCP backends)."""
        raise SolverError(f"backend {self.name!r} cannot solve mixed-integer models")


@dataclass(frozen=True)
class MipResult:
    """A MIQCP solve: why it stopped, apart from what the incumbent and bound are worth."""

    termination: Termination
    has_incumbent: bool
    incumbent: float = float("nan")  # objective of the best point found (loaded into the model)
    bound: float = float("-inf")  # proven bound on the optimum
    seconds: float = 0.0
    nodes: int = 0
    message: str = ""
