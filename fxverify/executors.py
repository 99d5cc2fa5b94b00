"""Where (pair, cut) tasks run: in this process, in a pool of local processes, or on a Ray cluster.

A :class:`RunJob` says everything a worker needs and is sent to each worker once: the loaded
network itself (pickled, so a run's start-up is one model load whatever ``--jobs`` is), the
resolved engine, the two point sets and the grid. A :class:`PairTask` is one pair and the cuts
to compute for it, in order, with the pair's results already stored at the cuts that determine
them (their collisions, from the witnesses, are the descents' starts exactly as if computed in
the same task); its :class:`TaskResult` has one :class:`~fxverify.results.PairRow` per cut that
finished.
Workers keep nothing between tasks but a :class:`~fxverify.collision.Collider` (plans, SVDs,
the onnxruntime session), so a lost task is simply run again and gives the same rows:
executors yield identical results.

Tasks come from a *source* with ``next_task() -> PairTask | None`` (None: nothing can start
now; the executor ends when nothing is in flight either). The consumer updates the source
between the executor's yields (a task that finishes can make the next cut of its pair ready).

BLAS runs on one thread per worker: the cone LPs are small, and threaded BLAS on them costs
far more in contention than it gains (measured: 8x slower per LP with two threads on two
cores while another process runs); it also changes rounding, so every executor and ``--jobs``
computes with one BLAS thread and gives bit-identical results.

``run(job, source, deadline=None)``: ``deadline`` (a :func:`time.monotonic` time) is hard for
every executor. No task starts after it; every task gets it (as wall-clock time, so it holds on
other machines), and a descent stops at it between LPs (each LP limited to the time left),
returning the cuts it finished (the unfinished one is abandoned: not a result, recomputed by a
resumed run). A task still running :data:`GRACE` seconds after the deadline is abandoned: the
local pool's workers are terminated, Ray tasks cancelled, and the serial executor interrupts
its own task (a timer signal, in the main thread). Local workers also end with their parent:
each watches its parent process and exits when it is gone (``kill -9`` of the run leaves no
orphans).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import secrets
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from .errors import FxverifyError
from .results import CollisionStatus, PairRow

#: seconds a task may run past the deadline to return the cuts it finished before it is abandoned
GRACE = 1.0


class ExecutorError(FxverifyError):
    """An executor could not start or lost its work beyond retrying."""


@dataclass(frozen=True)
class RunJob:
    net: object  # fxverify.ir.Network, prepared (the spec's normalisation applied)
    engine: object  # fxverify.config.Engine (resolved: backends, norm, domain)
    X_a: np.ndarray = field(repr=False)
    X_b: np.ndarray = field(repr=False)
    grid: tuple[float, ...] | None = None  # budgets a descent may stop at (None: exhaustive)
    key: str = field(default_factory=lambda: secrets.token_hex(8))  # identifies the job in worker caches
    #: the run's cut plans as far as the run has prepared them (row spaces: SVDs of the first
    #: linear map), so that no worker computes them again
    plans: dict = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class PairTask:
    i: int
    j: int
    cuts: tuple[str, ...]
    known: tuple[PairRow, ...] = ()  # the pair's stored results at cuts that determine ``cuts``


@dataclass(frozen=True)
class TaskResult:
    task: PairTask
    rows: tuple[PairRow, ...]  # one per cut of the task that finished (a timed-out one is left out)


class _Worker:
    """The per-process state of a worker: the job's network and a collider, built once."""

    def __init__(self, job: RunJob) -> None:
        from .collision import Collider

        self.job = job
        self.collider = Collider(job.net, job.engine, plans=job.plans)

    def run(self, task: PairTask, wall_deadline: float | None = None) -> TaskResult:
        """Rows of the task's cuts that finished (a cut still running at the deadline, and the
        cuts after it, are left out)."""
        i, j = task.i, task.j
        u, v = self.job.X_a[i], self.job.X_b[j]
        deadline = None if wall_deadline is None else time.monotonic() + (wall_deadline - time.time())
        known = {r.cut: r.collision(u, v) for r in task.known}
        res = self.collider.collide_cuts(u, v, task.cuts, grid=self.job.grid, deadline=deadline, known=known)
        return TaskResult(task, tuple(PairRow.of(res[c], i, j, u, v) for c in task.cuts
                                      if res[c].status is not CollisionStatus.TIMED_OUT))


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


