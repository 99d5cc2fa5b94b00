"""The resumable result store: per-pair collision budgets, kept in a run's output directory.

One SQLite file (``results.sqlite``) holds

* ``meta``: what the results are for (a fingerprint of the model, the points and the solver
  profile); reopening a directory with a different fingerprint is an error;
* ``pairs``: one row per (cut, i, j) computed by a descent: eps, status, method, solver, seconds,
  residuals, iterations, message;
* ``matrices``: cuts computed in closed form for all pairs at once, stored as ``.npy`` files
  next to the database (written to a temporary name, then renamed).

Writes are transactions (WAL journal), so a run killed at any moment, even with ``kill -9``,
leaves only whole pairs behind; rerunning skips them.

One run at a time: a store holds an exclusive lock (``flock``) on ``.fxverify.lock`` in its
directory for as long as it is open, and a second run on the same directory is refused at once
with the first one's pid (the lock ends with the process, even after ``kill -9``). A damaged
database (garbled pages) is a :class:`StoreError` at opening or at any later query.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import FxverifyError
from .results import Collision, CollisionStatus

DB_NAME = "results.sqlite"
LOCK_NAME = ".fxverify.lock"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pairs (
    cut TEXT NOT NULL, i INTEGER NOT NULL, j INTEGER NOT NULL,
    eps REAL NOT NULL, status TEXT NOT NULL, method TEXT NOT NULL, solver TEXT NOT NULL,
    seconds REAL NOT NULL, residual REAL, residual_onnx REAL, iterations INTEGER NOT NULL, message TEXT NOT NULL,
    PRIMARY KEY (cut, i, j));
CREATE TABLE IF NOT EXISTS matrices (
    cut TEXT PRIMARY KEY, file TEXT NOT NULL, sha256 TEXT NOT NULL, method TEXT NOT NULL,
    seconds REAL NOT NULL, message TEXT NOT NULL);
"""


class StoreError(FxverifyError):
    """The output directory holds results that do not belong to this run, is in use by another
    run, or holds a damaged store."""


