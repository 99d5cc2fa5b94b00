"""Immutable result objects passed between the stages, in the order data flows:

collisions (:class:`Collision`, one pair at one cut) -> stored per-(pair, cut) results
(:class:`PairRow`, with the collision's points as a witness) -> per-cut budget matrices
(:class:`CutDistances`, :class:`Distances`) -> bounds (:class:`CutBounds`, :class:`Analysis`).
Nothing here computes or imports a later stage.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

import numpy as np

from ._version import __version__
from .bounds import BoundRecord


class CollisionStatus(str, enum.Enum):
    FOUND = "found"  # a verified collision: an edge for every eps >= its eps
    FAILED = "failed"  # the method ran but produced no verified collision (never an edge)
    NOT_APPLICABLE = "not-applicable"  # the method cannot handle this cut
    SKIPPED = "skipped"  # not computed: by the run's measured rule it cannot change any bound
    #: the deadline passed before the method finished: not a result (never stored; a resumed
    #: run computes the cut again), so results never depend on timing
    TIMED_OUT = "timed-out"


#: the statuses a result store holds (a timed-out cut is abandoned, never stored)
STORED_STATUSES = frozenset(s.value for s in CollisionStatus if s is not CollisionStatus.TIMED_OUT)


@dataclass(frozen=True)
class Collision:
    """A collision of u and v at a cut: f(u_adv) = f(v_adv).

    ``eps`` is max(||u_adv - u||, ||v_adv - v||) computed from the returned points (never the
    solver's own objective), and ``inf`` unless ``status`` is FOUND. A FOUND collision is always
    ``verified``: its features agree in the float64 IR and in onnxruntime within the
    documented tolerances, relative to the pair's own separation at the cut
    (``fxverify.collision.verify``). Its points are exactly ``u + (u_adv - u)`` in float64, so
    the stored differences reproduce them bit for bit.
    """

    cut: str
    status: CollisionStatus
    eps: float = math.inf
    u_adv: np.ndarray | None = field(default=None, repr=False)
    v_adv: np.ndarray | None = field(default=None, repr=False)
    verified: bool = False
    residual: float = math.nan  # max |f(u_adv) - f(v_adv)| in the float64 IR
    residual_onnx: float = math.nan  # the same in onnxruntime
    method: str = ""
    solver: str = ""
    iterations: int = 0
    seconds: float = 0.0
    message: str = ""
    objective: float = math.nan  # the solver's value for the budget (diagnostic; eps is what counts)
    #: exact method: a proven lower bound on eps* (no collision below it; equals eps when solved
    #: to optimality) and why the exact solver stopped; 0 / "" for the other methods
    eps_lower: float = 0.0
    termination: str = ""
    #: --check-solver: the final pattern's cone LP re-solved by a second backend
    check_solver: str = ""
    check_eps: float = math.nan

    @property
    def check_difference(self) -> float:
        """check_eps - objective of the descent's final LP (nan without a check)."""
        return self.check_eps - self.objective


@dataclass(frozen=True)
class PairRow:
    """The stored result of pair (a_i, b_j) at one cut. ``eps`` is inf unless ``status`` is
    found; ``delta_u``, ``delta_v`` (float64, None when not kept) are the witness: the collision
    is (X_a[i] + delta_u, X_b[j] + delta_v), exactly."""

    cut: str
    i: int
    j: int
    eps: float
    status: str
    method: str
    solver: str
    seconds: float
    residual: float
    residual_onnx: float
    iterations: int
    message: str
    delta_u: np.ndarray | None = field(default=None, repr=False, compare=False)
    delta_v: np.ndarray | None = field(default=None, repr=False, compare=False)

    @staticmethod
    def of(c: Collision, i: int, j: int, u: np.ndarray | None = None, v: np.ndarray | None = None) -> PairRow:
        """The row of collision ``c`` of pair (i, j); with the pair's points ``u``, ``v`` a found
        collision keeps its witness."""
        found = c.status is CollisionStatus.FOUND
        du = dv = None
        if found and u is not None and c.u_adv is not None:
            du, dv = c.u_adv - u, c.v_adv - v
        return PairRow(c.cut, i, j, c.eps if found else math.inf, c.status.value, c.method, c.solver, c.seconds,
                       c.residual, c.residual_onnx, c.iterations, c.message, du, dv)

    @property
    def found(self) -> bool:
        return self.status == CollisionStatus.FOUND.value

    @property
    def has_witness(self) -> bool:
        return self.delta_u is not None

    def collision(self, u: np.ndarray, v: np.ndarray) -> Collision:
        """The stored result as a :class:`Collision` of ``u``, ``v`` (points from the witness; a
        found row without one has none)."""
        ua = va = None
        if self.found and self.has_witness:
            ua, va = u + self.delta_u, v + self.delta_v
        return Collision(self.cut, CollisionStatus(self.status), self.eps, ua, va, verified=self.found,
                         residual=self.residual, residual_onnx=self.residual_onnx, method=self.method,
                         solver=self.solver, iterations=self.iterations, seconds=self.seconds, message=self.message)

    def without_witness(self) -> PairRow:
        return PairRow(*(getattr(self, k) for k in _ROW_FIELDS))


_ROW_FIELDS = ("cut", "i", "j", "eps", "status", "method", "solver", "seconds", "residual", "residual_onnx",
               "iterations", "message")


@dataclass(frozen=True)
class Failure:
    """A pair whose method failed at a cut, and why."""

    i: int
    j: int
    reason: str


@dataclass(frozen=True)
class CutDistances:
    """Budgets at one cut. ``eps[i, j]`` is the verified budget of pair (a_i, b_j), inf if none."""

    cut: str
    eps: np.ndarray = field(repr=False)
    computed: np.ndarray = field(repr=False)  # pairs the method has run on
    n_found: int
    n_failed: int
    n_not_applicable: int
    method: str
    seconds: float
    message: str = ""
    n_skipped: int = 0  # counted in n_done: decided, not computed (see PairSelector)
    failures: tuple[Failure, ...] = ()
    #: K classes: which entries of ``eps`` are pairs (eps[i, j] is inf elsewhere); None: all
    valid: np.ndarray | None = field(default=None, repr=False)

    @property
    def n_pairs(self) -> int:
        return self.eps.size if self.valid is None else int(self.valid.sum())

    @property
    def n_done(self) -> int:
        return int(self.computed.sum())

    @property
    def complete(self) -> bool:
        return self.n_done == self.n_pairs


@dataclass(frozen=True)
class Distances:
    """Per cut, the n_a x n_b budgets; K classes: N x N over global point indices, ``labels``
    the position in ``classes`` of each point's class (pairs: labels[i] < labels[j])."""

    cuts: tuple[str, ...]
    by_cut: dict[str, CutDistances]
    n_a: int
    n_b: int
    classes: tuple[int, ...] = ()
    labels: np.ndarray | None = field(default=None, repr=False)

    @property
    def complete(self) -> bool:
        return all(c.complete for c in self.by_cut.values())


@dataclass(frozen=True)
class CutBounds:
    cut: str
    records: tuple[BoundRecord, ...]
    pairs_total: int
    pairs_done: int
    pairs_failed: int
    pairs_not_applicable: int
    method: str
    seconds: float
    note: str = ""
    pairs_skipped: int = 0  # in pairs_done: left out by the run's pair selection (bounds stay valid)
    failures: tuple[Failure, ...] = ()


@dataclass(frozen=True)
class ThreatModel:
    """The adversary: the norm of its budget ball and the box its points stay in (None: none)."""

    norm: str = "l2"
    domain: tuple[float, float] | None = None

    @property
    def label(self) -> str:
        """``l2, unbounded`` or ``linf, domain [0, 1]`` (plot titles, terminal lines)."""
        where = "unbounded" if self.domain is None else f"domain [{self.domain[0]:g}, {self.domain[1]:g}]"
        return f"{self.norm}, {where}"

    def to_dict(self) -> dict:
        return {"norm": self.norm, "domain": "unbounded" if self.domain is None else list(self.domain)}


@dataclass(frozen=True)
class Analysis:
    model_path: str
    model_sha256: str
    spec: object  # fxverify.spec.Spec (with any overrides applied)
    profile: object  # fxverify.profiles.SolverProfile
    classes: tuple[int, ...]
    n_a: int  # two classes: the points of each; K classes: both N (pairs are (i, j) of all points)
    n_b: int
    cuts: tuple[CutBounds, ...]
    seconds: float
    version: str = __version__
    out_dir: str = ""
    norm: str = "l2"
    domain: tuple[float, float] | None = None
    unavailable: tuple[tuple[str, str], ...] = ()  # cuts the model has but fxverify cannot compute
    eps_matrices: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    #: points of each class, in the order of ``classes`` (default: n_a, n_b)
    n_per_class: tuple[int, ...] = ()

    @property
    def counts(self) -> tuple[int, ...]:
        return self.n_per_class or (self.n_a, self.n_b)

    @property
    def n(self) -> int:
        """All points: the bounds are averages over them."""
        return sum(self.counts)

    @property
    def pairs(self) -> int:
        """Cross-class pairs: sum over pairs of classes of n_a * n_b."""
        c = self.counts
        return sum(c[a] * c[b] for a in range(len(c)) for b in range(a + 1, len(c)))

    @property
    def points_label(self) -> str:
        """``classes 3 vs 7, n = 20 + 20`` or ``10 classes (0, 1, ..., 9), n = 10 x 5 = 50``."""
        if len(self.classes) == 2:
            return f"classes {self.classes[0]} vs {self.classes[1]}, n = {self.counts[0]} + {self.counts[1]}"
        names = ", ".join(map(str, self.classes))
        c = self.counts
        each = f"{len(c)} x {c[0]} = " if len(set(c)) == 1 else ""
        return f"{len(self.classes)} classes ({names}), n = {each}{self.n}"

    @property
    def threat_model(self) -> ThreatModel:
        return ThreatModel(self.norm, self.domain)

    @property
    def complete(self) -> bool:
        return all(c.pairs_done == c.pairs_total for c in self.cuts)

    @property
    def pairs_failed(self) -> int:
        return sum(c.pairs_failed for c in self.cuts)

    def records(self) -> list[dict]:
        """One flat record per (cut, eps), the rows of results.json / results.csv."""
        return [{"cut": c.cut, "eps": r.eps, "edges": r.edges, "loss01_lower": r.loss01_lower,
                 "ce_lower": r.ce_lower, "pairs_done": c.pairs_done, "pairs_failed": c.pairs_failed}
                for c in self.cuts for r in c.records]

    def cut(self, name: str) -> CutBounds:
        return next(c for c in self.cuts if c.cut == name)