def _wall(deadline: float | None) -> float | None:
    """A :func:`time.monotonic` deadline as wall-clock time (what workers elsewhere can read)."""
    return None if deadline is None else time.time() + (deadline - time.monotonic())


_THREAD_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")


def _one_blas_thread():
    """Limit BLAS to one thread in this process; returns the limiter (keep it alive).

    threadpoolctl only reaches libraries already loaded, so load every BLAS the descent uses
    first (numpy's, scipy's own OpenBLAS and cvxopt's)."""
    import numpy.linalg  # noqa: F401
    import scipy.linalg  # noqa: F401
    from threadpoolctl import threadpool_limits

    try:
        import cvxopt  # noqa: F401
    except ImportError:
        pass
    return threadpool_limits(limits=1)


def _in_flight(source, limit: int, submit, wait_one, deadline: float | None, abandoned: list) -> Iterator:
    """Keep at most ``limit`` tasks from ``source`` in flight (so stopping early wastes little);
    yield each task handle as it finishes. ``wait_one(pending, timeout) -> (done, pending)``
    (``timeout`` seconds, None: no limit). From ``deadline`` on no task is submitted; tasks still
    pending :data:`GRACE` seconds later are given up (appended to ``abandoned``, also when the
    consumer stops early)."""
    pending: list = []
    try:
        while True:
            while len(pending) < limit and not _past(deadline) and (task := source.next_task()) is not None:
                pending.append(submit(task))
            if not pending:
                return
            end = None if deadline is None else deadline + (GRACE if _past(deadline) else 0.0)
            done, pending = wait_one(pending, None if end is None else max(0.0, end - time.monotonic()))
            yield from done
            if deadline is not None and _past(deadline + GRACE):
                return
    finally:
        abandoned.extend(pending)


class _Overrun(BaseException):
    """A serial task ran :data:`GRACE` seconds past the deadline (raised by a timer signal; a
    BaseException so that no library code catches it as an error)."""


@contextlib.contextmanager
def _alarm(at: float | None):
    """Raise :class:`_Overrun` in this thread at the :func:`time.monotonic` time ``at`` (main
    thread only: elsewhere the deadline is only cooperative)."""
    if at is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def ring(signum, frame):
        raise _Overrun()

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, max(1e-3, at - time.monotonic()))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class SerialExecutor:
    """Runs tasks in this process (jobs = 1)."""

    name = "serial"
    workers = 1

    def run(self, job: RunJob, source, deadline: float | None = None) -> Iterator[TaskResult]:
        worker = _Worker(job)
        with _one_blas_thread():
            while not _past(deadline) and (task := source.next_task()) is not None:
                try:
                    with _alarm(None if deadline is None else deadline + GRACE):
                        result = worker.run(task, _wall(deadline))
                except _Overrun:
                    return  # the task is abandoned; what it finished is lost with it
                yield result


# -- local process pool ------------------------------------------------------------------
_PROCESS_WORKER: _Worker | None = None
_PROCESS_LIMITER = None


#: seconds between a worker's checks that its parent process is still there
PARENT_POLL = 0.25


