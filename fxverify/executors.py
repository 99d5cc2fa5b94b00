"""Where pair tasks run: in this process, in a pool of local processes, or on a Ray cluster.

A :class:`PairJob` says everything a worker needs (the model file and its sha256, the solver
profile, the two point sets, the cuts); a task is a chunk of (i, j) pairs and its result the
list of :class:`~fxverify.store.PairRow` for every pair and cut. Workers are stateless between
tasks apart from a cached :class:`~fxverify.collision.Collider`, so a task that is lost (a dead
worker) is simply run again and gives the same rows: executors yield identical results.

BLAS runs on one thread per worker: the cone LPs are small, and threaded BLAS on them costs
far more in contention than it gains (measured: 8x slower per LP with two threads on two
cores while another process runs).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from .errors import FxverifyError
from .profiles import SolverProfile

Chunk = tuple[tuple[int, int], ...]


class ExecutorError(FxverifyError):
    """An executor could not start or lost its work beyond retrying."""


@dataclass(frozen=True)
class PairJob:
    model_path: str
    model_sha256: str
    profile: SolverProfile
    X_a: np.ndarray = field(repr=False)
    X_b: np.ndarray = field(repr=False)
    cuts: tuple[str, ...]


class _Worker:
    """The per-process state of a worker: the model and a collider, built once per job."""

    def __init__(self, job: PairJob, net=None) -> None:
        from .collision import Collider
        from .onnx_import import load_model

        if net is None:
            net = load_model(job.model_path)
            if net.source.sha256 != job.model_sha256:
                raise ExecutorError(f"{job.model_path} changed while the run was going on (sha256 differs)")
        self.job = job
        self.collider = Collider(net, job.profile)

    def run(self, chunk: Chunk):
        from .store import PairRow

        rows = []
        for i, j in chunk:
            res = self.collider.collide_cuts(self.job.X_a[i], self.job.X_b[j], self.job.cuts)
            rows.extend(PairRow.of(res[c], i, j) for c in self.job.cuts)
        return rows


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


def _in_flight(chunks: Iterable[Chunk], limit: int, submit, wait_one, cancel=None) -> Iterator:
    """Keep at most ``limit`` tasks in flight (so stopping early wastes little); yield each task
    handle as it finishes. ``wait_one(pending) -> (done, pending)``; ``cancel`` runs on the
    handles still pending when the consumer stops."""
    chunks = iter(chunks)
    pending: list = []
    try:
        while True:
            while len(pending) < limit and (chunk := next(chunks, None)) is not None:
                pending.append(submit(chunk))
            if not pending:
                return
            done, pending = wait_one(pending)
            yield from done
    finally:
        if cancel is not None:
            for h in pending:
                cancel(h)


class SerialExecutor:
    """Runs tasks in this process (jobs = 1)."""

    name = "serial"
    workers = 1

    def run(self, job: PairJob, chunks: Iterable[Chunk], net=None) -> Iterator[list]:
        """``net``: the loaded model, when the caller has it (saves loading it again)."""
        worker = _Worker(job, net)
        with _one_blas_thread():
            for chunk in chunks:
                yield worker.run(chunk)


# -- local process pool ------------------------------------------------------------------
_PROCESS_WORKER: _Worker | None = None
_PROCESS_LIMITER = None


def _init_process(job: PairJob) -> None:
    global _PROCESS_WORKER, _PROCESS_LIMITER  # per worker process, set once by the pool
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

    def run(self, job: PairJob, chunks: Iterable[Chunk], net=None) -> Iterator[list]:
        import concurrent.futures as cf
        import multiprocessing as mp

        with cf.ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"), initializer=_init_process,
                                    initargs=(job,)) as pool:
            def wait_one(pending):
                done, rest = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                return list(done), list(rest)

            for f in _in_flight(chunks, 2 * self.workers, lambda c: pool.submit(_run_process, c), wait_one,
                                cancel=lambda f: f.cancel()):
                try:
                    yield f.result()
                except cf.process.BrokenProcessPool as err:
                    raise ExecutorError(f"a worker process died: {err}") from None


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

    def run(self, job: PairJob, chunks: Iterable[Chunk], net=None) -> Iterator[list]:
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
                                  lambda pending: ray.wait(pending, num_returns=1)):
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
    if worker is None or worker.job.profile != job.profile or worker.job.cuts != job.cuts \
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
