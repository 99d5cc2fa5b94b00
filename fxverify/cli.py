"""The ``fxverify`` command line: parse, validate, call one library function, write.

Every error a user can cause prints one line (``error: ...``) on stderr and exits with code 2.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape as _markup_escape
from rich.table import Table

from . import __version__
from .errors import FxverifyError, printable

app = typer.Typer(name="fxverify", add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Lower bounds on the robust loss of any classifier trained on a fixed feature extractor.")
EXIT_USER_ERROR = 2


def escape(text) -> str:
    """Text read from a file or given on the command line, for rich: its terminal control
    characters and bidirectional overrides escaped (:func:`fxverify.errors.printable`), and its
    square brackets not read as markup."""
    return _markup_escape(printable(text))


class _Console(Console):
    """rich's console, but a write that fails (a closed pipe: ``fxverify inspect M | head``)
    ends the command with one error line and exit code 2, like any other failed write to
    standard output; rich's own handling would exit 1 without a word."""

    def on_broken_pipe(self) -> None:
        err = BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))
        watched = sys.stdout if isinstance(sys.stdout, _WatchedStdout) else (_WATCHED[-1] if _WATCHED else None)
        if watched is not None and watched.error is None:
            watched.error = err
        raise err


def _console() -> Console:
    return _Console(soft_wrap=False, width=max(100, Console().width))


def _silence(fd: int) -> None:
    """Point ``fd`` at /dev/null (what is left to write there, e.g. at exit, goes nowhere)."""
    try:
        devnull = os.open(os.devnull, os.O_RDWR)
        if devnull != fd:
            os.dup2(devnull, fd)
            os.close(devnull)
    except OSError:
        pass


def _say_error(message: str) -> None:
    """Print ``error: message`` on stderr. A stderr that cannot be written (``2>/dev/full``, a
    closed pipe) loses the line but never changes the exit code."""
    try:
        print(f"error: {printable(message)}", file=sys.stderr, flush=True)
    except (OSError, ValueError, AttributeError):
        _silence(2)


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


#: the watched standard output of this process (run() installs it; click may wrap it later)
_WATCHED: list[_WatchedStdout] = []


def _stdout_failed() -> OSError | None:
    if isinstance(sys.stdout, _WatchedStdout):
        return sys.stdout.error
    return _WATCHED[-1].error if _WATCHED else None