def _watch_parent(parent: int) -> None:
    """End this worker as soon as ``parent`` is no longer its parent (it died, even by kill -9,
    and this process was handed to init): a worker never outlives its run."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL)
    os._exit(1)  # no cleanup: the parent is gone, nothing waits for this process's results


def _own_resource_tracker() -> None:
    """Give this worker a multiprocessing resource tracker of its own, which warns nothing.

    Libraries make named semaphores at import (pyomo does). A worker terminated at a deadline
    cannot release them; the parent's tracker would then free them and print a warning at the
    end of the run ("leaked semaphore objects"). This worker's own tracker frees them quietly
    when the worker is gone."""
    from multiprocessing import resource_tracker

    tracker = getattr(resource_tracker, "_resource_tracker", None)
    if tracker is None or not hasattr(tracker, "_fd") or not hasattr(tracker, "_pid"):
        return  # another implementation: keep the parent's tracker (at worst, a warning)
    if tracker._fd is not None:
        os.close(tracker._fd)  # the pipe to the parent's tracker, inherited
    tracker._fd = tracker._pid = None  # the next semaphore starts this worker's own tracker
    sys.warnoptions.append("ignore::UserWarning")  # the flags that tracker process starts with


def _init_process(job_file: str, parent: int) -> None:
    global _PROCESS_WORKER, _PROCESS_LIMITER  # per worker process, set once by the pool
    threading.Thread(target=_watch_parent, args=(parent,), name="fxverify-parent-watch", daemon=True).start()
    _own_resource_tracker()
    # Ctrl-C reaches the whole process group: the parent stops the pool, workers stay quiet
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for var in _THREAD_ENV:  # this worker process only, before its libraries start threads
        os.environ[var] = "1"
    _PROCESS_LIMITER = _one_blas_thread()
    with open(job_file, "rb") as f:
        _PROCESS_WORKER = _Worker(pickle.load(f))


def _run_process(task: PairTask, wall_deadline: float | None):
    assert _PROCESS_WORKER is not None
    return _PROCESS_WORKER.run(task, wall_deadline)


def _job_file(job: RunJob) -> str:
    """The pickled job in a private temporary file: workers read it when they start, so
    starting one (spawn writes its arguments into a pipe the child drains only once its imports
    are done) never blocks this process, and a deadline can end the run while workers boot."""
    fd, path = tempfile.mkstemp(prefix="fxverify-job-", suffix=".pickle")
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump(job, f, protocol=pickle.HIGHEST_PROTOCOL)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise ExecutorError(f"cannot write the workers' job file {path}: {err.strerror or err}") from None
    return path


class ProcessExecutor:
    """A pool of local worker processes (spawned, so nothing is inherited by accident); each
    receives the run's job, with its loaded network, once."""

    name = "local"

    def __init__(self, workers: int | None = None) -> None:
        self.workers = max(1, workers or len(os.sched_getaffinity(0)))

    def run(self, job: RunJob, source, deadline: float | None = None) -> Iterator[TaskResult]:
        import concurrent.futures as cf
        import multiprocessing as mp

        path = _job_file(job)
        pool = cf.ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"), initializer=_init_process,
                                      initargs=(path, os.getpid()))
        wall = _wall(deadline)
        abandoned: list = []
        finished = False
        try:
            def wait_one(pending, timeout):
                done, rest = cf.wait(pending, timeout=timeout, return_when=cf.FIRST_COMPLETED)
                return list(done), list(rest)

            for f in _in_flight(source, 2 * self.workers, lambda t: pool.submit(_run_process, t, wall), wait_one,
                                deadline, abandoned):
                try:
                    yield f.result()
                except cf.process.BrokenProcessPool as err:
                    raise ExecutorError(f"a worker process died: {err}") from None
            finished = not abandoned
        finally:
            _stop_pool(pool, wait=finished)
            with contextlib.suppress(OSError):
                os.unlink(path)


def _stop_pool(pool, wait: bool) -> None:
    """Shut the pool down: when its work is done, wait for the idle workers to exit; else
    (deadline, error, interrupt) cancel the queue and terminate the workers now, so no task
    in flight outlives the run (what it had not returned is never stored)."""
    if wait:
        pool.shutdown(wait=True)
        return
    procs = list((getattr(pool, "_processes", None) or {}).values())  # the pool has no public handle
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.kill()
            p.join(timeout=5)
    pool.shutdown(wait=True)  # the pool's manager thread sees its workers gone, ends, frees its queues


