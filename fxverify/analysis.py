"""The main job: for every cut and every budget of a spec, lower bounds on the robust loss.

``bound(model, spec)`` (the library form of ``fxverify bound``) resolves the configuration once
(:mod:`fxverify.config`), runs model -> IR -> pairs -> collisions (stored, resumable) -> edges ->
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
from .errors import SpecError
from .ir import Network
from .onnx_import import load_model
from .pipeline import Distances, Progress, compute_distances
from .profiles import SolverProfile


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


@dataclass(frozen=True)
class Analysis:
    model_path: str
    model_sha256: str
    spec: object  # fxverify.spec.Spec (with any overrides applied)
    profile: SolverProfile
    classes: tuple[int, int]
    n_a: int
    n_b: int
    cuts: tuple[CutBounds, ...]
    seconds: float
    version: str = __version__
    out_dir: str = ""
    norm: str = "l2"
    domain: tuple[float, float] | None = None
    unavailable: tuple[tuple[str, str], ...] = ()  # cuts the model has but fxverify cannot compute
    eps_matrices: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

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


def bounds_from_distances(d: Distances, grid, net: Network | None = None) -> tuple[list[CutBounds], dict]:
    """Bounds per cut. A collision at a cut that determines another (a dominator: in a chain,
    any shallower cut) is a collision there too, so each cut's budgets are the element-wise
    minimum over the computed cuts that determine it (all shallower cuts without ``net``)."""
    out, mats = [], {}
    for k, cut in enumerate(d.cuts):
        c = d.by_cut[cut]
        doms = d.cuts[:k + 1] if net is None else [x for x in net.dominators(cut) if x in d.by_cut]
        best = c.eps
        for x in doms:
            best = np.minimum(best, d.by_cut[x].eps)
        carried = int(np.sum(best < c.eps))
        note = c.message
        if carried:
            note = (note + "; " if note else "") + f"{carried} pairs take a shallower cut's collision"
        mats[cut] = best
        if c.n_skipped:
            note = (note + "; " if note else "") + (f"{c.n_skipped} pairs skipped by the pair selection (they keep "
                                                    f"the budgets of the cuts that determine this one)")
        out.append(CutBounds(cut, tuple(lower_bounds(best, grid)), c.n_pairs, c.n_done, c.n_failed,
                             c.n_not_applicable, c.method, c.seconds, note, c.n_skipped))
    return out, mats


def load_inputs(model: str | os.PathLike | Network, run) -> tuple[Network, object]:
    """The network a resolved run analyses (its spec's ``normalize`` applied) and its points
    (in the model's input layout)."""
    from .config import prepare_network
    from .spec import check_compatible

    net = model if isinstance(model, Network) else load_model(model)
    net = prepare_network(net, getattr(run.spec, "normalize", None))
    points = check_compatible(run.spec.load_points(), net, run.spec)
    return net, points


def analyze(net: Network, run, points, *, out_dir: str | os.PathLike, cuts: tuple[str, ...] | None = None,
            progress: Progress | None = None, executor=None) -> Analysis:
    """Lower bounds for every cut (default: the spec's) and every budget of the spec's grid, for
    a resolved run (:func:`fxverify.config.resolve_run`) on the inputs of :func:`load_inputs`."""
    t0 = time.perf_counter()
    spec, engine = run.spec, run.engine
    wanted = spec.resolve_cuts(net) if cuts is None else tuple(cuts)
    for c in wanted:
        net.cut_index(c)
    d = compute_distances(net, points, wanted, engine, Path(out_dir), progress=progress, time_budget=run.time_budget,
                          info={"spec": spec.to_dict()}, executor=executor, order=run.order,
                          normalize=getattr(spec, "normalize", None), grid=run.grid)
    per_cut, mats = bounds_from_distances(d, spec.eps, net)
    dom = engine.domain
    return Analysis(model_path=net.source.path, model_sha256=net.source.sha256, spec=spec, profile=engine.profile,
                    classes=points.classes, n_a=d.n_a, n_b=d.n_b, cuts=tuple(per_cut),
                    seconds=time.perf_counter() - t0, out_dir=str(out_dir), norm=engine.norm.name,
                    domain=None if dom is None else (dom.lo, dom.hi),
                    unavailable=tuple((u.cut, u.reason) for u in net.unavailable), eps_matrices=mats)


def default_out(model, spec) -> Path:
    """``out/MODEL__SPEC``: the default output directory of a run."""
    spec_name = Path(spec.path).stem if getattr(spec, "path", "") else "spec"
    return Path("out") / f"{Path(str(model)).stem}__{spec_name}"


def bound(model: str | os.PathLike | Network, spec, *, out: str | os.PathLike | None = None,
          solver: str | SolverProfile | None = None, solver_options: dict | None = None,
          time_budget: float | None = None, jobs: int | None = None, executor: str = "local",
          address: str | None = None, order: str = "promise", n: int | None = None, eps=None, cuts=None,
          classes=None, norm: str | None = None, exhaustive: bool = False, write: bool = True,
          progress: Progress | None = None) -> Analysis:
    """The main job from Python: lower bounds on the 0-1 and cross-entropy loss at every cut and
    budget, exactly as ``fxverify bound`` computes them (same store, same results).

    ``model``: an ONNX path or a loaded network; ``spec``: a spec path, a :class:`~fxverify.spec.Spec`
    or a spec document (dict). ``n``, ``eps``, ``cuts``, ``classes``, ``norm`` override the spec's
    fields; ``solver`` / ``solver_options`` its solver profile; ``exhaustive``: every descent to
    its local optimum (default: a descent stops when it cannot cross a budget of the grid);
    ``out`` the result directory
    (default ``out/MODEL__SPEC``). ``write``: also write results.json, results.csv and the plots.
    Call it under ``if __name__ == "__main__":`` in scripts (the local executor spawns workers).
    """
    from . import _checks
    from .config import resolve_run
    from .executors import make_executor
    from .spec import Spec, parse_spec

    _checks.path_or_network(model)
    _checks.optional_path(out, "out")
    solver = _checks.solver(solver)
    _checks.options(solver_options)
    _checks.count(jobs, "jobs")
    _checks.text(executor, "executor", optional=False)
    _checks.text(address, "address")
    _checks.text(order, "order", optional=False)
    _checks.count(n, "n")
    eps = None if eps is None else _checks.budget_grid(eps, "eps")
    if cuts is not None and cuts != "all":
        cuts = [_checks.text(c, f"cuts[{k}]", optional=False) for k, c in enumerate(_checks.sequence(
            cuts, "cuts", "cut names (or 'all')"))]
    classes = None if classes is None else _checks.int_list(classes, "classes")
    _checks.text(norm, "norm")
    if time_budget is not None:
        _checks.real_number(time_budget, "time_budget")
    exhaustive, write = _checks.flag(exhaustive, "exhaustive"), _checks.flag(write, "write")
    if progress is not None and not callable(progress):
        raise SpecError(f"progress must be a callable (stage, done, total), not {type(progress).__name__}")
    if isinstance(spec, dict):
        spec = parse_spec(spec, ".", "spec")
    elif not isinstance(spec, (Spec, str, os.PathLike)):
        raise SpecError(f"spec must be a path, a Spec or a spec document, not {type(spec).__name__}")
    run = resolve_run(spec, solver=solver, solver_options=solver_options, time_budget=time_budget, order=order,
                      exhaustive=exhaustive, n_per_class=n, eps=eps, cuts=cuts, classes=classes, norm=norm)
    ex = make_executor(executor, jobs=jobs, address=address)
    net, points = load_inputs(model, run)
    out_dir = Path(out) if out is not None else default_out(net.source.path, run.spec)
    a = analyze(net, run, points, out_dir=out_dir, progress=progress, executor=ex)
    if write:
        from .report import write_results

        write_results(a, out_dir)
    return a