def _stdout_error_exit(err: OSError) -> None:
    """Send what is left for stdout to /dev/null (no second error at exit) and end with one line."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.__stdout__.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass
    _say_error(f"cannot write to standard output: {err.strerror or err}")
    raise typer.Exit(EXIT_USER_ERROR)


#: After SIGTERM or Ctrl-C, the main thread has this long to unwind (stop workers, roll back the
#: store) before the process ends anyway: code that never returns to Python (a native library
#: spinning on a failed allocation) cannot delay the end.
SIGNAL_GRACE_SECONDS = 20.0


@contextlib.contextmanager
def _signal_watchdog():
    """Watch SIGTERM and SIGINT below Python: the interpreter's C handler writes each signal's
    number to a socket (``signal.set_wakeup_fd``) even while the main thread is stuck in native
    code; a thread reading it ends the process with the usual line and exit code when the main
    thread has not ended the command within :data:`SIGNAL_GRACE_SECONDS`."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    try:
        rsock, wsock = socket.socketpair()
        wsock.setblocking(False)
        previous = signal.set_wakeup_fd(wsock.fileno(), warn_on_full_buffer=False)
    except (OSError, ValueError):  # no sockets left: run without the watchdog
        yield
        return
    done = threading.Event()

    def watch() -> None:
        try:
            while not done.is_set():
                data = rsock.recv(16)
                if not data:
                    return
                for signum in data:
                    if signum in (signal.SIGTERM, signal.SIGINT) and not done.wait(SIGNAL_GRACE_SECONDS):
                        line = ("error: terminated (SIGTERM)" if signum == signal.SIGTERM else "error: interrupted")
                        try:
                            os.write(2, f"{line}; the command did not stop within "
                                        f"{SIGNAL_GRACE_SECONDS:g} s, ended at once\n".encode())
                        except OSError:
                            pass
                        os._exit(128 + signum)
        except OSError:
            return

    watcher = threading.Thread(target=watch, name="fxverify-signals", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        try:
            signal.set_wakeup_fd(previous)
        except (OSError, ValueError):
            pass
        for sock in (wsock, rsock):
            try:
                sock.close()
            except OSError:
                pass


def _resource_message(err: BaseException) -> str | None:
    """One line for a failure of the machine's or the process's limits, or None when ``err``
    is not one (a bug: let it show)."""
    limit = _address_limit()
    mem_hint = (f"the address-space limit is {_size(limit)} (ulimit -v / prlimit --as): raise it, or analyse "
                f"fewer points or a smaller model" if limit else "free memory, or analyse fewer points or a "
                "smaller model")
    if isinstance(err, MemoryError):
        what = str(err).strip() or "an allocation failed"
        return f"out of memory: {what}; {mem_hint}"
    if isinstance(err, ImportError):
        text = str(err)
        if any(s in text for s in ("failed to map segment", "cannot allocate memory", "Cannot allocate memory")):
            return f"out of memory while loading a library ({text.split(':')[-1].strip()}); {mem_hint}"
        return None
    if isinstance(err, RuntimeError) and "can't start new thread" in str(err):
        return (f"cannot start a thread: the process or memory limits are exhausted ({mem_hint}; or raise "
                f"ulimit -u)")
    if isinstance(err, OSError):
        import resource

        where = f" ({printable(err.filename)})" if getattr(err, "filename", None) else ""
        if err.errno in (errno.EMFILE, errno.ENFILE):
            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
            return (f"too many open files{where}: the limit is {soft} (ulimit -n); raise it, or run with fewer "
                    f"--jobs")
        if err.errno == errno.ENOMEM:
            return f"out of memory{where}: {err.strerror}; {mem_hint}"
        if err.errno == errno.EAGAIN and "fork" in str(err).lower():
            return "cannot start a process: the process limit is reached (ulimit -u)"
        if err.errno == errno.ENAMETOOLONG:
            return f"file name too long{where[:200] + ('...)' if len(where) > 200 else '')}"
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"no space left on the device{where}: {err.strerror}; free some space and run the command again"
        if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return f"permission denied{where}: {err.strerror}"
        if err.errno in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ELOOP, errno.EIO):
            return f"{err.strerror}{where}"
    return None


def user_errors(fn=None, *, stores: bool = False):
    """Turn an FxverifyError into one line on stderr and exit code 2 (no traceback); Ctrl-C and
    SIGTERM end the command cleanly with one line (exit codes 130 and 143). ``stores``: the
    command keeps results in a store (the SIGTERM line says they are kept)."""
    if fn is None:
        return functools.partial(user_errors, stores=stores)
    kept = "; results stored so far are kept (rerun the same command to continue)" if stores else ""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            with _signal_watchdog():
                return fn(*args, **kwargs)
        except FxverifyError as err:
            _say_error(str(err))
            raise typer.Exit(EXIT_USER_ERROR) from None
        except KeyboardInterrupt:
            _say_error(f"interrupted{kept}")
            raise typer.Exit(130) from None
        except Terminated:
            _say_error(f"terminated (SIGTERM){kept}")
            raise typer.Exit(128 + signal.SIGTERM) from None
        except (MemoryError, ImportError, RuntimeError, OSError) as err:
            if isinstance(err, OSError) and _stdout_failed() is not None:
                # a failed write to standard output (a full device, a closed pipe): one line, exit
                # 2, here -- click would turn a broken pipe into a silent exit 1
                _stdout_error_exit(_stdout_failed())
            message = _resource_message(err)
            if message is None:
                raise
            _say_error(message)
            raise typer.Exit(EXIT_USER_ERROR) from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    return wrapper