def _lock(directory: Path) -> int:
    """An exclusive flock on ``directory/LOCK_NAME`` (non-blocking), holding this pid; the fd."""
    path = directory / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as err:
        raise StoreError(f"cannot create the lock file {path}: {err.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        holder = ""
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            for _ in range(20):  # the holder writes its pid right after locking
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                if holder:
                    break
                time.sleep(0.01)
            os.close(fd)
            raise StoreError(f"{directory} is in use by another fxverify run (pid {holder or 'unknown'}); wait for it "
                             f"to end or use another --out directory") from None
        os.close(fd)
        raise StoreError(f"cannot lock {path}: {err.strerror}") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as err:
        os.close(fd)
        raise StoreError(f"cannot write the lock file {path}: {err.strerror}") from None
    return fd


@dataclass(frozen=True)
class PairRow:
    cut: str
    i: int
    j: int
    eps: float
    status: str
    method: str
    solver: str
    seconds: float
    residual: float
    residual_onnx: float
    iterations: int
    message: str

    @staticmethod
    def of(c: Collision, i: int, j: int) -> PairRow:
        return PairRow(c.cut, i, j, c.eps if c.status is CollisionStatus.FOUND else math.inf, c.status.value,
                       c.method, c.solver, c.seconds, c.residual, c.residual_onnx, c.iterations, c.message)


def fingerprint(model_sha256: str, Xa: np.ndarray, Xb: np.ndarray, profile: dict) -> str:
    h = hashlib.sha256()
    h.update(model_sha256.encode())
    for X in (Xa, Xb):
        h.update(np.ascontiguousarray(X, dtype=np.float64).tobytes())
        h.update(str(X.shape).encode())
    h.update(json.dumps(profile, sort_keys=True, default=str).encode())
    return h.hexdigest()


class ResultStore:
    """Open (or create) the store in ``directory`` for a run with the given fingerprint."""

    def __init__(self, directory: str | Path, fingerprint_: str, info: dict | None = None) -> None:
        self.dir = Path(directory)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(f"cannot create output directory {self.dir}: {err.strerror}") from None
        self.path = self.dir / DB_NAME
        self.db = None
        self._lock_fd: int | None = _lock(self.dir)
        try:
            self._open(fingerprint_, info)
        except BaseException:
            self.close()
            raise

    def _open(self, fingerprint_: str, info: dict | None) -> None:
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)
            problems = [row[0] for row in self.db.execute("PRAGMA quick_check(3)")]
        except sqlite3.DatabaseError as err:
            raise StoreError(f"{self.path} is not a usable fxverify result store: {err}") from None
        if problems != ["ok"]:
            raise StoreError(f"{self.path} is damaged ({'; '.join(map(str, problems))}); delete it or use another "
                             f"--out directory")
        with self._checked():
            found = dict(self.db.execute("SELECT key, value FROM meta"))
            if found:
                if found.get("fingerprint") != fingerprint_:
                    raise StoreError(f"{self.dir} holds results for a different model, data or solver profile; "
                                     f"use another --out directory or delete it")
            else:
                rows = {"fingerprint": fingerprint_, "store_version": str(SCHEMA_VERSION),
                        **{k: json.dumps(v, default=str) for k, v in (info or {}).items()}}
                self._transaction(lambda: self.db.executemany("INSERT INTO meta VALUES (?, ?)", rows.items()))

    @contextlib.contextmanager
    def _checked(self):
        """Any SQLite failure after opening (garbled pages, a full disk) is one StoreError line."""
        try:
            yield
        except sqlite3.DatabaseError as err:
            raise StoreError(f"{self.path} is damaged or cannot be written ({err}); delete it or use another "
                             f"--out directory") from None

    def _transaction(self, body) -> None:
        """Run ``body`` in one transaction: all or nothing, also on KeyboardInterrupt/SIGTERM."""
        with self._checked():
            self.db.execute("BEGIN")
            try:
                body()
                self.db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):  # reported by the original exception
                    self.db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        try:
            if self.db is not None:
                self.db.close()
                self.db = None
        finally:
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = None

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- per-pair rows ----------------------------------------------------------------
    def add_pairs(self, rows: list[PairRow]) -> None:
        """Insert rows in one transaction (all or nothing)."""
        if not rows:
            return
        self._transaction(lambda: self.db.executemany(
            "INSERT OR REPLACE INTO pairs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(r.cut, r.i, r.j, r.eps, r.status, r.method, r.solver, r.seconds,
              None if math.isnan(r.residual) else r.residual,
              None if math.isnan(r.residual_onnx) else r.residual_onnx, r.iterations, r.message) for r in rows]))

    def done_pairs(self, cut: str) -> set[tuple[int, int]]:
        with self._checked():
            return {(i, j) for i, j in self.db.execute("SELECT i, j FROM pairs WHERE cut = ?", (cut,))}

    def pair_rows(self, cut: str) -> list[PairRow]:
        with self._checked():
            cur = self.db.execute("SELECT * FROM pairs WHERE cut = ? ORDER BY i, j", (cut,))
            return [PairRow(*(math.nan if v is None and k in (8, 9) else v for k, v in enumerate(row)))
                    for row in cur]

    # ---- closed-form matrices -----------------------------------------------------------
    def add_matrix(self, cut: str, eps: np.ndarray, method: str, seconds: float, message: str = "") -> None:
        name = f"closed_form_{hashlib.sha256(cut.encode()).hexdigest()[:12]}.npy"
        tmp = self.dir / f"{name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"  # unique per process and call
        try:
            with open(tmp, "wb") as f:
                np.save(f, eps)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.dir / name)
            digest = hashlib.sha256((self.dir / name).read_bytes()).hexdigest()
        except OSError as err:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise StoreError(f"cannot write {self.dir / name}: {err.strerror or err}") from None
        self._transaction(lambda: self.db.execute("INSERT OR REPLACE INTO matrices VALUES (?, ?, ?, ?, ?, ?)",
                                                  (cut, name, digest, method, seconds, message)))

    def matrix(self, cut: str, shape: tuple[int, int] | None = None) -> tuple[np.ndarray, str, float, str] | None:
        """The closed-form budgets stored for ``cut`` (None: not stored, or the file is missing
        or does not match its recorded sha256, so it is recomputed). A file that matches its
        sha256 but is not a matrix of budgets (2-D, float, no NaN; of ``shape`` when given) is a
        damaged store: StoreError."""
        with self._checked():
            row = self.db.execute("SELECT file, sha256, method, seconds, message FROM matrices WHERE cut = ?",
                                  (cut,)).fetchone()
        if row is None:
            return None
        p = self.dir / row[0]
        try:
            if not p.is_file() or hashlib.sha256(p.read_bytes()).hexdigest() != row[1]:
                return None  # missing or damaged: recompute
            eps = np.load(p, allow_pickle=False)
        except OSError as err:
            raise StoreError(f"cannot read {p}: {err.strerror or err}") from None
        except Exception as err:  # numpy raises ValueError and others for a file that is not .npy
            raise StoreError(f"{p} (closed-form budgets at {cut}) is damaged: {err}; delete {self.dir} or use "
                             f"another --out directory") from None
        if (not isinstance(eps, np.ndarray) or eps.ndim != 2 or eps.dtype.kind != "f" or np.isnan(eps).any()
                or (shape is not None and eps.shape != tuple(shape))):
            got = f"{getattr(eps, 'dtype', type(eps).__name__)} array of shape {getattr(eps, 'shape', '?')}"
            raise StoreError(f"{p} (closed-form budgets at {cut}) is damaged: a {got}"
                             + (f", expected {tuple(shape)}" if shape is not None else "")
                             + f"; delete {self.dir} or use another --out directory")
        return eps, row[2], row[3], row[4]
