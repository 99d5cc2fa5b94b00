"""The main job: for every cut and every budget of a spec, lower bounds on the robust loss.

``analyze(model, spec)`` runs model -> IR -> pairs -> collisions (stored, resumable) -> edges ->
bounds and returns an immutable :class:`Analysis`; :mod:`fxverify.report` writes it out.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from .bounds import BoundRecord, lower_bounds
from .ir import Network
from .onnx_import import load_model
from .pipeline import Distances, Progress, compute_distances
from .profiles import SolverProfile, load_profile
from .spec import Spec, check_compatible


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


@dataclass(frozen=True)
class Analysis:
    model_path: str
    model_sha256: str
    spec: Spec
    profile: SolverProfile
    classes: tuple[int, int]
    n_a: int
    n_b: int
    cuts: tuple[CutBounds, ...]
    seconds: float
    version: str = __version__
    out_dir: str = ""
    eps_matrices: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def complete(self) -> bool:
        return all(c.pairs_done == c.pairs_total for c in self.cuts)

    def records(self) -> list[dict]:
        """One flat record per (cut, eps), the rows of results.json / results.csv."""
        return [{"cut": c.cut, "eps": r.eps, "edges": r.edges, "loss01_lower": r.loss01_lower,
                 "ce_lower": r.ce_lower, "pairs_done": c.pairs_done, "pairs_failed": c.pairs_failed}
                for c in self.cuts for r in c.records]

    def cut(self, name: str) -> CutBounds:
        return next(c for c in self.cuts if c.cut == name)


def bounds_from_distances(d: Distances, grid) -> tuple[list[CutBounds], dict[str, np.ndarray]]:
    """Bounds per cut. A collision at a shallower cut is a collision at every deeper cut, so
    each cut's budgets are the element-wise minimum with the shallower computed cuts."""
    out, mats = [], {}
    running = None
    for cut in d.cuts:
        c = d.by_cut[cut]
        running = c.eps if running is None else np.minimum(running, c.eps)
        carried = int(np.sum(running < c.eps))
        note = c.message
        if carried:
            note = (note + "; " if note else "") + f"{carried} pairs take a shallower cut's collision"
        mats[cut] = running
        out.append(CutBounds(cut, tuple(lower_bounds(running, grid)), c.n_pairs, c.n_done, c.n_failed,
                             c.n_not_applicable, c.method, c.seconds, note))
    return out, mats


def analyze(model: str | os.PathLike | Network, spec: Spec, *, solver: str | SolverProfile | None = None,
            out_dir: str | os.PathLike, cuts: tuple[str, ...] | None = None, progress: Progress | None = None,
            time_budget: float | None = None, executor=None, order: str = "promise") -> Analysis:
    """Lower bounds for every cut (default: the spec's) and every budget of the spec's grid."""
    t0 = time.perf_counter()
    net = model if isinstance(model, Network) else load_model(model)
    profile = solver if isinstance(solver, SolverProfile) else load_profile(solver or spec.solver)
    points = spec.load_points()
    check_compatible(points, net, spec)
    wanted = spec.resolve_cuts(net) if cuts is None else cuts
    for c in wanted:
        net.cut_index(c)
    d = compute_distances(net, points, wanted, profile, Path(out_dir), progress=progress, time_budget=time_budget,
                          info={"spec": spec.to_dict()}, executor=executor, order=order)
    per_cut, mats = bounds_from_distances(d, spec.eps)
    return Analysis(model_path=net.source.path, model_sha256=net.source.sha256, spec=spec, profile=profile,
                    classes=points.classes, n_a=d.n_a, n_b=d.n_b, cuts=tuple(per_cut),
                    seconds=time.perf_counter() - t0, out_dir=str(out_dir), eps_matrices=mats)