def _process_start() -> float:
    """When this process started, as a :func:`time.monotonic` time (a time budget counts the
    interpreter's start and imports too); now when /proc cannot tell."""
    now = time.monotonic()
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        age = uptime - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return now
    return now - age if 0.0 <= age < 3600.0 else now


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
    con.print(f"[bold]{escape(s['path'])}[/bold]  sha256 {s['sha256'][:16]}...  "
              f"{escape(s['producer'] or 'unknown producer')}, opset {s['opset']}")
    con.print(f"input {escape(repr(s['input_name']))} ONNX shape {_shape(s['onnx_input_shape'])} -> one sample "
              f"{_shape(s['input_shape'])} ({s['input_dim']} values)")
    t = Table(show_edge=False, header_style="bold")
    for col in ("cut", "kind", "ONNX nodes", "in shape", "out shape", "params", "max |IR - ORT|"):
        t.add_column(col, justify="right" if col in ("params", "max |IR - ORT|") else "left")
    per_cut = s["agreement"]["per_cut"]
    t.add_row("input", "", "", "", _shape(s["input_tensor_shape"]), "", f"{per_cut['input']:.2e}")
    for row in s["layers"]:
        t.add_row(escape(row["name"]), escape(row["kind"]), escape(" ".join(o.split(" ")[0] for o in row["ops"])),
                  _shape(row["in_shape"]), _shape(row["out_shape"]), f"{row['params']:,}",
                  f"{row['max_abs_diff']:.2e}")
    con.print(t)
    con.print(f"cuts: {escape(', '.join(s['cuts']))}")
    if s["unavailable"]:
        con.print(f"[yellow]unavailable[/yellow] (not computed): {escape(', '.join(u['cut'] for u in s['unavailable']))}")
    for why in s["unsupported"]:
        con.print(f"[yellow]not supported[/yellow]: {escape(why)}")
    con.print(f"parameters: {s['params']:,}")
    r = s["first_affine"]
    if r:
        con.print(f"first affine map {escape(r['name'])}: {r['out_dim']} x {r['in_dim']}, rank {r['rank']}")
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


def _classes(value: str | None):
    """``--classes``: "all", or a list of class labels (None: not given)."""
    from .spec import ALL_CLASSES

    return ALL_CLASSES if value is not None and value.strip() == ALL_CLASSES else _list(value, int, "--classes")


def _resolve(spec_path: Path, solver: str | None, options: list[str] | None, *, n=None, eps=None, cuts=None,
             classes=None, norm=None, time_budget=None, order="promise", exhaustive=False, select_pairs=False):
    """The run's configuration, resolved once (spec + CLI overrides + profile + defaults)."""
    from .config import resolve_run

    cut_list = None if cuts is None else ("all" if cuts.strip() == "all" else _list(cuts, str, "--cuts"))
    return resolve_run(spec_path, solver=solver, solver_options=_overrides(options), time_budget=time_budget,
                       order=order, exhaustive=exhaustive, select_pairs=select_pairs, n_per_class=n,
                       eps=_list(eps, float, "--eps"), cuts=cut_list, classes=_classes(classes),
                       norm=norm)


def _prepare(model: Path, run):
    """The model (with the spec's normalisation) and the points of a resolved run."""
    from .analysis import load_inputs

    return load_inputs(model, run)


def _two_classes(points, command: str) -> None:
    """``collide`` and ``gap`` name a pair by its index in each of two classes."""
    from .errors import SpecError

    if points.multiclass:
        raise SpecError(f"{command} takes two classes (a pair is the I-th point of the first and the J-th of the "
                        f"second); the run selects {len(points.classes)}: pass --classes A,B")


def _default_out(model: Path, spec: Path) -> Path:
    return Path("out") / f"{model.stem}__{spec.stem}"


NOpt = Annotated[Optional[int], typer.Option("--n", help="Points per class (overrides the spec's n_per_class).",
                                             show_default=False)]
EpsOpt = Annotated[Optional[str], typer.Option("--eps", help="Budget grid, e.g. '0,0.5,1' (overrides the spec's).",
                                               show_default=False)]
CutsOpt = Annotated[Optional[str], typer.Option("--cuts", help="Cuts, e.g. 'relu1,relu2' or 'all' (overrides the "
                                                "spec's).", show_default=False)]
ClassesOpt = Annotated[Optional[str], typer.Option("--classes", help="The classes, e.g. '3,7', '0,1,2' or 'all' "
                                                   "(every class in the data; overrides the spec's).",
                                                   show_default=False)]
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
        """closed-form stages count cuts; the descent counts (pair, cut) results, each stored
        when found; the gap study counts pairs."""
        return "cuts" if stage.startswith("closed form") else "results" if stage == "descent" else "pairs"

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


