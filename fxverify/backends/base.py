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
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

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
    """minimize max(||x_u||, ||x_v||)  s.t.  C x <= h,  A x = b,  x = (x_u, x_v), both of size r.

    The descent's cone LP in its own terms (no epigraph variable, no cone rows): a backend may
    solve it directly (``Backend.solve_min_max_norm``); any cone-LP backend solves
    :meth:`to_cone`, the same problem with variables (t, x_u, x_v). Either way the solution's
    ``x`` is (t, x_u, x_v), ``z[:len(h)]`` are the duals of ``C x <= h`` and ``y`` those of
    ``A x = b``, as cone-LP duals.
    """

    C: np.ndarray
    h: np.ndarray
    A: np.ndarray | None = None
    b: np.ndarray | None = None
    hints: dict | None = None

    @property
    def r(self) -> int:
        return self.C.shape[1] // 2

    @property
    def n_linear(self) -> int:
        return self.C.shape[0]

    @property
    def n_eq(self) -> int:
        return 0 if self.A is None else self.A.shape[0]

    def to_cone(self) -> ConeProblem:
        r, m = self.r, self.C.shape[0]
        n = 1 + 2 * r
        G = np.zeros((m + 2 * (1 + r), n))
        G[:m, 1:] = self.C
        G[m, 0] = G[m + 1 + r, 0] = -1.0
        idx = np.arange(r)
        G[m + 1 + idx, 1 + idx] = -1.0
        G[m + 2 + r + idx, 1 + r + idx] = -1.0
        c = np.zeros(n)
        c[0] = 1.0
        A = b = None
        if self.n_eq:
            A = np.hstack([np.zeros((self.n_eq, 1)), self.A])
            b = self.b
        return ConeProblem(c=c, G=G, h=np.concatenate([self.h, np.zeros(2 * (1 + r))]), n_linear=m,
                           soc_sizes=(1 + r, 1 + r), A=A, b=b, hints=self.hints)


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


@dataclass(frozen=True)
class SolverOptions:
    """Portable options; ``native`` passes solver-specific options through unchanged."""

    time_limit: float | None = None
    rel_gap: float | None = None
    threads: int | None = None
    native: dict[str, Any] = field(default_factory=dict)


class Backend:
    """Base class of solver backends. Subclasses set the class attributes and override solve_*."""

    name: ClassVar[str] = ""
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    required_modules: ClassVar[tuple[str, ...]] = ()
    install_hint: ClassVar[str] = ""
    #: options this backend accepts in ``SolverOptions.native`` (misspellings are errors)
    native_options: ClassVar[frozenset[str]] = frozenset()

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

    def check_options(self, options: SolverOptions) -> None:
        unknown = sorted(set(options.native) - self.native_options)
        if unknown:
            allowed = ", ".join(sorted(self.native_options)) or "none"
            raise SolverError(f"backend {self.name!r} does not know option(s) {', '.join(unknown)} "
                              f"(it accepts: {allowed})")

    def require(self, capability: Capability) -> None:
        if capability not in self.capabilities:
            raise SolverError(f"backend {self.name!r} cannot solve a {capability.value} problem")
        a = self.availability()
        if not a:
            raise SolverError(f"backend {self.name!r} is not usable: {self.availability_detail()}")

    def solve_cone(self, problem: ConeProblem, options: SolverOptions) -> ConeSolution:
        raise SolverError(f"backend {self.name!r} cannot solve cone LPs")

    def solve_min_max_norm(self, problem: MinMaxNormProblem, options: SolverOptions) -> ConeSolution:
        """The descent's LP; backends without a native method solve it as a cone LP."""
        return self.solve_cone(problem.to_cone(), options)

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
