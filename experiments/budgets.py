"""Per-pair collision budgets for the experiments: computed with the public API, kept in small
committed files, resumed pair by pair on any machine.

A *budget file* (``experiments/budgets/DATASET/MODEL__CUT[__box].npz``) holds, for the n x n
cross-class pairs of one point set at one cut of one model under one threat model:

* ``eps``: float32, the verified collision budget of each pair (``inf``: no verified collision,
  ``nan``: not computed yet), rounded *up* to float32 so that an edge ``eps <= budget`` is never
  gained by the rounding (the bounds stay valid lower bounds);
* ``failed``: bool, the solver failed at this pair (counted, the pair has no edge here);
* ``cpu``: float32, CPU seconds of the pair (``time.process_time`` of the worker);
* ``index_a``, ``index_b``: the points' positions in the data file (a resumed run checks them);
* ``meta``: JSON (model sha256, cut, norm, domain, solver profile, data, the commits the pairs
  were computed on).

Each pair is ``Collider.collide_cuts(u, v, (cut,))[cut]`` with the default ``descent-activeset``
engine, every descent to its local optimum (no grid stop: the budgets serve any grid). That
result already keeps the closed-form collisions of the cuts that determine ``cut`` (input,
first linear layer); the analysis takes the element-wise minimum with the other computed cuts
that determine it, as ``fxverify.bound`` does.

The n x n matrix is filled in growing squares (``upto``): first all pairs among the first 50
points of each class, then among the first 100, so a run stopped at any time leaves complete
square subsets of every model it reached.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SOLVER = "descent-activeset"


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "fxverify", "solvers"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def round_up32(x: np.ndarray) -> np.ndarray:
    """float32 values never below x (nan and inf kept)."""
    x = np.asarray(x, dtype=np.float64)
    y = x.astype(np.float32)
    low = np.isfinite(x) & (y.astype(np.float64) < x)
    y[low] = np.nextafter(y[low], np.float32(np.inf))
    return y


@dataclass(frozen=True)
class BudgetKey:
    """What a budget file is for."""

    dataset: str
    model: str  # file stem in models/
    cut: str
    domain: tuple[float, float] | None = None

    def path(self, root: Path) -> Path:
        box = "" if self.domain is None else f"__box{self.domain[0]:g}-{self.domain[1]:g}"
        return Path(root) / self.dataset / f"{self.model}__{self.cut}{box}.npz"

    @property
    def threat(self) -> str:
        return "l2 in R^d (no box)" if self.domain is None else f"l2, [{self.domain[0]:g}, {self.domain[1]:g}] box"


class BudgetFile:
    """One budget file in memory."""

    def __init__(self, key: BudgetKey, path: Path, eps, failed, cpu, index_a, index_b, meta: dict) -> None:
        self.key, self.path = key, Path(path)
        self.eps, self.failed, self.cpu = eps, failed, cpu
        self.index_a, self.index_b = np.asarray(index_a, dtype=np.int64), np.asarray(index_b, dtype=np.int64)
        self.meta = meta

    @property
    def n(self) -> int:
        return self.eps.shape[0]

    def done(self) -> np.ndarray:
        return ~np.isnan(self.eps)

    def complete_upto(self) -> int:
        """The largest m such that every pair among the first m points of each class is done."""
        d = self.done()
        m = 0
        while m < min(d.shape) and d[m, :m + 1].all() and d[:m + 1, m].all():
            m += 1
        return m

    @classmethod
    def open(cls, key: BudgetKey, root: Path, net, index_a, index_b, n: int) -> BudgetFile:
        """Load the file for ``key`` (checking that it is for this model, cut, threat model and
        these points; growing it to n if it is smaller), or start an empty one."""
        path = key.path(root)
        meta = {"model": f"models/{key.model}.onnx", "model_sha256": net.source.sha256, "cut": key.cut,
                "norm": "l2", "domain": None if key.domain is None else list(key.domain), "solver": SOLVER,
                "method": "descent, every descent to its local optimum (no grid stop)", "dataset": key.dataset,
                "commits": []}
        ia, ib = np.asarray(index_a[:n], dtype=np.int64), np.asarray(index_b[:n], dtype=np.int64)
        if not path.exists():
            shape = (n, n)
            return cls(key, path, np.full(shape, np.nan, np.float32), np.zeros(shape, bool),
                       np.zeros(shape, np.float32), ia, ib, meta)
        with np.load(path, allow_pickle=False) as f:
            old = json.loads(str(f["meta"]))
            for k in ("model_sha256", "cut", "norm", "domain", "solver", "dataset"):
                if old.get(k) != meta[k]:
                    raise SystemExit(f"error: {path} holds budgets for {k} = {old.get(k)!r}, not {meta[k]!r}; "
                                     f"move it away to recompute")
            m = f["eps"].shape[0]
            k = min(m, n)
            if not (np.array_equal(f["index_a"][:k], ia[:k]) and np.array_equal(f["index_b"][:k], ib[:k])):
                raise SystemExit(f"error: {path} was computed on other points (data file positions differ); "
                                 f"move it away to recompute")
            size = max(m, n)
            eps = np.full((size, size), np.nan, np.float32)
            failed = np.zeros((size, size), bool)
            cpu = np.zeros((size, size), np.float32)
            eps[:m, :m], failed[:m, :m], cpu[:m, :m] = f["eps"], f["failed"], f["cpu"]
            ia = np.concatenate([f["index_a"], ia[m:]]) if n > m else f["index_a"]
            ib = np.concatenate([f["index_b"], ib[m:]]) if n > m else f["index_b"]
        return cls(key, path, eps, failed, cpu, ia, ib, old)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, eps=self.eps, failed=self.failed, cpu=self.cpu, index_a=self.index_a,
                            index_b=self.index_b, meta=np.array(json.dumps(self.meta, sort_keys=True)))
        os.replace(tmp, self.path)

    def fill(self, collider, X_a, X_b, upto: int, deadline: float | None = None, log=print,
             save_every: float = 60.0) -> bool:
        """Compute the missing pairs among the first ``upto`` points of each class (row by row of
        the new band), saving at least every ``save_every`` seconds. Returns True when done."""
        upto = min(upto, self.n)
        todo = [(i, j) for i in range(upto) for j in range(upto) if np.isnan(self.eps[i, j])]
        if not todo:
            return True
        lock = _Lock(self.path)
        if not lock.acquire():
            log(f"  {self.path}: another run is filling it; skipped")
            return False
        try:
            # another run may have saved pairs since this file was opened
            if self.path.exists():
                with np.load(self.path, allow_pickle=False) as f:
                    m = f["eps"].shape[0]
                    k = min(m, self.n)
                    done = ~np.isnan(f["eps"][:k, :k])
                    for name in ("eps", "failed", "cpu"):
                        getattr(self, name)[:k, :k][done] = f[name][:k, :k][done]
                todo = [(i, j) for i, j in todo if np.isnan(self.eps[i, j])]
            return self._fill(collider, X_a, X_b, todo, upto, deadline, log, save_every)
        finally:
            lock.release()

    def _fill(self, collider, X_a, X_b, todo, upto, deadline, log, save_every) -> bool:
        rev = git_revision()
        if rev not in self.meta["commits"]:
            self.meta["commits"].append(rev)
        cut = self.key.cut
        log(f"  {self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path}: "
            f"{len(todo)} pairs to compute (n = {upto})")
        last, t_start, cpu_start = time.monotonic(), time.monotonic(), time.process_time()
        ok = True
        for k, (i, j) in enumerate(todo):
            if deadline is not None and time.monotonic() >= deadline:
                ok = False
                break
            c0 = time.process_time()
            r = collider.collide_cuts(X_a[i], X_b[j], (cut,))[cut]
            found = r.status.value == "found"
            self.eps[i, j] = round_up32(r.eps if found else np.inf)
            self.failed[i, j] = r.status.value == "failed"
            self.cpu[i, j] = time.process_time() - c0
            if time.monotonic() - last >= save_every:
                self.save()
                last = time.monotonic()
                rate = (time.process_time() - cpu_start) / (k + 1)
                log(f"    {k + 1}/{len(todo)} pairs, {rate:.3f} CPU-s a pair, "
                    f"{(time.monotonic() - t_start) / 60:.1f} min")
        self.save()
        return ok


class _Lock:
    """An advisory lock (flock) on ``FILE.lock`` beside a budget file: one writer at a time;
    released when the process ends, however it ends."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path).with_suffix(".lock")
        self.fd = None

    def acquire(self) -> bool:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            self.fd = None
            return False
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def load_budgets(key: BudgetKey, root: Path) -> BudgetFile | None:
    """The stored file for ``key`` without checks against a network (for analysis), or None."""
    path = key.path(root)
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as f:
        return BudgetFile(key, path, f["eps"], f["failed"], f["cpu"], f["index_a"], f["index_b"],
                          json.loads(str(f["meta"])))