def _collide_engine(run, method, solver, solver_option, check_solver):
    """The engine of ``fxverify collide``: the run's, or ``--method``'s own profile (``--solver``
    read for that method), with ``--check-solver``."""
    from .config import DEFAULT_EXACT_PROFILE, resolve_engine
    from .profiles import load_profile

    engine = run.engine
    if method not in (None, engine.method) or check_solver is not None:
        profile = engine.profile
        if solver is not None or (method == "exact" and engine.method != "exact"):
            profile = load_profile(solver or DEFAULT_EXACT_PROFILE, method)  # the method's own profile
            if solver_option:
                profile = profile.with_overrides(_overrides(solver_option))
        engine = resolve_engine(profile, run.spec.norm, engine.domain, method=method, check_solver=check_solver)
    return engine


def _collide_json(chain, cut, i, j, points) -> None:
    res = chain[cut]
    out = {c: {"status": r.status.value, "eps": r.eps, "verified": r.verified, "method": r.method,
               "solver": r.solver, "iterations": r.iterations, "seconds": r.seconds, "residual": r.residual,
               "residual_onnx": r.residual_onnx, "eps_lower": r.eps_lower, "termination": r.termination,
               "check_solver": r.check_solver, "check_eps": r.check_eps, "message": r.message}
           for c, r in chain.items()}
    out[cut]["u_adv"] = None if res.u_adv is None else res.u_adv.tolist()
    out[cut]["v_adv"] = None if res.v_adv is None else res.v_adv.tolist()
    print(json.dumps({"pair": [i, j], "classes": list(points.classes),
                      "index": [int(points.index_a[i]), int(points.index_b[j])], "cuts": out}, indent=2))


def _collide_table(chain, cut, i, j, points, engine) -> None:
    con = _console()
    res = chain[cut]
    con.print(f"pair ({i}, {j}): class {points.classes[0]} image #{points.index_a[i]} vs class "
              f"{points.classes[1]} image #{points.index_b[j]}; solver profile {escape(engine.profile.name)}, "
              f"{engine.norm.label} budget" + ("" if engine.domain is None else
                                               f", domain [{engine.domain.lo:g}, {engine.domain.hi:g}]"))
    t = Table(show_edge=False, header_style="bold")
    for col_name in ("cut", "status", "eps", "method", "LP solves", "seconds", "residual IR / ORT", "note"):
        t.add_column(col_name)
    for c, r in chain.items():
        t.add_row(c, r.status.value, f"{r.eps:.6f}", r.method, str(r.iterations), f"{r.seconds:.2f}",
                  f"{r.residual:.1e} / {r.residual_onnx:.1e}", escape(r.message))
    con.print(t)
    verdict = "verified collision" if res.verified else (
        "no result: the time budget ended first" if res.status.value == "timed-out" else "no verified collision")
    con.print(f"{cut}: {verdict}, eps = {res.eps:.6f}")
    if res.method == "exact" and res.termination:
        con.print(f"exact: {res.termination}; proven eps* >= {res.eps_lower:.6f}, eps* <= {res.eps:.6f}")
    if res.check_solver:
        con.print(f"check by {res.check_solver}: eps {res.check_eps:.9g} (difference {res.check_difference:+.2e})")


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
            time_budget: Annotated[Optional[float], typer.Option("--time-budget", help="Stop after this many "
                                                                 "seconds: cuts not finished by then are shown "
                                                                 "as timed-out (nothing is stored).",
                                                                 show_default=False)] = None,
            as_json: Annotated[bool, typer.Option("--json", help="Print JSON (with the collision points).")] = False,
            n: NOpt = None, classes: ClassesOpt = None, norm: NormOpt = None) -> None:
    """Find and verify the collision of one cross-class pair at one cut."""
    from .collision import Collider
    from .errors import SpecError
    from .profiles import METHODS, load_profile

    started = _process_start()
    if method is not None and method not in METHODS:
        raise SpecError(f"--method {method!r} is not a collision method; methods: {', '.join(METHODS)}")
    chosen = solver
    if method is not None and solver is not None:
        # --solver is read for --method (a backend name such as gurobi is an exact solver with
        # --method exact), not first as a descent profile
        chosen = load_profile(solver, method)
        if solver_option:
            chosen = chosen.with_overrides(_overrides(solver_option))
    run = _resolve(spec, chosen, None if chosen is not solver else solver_option, n=n, classes=classes, norm=norm,
                   time_budget=time_budget)
    engine = _collide_engine(run, method, solver, solver_option, check_solver)
    net, points = _prepare(model, run)
    _two_classes(points, "collide")
    i, j = pair
    if not (0 <= i < len(points.X_a) and 0 <= j < len(points.X_b)):
        raise SpecError(f"--pair {i} {j} is out of range: the spec selects {len(points.X_a)} points of class "
                        f"{points.classes[0]} and {len(points.X_b)} of class {points.classes[1]}")
    col = Collider(net, engine)
    shown = net.dominators(cut) if col.method == "descent" else (cut,)
    deadline = None if time_budget is None else started + run.time_budget
    chain = col.collide_cuts(points.X_a[i], points.X_b[j], shown, deadline=deadline)
    if as_json:
        _collide_json(chain, cut, i, j, points)
    else:
        _collide_table(chain, cut, i, j, points, engine)