# -- Ray ------------------------------------------------------------------------------------
class RayExecutor:
    """The same tasks on a Ray cluster (``address=None``: start a local Ray instance).

    Tasks are retried when a worker dies (``max_retries``); results do not depend on which
    worker ran a task."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None, max_retries: int = 3,
                 runtime_env: dict | None = None) -> None:
        self.address = address
        self.max_retries = max_retries
        self._workers = workers
        self.runtime_env = runtime_env

    @property
    def workers(self) -> int:
        return self._workers or 1

    def run(self, job: RunJob, source, deadline: float | None = None) -> Iterator[TaskResult]:
        try:
            import ray
        except ImportError:
            raise ExecutorError("the ray executor needs Ray: pip install 'fxverify[ray]'") from None
        started_here = not ray.is_initialized()
        if started_here:
            self._start(ray)
        abandoned: list = []
        try:
            self._workers = self._workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
            job_ref = ray.put(job)
            task = ray.remote(num_cpus=1, max_retries=self.max_retries, retry_exceptions=False)(_ray_task)
            wall = _wall(deadline)
            for ref in _in_flight(source, 2 * self.workers, lambda t: task.remote(job_ref, t, wall),
                                  lambda pending, timeout: ray.wait(pending, num_returns=1, timeout=timeout),
                                  deadline, abandoned):
                try:
                    yield ray.get(ref)
                except ray.exceptions.RayError as err:
                    raise ExecutorError(f"a Ray task failed after {self.max_retries} retries: "
                                        f"{type(err).__name__}") from None
        finally:
            for ref in abandoned:
                with contextlib.suppress(Exception):  # already finished or gone
                    ray.cancel(ref, force=True)
            if started_here:
                ray.shutdown()

    def _start(self, ray) -> None:
        try:
            if self.address:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                         runtime_env=self.runtime_env)
            else:
                ray.init(num_cpus=self._workers, include_dashboard=False, log_to_driver=False,
                         runtime_env=self.runtime_env)
        except Exception as err:  # ray raises many types; report which address failed
            raise ExecutorError(f"cannot start or reach Ray at {self.address or 'a local instance'}: "
                                f"{type(err).__name__}: {err}") from None


_RAY_WORKERS: dict[str, _Worker] = {}

#: fault injection for tests of worker loss: when set (in the workers' environment) to a file
#: path that does not exist yet, the first task creates it and kills its own worker process
KILL_ONCE_ENV = "FXVERIFY_TEST_KILL_WORKER_ONCE"


def _ray_task(job: RunJob, task: PairTask, wall_deadline: float | None):
    marker = os.environ.get(KILL_ONCE_ENV)
    if marker:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pass
        else:
            os.close(fd)
            os._exit(1)  # the worker dies mid-task, as on a lost node
    worker = _RAY_WORKERS.get(job.key)
    if worker is None:
        _RAY_WORKERS.clear()
        worker = _RAY_WORKERS[job.key] = _Worker(job)
    with _one_blas_thread():
        return worker.run(task, wall_deadline)


def make_executor(kind: str = "local", *, jobs: int | None = None, address: str | None = None):
    """``local`` (a process pool of ``jobs`` workers, default: every core; serial when 1),
    ``serial`` or ``ray``."""
    if kind == "ray":
        return RayExecutor(address, jobs)
    if address is not None:
        raise ExecutorError("--address is only for the ray executor")
    if kind == "serial" or (kind == "local" and (jobs == 1 or (jobs is None and len(os.sched_getaffinity(0)) == 1))):
        return SerialExecutor()
    if kind == "local":
        return ProcessExecutor(jobs)
    raise ExecutorError(f"unknown executor {kind!r}: use local, serial or ray")
