"""The ``fxverify`` command line: parse, validate, call one library function, write.

Every error a user can cause prints one line (``error: ...``) on stderr and exits with code 2.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import sys
import threading
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


class Terminated(BaseException):
    """SIGTERM arrived. Raised in the main thread and unwound like Ctrl-C: store transactions
    roll back, worker processes are stopped, and the command exits with one line."""


def _on_sigterm(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not interrupt the clean-up
    raise Terminated()


class _WatchedStdout:
    """``sys.stdout`` that remembers a failed write (a full disk or device, a closed pipe), so
    that the command ends with one error line instead of a traceback."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self.error: OSError | None = None

    def write(self, text):
        try:
            return self._inner.write(text)
        except OSError as err:
            self.error = err
            raise

    def flush(self):
        try:
            return self._inner.flush()
        except OSError as err:
            self.error = err
            raise

    def __getattr__(self, name):
        return getattr(self._inner, name)


def _stdout_failed() -> OSError | None:
    return sys.stdout.error if isinstance(sys.stdout, _WatchedStdout) else None


def _stdout_error_exit(err: OSError) -> None:
    """Send what is left for stdout to /dev/null (no second error at exit) and end with one line."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.__stdout__.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass
    print(f"error: cannot write to standard output: {err.strerror or err}", file=sys.stderr)
    raise typer.Exit(EXIT_USER_ERROR)


def user_errors(fn):
    """Turn an FxverifyError into one line on stderr and exit code 2 (no traceback); Ctrl-C and
    SIGTERM end the command cleanly with one line (exit codes 130 and 143)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            return fn(*args, **kwargs)
        except FxverifyError as err:
            print(f"error: {err}", file=sys.stderr)
            raise typer.Exit(EXIT_USER_ERROR) from None
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            raise typer.Exit(130) from None
        except Terminated:
            print("error: terminated (SIGTERM); results stored so far are kept", file=sys.stderr)
            raise typer.Exit(128 + signal.SIGTERM) from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

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
    if s["unavailable"]:
        con.print(f"[yellow]unavailable[/yellow] (not computed): {', '.join(u['cut'] for u in s['unavailable'])}")
    for why in s["unsupported"]:
        con.print(f"[yellow]not supported[/yellow]: {escape(why)}")
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


def _list(value: str | None, cast, flag: str):
    """A comma- or space-separated list from the command line (None: not given)."""
    from .errors import SpecError

    if value is None:
        return None
    items = [x for x in value.replace(",", " ").split() if x]
    try:
        return [cast(x) for x in items]
    except ValueError:
        raise SpecError(f"{flag} {value!r} is not a list of {'numbers' if cast is float else 'integers'}") from None


def _resolve(spec_path: Path, solver: str | None, options: list[str] | None, *, n=None, eps=None, cuts=None,
             classes=None, norm=None, time_budget=None, order="promise", exhaustive=False):
    """The run's configuration, resolved once (spec + CLI overrides + profile + defaults)."""
    from .config import resolve_run

    cut_list = None if cuts is None else ("all" if cuts.strip() == "all" else _list(cuts, str, "--cuts"))
    return resolve_run(spec_path, solver=solver, solver_options=_overrides(options), time_budget=time_budget,
                       order=order, exhaustive=exhaustive, n_per_class=n, eps=_list(eps, float, "--eps"), cuts=cut_list,
                       classes=_list(classes, int, "--classes"), norm=norm)


def _prepare(model: Path, run):
    """The model (with the spec's normalisation) and the points of a resolved run."""
    from .analysis import load_inputs

    return load_inputs(model, run)


def _default_out(model: Path, spec: Path) -> Path:
    return Path("out") / f"{model.stem}__{spec.stem}"


NOpt = Annotated[Optional[int], typer.Option("--n", help="Points per class (overrides the spec's n_per_class).",
                                             show_default=False)]
EpsOpt = Annotated[Optional[str], typer.Option("--eps", help="Budget grid, e.g. '0,0.5,1' (overrides the spec's).",
                                               show_default=False)]
CutsOpt = Annotated[Optional[str], typer.Option("--cuts", help="Cuts, e.g. 'relu1,relu2' or 'all' (overrides the "
                                                "spec's).", show_default=False)]
ClassesOpt = Annotated[Optional[str], typer.Option("--classes", help="The two classes, e.g. '3,7' (overrides the "
                                                   "spec's).", show_default=False)]
ExhaustiveOpt = Annotated[bool, typer.Option("--exhaustive", help="Run every descent to its local optimum (the "
                                             "reference; default: a descent stops when its next steps cannot "
                                             "cross a budget of the grid).")]