def _check_summary(rep, con) -> None:
    verdict = "[green]all hold[/green]" if rep.ok else "[red]FAILED[/red]"
    con.print(f"{escape(rep.model)}: {rep.checked:,} edges checked (witnesses with eps <= the grid's largest "
              f"budget, of {rep.stored:,} stored), {rep.failed:,} failed, {rep.mismatched:,} budget mismatches; "
              f"{verdict} ({rep.seconds:.1f} s; float64 IR and onnxruntime)")
    if rep.model_sha256 != rep.run_sha256:
        con.print(f"[yellow]note[/yellow]: this model (sha256 {rep.model_sha256[:16]}…) is not the run's "
                  f"({rep.run_sha256[:16]}…)")
    for e in rep.examples:
        con.print(f"  {escape(e)}")


@app.command()
@user_errors
def check(out: Annotated[Path, typer.Argument(help="A run's output directory (with witnesses.npz).",
                                              show_default=False)],
          model: Annotated[Optional[Path], typer.Option("--model", help="Check against this ONNX model instead of "
                                                        "the run's.", show_default=False)] = None) -> None:
    """Re-verify every stored witness that is an edge at some budget of the grid (float64 IR and
    onnxruntime, budgets recomputed from the points); exit 0 only if all hold, 1 otherwise."""
    from . import witnesses

    rep = witnesses.check(out, model)
    _check_summary(rep, _console())
    if not rep.ok:
        raise typer.Exit(1)


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
    _two_classes(points, "gap")
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
        _say_error(f"--jobs must be at least 1 (got {value})")
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


WitnessesOpt = Annotated[str, typer.Option("--witnesses", help="all: store every found collision's points and "
                                           "export them (witnesses.npz, for fxverify check); none: budgets only "
                                           "(huge runs).")]
SelectOpt = Annotated[bool, typer.Option("--select-pairs", help="Skip pairs that, by the descent/closed-form ratios "
                                         "measured on earlier blocks of pairs, cannot change a bound (off by "
                                         "default; bounds stay valid).")]


def _witnesses(value: str) -> bool:
    from .errors import SpecError

    if value not in ("all", "none"):
        raise SpecError(f"--witnesses {value!r}: use all or none")
    return value == "all"


def _print_distances(d, con) -> None:
    import numpy as np

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


def _print_failures(per_cut, con) -> None:
    """Failed (pair, cut) computations by reason: counts, and a few pairs of each."""
    by_reason: dict[str, list[str]] = {}
    for cut, failures in per_cut:
        for f in failures:
            by_reason.setdefault(f.reason or "no reason recorded", []).append(f"{cut} ({f.i}, {f.j})")
    n = sum(len(v) for v in by_reason.values())
    if not n:
        return
    con.print(f"[red]{n:,} pair computations failed[/red]: they count as no edge at their cut (shallower collisions "
              f"still count); reasons (all of them in results.json):")
    for reason, where in sorted(by_reason.items(), key=lambda kv: -len(kv[1]))[:5]:
        more = f" and {len(where) - 3} more" if len(where) > 3 else ""
        con.print(f"  {len(where):,} x {escape(reason)}: {escape(', '.join(where[:3]))}{more}")


