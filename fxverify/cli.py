"""The ``fxverify`` command line: parse, validate, call one library function, write.

Every error a user can cause prints one line (``error: ...``) on stderr and exits with code 2.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import numpy as np

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import __version__
from .errors import FxverifyError

app = typer.Typer(name="fxverify", add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Lower bounds on the robust loss of any classifier trained on a fixed feature extractor.")
EXIT_USER_ERROR = 2


def _console() -> Console:
    return Console(soft_wrap=False, width=max(100, Console().width))


def user_errors(fn):
    """Turn an FxverifyError into one line on stderr and exit code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FxverifyError as err:
            print(f"error: {err}", file=sys.stderr)
            raise typer.Exit(EXIT_USER_ERROR) from None
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            raise typer.Exit(130) from None

    return wrapper


def _version(value: bool) -> None:
    if value:
        print(f"fxverify {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                               help="Print the version and exit.")] = False) -> None:
    """fxverify: how much robust loss is unavoidable at each cut of a feature extractor."""


ModelArg = Annotated[Path, typer.Argument(help="ONNX model file.", show_default=False)]


def _shape(s) -> str:
    return escape("[" + ", ".join(map(str, s)) + "]")


@app.command()
@user_errors
def inspect(model: ModelArg,
            as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False) -> None:
    """Show the layers, shapes, cuts and parameters of a model, and its agreement with onnxruntime."""
    from .onnx_import import load_model
    from .ir import model_summary

    s = model_summary(load_model(model))
    if as_json:
        print(json.dumps(s, indent=2))
        return
    con = _console()
    con.print(f"[bold]{escape(s['path'])}[/bold]  sha256 {s['sha256'][:16]}…  {escape(s['producer'] or 'unknown producer')}, "
              f"opset {s['opset']}")
    con.print(f"input {escape(repr(s['input_name']))} ONNX shape {_shape(s['onnx_input_shape'])} -> one sample "
              f"{_shape(s['input_shape'])} ({s['input_dim']} values)")
    t = Table(show_edge=False, header_style="bold")
    for col in ("cut", "kind", "ONNX nodes", "in shape", "out shape", "params", "max |IR - ORT|"):
        t.add_column(col, justify="right" if col in ("params", "max |IR - ORT|") else "left")
    per_cut = s["agreement"]["per_cut"]
    t.add_row("input", "", "", "", _shape(s["input_tensor_shape"]), "", f"{per_cut['input']:.2e}")
    for row in s["layers"]:
        t.add_row(row["name"], row["kind"], " ".join(o.split(" ")[0] for o in row["ops"]), _shape(row["in_shape"]),
                  _shape(row["out_shape"]), f"{row['params']:,}", f"{row['max_abs_diff']:.2e}")
    con.print(t)
    con.print(f"cuts: {', '.join(s['cuts'])}")
    con.print(f"parameters: {s['params']:,}")
    r = s["first_affine"]
    if r:
        con.print(f"first affine map {r['name']}: {r['out_dim']} x {r['in_dim']}, rank {r['rank']}")
    a = s["agreement"]
    verdict = "[green]agrees[/green]" if a["ok"] else "[red]DISAGREES[/red]"
    con.print(f"onnxruntime check: {verdict} on {a['n_inputs']} random inputs, max abs difference "
              f"{a['max_abs_diff']:.2e} (tolerance {a['tolerance']:g} x max(1, |value|) per cut)")


SpecOpt = Annotated[Path, typer.Option("--spec", help="Spec JSON file.", show_default=False)]
SolverOpt = Annotated[Optional[str], typer.Option("--solver", help="Solver profile name or file, or a backend "
                                                  "name (default: the spec's profile).", show_default=False)]
OutOpt = Annotated[Optional[Path], typer.Option("--out", help="Output directory (default: out/MODEL__SPEC).",
                                                show_default=False)]


SolverOptionOpt = Annotated[Optional[list[str]], typer.Option(
    "--solver-option", "-o", help="Override a profile option, KEY=VALUE (repeatable): time_limit, rel_gap, threads, "
    "max_iterations, or a backend option; VALUE is read as JSON when it parses (numbers, true/false), else text.",
    show_default=False)]


def _overrides(items: list[str] | None) -> dict:
    from .errors import SolverError

    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SolverError(f"--solver-option {item!r} is not KEY=VALUE")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def _prepare(model: Path, spec_path: Path, solver: str | None, options: list[str] | None = None):
    """Load and cross-check model, spec, data and solver profile (with CLI overrides)."""
    from .onnx_import import load_model
    from .profiles import load_profile
    from .spec import check_compatible, load_spec

    spec = load_spec(spec_path)
    profile = load_profile(solver or spec.solver)
    if options:
        profile = profile.with_overrides(_overrides(options))
    net = load_model(model)
    points = spec.load_points()
    check_compatible(points, net, spec)
    return net, spec, points, spec.resolve_cuts(net), profile


def _default_out(model: Path, spec: Path) -> Path:
    return Path("out") / f"{model.stem}__{spec.stem}"


@contextlib.contextmanager
def _progress():
    """A rich progress display and the callback the library reports to."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), transient=False)
    tasks: dict[str, int] = {}
    starts: dict[str, tuple[float, int]] = {}

    def report(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bars.add_task(stage, total=total, rate="")
            starts[stage] = (time.perf_counter(), done)
        t0, d0 = starts[stage]
        dt = time.perf_counter() - t0
        rate = f"{(done - d0) / dt:.2f} pairs/s" if dt > 0 and done > d0 else ""
        bars.update(tasks[stage], completed=done, total=total, rate=rate)

    with bars:
        yield report


@app.command()
@user_errors
def collide(model: ModelArg, spec: SpecOpt,
            cut: Annotated[str, typer.Option("--cut", help="Cut name (see `fxverify inspect`).")],
            pair: Annotated[tuple[int, int], typer.Option("--pair", help="I J: the I-th point of the first class "
                                                          "and the J-th of the second (0-based).")],
            method: Annotated[Optional[str], typer.Option("--method", help="descent, faithful, closed_form or "
                                                          "exact (default: the solver profile's).")] = None,
            solver: SolverOpt = None,
            solver_option: SolverOptionOpt = None,
            check_solver: Annotated[Optional[str], typer.Option("--check-solver", help="Re-solve the descent's "
                                                                "final cone LP with this backend and report the "
                                                                "difference.", show_default=False)] = None,
            as_json: Annotated[bool, typer.Option("--json", help="Print JSON (with the collision points).")] = False
            ) -> None:
    """Find and verify the collision of one cross-class pair at one cut."""
    from .collision import Collider
    from .errors import SpecError

    net, sp, points, _, profile = _prepare(model, spec, solver, solver_option)
    i, j = pair
    if not (0 <= i < len(points.X_a) and 0 <= j < len(points.X_b)):
        raise SpecError(f"--pair {i} {j} is out of range: the spec selects {len(points.X_a)} points of class "
                        f"{points.classes[0]} and {len(points.X_b)} of class {points.classes[1]}")
    if method == "exact" and solver is None and profile.method != "exact":
        from .profiles import load_profile

        profile = load_profile("exact-scip")
    col = Collider(net, profile, method, check_solver=check_solver)
    net.cut_index(cut)
    if col.method == "descent":
        chain = col.collide_cuts(points.X_a[i], points.X_b[j], net.cuts[: net.cut_index(cut) + 1])
    else:
        chain = {cut: col.collide(cut, points.X_a[i], points.X_b[j])}
    res = chain[cut]
    if as_json:
        out = {c: {"status": r.status.value, "eps": r.eps, "verified": r.verified, "method": r.method,
                   "solver": r.solver, "iterations": r.iterations, "seconds": r.seconds, "residual": r.residual,
                   "residual_onnx": r.residual_onnx, "eps_lower": r.eps_lower, "termination": r.termination,
                   "check_solver": r.check_solver, "check_eps": r.check_eps, "message": r.message}
               for c, r in chain.items()}
        out[cut]["u_adv"] = None if res.u_adv is None else res.u_adv.tolist()
        out[cut]["v_adv"] = None if res.v_adv is None else res.v_adv.tolist()
        print(json.dumps({"pair": [i, j], "classes": list(points.classes),
                          "index": [int(points.index_a[i]), int(points.index_b[j])], "cuts": out}, indent=2))
        return
    con = _console()
    con.print(f"pair ({i}, {j}): class {points.classes[0]} image #{points.index_a[i]} vs class "
              f"{points.classes[1]} image #{points.index_b[j]}; solver profile {escape(profile.name)}")
    t = Table(show_edge=False, header_style="bold")
    for col_name in ("cut", "status", "eps", "method", "LP solves", "seconds", "residual IR / ORT", "note"):
        t.add_column(col_name)
    for c, r in chain.items():
        t.add_row(c, r.status.value, f"{r.eps:.6f}", r.method, str(r.iterations), f"{r.seconds:.2f}",
                  f"{r.residual:.1e} / {r.residual_onnx:.1e}", escape(r.message))
    con.print(t)
    verdict = "verified collision" if res.verified else "no verified collision"
    con.print(f"{cut}: {verdict}, eps = {res.eps:.6f}")
    if res.method == "exact" and res.termination:
        con.print(f"exact: {res.termination}; proven eps* >= {res.eps_lower:.6f}, eps* <= {res.eps:.6f}")
    if res.check_solver:
        con.print(f"check by {res.check_solver}: eps {res.check_eps:.9g} (difference {res.check_difference:+.2e})")


@app.command()
@user_errors
def solvers(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List the solver backends (built-in and plugins) with availability and version, and the profiles."""
    import warnings

    from .backends.registry import discover
    from .profiles import builtin_profiles

    classes, broken = discover()
    rows = []
    for name, cls in sorted(classes.items()):
        b = cls()
        a = b.availability()
        rows.append({"name": name, "capabilities": sorted(c.value for c in cls.capabilities),
                     "availability": a.name.lower().replace("_", " "), "usable": bool(a), "version": b.version(),
                     "detail": b.availability_detail(), "class": f"{cls.__module__}:{cls.__qualname__}"})
    if as_json:
        print(json.dumps({"backends": rows, "broken_plugins": [vars(b) for b in broken],
                          "profiles": sorted(builtin_profiles())}, indent=2))
        return
    for b in broken:
        warnings.warn(f"solver plugin {b.name!r} ({b.target}) could not be loaded: {b.reason}", stacklevel=1)
    con = _console()
    t = Table(show_edge=False, header_style="bold")
    for col_name in ("backend", "capabilities", "availability", "version", "detail"):
        t.add_column(col_name)
    for r in rows:
        colour = "green" if r["availability"] == "full" else ("yellow" if r["usable"] else "red")
        t.add_row(r["name"], ", ".join(r["capabilities"]), f"[{colour}]{r['availability']}[/{colour}]", r["version"],
                  escape(r["detail"]))
    con.print(t)
    con.print("profiles: " + ", ".join(sorted(builtin_profiles())))


@app.command()
@user_errors
def gap(model: ModelArg, spec: SpecOpt,
        cut: Annotated[str, typer.Option("--cut", help="A ReLU cut (see `fxverify inspect`).")],
        pairs: Annotated[int, typer.Option("--pairs", min=1, help="Number of cross-class pairs (drawn with a fixed "
                                           "seed).")] = 10,
        solver: Annotated[str, typer.Option("--solver", help="Exact solver profile or backend (scip, gurobi, "
                                            "mosek).")] = "exact-scip",
        descent: Annotated[str, typer.Option("--descent", help="Descent profile to measure.")] = "descent-activeset",
        time_limit: Annotated[Optional[float], typer.Option("--time-limit", help="Seconds per exact solve "
                                                            "(overrides the profile).", show_default=False)] = None,
        solver_option: SolverOptionOpt = None,
        out: Annotated[Optional[Path], typer.Option("--out", help="Output directory (default: out/gap_MODEL_CUT).",
                                                    show_default=False)] = None) -> None:
    """Descent eps against the exact eps* (MIQCP) on N pairs: per-pair gap, times and a summary."""
    from .gap import gap_study
    from .profiles import load_profile

    net, sp, points, _, _ = _prepare(model, spec, None)
    exact = load_profile(solver, "exact")
    if solver_option:
        exact = exact.with_overrides(_overrides(solver_option))
    if time_limit is not None:
        exact = exact.with_overrides({"time_limit": time_limit})
    desc = load_profile(descent, "descent")
    net.cut_index(cut)
    with _progress() as report:
        rep = gap_study(net, points, cut, pairs, exact, desc, progress=report)
    out = out or Path("out") / f"gap_{model.stem}_{cut}"
    paths = rep.write(out)
    con = _console()
    t = Table(show_edge=False, header_style="bold")
    for col_name in ("pair", "descent eps", "exact eps*", "proven lower", "status", "rel. gap", "descent s", "exact s"):
        t.add_column(col_name, justify="right")
    for r in rep.rows:
        t.add_row(f"({r.i}, {r.j})", f"{r.descent_eps:.6f}", f"{r.exact_eps:.6f}", f"{r.exact_lower:.6f}",
                  "exact" if r.solved else r.termination, f"{100 * r.relative_gap:.2f}%", f"{r.descent_seconds:.2f}",
                  f"{r.exact_seconds:.2f}")
    con.print(t)
    s = rep.summary
    con.print(f"{cut}: {s['pairs']} pairs, eps* proven for {100 * s['fraction_exact']:.0f}%; descent gap mean "
              f"{100 * s['mean_relative_gap']:.2f}%, max {100 * s['max_relative_gap']:.2f}%, descent optimal on "
              f"{100 * s['fraction_descent_optimal']:.0f}%; time descent {s['descent_seconds']:.1f} s, exact "
              f"{s['exact_seconds']:.1f} s")
    con.print("wrote " + ", ".join(escape(str(p)) for p in paths))


JobsOpt = Annotated[Optional[int], typer.Option("--jobs", "-j", min=1, help="Worker processes for the local "
                                                "executor (default: every core; 1 runs in this process).",
                                                show_default=False)]
ExecutorOpt = Annotated[str, typer.Option("--executor", help="Where pair tasks run: local (process pool), serial or "
                                          "ray.")]
AddressOpt = Annotated[Optional[str], typer.Option("--address", help="Ray cluster address (default: start a local "
                                                   "Ray instance).", show_default=False)]

OrderOpt = Annotated[str, typer.Option("--order", help="Order of the descent pairs: promise (every point's nearest "
                                       "partners first, best for --time-budget) or file (row by row). Results "
                                       "do not depend on it.")]


def _print_distances(d, con) -> None:
    t = Table(show_edge=False, header_style="bold")
    for col_name in ("cut", "method", "pairs done", "found", "failed", "n/a", "min eps", "median eps", "CPU s"):
        t.add_column(col_name, justify="left" if col_name in ("cut", "method") else "right")
    for cut in d.cuts:
        c = d.by_cut[cut]
        fin = c.eps[np.isfinite(c.eps)]
        t.add_row(cut, c.method, f"{c.n_done}/{c.n_pairs}", str(c.n_found), str(c.n_failed), str(c.n_not_applicable),
                  f"{fin.min():.4f}" if fin.size else "-", f"{np.median(fin):.4f}" if fin.size else "-",
                  f"{c.seconds:.1f}")
    con.print(t)


@app.command()
@user_errors
def distances(model: ModelArg, spec: SpecOpt, out: OutOpt = None, solver: SolverOpt = None,
              time_budget: Annotated[Optional[float], typer.Option("--time-budget", help="Stop starting new pairs "
                                                                   "after this many seconds.")] = None,
              jobs: JobsOpt = None, executor: ExecutorOpt = "local", address: AddressOpt = None,
              solver_option: SolverOptionOpt = None, order: OrderOpt = "promise") -> None:
    """Compute and store the budget of every cross-class pair at the spec's cuts (resumable)."""
    from .executors import make_executor
    from .pipeline import compute_distances

    net, sp, points, cuts, profile = _prepare(model, spec, solver, solver_option)
    ex = make_executor(executor, jobs=jobs, address=address)
    out = out or _default_out(model, spec)
    with _progress() as report:
        d = compute_distances(net, points, cuts, profile, out, progress=report, time_budget=time_budget,
                              info={"spec": sp.to_dict()}, executor=ex, order=order)
    np.savez_compressed(out / "distances.npz", **{c: d.by_cut[c].eps for c in d.cuts},
                        index_a=points.index_a, index_b=points.index_b)
    con = _console()
    _print_distances(d, con)
    con.print(f"stored in {escape(str(out))} (results.sqlite, distances.npz)"
              + ("" if d.complete else "; [yellow]incomplete[/yellow]: rerun the same command to continue"))


TimeBudgetOpt = Annotated[Optional[float], typer.Option("--time-budget", help="Stop starting new pairs after "
                                                         "this many seconds; bounds use the pairs done.")]


def _print_bounds(a, con) -> None:
    t = Table(show_edge=False, header_style="bold")
    for col_name in ("cut", "eps", "edges", "0-1 lower bound", "cross-entropy lower bound", "pairs done", "failed"):
        t.add_column(col_name, justify="left" if col_name == "cut" else "right")
    for c in a.cuts:
        for k, r in enumerate(c.records):
            t.add_row(c.cut if k == 0 else "", f"{r.eps:g}", f"{r.edges:,}", f"{r.loss01_lower:.4f}",
                      f"{r.ce_lower:.4f}", f"{c.pairs_done:,}/{c.pairs_total:,}" if k == 0 else "",
                      str(c.pairs_failed) if k == 0 else "")
        t.add_section()
    con.print(t)


@app.command()
@user_errors
def bound(model: ModelArg, spec: SpecOpt, out: OutOpt = None, solver: SolverOpt = None,
          time_budget: TimeBudgetOpt = None, jobs: JobsOpt = None, executor: ExecutorOpt = "local",
          address: AddressOpt = None, solver_option: SolverOptionOpt = None, order: OrderOpt = "promise") -> None:
    """Lower bounds on the 0-1 and cross-entropy loss for every cut and budget of the spec."""
    from .analysis import analyze
    from .executors import make_executor
    from .report import write_results

    net, sp, points, cuts, profile = _prepare(model, spec, solver, solver_option)
    ex = make_executor(executor, jobs=jobs, address=address)
    if time_budget is None:
        time_budget = sp.time_budget
    out = out or _default_out(model, spec)
    with _progress() as report:
        a = analyze(net, sp, solver=profile, out_dir=out, cuts=cuts, progress=report, time_budget=time_budget,
                    executor=ex, order=order)
    paths = write_results(a, out)
    con = _console()
    con.print(f"{escape(net.source.path)}: classes {a.classes[0]} vs {a.classes[1]}, {a.n_a} + {a.n_b} points "
              f"({escape(points.origin)}), solver profile {escape(profile.name)}")
    _print_bounds(a, con)
    if not a.complete:
        done = min(c.pairs_done for c in a.cuts)
        con.print(f"[yellow]incomplete[/yellow]: the time budget stopped the descent after {done:,} of "
                  f"{a.cuts[0].pairs_total:,} pairs; bounds count pairs not computed as no edge (still valid, "
                  f"looser). Rerun the same command to continue.")
    con.print("wrote " + ", ".join(escape(str(p)) for p in paths))


@app.command()
@user_errors
def compare(models: Annotated[list[Path], typer.Argument(help="ONNX models to compare.", show_default=False)],
            spec: SpecOpt,
            cut: Annotated[str, typer.Option("--cut", help="The cut to compare (present in every model).")],
            label: Annotated[Optional[list[str]], typer.Option("--label", help="Curve label per model, in order "
                                                                "(default: file names).")] = None,
            out: Annotated[Path, typer.Option("--out", help="Output directory.")] = Path("out/compare"),
            solver: SolverOpt = None, time_budget: TimeBudgetOpt = None,
            solver_option: SolverOptionOpt = None) -> None:
    """Plot one cut across several models (e.g. training methods) on the same points and budgets."""
    from .analysis import analyze
    from .errors import SpecError
    from .report import write_comparison

    labels = label or [m.stem for m in models]
    if len(labels) != len(models):
        raise SpecError(f"{len(labels)} --label values for {len(models)} models")
    if len(set(labels)) != len(labels):
        raise SpecError("model labels must differ (pass --label)")
    results = {}
    with _progress() as report:
        for m, lab in zip(models, labels):
            net, sp, points, cuts, profile = _prepare(m, spec, solver, solver_option)
            results[lab] = analyze(net, sp, solver=profile, out_dir=out / lab, cuts=(cut,), progress=report,
                                   time_budget=time_budget)
    paths = write_comparison(results, cut, out)
    con = _console()
    t = Table(show_edge=False, header_style="bold")
    for col_name in ("eps", *labels):
        t.add_column(col_name, justify="right")
    first = next(iter(results.values()))
    for k, r in enumerate(first.cut(cut).records):
        t.add_row(f"{r.eps:g}", *(f"{results[lab].cut(cut).records[k].ce_lower:.4f}" for lab in labels))
    con.print(f"cross-entropy lower bound at {cut}:")
    con.print(t)
    con.print("wrote " + ", ".join(escape(str(p)) for p in paths))


def run() -> None:  # console-script entry point
    app()