NormOpt = Annotated[Optional[str], typer.Option("--norm", help="The adversary's norm: l2, linf or l1 (overrides the "
                                                "spec's).", show_default=False)]


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class _Stages:
    """What the library reported: per stage, done/total and the rate since the stage began."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.state: dict[str, tuple[int, int]] = {}
        self.starts: dict[str, tuple[float, int]] = {}
        self.order: list[str] = []

    def update(self, stage: str, done: int, total: int) -> bool:
        """Record a report; True when ``stage`` is new (or started again, e.g. a next model)."""
        with self.lock:
            fresh = stage not in self.state or done < self.state[stage][0]
            if fresh:
                self.starts[stage] = (time.perf_counter(), done)
                if stage in self.order:
                    self.order.remove(stage)
                self.order.append(stage)
            self.state[stage] = (done, total)
            return fresh

    def rate(self, stage: str) -> float:
        t0, d0 = self.starts[stage]
        dt = time.perf_counter() - t0
        done = self.state[stage][0]
        return (done - d0) / dt if dt > 0 and done > d0 else 0.0

    @staticmethod
    def unit(stage: str) -> str:
        return "cuts" if stage.startswith("closed form") else "pairs"

    def line(self, stage: str) -> str:
        done, total = self.state[stage]
        rate = self.rate(stage)
        out = f"{stage}: {done:,}/{total:,} {self.unit(stage)}"
        if total:
            out += f" ({100 * done / total:.0f}%)"
        if rate > 0:
            out += f", {rate:.2f} {self.unit(stage)}/s"
            if done < total:
                out += f", ETA {_duration((total - done) / rate)}"
        return out


@contextlib.contextmanager
def _plain_progress(interval: float):
    """Without a terminal (output to a file or a pipe): every ``interval`` seconds a plain line
    on stderr with the current stage, and a last line when a stage that was shown ends. A run
    shorter than ``interval`` prints nothing."""
    stages = _Stages()
    shown: set[str] = set()
    stop = threading.Event()

    def emit(stage: str) -> None:
        print(f"progress: {stages.line(stage)}", file=sys.stderr, flush=True)

    def report(stage: str, done: int, total: int) -> None:
        stages.update(stage, done, total)
        with stages.lock:
            if done >= total and stage in shown:
                emit(stage)
                shown.discard(stage)

    def tick() -> None:
        while not stop.wait(interval):
            with stages.lock:
                if stages.order:
                    stage = stages.order[-1]
                    done, total = stages.state[stage]
                    if done < total:
                        emit(stage)
                        shown.add(stage)

    ticker = threading.Thread(target=tick, name="fxverify-progress", daemon=True)
    ticker.start()
    try:
        yield report
    finally:
        stop.set()
        ticker.join()


@contextlib.contextmanager
def _progress(interval: float = 5.0):
    """The callback the library reports progress to: a rich display in a terminal (a stage
    that did not finish is removed when the next begins, so no stale rows stay), plain lines
    on stderr every ``interval`` seconds otherwise (stage, done/total, rate, ETA)."""
    if not sys.stderr.isatty():
        with _plain_progress(interval) as report:
            yield report
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), transient=False)
    stages = _Stages()
    tasks: dict[str, int] = {}

    def report(stage: str, done: int, total: int) -> None:
        if stages.update(stage, done, total):
            for old in list(tasks):  # stages left unfinished were superseded by this one
                t = bars.tasks[[x.id for x in bars.tasks].index(tasks[old])]
                if old != stage and t.completed < (t.total or 0):
                    bars.remove_task(tasks.pop(old))
            if stage in tasks:
                bars.reset(tasks[stage], total=total, completed=done)
            else:
                tasks[stage] = bars.add_task(stage, total=total, completed=done, rate="")
        rate = stages.rate(stage)
        bars.update(tasks[stage], completed=done, total=total,
                    rate=f"{rate:.2f} {stages.unit(stage)}/s" if rate > 0 else "")

    with bars:
        yield report


@app.command()
@user_errors
def collide(model: ModelArg, spec: SpecOpt,
            cut: Annotated[str, typer.Option("--cut", help="Cut name (see `fxverify inspect`).")],
            pair: Annotated[tuple[int, int], typer.Option("--pair", help="I J: the I-th point of the first class "
                                                          "and the J-th of the second (0-based).")],
            method: Annotated[Optional[str], typer.Option("--method", help="descent, faithful, closed_form, "
                                                          "exact or apgd (default: the solver profile's).")] = None,
            solver: SolverOpt = None,
            solver_option: SolverOptionOpt = None,
            check_solver: Annotated[Optional[str], typer.Option("--check-solver", help="Re-solve the descent's "
                                                                "final cone LP with this backend and report the "
                                                                "difference.", show_default=False)] = None,
            as_json: Annotated[bool, typer.Option("--json", help="Print JSON (with the collision points).")] = False,
            n: NOpt = None, classes: ClassesOpt = None, norm: NormOpt = None) -> None:
    """Find and verify the collision of one cross-class pair at one cut."""
    from .collision import Collider
    from .config import resolve_engine
    from .errors import SpecError

    from .profiles import METHODS

    if method is not None and method not in METHODS:
        raise SpecError(f"--method {method!r} is not a collision method; methods: {', '.join(METHODS)}")
    chosen = solver
    if method is not None and solver is not None:
        # --solver is read for --method (a backend name such as gurobi is an exact solver with
        # --method exact), not first as a descent profile
        from .profiles import load_profile

        chosen = load_profile(solver, method)
        if solver_option:
            chosen = chosen.with_overrides(_overrides(solver_option))
    run = _resolve(spec, chosen, None if chosen is not solver else solver_option, n=n, classes=classes, norm=norm)
    engine = run.engine
    if method not in (None, engine.method) or check_solver is not None:
        from .config import DEFAULT_EXACT_PROFILE
        from .profiles import load_profile

        profile = engine.profile
        if solver is not None or (method == "exact" and engine.method != "exact"):
            profile = load_profile(solver or DEFAULT_EXACT_PROFILE, method)  # the method's own profile
            if solver_option:
                profile = profile.with_overrides(_overrides(solver_option))
        engine = resolve_engine(profile, run.spec.norm, engine.domain, method=method, check_solver=check_solver)
    net, points = _prepare(model, run)
    i, j = pair
    if not (0 <= i < len(points.X_a) and 0 <= j < len(points.X_b)):
        raise SpecError(f"--pair {i} {j} is out of range: the spec selects {len(points.X_a)} points of class "
                        f"{points.classes[0]} and {len(points.X_b)} of class {points.classes[1]}")
    col = Collider(net, engine)
    profile = engine.profile
    shown = net.dominators(cut) if col.method == "descent" else (cut,)
    chain = col.collide_cuts(points.X_a[i], points.X_b[j], shown)
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
              f"{points.classes[1]} image #{points.index_b[j]}; solver profile {escape(profile.name)}, "
              f"{engine.norm.label} budget" + ("" if engine.domain is None else
                                               f", domain [{engine.domain.lo:g}, {engine.domain.hi:g}]"))
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
                                                    show_default=False)] = None,
        n: NOpt = None, classes: ClassesOpt = None, norm: NormOpt = None) -> None:
    """Descent eps against the exact eps* (mixed-integer program) on N pairs: per-pair gap, times
    and a summary."""
    from .config import resolve_engine
    from .gap import gap_study
    from .profiles import load_profile

    from .errors import SpecError

    run = _resolve(spec, descent, None, n=n, classes=classes, norm=norm)
    if run.engine.method == "exact":
        raise SpecError(f"--descent {descent!r} is an exact profile; gap measures a descent (or faithful) profile "
                        f"against --solver")
    exact = load_profile(solver, "exact")
    if solver_option:
        exact = exact.with_overrides(_overrides(solver_option))
    if time_limit is not None:
        exact = exact.with_overrides({"time_limit": time_limit})
    exact_engine = resolve_engine(exact, run.spec.norm, run.engine.domain, method="exact")
    net, points = _prepare(model, run)
    net.cut_index(cut)
    available = len(points.X_a) * len(points.X_b)
    if pairs > available:
        raise SpecError(f"--pairs {pairs} but the spec selects only {available} cross-class pairs "
                        f"({len(points.X_a)} x {len(points.X_b)}); lower --pairs or raise --n")
    out = out or Path("out") / f"gap_{model.stem}_{cut}"
    try:  # before the solves: an unwritable --out is an error now, not after minutes of work
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FxverifyError(f"cannot create output directory {out}: {err.strerror or err}") from None
    with _progress() as report:
        rep = gap_study(net, points, cut, pairs, exact_engine, run.engine, progress=report)
    try:
        paths = rep.write(out)
    except OSError as err:
        raise FxverifyError(f"cannot write the gap study to {out}: {err.strerror or err}") from None
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


def _check_jobs(value: int | None) -> int | None:
    """--jobs below 1 is one error line (exit 2), not a usage box."""
    if value is not None and value < 1:
        print(f"error: --jobs must be at least 1 (got {value})", file=sys.stderr)
        raise typer.Exit(EXIT_USER_ERROR)
    return value


JobsOpt = Annotated[Optional[int], typer.Option("--jobs", "-j", callback=_check_jobs, help="Worker processes for "
                                                "the local executor (default: every core; 1 runs in this "
                                                "process).", show_default=False)]
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
              time_budget: Annotated[Optional[float], typer.Option("--time-budget", help="Stop after this many "
                                                                   "seconds (pairs in flight are abandoned); "
                                                                   "rerun to continue.")] = None,
              jobs: JobsOpt = None, executor: ExecutorOpt = "local", address: AddressOpt = None,
              solver_option: SolverOptionOpt = None, order: OrderOpt = "promise", n: NOpt = None,
              cuts: CutsOpt = None, classes: ClassesOpt = None, norm: NormOpt = None) -> None:
    """Compute and store the budget of every cross-class pair at the spec's cuts (resumable)."""
    from .executors import make_executor
    from .pipeline import compute_distances

    run = _resolve(spec, solver, solver_option, n=n, cuts=cuts, classes=classes, norm=norm,
                   time_budget=time_budget, order=order)
    net, points = _prepare(model, run)
    ex = make_executor(executor, jobs=jobs, address=address)
    out = out or _default_out(model, spec)
    with _progress() as report:
        d = compute_distances(net, points, run.spec.resolve_cuts(net), run.engine, out, progress=report,
                              time_budget=run.time_budget, info={"spec": run.spec.to_dict()}, executor=ex,
                              order=run.order, normalize=run.spec.normalize)
    try:
        np.savez_compressed(out / "distances.npz", **{c: d.by_cut[c].eps for c in d.cuts},
                            index_a=points.index_a, index_b=points.index_b)
    except OSError as err:
        raise FxverifyError(f"cannot write {out / 'distances.npz'}: {err.strerror or err}; the distances are "
                            f"stored in {out / 'results.sqlite'}") from None
    con = _console()
    _print_distances(d, con)
    con.print(f"stored in {escape(str(out))} (results.sqlite, distances.npz)"
              + ("" if d.complete else "; [yellow]incomplete[/yellow]: rerun the same command to continue"))


