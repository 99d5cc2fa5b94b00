"""Helpers shared by the benchmark scripts: one BLAS thread, CPU timing, machine description, tables.

Import this module *before* numpy: it sets the BLAS thread variables so that every library
loaded afterwards starts with one thread, and :func:`pin_blas` then limits the libraries
already loaded (numpy's OpenBLAS, scipy's, cvxopt's) with threadpoolctl as well.

Speed comparisons in the benchmarks are ratios of CPU time (``time.process_time``, which counts
every thread of this process) measured side by side in one run, so that a shared, noisy
machine slows the compared methods alike. Where a target is an absolute time, :func:`footer`
also prints how many cores other processes used during the run.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import datetime  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402

#: the repository root (benchmarks/ is one level below it)
ROOT = Path(__file__).resolve().parent.parent


def pin_blas():
    """Limit every loaded BLAS / OpenMP pool to one thread; returns the limiter (keep it alive)."""
    import numpy.linalg  # noqa: F401
    import scipy.linalg  # noqa: F401
    from threadpoolctl import threadpool_limits

    try:
        import cvxopt  # noqa: F401
    except ImportError:
        pass
    return threadpool_limits(limits=1)


def blas_threads() -> str:
    """The thread count of every BLAS/OpenMP pool loaded now, e.g. 'openblas=1, openblas=1'."""
    from threadpoolctl import threadpool_info

    return ", ".join(f"{i['internal_api']}={i['num_threads']}" for i in threadpool_info()) or "none loaded"


def machine() -> str:
    """One line: CPU model (lscpu), usable cores (nproc), date, Python and numpy versions."""
    import numpy as np

    model = "unknown CPU"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0))
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"{model}, nproc={cores}, {now}, Python {platform.python_version()}, numpy {np.__version__}, "
            f"BLAS threads: {blas_threads()}")


def revision() -> str:
    """The git commit of the repository, and whether fxverify/ differs from it (uncommitted edits)."""
    def git(*a):
        return subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True, check=False).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD") or "unknown"
        dirty = bool(git("status", "--porcelain", "--", "fxverify", "solvers"))
    except OSError:
        return "unknown"
    return f"git {head}" + (" + uncommitted changes in fxverify/ or solvers/" if dirty else " (clean)")


_START: tuple[float, float, float] | None = None  # (machine busy, own CPU, wall) when header() ran


def _own_cpu() -> float:
    """CPU seconds of this process and of its waited-for children."""
    import resource

    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + c.ru_utime + c.ru_stime


def header(title: str) -> None:
    """Print the title, the command, the machine and the code revision; starts the load meter."""
    global _START
    _START = (system_busy(), _own_cpu(), time.perf_counter())
    print(f"== {title}")
    print(f"   command: python {' '.join(sys.argv)}")
    print(f"   machine: {machine()}")
    print(f"   code:    {revision()}")
    print()


class Timer:
    """CPU seconds (this process, all threads; user + system), wall seconds, and the user and
    system parts and minor page faults (getrusage) of a block."""

    cpu: float = 0.0
    wall: float = 0.0
    user: float = 0.0
    sys: float = 0.0
    faults: int = 0


@contextmanager
def timed():
    import resource

    t = Timer()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    c0, w0 = time.process_time(), time.perf_counter()
    try:
        yield t
    finally:
        t.cpu = time.process_time() - c0
        t.wall = time.perf_counter() - w0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        t.user, t.sys = r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime
        t.faults = r1.ru_minflt - r0.ru_minflt


def system_busy() -> float:
    """CPU seconds the whole machine has spent busy since boot (all processes, from /proc/stat);
    the difference over a run minus the run's own CPU is what other processes took meanwhile.
    NaN where /proc/stat is not available."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return float("nan")
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def footer() -> None:
    """Print how busy the machine was with other processes since header() (cores on average):
    near 0 on a quiet machine; wall-clock figures of a run with a high value are pessimistic."""
    if _START is None:
        return
    busy, cpu, wall = system_busy() - _START[0], _own_cpu() - _START[1], time.perf_counter() - _START[2]
    print(f"\nrun: {wall:.0f} s wall, {cpu:.0f} s CPU; other processes used {max(0.0, busy - cpu) / wall:.2f} "
          f"cores on average meanwhile")


def table(headers: list[str], rows: list[list], align: str | None = None) -> str:
    """A plain-text table; ``align``: one 'l' or 'r' per column (default: first left, rest right)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[k]) for r in cells) for k in range(len(headers))]
    align = align or "l" + "r" * (len(headers) - 1)

    def fmt(r):
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(r, widths, align))

    lines = [fmt(cells[0]), "  ".join("-" * w for w in widths)] + [fmt(r) for r in cells[1:]]
    return "\n".join(lines)
