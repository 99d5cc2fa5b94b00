"""The main job: for every cut and every budget of a spec, lower bounds on the robust loss.

``bound(model, spec)`` (the library form of ``fxverify bound``) resolves the configuration once
(:mod:`fxverify.config`), runs model -> IR -> tasks -> per-(pair, cut) results (stored,
resumable) -> bounds and returns an immutable :class:`~fxverify.results.Analysis`; then
:mod:`fxverify.report` writes it out and :mod:`fxverify.witnesses` exports the witnesses.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from ._version import __version__
from .bounds import lower_bounds, lower_bounds_multiclass
from .errors import ArgumentError, FxverifyError, SpecError
from .ir import Network
from .onnx_import import load_model
from .pipeline import Progress, compute_distances, run_settings
from .profiles import SolverProfile
from .results import Analysis, CutBounds, Distances

__all__ = ["Analysis", "CutBounds", "analyze", "bound", "bounds_from_distances", "default_out", "load_inputs",
           "run_deadline"]


#: seconds a budget-limited run keeps for its bounds, plots and witnesses (at most a tenth of
#: the budget): its computation stops that much earlier, so that the run ends at the budget
FINISH_RESERVE = 2.0


def run_deadline(started: float, budget: float | None) -> float | None:
    """The :func:`time.monotonic` time at which a run that began at ``started`` with a time
    budget of ``budget`` seconds stops computing (None: no budget)."""
    if budget is None:
        return None
    return started + budget - min(FINISH_RESERVE, 0.1 * budget)


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
        notes = [c.message] if c.message else []
        carried = int(np.sum(best < c.eps))
        if carried:
            notes.append(f"{carried} pairs take a shallower cut's collision")
        if c.n_skipped:
            notes.append(f"{c.n_skipped} pairs skipped by the pair selection (they keep the budgets of the cuts "
                         f"that determine this one)")
        mats[cut] = best
        out.append(CutBounds(cut, tuple(_bounds(d, best, grid)), c.n_pairs, c.n_done, c.n_failed,
                             c.n_not_applicable, c.method, c.seconds, "; ".join(notes), c.n_skipped, c.failures))
    return out, mats


def _bounds(d: Distances, eps: np.ndarray, grid) -> list:
    """Two classes: :func:`lower_bounds` of the n_a x n_b matrix; K classes: the K-class bounds
    (:func:`lower_bounds_multiclass`) of the N x N matrix, split into its pairs of classes."""
    if d.labels is None:
        return lower_bounds(eps, grid)
    members = [np.flatnonzero(d.labels == k) for k in range(len(d.classes))]
    blocks = {(d.classes[a], d.classes[b]): eps[np.ix_(members[a], members[b])]
              for a in range(len(members)) for b in range(a + 1, len(members))}
    return lower_bounds_multiclass(blocks, np.asarray(d.classes, dtype=np.int64)[d.labels], grid)


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
            progress: Progress | None = None, executor=None, deadline: float | None = None,
            witnesses: bool = True) -> Analysis:
    """Lower bounds for every cut (default: the spec's) and every budget of the spec's grid, for
    a resolved run (:func:`fxverify.config.resolve_run`) on the inputs of :func:`load_inputs`.
    ``deadline`` (a :func:`time.monotonic` time; default: the run's time budget from now)."""
    t0 = time.perf_counter()
    spec, engine = run.spec, run.engine
    wanted = spec.resolve_cuts(net) if cuts is None else tuple(cuts)
    for c in wanted:
        net.cut_index(c)
    if deadline is None and run.time_budget is not None:
        deadline = time.monotonic() + run.time_budget
    d = compute_distances(net, points, wanted, engine, Path(out_dir), progress=progress, deadline=deadline,
                          info={"spec": spec.to_dict()}, executor=executor, order=run.order,
                          normalize=getattr(spec, "normalize", None), grid=run.grid, bounds_grid=tuple(spec.eps),
                          witnesses=witnesses, select_pairs=run.select_pairs)
    per_cut, mats = bounds_from_distances(d, spec.eps, net)
    dom = engine.domain
    return Analysis(model_path=net.source.path, model_sha256=net.source.sha256, spec=spec, profile=engine.profile,
                    classes=points.classes, n_a=d.n_a, n_b=d.n_b, cuts=tuple(per_cut),
                    seconds=time.perf_counter() - t0, version=__version__, out_dir=str(out_dir),
                    norm=engine.norm.name, domain=None if dom is None else (dom.lo, dom.hi),
                    unavailable=tuple((u.cut, u.reason) for u in net.unavailable), eps_matrices=mats,
                    n_per_class=_counts(points))


def _counts(points) -> tuple[int, ...]:
    if points.multiclass:
        return tuple(int(k) for k in np.bincount(points.labels, minlength=len(points.classes)))
    return len(points.X_a), len(points.X_b)


def export_witnesses(net: Network, run, points, out_dir: str | os.PathLike, grid=None) -> dict:
    """Write ``witnesses.npz`` from the run's store in ``out_dir``; its {"file", "count",
    "bytes"} for results.json. ``grid``: the budgets whose edges ``fxverify check`` checks
    (default: the spec's; empty: every witness)."""
    from . import witnesses
    from .store import ResultStore

    settings = run_settings(net, points, run.engine, getattr(run.spec, "normalize", None), run.grid,
                            run.select_pairs)
    dom = run.engine.domain
    with ResultStore(out_dir, settings) as store:
        path, n = witnesses.export(Path(out_dir), net, points, run.engine.norm.name,
                                   None if dom is None else (dom.lo, dom.hi),
                                   tuple(run.spec.eps) if grid is None else tuple(grid), store)
    return {"file": path.name, "count": n, "bytes": path.stat().st_size}


def default_out(model, spec) -> Path:
    """``out/MODEL__SPEC``: the default output directory of a run."""
    spec_name = Path(spec.path).stem if getattr(spec, "path", "") else "spec"
    return Path("out") / f"{Path(str(model)).stem}__{spec_name}"


def bound(model: str | os.PathLike | Network, spec, *, out: str | os.PathLike | None = None,
          solver: str | SolverProfile | None = None, solver_options: dict | None = None,
          time_budget: float | None = None, jobs: int | None = None, executor: str = "local",
          address: str | None = None, order: str = "promise", n: int | None = None, eps=None, cuts=None,
          classes=None, norm: str | None = None, exhaustive: bool = False, select_pairs: bool = False,
          witnesses: bool = True, write: bool = True, progress: Progress | None = None) -> Analysis:
    """The main job from Python: lower bounds on the 0-1 and cross-entropy loss at every cut and
    budget, exactly as ``fxverify bound`` computes them (same store, same results).

    ``model``: an ONNX path or a loaded network; ``spec``: a spec path, a :class:`~fxverify.spec.Spec`
    or a spec document (dict). ``n``, ``eps``, ``cuts``, ``classes`` (a list of labels, or "all":
    more than two give the K-class bounds), ``norm`` override the spec's fields; ``solver`` /
    ``solver_options`` its solver profile; ``exhaustive``: every descent to its local optimum
    (default: a descent stops when it cannot cross a budget of the grid);
    ``select_pairs``: skip pairs that by the measured ratios cannot change a bound (off by
    default); ``witnesses``: store and export every collision's points (``witnesses.npz``);
    ``time_budget``: seconds, counted from this call (hard: the computation stops early enough
    to write the results by then); ``out`` the result directory
    (default ``out/MODEL__SPEC``). ``write``: also write results.json, results.csv, the plots
    and the witnesses. Call it under ``if __name__ == "__main__":`` in scripts (the local
    executor spawns workers).
    """
    from . import _checks
    from .config import resolve_run
    from .executors import make_executor
    from .spec import ALL_CLASSES, Spec, parse_spec

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
    if isinstance(classes, str) and classes != ALL_CLASSES:
        raise ArgumentError(f"classes must be a list of integers or {ALL_CLASSES!r}, not the string {classes!r}")
    classes = None if classes is None or classes == ALL_CLASSES else _checks.int_list(classes, "classes")
    _checks.text(norm, "norm")
    if time_budget is not None:
        _checks.real_number(time_budget, "time_budget")
    exhaustive, write = _checks.flag(exhaustive, "exhaustive"), _checks.flag(write, "write")
    if progress is not None and not callable(progress):
        raise SpecError(f"progress must be a callable (stage, done, total), not {type(progress).__name__}")
    _checks.flag(select_pairs, "select_pairs"), _checks.flag(witnesses, "witnesses")
    started = time.monotonic()
    if isinstance(spec, dict):
        spec = parse_spec(spec, ".", "spec")
    elif not isinstance(spec, (Spec, str, os.PathLike)):
        raise SpecError(f"spec must be a path, a Spec or a spec document, not {type(spec).__name__}")
    if jobs is not None and (not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1):
        raise FxverifyError(f"jobs must be a whole number of at least 1, not {jobs!r}")
    run = resolve_run(spec, solver=solver, solver_options=solver_options, time_budget=time_budget, order=order,
                      exhaustive=exhaustive, select_pairs=select_pairs, n_per_class=n, eps=eps, cuts=cuts,
                      classes=classes, norm=norm)
    ex = make_executor(executor, jobs=jobs, address=address)
    net, points = load_inputs(model, run)
    out_dir = Path(out) if out is not None else default_out(net.source.path, run.spec)
    deadline = run_deadline(started, run.time_budget)
    a = analyze(net, run, points, out_dir=out_dir, progress=progress, executor=ex, deadline=deadline,
                witnesses=witnesses)
    if write:
        from .report import write_results

        info = export_witnesses(net, run, points, out_dir) if witnesses else None
        write_results(a, out_dir, info)
    return a