TimeBudgetOpt = Annotated[Optional[float], typer.Option("--time-budget", help="Stop after this many seconds "
                                                         "(pairs in flight are abandoned); bounds use the pairs "
                                                         "done. Default: the spec's time_budget.")]


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
          address: AddressOpt = None, solver_option: SolverOptionOpt = None, order: OrderOpt = "promise",
          n: NOpt = None, eps: EpsOpt = None, cuts: CutsOpt = None, classes: ClassesOpt = None,
          norm: NormOpt = None, exhaustive: ExhaustiveOpt = False) -> None:
    """Lower bounds on the 0-1 and cross-entropy loss for every cut and budget of the spec."""
    from .analysis import analyze
    from .executors import make_executor
    from .report import write_results

    run = _resolve(spec, solver, solver_option, n=n, eps=eps, cuts=cuts, classes=classes, norm=norm,
                   time_budget=time_budget, order=order, exhaustive=exhaustive)
    net, points = _prepare(model, run)
    ex = make_executor(executor, jobs=jobs, address=address)
    out = out or _default_out(model, spec)
    with _progress() as report:
        a = analyze(net, run, points, out_dir=out, progress=report, executor=ex)
    paths = write_results(a, out)
    con = _console()
    dom = "" if a.domain is None else f", domain [{a.domain[0]:g}, {a.domain[1]:g}]"
    con.print(f"{escape(net.source.path)}: classes {a.classes[0]} vs {a.classes[1]}, {a.n_a} + {a.n_b} points "
              f"({escape(points.origin)}), {run.norm.label} budget{dom}, solver profile {escape(a.profile.name)}")
    _print_bounds(a, con)
    if a.unavailable and run.spec.cuts is None:
        gone = ", ".join(c for c, _ in a.unavailable)
        con.print(f"[yellow]not computed[/yellow]: cuts {escape(gone)} ({escape(a.unavailable[0][1])})")
    if not a.complete:
        done = min(c.pairs_done for c in a.cuts)
        con.print(f"[yellow]incomplete[/yellow]: the time budget stopped the run after {done:,} of "
                  f"{a.cuts[0].pairs_total:,} pairs; bounds count pairs not computed as no edge (still valid, "
                  f"looser). Rerun the same command to continue.")
    skipped = [c for c in a.cuts if c.pairs_skipped]
    if skipped:
        con.print("pair selection: skipped " + ", ".join(f"{c.cut} {c.pairs_skipped:,}" for c in skipped)
                  + " pairs that by the descent/closed-form ratios measured in this run cannot change a bound "
                    "(they keep the budgets of the cuts that determine them; --exhaustive computes every pair)")
    con.print("wrote " + ", ".join(escape(str(p)) for p in paths))
    if a.pairs_failed:
        failed = ", ".join(f"{c.cut} {c.pairs_failed}" for c in a.cuts if c.pairs_failed)
        con.print(f"[red]{a.pairs_failed:,} pair computations failed[/red] ({failed}): they count as no edge "
                  f"at their cut (shallower collisions still count); see results.json")


