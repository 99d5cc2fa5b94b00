"""Immutable result objects passed between the stages (collisions -> edges -> bounds -> report)."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

import numpy as np


class CollisionStatus(str, enum.Enum):
    FOUND = "found"  # a verified collision: an edge for every eps >= its eps
    FAILED = "failed"  # the method ran but produced no verified collision (never an edge)
    NOT_APPLICABLE = "not-applicable"  # the method cannot handle this cut
    SKIPPED = "skipped"  # not computed: by the run's measured rule it cannot change any bound


@dataclass(frozen=True)
class Collision:
    """A collision of u and v at a cut: f(u_adv) = f(v_adv).

    ``eps`` is max(||u_adv - u||, ||v_adv - v||) computed from the returned points (never the
    solver's own objective), and ``inf`` unless ``status`` is FOUND. A FOUND collision is always
    ``verified``: its features agree in the float64 IR and in onnxruntime within the
    documented tolerances (``fxverify.collision.verify``).
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