def _distances_npz(out: Path, d, points) -> None:
    import io

    import numpy as np

    from .report import atomic_write

    buf = io.BytesIO()
    labels = {"classes": np.array(points.classes), "labels": points.labels} if points.multiclass else {}
    np.savez_compressed(buf, **{c: d.by_cut[c].eps for c in d.cuts}, index_a=points.index_a, index_b=points.index_b,
                        **labels)
    try:
        atomic_write(out / "distances.npz", lambda f: f.write(buf.getvalue()))
    except FxverifyError as err:
        raise FxverifyError(f"{err}; the distances are stored in {out / 'results.sqlite'}") from None


@app.command()
@user_errors(stores=True)
def distances(model: ModelArg, spec: SpecOpt, out: OutOpt = None, solver: SolverOpt = None,
              time_budget: Annotated[Optional[float], typer.Option("--time-budget", help="Stop after this many "
                                                                   "seconds (cuts in flight are abandoned); "
                                                                   "rerun to continue.")] = None,
              jobs: JobsOpt = None, executor: ExecutorOpt = "local", address: AddressOpt = None,
              solver_option: SolverOptionOpt = None, order: OrderOpt = "promise", n: NOpt = None,
              cuts: CutsOpt = None, classes: ClassesOpt = None, norm: NormOpt = None,
              witnesses: WitnessesOpt = "all") -> None:
    """Compute and store the budget of every cross-class pair at the spec's cuts (resumable)."""
    import numpy as np

    from .analysis import export_witnesses, run_deadline
    from .executors import make_executor
    from .pipeline import compute_distances

    started = _process_start()
    keep = _witnesses(witnesses)
    run = _resolve(spec, solver, solver_option, n=n, cuts=cuts, classes=classes, norm=norm,
                   time_budget=time_budget, order=order, exhaustive=True)
    net, points = _prepare(model, run)
    ex = make_executor(executor, jobs=jobs, address=address)
    out = out or _default_out(model, spec)
    deadline = run_deadline(started, run.time_budget)
    with _progress() as report:
        d = compute_distances(net, points, run.spec.resolve_cuts(net), run.engine, out, progress=report,
                              deadline=deadline, info={"spec": run.spec.to_dict()}, executor=ex, order=run.order,
                              normalize=run.spec.normalize, witnesses=keep)
    _distances_npz(out, d, points)
    info = export_witnesses(net, run, points, out, grid=()) if keep else None
    con = _console()
    _print_distances(d, con)
    _print_failures(((c, d.by_cut[c].failures) for c in d.cuts), con)
    files = "results.sqlite, distances.npz" + (f", witnesses.npz ({info['count']:,} witnesses)" if info else "")
    con.print(f"stored in {escape(str(out))} ({files})"
              + ("" if d.complete else "; [yellow]incomplete[/yellow]: rerun the same command to continue"))


TimeBudgetOpt = Annotated[Optional[float], typer.Option("--time-budget", help="Stop after this many seconds "
                                                         "(cuts in flight are abandoned); bounds use the results "
                                                         "stored. Default: the spec's time_budget.")]


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


def _print_run_notes(a, run, con) -> None:
    """What a bound run's table does not say: unavailable cuts, an incomplete run, skipped pairs."""
    if a.unavailable and run.spec.cuts is None:
        gone = ", ".join(c for c, _ in a.unavailable)
        con.print(f"[yellow]not computed[/yellow]: cuts {escape(gone)} ({escape(a.unavailable[0][1])})")
    if not a.complete:
        per = ", ".join(f"{c.cut} {c.pairs_done:,}" for c in a.cuts if c.pairs_done < c.pairs_total)
        con.print(f"[yellow]incomplete[/yellow]: the time budget stopped the run; pairs done of "
                  f"{a.cuts[0].pairs_total:,}: {per}. Pairs not computed at a cut keep the budgets of the cuts "
                  f"that determine it (bounds still valid, looser). Rerun the same command to continue.")
    skipped = [c for c in a.cuts if c.pairs_skipped]
    if skipped:
        con.print("pair selection: skipped " + ", ".join(f"{c.cut} {c.pairs_skipped:,}" for c in skipped)
                  + " pairs that by the descent/closed-form ratios measured on earlier pairs cannot change a bound "
                    "(they keep the budgets of the cuts that determine them)")