@app.command()
@user_errors
def compare(models: Annotated[list[Path], typer.Argument(help="ONNX models to compare.", show_default=False)],
            spec: SpecOpt,
            cut: Annotated[str, typer.Option("--cut", help="The cut to compare (present in every model).")],
            label: Annotated[Optional[list[str]], typer.Option("--label", help="Curve label per model, in order "
                                                                "(default: file names).")] = None,
            out: Annotated[Path, typer.Option("--out", help="Output directory.")] = Path("out/compare"),
            solver: SolverOpt = None, time_budget: TimeBudgetOpt = None,
            solver_option: SolverOptionOpt = None, n: NOpt = None, eps: EpsOpt = None, classes: ClassesOpt = None,
            norm: NormOpt = None, exhaustive: ExhaustiveOpt = False) -> None:
    """Plot one cut across several models (e.g. training methods) on the same points and budgets."""
    from .analysis import analyze
    from .errors import SpecError
    from .report import write_comparison

    labels = label or [m.stem for m in models]
    if len(labels) != len(models):
        raise SpecError(f"{len(labels)} --label values for {len(models)} models")
    if len(set(labels)) != len(labels):
        raise SpecError("model labels must differ (pass --label)")
    run = _resolve(spec, solver, solver_option, n=n, eps=eps, cuts=cut, classes=classes, norm=norm,
                   time_budget=time_budget, exhaustive=exhaustive)
    inputs = [_prepare(m, run) for m in models]
    results = {}
    with _progress() as report:
        for (net, points), lab in zip(inputs, labels):
            results[lab] = analyze(net, run, points, out_dir=out / lab, progress=report)
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


