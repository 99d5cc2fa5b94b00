"""Where pair tasks run: in this process, in a pool of local processes, or on a Ray cluster.

A :class:`PairJob` says everything a worker needs (the model file and its sha256, the solver
resolved engine, the two point sets, the cuts, the input normalisation); a task is a chunk of (i, j) pairs and its result the
list of :class:`~fxverify.store.PairRow` for every pair and cut. Workers are stateless between
tasks apart from a cached :class:`~fxverify.collision.Collider`, so a task that is lost (a dead
worker) is simply run again and gives the same rows: executors yield identical results.

BLAS runs on one thread per worker: the cone LPs are small, and threaded BLAS on them costs
far more in contention than it gains (measured: 8x slower per LP with two threads on two
cores while another process runs).

``run(job, chunks, net=None, deadline=None)``: ``deadline`` (a :func:`time.monotonic` time) is
hard. No task starts after it, and tasks still running at it are abandoned: the local pool is
shut down with its queue cancelled and its workers terminated, Ray tasks are cancelled; only
whole tasks that finished are yielded. The serial executor checks it between pairs (the pair
it is on finishes). Local workers also end with their parent: each watches its parent process
and exits when it is gone (``kill -9`` of the run leaves no orphans).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from .errors import FxverifyError

Chunk = tuple[tuple[int, int], ...]


class ExecutorError(FxverifyError):
    """An executor could not start or lost its work beyond retrying."""


@dataclass(frozen=True)
class PairJob:
    model_path: str
    model_sha256: str
    engine: object  # fxverify.config.Engine (resolved: backends, norm, domain)
    X_a: np.ndarray = field(repr=False)
    X_b: np.ndarray = field(repr=False)
    cuts: tuple[str, ...]
    normalize: tuple | None = None  # the spec's input normalisation, applied to the loaded model
    grid: tuple[float, ...] | None = None  # budgets a descent may stop at (None: exhaustive)


class _Worker:
    """The per-process state of a worker: the model and a collider, built once per job."""

    def __init__(self, job: PairJob, net=None) -> None:
        from .collision import Collider
        from .onnx_import import load_model

        if net is None:
            from .config import prepare_network

            net = load_model(job.model_path)
            if net.source.sha256 != job.model_sha256:
                raise ExecutorError(f"{job.model_path} changed while the run was going on (sha256 differs)")
            net = prepare_network(net, job.normalize)
        self.job = job
        self.collider = Collider(net, job.engine)

    def run(self, chunk: Chunk, deadline: float | None = None):
        """Rows of every pair of ``chunk`` at its cuts (an item (i, j): every cut of the job;
        (i, j, cuts): those); with a ``deadline``, only the pairs started before it (each pair
        whole)."""
        from .store import PairRow

        rows = []
        for item in chunk:
            if _past(deadline):
                break
            i, j = item[0], item[1]
            cuts = tuple(item[2]) if len(item) > 2 else self.job.cuts
            res = self.collider.collide_cuts(self.job.X_a[i], self.job.X_b[j], cuts, grid=self.job.grid)
            rows.extend(PairRow.of(res[c], i, j) for c in cuts)
        return rows


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


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


def _in_flight(chunks: Iterable[Chunk], limit: int, submit, wait_one, cancel=None, deadline: float | None = None,
               abandoned: list | None = None) -> Iterator:
    """Keep at most ``limit`` tasks in flight (so stopping early wastes little); yield each task
    handle as it finishes. ``wait_one(pending, timeout) -> (done, pending)`` (``timeout``
    seconds, None: no limit). Past ``deadline`` no task is submitted and the handles still
    pending are given up. ``cancel`` runs on the handles still pending when this stops (the
    deadline, or the consumer stops); they are also appended to ``abandoned``."""
    chunks = iter(chunks)
    pending: list = []
    try:
        while True:
            while len(pending) < limit and not _past(deadline) and (chunk := next(chunks, None)) is not None:
                pending.append(submit(chunk))
            if not pending:
                return
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, pending = wait_one(pending, timeout)
            yield from done
            if not done and _past(deadline):
                return
    finally:
        if abandoned is not None:
            abandoned.extend(pending)
        if cancel is not None:
            for h in pending:
                cancel(h)


class SerialExecutor:
    """Runs tasks in this process (jobs = 1)."""

    name = "serial"
    workers = 1

    def run(self, job: PairJob, chunks: Iterable[Chunk], net=None, deadline: float | None = None) -> Iterator[list]:
        """``net``: the loaded model, when the caller has it (saves loading it again)."""
        worker = _Worker(job, net)
        with _one_blas_thread():
            for chunk in chunks:
                if _past(deadline):
                    return
                rows = worker.run(chunk, deadline)
                if rows:
                    yield rows


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


def _init_process(job: PairJob, parent: int) -> None:
    global _PROCESS_WORKER, _PROCESS_LIMITER  # per worker process, set once by the pool
    threading.Thread(target=_watch_parent, args=(parent,), name="fxverify-parent-watch", daemon=True).start()
    _own_resource_tracker()
    # Ctrl-C reaches the whole process group: the parent stops the pool, workers stay quiet
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for var in _THREAD_ENV:  # this worker process only, before its libraries start threads
        os.environ[var] = "1"
    _PROCESS_LIMITER = _one_blas_thread()
    _PROCESS_WORKER = _Worker(job)


def _run_process(chunk: Chunk):
    assert _PROCESS_WORKER is not None
    return _PROCESS_WORKER.run(chunk)


class ProcessExecutor:
    """A pool of local worker processes (spawned, so nothing is inherited by accident)."""

    name = "local"

    def __init__(self, workers: int | None = None) -> None:
        self.workers = max(1, workers or len(os.sched_getaffinity(0)))

    def run(self, job: PairJob, chunks: Iterable[Chunk], net=None, deadline: float | None = None) -> Iterator[list]:
        import concurrent.futures as cf
        import multiprocessing as mp

        pool = cf.ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"), initializer=_init_process,
                                      initargs=(job, os.getpid()))
        abandoned: list = []
        finished = False
        try:
            def wait_one(pending, timeout):
                done, rest = cf.wait(pending, timeout=timeout, return_when=cf.FIRST_COMPLETED)
                return list(done), list(rest)

            for f in _in_flight(chunks, 2 * self.workers, lambda c: pool.submit(_run_process, c), wait_one,
                                cancel=lambda f: f.cancel(), deadline=deadline, abandoned=abandoned):
                try:
                    yield f.result()
                except cf.process.BrokenProcessPool as err:
                    raise ExecutorError(f"a worker process died: {err}") from None
            finished = not abandoned
        finally:
            _stop_pool(pool, wait=finished)


def _stop_pool(pool, wait: bool) -> None:
    """Shut the pool down: when its work is done, wait for the idle workers to exit; else
    (deadline, error, interrupt) cancel the queue and terminate the workers now, so no task
    in flight outlives the run (its rows are never stored: a pair is stored whole or not)."""
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

    def run(self, job: PairJob, chunks: Iterable[Chunk], net=None, deadline: float | None = None) -> Iterator[list]:
        try:
            import ray
        except ImportError:
            raise ExecutorError("the ray executor needs Ray: pip install 'fxverify[ray]'") from None
        started_here = not ray.is_initialized()
        if started_here:
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
        try:
            self._workers = self._workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
            job_ref = ray.put(job)
            task = ray.remote(num_cpus=1, max_retries=self.max_retries, retry_exceptions=False)(_ray_task)
            for ref in _in_flight(chunks, 2 * self.workers, lambda c: task.remote(job_ref, c),
                                  lambda pending, timeout: ray.wait(pending, num_returns=1, timeout=timeout),
                                  cancel=lambda r: ray.cancel(r, force=True), deadline=deadline):
                try:
                    yield ray.get(ref)
                except ray.exceptions.RayError as err:
                    raise ExecutorError(f"a Ray task failed after {self.max_retries} retries: "
                                        f"{type(err).__name__}") from None
        finally:
            if started_here:
                ray.shutdown()


_RAY_WORKERS: dict[str, _Worker] = {}

#: fault injection for tests of worker loss: when set (in the workers' environment) to a file
#: path that does not exist yet, the first task creates it and kills its own worker process
KILL_ONCE_ENV = "FXVERIFY_TEST_KILL_WORKER_ONCE"


def _ray_task(job: PairJob, chunk: Chunk):
    marker = os.environ.get(KILL_ONCE_ENV)
    if marker:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pass
        else:
            os.close(fd)
            os._exit(1)  # the worker dies mid-task, as on a lost node
    worker = _RAY_WORKERS.get(job.model_sha256)
    if worker is None or worker.job.engine.describe() != job.engine.describe() \
            or worker.job.normalize != job.normalize or worker.job.grid != job.grid or worker.job.cuts != job.cuts \
            or not np.array_equal(worker.job.X_a, job.X_a) or not np.array_equal(worker.job.X_b, job.X_b):
        _RAY_WORKERS.clear()
        worker = _Worker(job)
        _RAY_WORKERS[job.model_sha256] = worker
    with _one_blas_thread():
        return worker.run(chunk)


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