@app.command()
@user_errors(stores=True)
def bound(model: ModelArg, spec: SpecOpt, out: OutOpt = None, solver: SolverOpt = None,
          time_budget: TimeBudgetOpt = None, jobs: JobsOpt = None, executor: ExecutorOpt = "local",
          address: AddressOpt = None, solver_option: SolverOptionOpt = None, order: OrderOpt = "promise",
          n: NOpt = None, eps: EpsOpt = None, cuts: CutsOpt = None, classes: ClassesOpt = None,
          norm: NormOpt = None, exhaustive: ExhaustiveOpt = False, select_pairs: SelectOpt = False,
          witnesses: WitnessesOpt = "all") -> None:
    """Lower bounds on the 0-1 and cross-entropy loss for every cut and budget of the spec."""
    from .analysis import analyze, export_witnesses, run_deadline
    from .executors import make_executor
    from .report import write_results

    started = _process_start()
    keep = _witnesses(witnesses)
    run = _resolve(spec, solver, solver_option, n=n, eps=eps, cuts=cuts, classes=classes, norm=norm,
                   time_budget=time_budget, order=order, exhaustive=exhaustive, select_pairs=select_pairs)
    net, points = _prepare(model, run)
    ex = make_executor(executor, jobs=jobs, address=address)
    out = out or _default_out(model, spec)
    deadline = run_deadline(started, run.time_budget)
    with _progress() as report:
        a = analyze(net, run, points, out_dir=out, progress=report, executor=ex, deadline=deadline, witnesses=keep)
    info = export_witnesses(net, run, points, out) if keep else None
    paths = write_results(a, out, info) + ([out / info["file"]] if info else [])
    con = _console()
    con.print(f"{escape(net.source.path)}: {escape(a.points_label)} points, {a.pairs:,} cross-class pairs "
              f"({escape(points.origin)}), {escape(a.threat_model.label)}, solver profile {escape(a.profile.name)}")
    _print_bounds(a, con)
    _print_run_notes(a, run, con)
    con.print("wrote " + ", ".join(escape(str(p)) for p in paths))
    _print_failures(((c.cut, c.failures) for c in a.cuts), con)


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
        t.add_column(escape(col_name), justify="right")
    first = next(iter(results.values()))
    for k, r in enumerate(first.cut(cut).records):
        t.add_row(f"{r.eps:g}", *(f"{results[lab].cut(cut).records[k].ce_lower:.4f}" for lab in labels))
    con.print(f"cross-entropy lower bound at {escape(cut)}:")
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


#: The least address space (``ulimit -v``, ``prlimit --as``) the command line starts under.
#: numpy, scipy, onnxruntime and the solvers map about 0.5 GB before any work, at one BLAS
#: thread; under less, imports fail at random places, and a BLAS library out of memory retries
#: its allocation without end instead of failing. Checked before any of them is loaded.
MIN_ADDRESS_SPACE = 1 << 30
#: The fewest open files (``ulimit -n``) a run needs: libraries, the store, worker pipes.
MIN_OPEN_FILES = 64


def _size(n: int) -> str:
    return f"{n / (1 << 30):.3g} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.0f} MiB"


def _address_limit() -> int | None:
    """The process's address-space limit in bytes (the smaller of RLIMIT_AS and RLIMIT_DATA),
    or None when there is none."""
    from .linops import address_space_limit

    return address_space_limit()


def _check_limits() -> str | None:
    """Why this process cannot run fxverify (memory or open-file limits), or None. A soft
    open-file limit below what a run needs is raised to the hard limit first."""
    import resource

    limit = _address_limit()
    if limit is not None and limit < MIN_ADDRESS_SPACE:
        return (f"the address-space limit is {_size(limit)} (ulimit -v / prlimit --as), below the "
                f"{_size(MIN_ADDRESS_SPACE)} fxverify needs to load numpy, scipy, onnxruntime and its solvers; "
                f"raise the limit")
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < 1024:
            want = 1024 if hard == resource.RLIM_INFINITY else min(hard, 1024)
            if want > soft:
                resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
                soft = want
        if soft != resource.RLIM_INFINITY and soft < MIN_OPEN_FILES:
            return (f"the open-file limit is {soft} (ulimit -n), below the {MIN_OPEN_FILES} fxverify needs; "
                    f"raise the limit")
    except (ValueError, OSError):
        pass
    return None