def _click_errors() -> tuple[type, type]:
    """(UsageError, ClickException) of the click typer runs on: typer >= 0.29 vendors click as
    ``typer._click``, older typer uses ``click`` itself; both are ``typer.BadParameter``'s bases."""
    mro = {c.__name__: c for c in typer.BadParameter.__mro__}
    return mro["UsageError"], mro["ClickException"]


def _usage_error_line(err) -> str:
    """A usage error (unknown option, missing argument, a value of the wrong type) as one line,
    instead of typer's multi-line box."""
    msg = " ".join(str(err.format_message()).split())
    ctx = getattr(err, "ctx", None)
    path = getattr(ctx, "command_path", "") if ctx is not None else ""
    if path:
        msg += f" (see '{path} --help')"
    return f"error: {msg}"


def run() -> None:  # console-script entry point
    # one BLAS thread in this process too (workers have theirs): the descent's LPs are small
    # dense problems on which threaded BLAS only contends (on a loaded machine, by a factor of
    # ten and more)
    from .executors import _one_blas_thread

    usage_error, click_error = _click_errors()
    sys.stdout = _WatchedStdout(sys.stdout)
    with _one_blas_thread():
        try:
            code = app(standalone_mode=False)
            sys.stdout.flush()  # output still buffered must reach its file now, or be one error line
        except typer.Exit as exit_:
            code = exit_.exit_code
        except OSError as err:
            if _stdout_failed() is None:
                raise
            try:
                _stdout_error_exit(err)
            except typer.Exit as exit_:
                code = exit_.exit_code
        except usage_error as err:
            if type(err).__name__ == "NoArgsIsHelpError":  # bare `fxverify`: typer printed the help
                text = str(err.format_message()).strip()
                if text:
                    print(text)
            else:
                print(_usage_error_line(err), file=sys.stderr)
            code = EXIT_USER_ERROR
        except click_error as err:
            print(f"error: {' '.join(str(err.format_message()).split())}", file=sys.stderr)
            code = EXIT_USER_ERROR
        except typer.Abort:
            print("error: aborted", file=sys.stderr)
            code = 1
    sys.exit(code if isinstance(code, int) else 0)