def _standard_streams() -> str | None:
    """Make the three standard descriptors safe to use: a closed one is opened on /dev/null
    (else the next file opened -- the store -- would take its number and receive what a
    library prints); text that the terminal's encoding cannot show is written escaped. Returns
    an error when standard output is closed."""
    closed = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            closed.append(fd)
            _silence(fd)
    if 2 in closed or sys.stderr is None:
        sys.stderr = open(os.devnull, "w")
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):
            pass
    if 1 in closed or sys.stdout is None:
        sys.stdout = open(os.devnull, "w")
        return "standard output is closed; redirect it to a file or to /dev/null instead of closing it"
    return None


def _quiet_libraries() -> None:
    """Third-party chatter must not come before (or instead of) fxverify's own line: numpy's
    RuntimeWarnings (bad input is checked and named by fxverify itself) are not shown, other
    warnings are one escaped line."""
    import warnings

    if not sys.warnoptions:  # python -W ... / PYTHONWARNINGS: the user asked for them
        warnings.simplefilter("ignore", RuntimeWarning)

    def one_line(message, category, filename, lineno, file=None, line=None) -> None:
        # a warning that is shown (matplotlib's missing glyph, ...) is one escaped line, never
        # the raw text and source line Python prints
        try:
            print(f"warning: {printable(' '.join(str(message).split()))} ({category.__name__})",
                  file=sys.stderr if file is None else file)
        except (OSError, ValueError, AttributeError):
            pass

    warnings.showwarning = one_line
    # onnxruntime's C++ log: fxverify.reference.quiet_onnxruntime, wherever onnxruntime is loaded


def run() -> None:  # console-script entry point
    problem = _standard_streams()
    if problem is None:
        problem = _check_limits()
    if problem is not None:
        _say_error(problem)
        sys.exit(EXIT_USER_ERROR)
    # one BLAS thread in this process too (workers have theirs): the descent's LPs are small
    # dense problems on which threaded BLAS only contends (on a loaded machine, by a factor of
    # ten and more). Set before numpy is loaded: a BLAS started with one thread also maps one
    # thread's buffers, not one per core (spawned workers inherit it).
    for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    usage_error, click_error = _click_errors()
    sys.stdout = _WatchedStdout(sys.stdout)
    _WATCHED.append(sys.stdout)
    code = EXIT_USER_ERROR
    try:
        with _signal_watchdog():
            _quiet_libraries()
            from .executors import _one_blas_thread

            with _one_blas_thread():
                code = _run_app(usage_error, click_error)
    except (MemoryError, ImportError, RuntimeError, OSError) as err:  # before or after a command ran
        message = _resource_message(err)
        if message is None:
            raise
        _say_error(message)
        code = EXIT_USER_ERROR
    except KeyboardInterrupt:
        _say_error("interrupted")
        code = 130
    sys.exit(code if isinstance(code, int) else 0)


def _run_app(usage_error, click_error) -> int:
    try:
        code = app(standalone_mode=False)
        sys.stdout.flush()  # output still buffered must reach its file now, or be one error line
    except typer.Exit as exit_:
        code = exit_.exit_code
    except (OSError, SystemExit):  # SystemExit: click's own exit 1 on a broken pipe
        failed = _stdout_failed()
        if failed is None:
            raise
        try:
            _stdout_error_exit(failed)
        except typer.Exit as exit_:
            code = exit_.exit_code
    except usage_error as err:
        if type(err).__name__ == "NoArgsIsHelpError":  # bare `fxverify`: typer printed the help
            text = str(err.format_message()).strip()
            if text:
                print(text)
        else:
            _say_error(_usage_error_line(err)[len("error: "):])
        code = EXIT_USER_ERROR
    except click_error as err:
        _say_error(" ".join(str(err.format_message()).split()))
        code = EXIT_USER_ERROR
    except typer.Abort:
        _say_error("aborted")
        code = 1
    return code
