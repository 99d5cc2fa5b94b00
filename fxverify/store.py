"""The resumable result store: per-(pair, cut) collision budgets and their witnesses, kept in a
run's output directory.

One SQLite file (``results.sqlite``) holds

* ``meta``: what the results are for: the run's settings (model sha256, points, solver
  profile, norm, domain, grid, ...) and their fingerprint; reopening a directory with other
  settings is an error naming the setting that differs, with both values;
* ``pairs``: one row per (cut, i, j) computed by a descent: eps, status, method, solver,
  seconds, residuals, iterations, message;
* ``witnesses``: per (cut, i, j) of a found collision, its points as float64 differences from
  the pair's points (byte-shuffled, zlib-compressed; about 10 KB per pair and cut on a
  784-pixel input), stored in the transaction of their pair row;
* ``matrices``: cuts computed in closed form for all pairs at once, stored as ``.npy`` files
  next to the database (written to a temporary name, then renamed).

Writes are transactions (WAL journal), so a run killed at any moment, even with ``kill -9``,
leaves only whole results behind; rerunning skips them. Every row read is validated (types,
statuses, indices, budgets, witness sizes): a row that does not hold is a damaged store, never
an edge.

Nothing is read or written outside the directory: the lock file, the database and its journal
files, and the matrix files must be plain files (a symbolic link, a hard link shared with
another file, a FIFO is refused; files are opened with ``O_NOFOLLOW``), and a matrix row must
name one of the store's own file names.

One run at a time: a store holds an exclusive lock (``flock``) on ``.fxverify.lock`` in its
directory for as long as it is open, and a second run on the same directory is refused at once
with the first one's pid (the lock ends with the process, even after ``kill -9``). A damaged
database (garbled pages) is a :class:`StoreError` at opening or at any later query; a full
disk is one too, saying that nothing stored was lost and that rerunning resumes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import math
import os
import re
import secrets
import sqlite3
import stat
import time
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .errors import FxverifyError
from .results import STORED_STATUSES, CollisionStatus, PairRow

__all__ = ["DB_NAME", "LOCK_NAME", "PairRow", "ResultStore", "RunSettings", "StoreError", "fingerprint"]

DB_NAME = "results.sqlite"
LOCK_NAME = ".fxverify.lock"
SCHEMA_VERSION = 2
#: the names the store gives its closed-form matrix files (a row naming anything else is damage)
MATRIX_NAME = re.compile(r"closed_form_[0-9a-f]{12}\.npy")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pairs (
    cut TEXT NOT NULL, i INTEGER NOT NULL, j INTEGER NOT NULL,
    eps REAL NOT NULL, status TEXT NOT NULL, method TEXT NOT NULL, solver TEXT NOT NULL,
    seconds REAL NOT NULL, residual REAL, residual_onnx REAL, iterations INTEGER NOT NULL, message TEXT NOT NULL,
    PRIMARY KEY (cut, i, j));
CREATE TABLE IF NOT EXISTS witnesses (
    cut TEXT NOT NULL, i INTEGER NOT NULL, j INTEGER NOT NULL, delta_u BLOB NOT NULL, delta_v BLOB NOT NULL,
    PRIMARY KEY (cut, i, j));
CREATE TABLE IF NOT EXISTS matrices (
    cut TEXT PRIMARY KEY, file TEXT NOT NULL, sha256 TEXT NOT NULL, method TEXT NOT NULL,
    seconds REAL NOT NULL, message TEXT NOT NULL);
"""


class StoreError(FxverifyError):
    """The output directory holds results that do not belong to this run, is in use by another
    run, holds a damaged store, or cannot be written (a full disk)."""


# ---- what a store is for ---------------------------------------------------------------------
#: how each setting is named to the user when a directory holds results for other settings
SETTING_NAMES = {"model_sha256": "the model (sha256)", "points": "the data points (spec data, classes, n, selection)",
                 "profile": "the solver profile (--solver, -o)", "method": "the collision method",
                 "norm": "the norm (--norm)", "domain": "the input domain (spec domain)",
                 "lp_backend": "the LP backend", "normalize": "the input normalisation (spec normalize)",
                 "grid": "the eps grid (--eps; --exhaustive: none)", "select_pairs": "pair selection (--select-pairs)",
                 "classes": "the classes (spec classes, --classes; K classes: pairs by global point index)"}


@dataclass(frozen=True)
class RunSettings:
    """Everything a store's results depend on, as plain JSON values."""

    values: dict

    @staticmethod
    def of(model_sha256: str, X_a: np.ndarray, X_b: np.ndarray, engine: dict, normalize=None, grid=None,
           select_pairs: bool = False, labels: tuple | None = None) -> RunSettings:
        """``labels``: a K-class run's (classes, label of each point) (X_a and X_b are then all
        the points); it adds the setting ``classes``, so no K-class store is a two-class one."""
        h = hashlib.sha256()
        for X in (X_a, X_b):
            h.update(np.ascontiguousarray(X, dtype=np.float64).tobytes())
            h.update(str(X.shape).encode())
        points = f"{len(X_a)} + {len(X_b)} points"
        extra = {}
        if labels is not None:
            classes, y = labels
            h.update(np.ascontiguousarray(y, dtype=np.int64).tobytes())
            points = f"{len(X_a)} points of {len(classes)} classes"
            extra = {"classes": [int(c) for c in classes]}
        vals = {"model_sha256": model_sha256, "points": f"{points}, sha256 {h.hexdigest()[:16]}",
                **engine, "normalize": None if normalize is None else [list(map(float, x)) for x in normalize],
                "grid": None if grid is None else [float(g) for g in grid], "select_pairs": bool(select_pairs),
                **extra}
        return RunSettings(json.loads(json.dumps(vals, sort_keys=True, default=str)))

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.values, sort_keys=True).encode()).hexdigest()

    def differences(self, stored: dict) -> str:
        """The settings that differ from ``stored``, named, with both values."""
        out = []
        for key in sorted(set(self.values) | set(stored), key=lambda k: list(SETTING_NAMES).index(k)
                          if k in SETTING_NAMES else len(SETTING_NAMES)):
            a, b = stored.get(key), self.values.get(key)
            if a != b:
                out.append(f"{SETTING_NAMES.get(key, key)}: stored {_show(key, a)}, this run {_show(key, b)}")
        return "; ".join(out)


def _show(key: str, value) -> str:
    if value is None:
        return {"grid": "none (--exhaustive)", "domain": "none", "normalize": "none",
                "classes": "two classes (a two-class store)"}.get(key, "none")
    if key == "model_sha256" and isinstance(value, str):
        return value[:16] + "…"
    if key == "profile" and isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, list):
        return "[" + ", ".join(f"{x:g}" if isinstance(x, float) else str(x) for x in value) + "]"
    return str(value)


def fingerprint(model_sha256: str, Xa: np.ndarray, Xb: np.ndarray, profile: dict) -> str:
    """The fingerprint of a run's settings (see :class:`RunSettings`)."""
    return RunSettings.of(model_sha256, Xa, Xb, profile).fingerprint


# ---- files inside the directory only ------------------------------------------------------
def _plain_or_absent(path: Path) -> None:
    """Refuse ``path`` unless it is absent or a plain file with one link (a symbolic link, a hard
    link to a file elsewhere, a FIFO or a device would read or write outside the directory)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as err:
        raise StoreError(f"cannot inspect {path}: {err.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise StoreError(f"{path} is a symbolic link; fxverify never follows links in a results directory "
                         f"(remove it or use another --out directory)")
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        kind = "a hard link shared with another file" if stat.S_ISREG(st.st_mode) else "not a plain file"
        raise StoreError(f"{path} is {kind}; fxverify only uses plain files of its own in a results directory "
                         f"(remove it or use another --out directory)")


def _open_nofollow(path: Path, flags: int, mode: int = 0o644) -> int:
    _plain_or_absent(path)
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise StoreError(f"{path} is a symbolic link; fxverify never follows links in a results directory "
                             f"(remove it or use another --out directory)") from None
        raise


def _no_space(err: BaseException | None) -> bool:
    if isinstance(err, OSError):
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(err, sqlite3.Error):
        return getattr(err, "sqlite_errorcode", None) == getattr(sqlite3, "SQLITE_FULL", 13) \
            or "disk is full" in str(err)
    return False


def no_space_message(directory: Path, path: Path) -> str:
    return (f"no space left on the device holding {directory} (writing {path.name}); nothing stored so far was "
            f"lost (the unfinished write was rolled back): free some space and rerun the same command to resume")


def _lock(directory: Path) -> int:
    """An exclusive flock on ``directory/LOCK_NAME`` (non-blocking), holding this pid; the fd."""
    path = directory / LOCK_NAME
    try:
        fd = _open_nofollow(path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK)
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
        if _no_space(err):
            raise StoreError(no_space_message(directory, path)) from None
        raise StoreError(f"cannot write the lock file {path}: {err.strerror}") from None
    return fd


# ---- witnesses: float64 differences, byte-shuffled and compressed -----------------------------
def pack_delta(d: np.ndarray) -> bytes:
    """float64 values -> bytes: little-endian, byte-shuffled (the sign/exponent bytes of all
    values together), zlib level 6."""
    raw = np.ascontiguousarray(d, dtype="<f8").view(np.uint8).reshape(-1, 8)
    return zlib.compress(np.ascontiguousarray(raw.T).tobytes(), 6)


def unpack_delta(blob: bytes, dim: int) -> np.ndarray:
    raw = np.frombuffer(zlib.decompress(blob, bufsize=8 * dim + 64), dtype=np.uint8)
    if raw.size != 8 * dim:
        raise ValueError(f"{raw.size // 8} values, expected {dim}")
    return np.ascontiguousarray(raw.reshape(8, dim).T).view("<f8").ravel().astype(np.float64)


# ---- the store -------------------------------------------------------------------------------
class ResultStore:
    """Open (or create) the store in ``directory`` for a run with the given settings (a
    :class:`RunSettings`, or a fingerprint string for stores that only compare it)."""

    def __init__(self, directory: str | Path, settings: RunSettings | str, info: dict | None = None) -> None:
        self.dir = Path(directory)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            if _no_space(err):
                raise StoreError(no_space_message(self.dir, self.dir)) from None
            raise StoreError(f"cannot create output directory {self.dir}: {err.strerror}") from None
        self.path = self.dir / DB_NAME
        self.db = None
        self._lock_fd: int | None = _lock(self.dir)
        try:
            self._open(settings if isinstance(settings, RunSettings) else None,
                       settings.fingerprint if isinstance(settings, RunSettings) else settings, info)
        except BaseException:
            self.close()
            raise

    def _connect(self) -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            _plain_or_absent(Path(f"{self.path}{suffix}"))
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)
            problems = [row[0] for row in self.db.execute("PRAGMA quick_check(3)")]
        except sqlite3.DatabaseError as err:
            if _no_space(err):
                raise StoreError(no_space_message(self.dir, self.path)) from None
            raise StoreError(f"{self.path} is not a usable fxverify result store: {err}") from None
        if problems != ["ok"]:
            raise StoreError(f"{self.path} is damaged ({'; '.join(map(str, problems))}); delete it or use another "
                             f"--out directory")

    def _open(self, settings: RunSettings | None, fp: str, info: dict | None) -> None:
        self._connect()
        with self._checked():
            found = dict(self.db.execute("SELECT key, value FROM meta"))
            if not found:
                held = sum(self.db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                           for t in ("pairs", "witnesses", "matrices"))
                if held:
                    raise StoreError(f"{self.path} is damaged: it holds {held} results but no record of the run they "
                                     f"belong to (its meta rows are gone); use another --out directory")
                rows = {"fingerprint": fp, "store_version": str(SCHEMA_VERSION),
                        **({"settings": json.dumps(settings.values, sort_keys=True)} if settings else {}),
                        **{k: json.dumps(v, default=str) for k, v in (info or {}).items()}}
                self._transaction(lambda: self.db.executemany("INSERT INTO meta VALUES (?, ?)", rows.items()))
                return
        self._check_meta(found, settings, fp)

    def _check_meta(self, found: dict, settings: RunSettings | None, fp: str) -> None:
        version = found.get("store_version")
        if version != str(SCHEMA_VERSION):
            raise StoreError(f"{self.dir} holds a result store of format {version!r} (this fxverify reads format "
                             f"{SCHEMA_VERSION}); use another --out directory")
        if found.get("fingerprint") == fp:
            return
        try:
            stored = json.loads(found["settings"])
            if not isinstance(stored, dict):
                raise ValueError
        except (KeyError, ValueError, TypeError):
            stored = None
        diff = settings.differences(stored) if settings is not None and stored is not None else ""
        raise StoreError(f"{self.dir} holds results for different settings"
                         + (f" ({diff})" if diff else " (a different model, data or solver profile)")
                         + "; use another --out directory")

    def stored_settings(self) -> dict | None:
        with self._checked():
            row = self.db.execute("SELECT value FROM meta WHERE key = 'settings'").fetchone()
        try:
            return None if row is None else json.loads(row[0])
        except ValueError:
            raise StoreError(f"{self.path} is damaged: its settings record is not JSON; use another --out "
                             f"directory") from None

    def meta(self, key: str):
        with self._checked():
            row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        try:
            return None if row is None else json.loads(row[0])
        except ValueError:
            return row[0]

    @contextlib.contextmanager
    def _checked(self):
        """Any SQLite failure after opening is one StoreError line: a full disk says so (and
        that nothing stored was lost), garbled pages are damage."""
        try:
            yield
        except sqlite3.DatabaseError as err:
            if _no_space(err) or (isinstance(err, sqlite3.OperationalError) and _disk_full(self.dir)):
                raise StoreError(no_space_message(self.dir, self.path)) from None
            raise StoreError(f"{self.path} is damaged or cannot be written ({err}); use another --out directory "
                             f"(or delete the damaged one)") from None

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

    # ---- per-pair rows and witnesses ---------------------------------------------------------
    def add_pairs(self, rows: list[PairRow], witnesses: bool = True) -> None:
        """Insert rows, and with ``witnesses`` the witnesses of their found collisions, in one
        transaction (all or nothing)."""
        if not rows:
            return
        wit = [(r.cut, r.i, r.j, pack_delta(r.delta_u), pack_delta(r.delta_v))
               for r in rows if witnesses and r.found and r.has_witness]

        def body():
            self.db.executemany(
                "INSERT OR REPLACE INTO pairs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(r.cut, r.i, r.j, r.eps, r.status, r.method, r.solver, r.seconds,
                  None if math.isnan(r.residual) else r.residual,
                  None if math.isnan(r.residual_onnx) else r.residual_onnx, r.iterations, r.message) for r in rows])
            self.db.executemany("INSERT OR REPLACE INTO witnesses VALUES (?, ?, ?, ?, ?)", wit)

        self._transaction(body)

    def add_witnesses(self, items: list[tuple[str, int, int, np.ndarray, np.ndarray]]) -> None:
        """Witnesses (cut, i, j, delta_u, delta_v) of stored results (closed-form edges, or
        rows stored without one); existing ones are kept."""
        if items:
            self._transaction(lambda: self.db.executemany(
                "INSERT OR IGNORE INTO witnesses VALUES (?, ?, ?, ?, ?)",
                [(c, int(i), int(j), pack_delta(du), pack_delta(dv)) for c, i, j, du, dv in items]))

    def done_pairs(self, cut: str) -> set[tuple[int, int]]:
        with self._checked():
            return {(i, j) for i, j in self.db.execute("SELECT i, j FROM pairs WHERE cut = ?", (cut,))}

    def pair_rows(self, cut: str, shape: tuple[int, int] | None = None, dim: int | None = None,
                  witnesses: bool = False) -> list[PairRow]:
        """The stored rows of ``cut``, each validated (``shape``: the n_a x n_b the indices must
        fit); with ``witnesses`` (and the input dimension ``dim``) the found ones carry theirs."""
        with self._checked():
            raw = self.db.execute("SELECT * FROM pairs WHERE cut = ? ORDER BY i, j", (cut,)).fetchall()
            wit = {}
            if witnesses:
                wit = {(i, j): (du, dv) for i, j, du, dv in
                       self.db.execute("SELECT i, j, delta_u, delta_v FROM witnesses WHERE cut = ?", (cut,))}
        rows = [self._valid(r, shape) for r in raw]
        if witnesses:
            rows = [self._with_witness(r, wit.get((r.i, r.j)), dim) if r.found else r for r in rows]
        return rows

    def pair_rows_of(self, i: int, j: int, cuts, dim: int) -> list[PairRow]:
        """The stored rows of pair (i, j) at ``cuts``, validated, found ones with their witness."""
        cuts = tuple(cuts)
        marks = ", ".join("?" * len(cuts))
        with self._checked():
            raw = self.db.execute(f"SELECT * FROM pairs WHERE i = ? AND j = ? AND cut IN ({marks})",
                                  (i, j, *cuts)).fetchall()
            wit = {c: (du, dv) for c, du, dv in self.db.execute(
                f"SELECT cut, delta_u, delta_v FROM witnesses WHERE i = ? AND j = ? AND cut IN ({marks})",
                (i, j, *cuts))}
        rows = [self._valid(r, None) for r in raw]
        return [self._with_witness(r, wit.get(r.cut), dim) if r.found else r for r in rows]

    def witnesses(self, cut: str, dim: int, shape: tuple[int, int] | None = None):
        """(i, j, delta_u, delta_v) of every witness stored at ``cut`` (validated)."""
        with self._checked():
            raw = self.db.execute("SELECT i, j, delta_u, delta_v FROM witnesses WHERE cut = ? ORDER BY i, j",
                                  (cut,)).fetchall()
        out = []
        for i, j, bu, bv in raw:
            self._index_ok(cut, i, j, shape)
            out.append((i, j, *self._deltas(cut, i, j, bu, bv, dim)))
        return out

    def _damaged(self, what: str) -> StoreError:
        return StoreError(f"{self.path} is damaged: {what}; use another --out directory (or delete the damaged "
                          f"one)")

    def _index_ok(self, cut, i, j, shape) -> None:
        if not (type(i) is int and type(j) is int and i >= 0 and j >= 0
                and (shape is None or (i < shape[0] and j < shape[1]))):
            raise self._damaged(f"a row at {cut!r} has pair index ({i!r}, {j!r})"
                                + ("" if shape is None else f" outside {shape[0]} x {shape[1]}"))

    def _valid(self, raw: tuple, shape) -> PairRow:
        cut, i, j, eps, status, method, solver, seconds, res, res_o, iters, msg = raw
        self._index_ok(cut, i, j, shape)
        where = f"pair row ({cut}, {i}, {j})"
        if status not in STORED_STATUSES:
            raise self._damaged(f"{where} has status {status!r}")
        if not all(isinstance(x, str) for x in (cut, method, solver, msg)):
            raise self._damaged(f"{where} has a non-text name or message")
        nums = (eps, seconds) + tuple(x for x in (res, res_o) if x is not None)
        if not all(type(x) in (int, float) and not math.isnan(x) for x in nums) or type(iters) is not int:
            raise self._damaged(f"{where} has a non-numeric value")
        found = status == CollisionStatus.FOUND.value
        if (found and not (0 <= eps < math.inf)) or (not found and eps != math.inf) or not 0 <= seconds < math.inf \
                or iters < 0:
            raise self._damaged(f"{where} ({status}) has eps {eps!r}, seconds {seconds!r}, iterations {iters!r}")
        return PairRow(cut, i, j, float(eps), status, method, solver, float(seconds),
                       math.nan if res is None else float(res), math.nan if res_o is None else float(res_o), iters, msg)

    def _deltas(self, cut, i, j, bu, bv, dim):
        try:
            if not (isinstance(bu, bytes) and isinstance(bv, bytes)):
                raise ValueError("not binary")
            du, dv = unpack_delta(bu, dim), unpack_delta(bv, dim)
        except (ValueError, zlib.error) as err:
            raise self._damaged(f"the witness of ({cut}, {i}, {j}) cannot be read ({err})") from None
        if not (np.all(np.isfinite(du)) and np.all(np.isfinite(dv))):
            raise self._damaged(f"the witness of ({cut}, {i}, {j}) is not finite")
        return du, dv

    def _with_witness(self, row: PairRow, blobs, dim) -> PairRow:
        if blobs is None:
            return row
        du, dv = self._deltas(row.cut, row.i, row.j, *blobs, dim)
        return replace(row, delta_u=du, delta_v=dv)

    # ---- closed-form matrices -----------------------------------------------------------------
    def add_matrix(self, cut: str, eps: np.ndarray, method: str, seconds: float, message: str = "") -> None:
        name = f"closed_form_{hashlib.sha256(cut.encode()).hexdigest()[:12]}.npy"
        target = self.dir / name
        tmp = self.dir / f"{name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"  # unique per process and call
        buf = io.BytesIO()
        np.save(buf, eps)
        data = buf.getvalue()
        try:
            _plain_or_absent(target)
            fd = _open_nofollow(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except OSError as err:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            if _no_space(err):
                raise StoreError(no_space_message(self.dir, target)) from None
            raise StoreError(f"cannot write {target}: {err.strerror or err}") from None
        digest = hashlib.sha256(data).hexdigest()
        self._transaction(lambda: self.db.execute("INSERT OR REPLACE INTO matrices VALUES (?, ?, ?, ?, ?, ?)",
                                                  (cut, name, digest, method, seconds, message)))

    def _read_matrix_file(self, p: Path) -> bytes | None:
        """The bytes of the store's own file ``p`` (None: missing)."""
        try:
            fd = _open_nofollow(p, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as err:
            raise StoreError(f"cannot read {p}: {err.strerror or err}") from None
        with os.fdopen(fd, "rb") as f:
            return f.read()

    def matrix(self, cut: str, shape: tuple[int, int] | None = None) -> tuple[np.ndarray, str, float, str] | None:
        """The closed-form budgets stored for ``cut`` (None: not stored, or the file is missing
        or does not match its recorded sha256, so it is recomputed). A row naming a file that
        is not one of the store's own names, or a file that matches its sha256 but is not a
        matrix of budgets (2-D, float, no NaN, none negative; of ``shape`` when given), is a
        damaged store: StoreError."""
        with self._checked():
            row = self.db.execute("SELECT file, sha256, method, seconds, message FROM matrices WHERE cut = ?",
                                  (cut,)).fetchone()
        if row is None:
            return None
        name, digest, method, seconds, message = row
        if not (isinstance(name, str) and MATRIX_NAME.fullmatch(name)):
            raise self._damaged(f"the closed-form row of {cut!r} names the file {name!r}, not one of the store's own")
        if not (isinstance(method, str) and isinstance(message, str) and type(seconds) in (int, float)
                and math.isfinite(seconds)):
            raise self._damaged(f"the closed-form row of {cut!r} has malformed fields")
        p = self.dir / name
        data = self._read_matrix_file(p)
        if data is None or hashlib.sha256(data).hexdigest() != digest:
            return None  # missing or damaged: recompute
        try:
            eps = np.load(io.BytesIO(data), allow_pickle=False)
        except Exception as err:  # numpy raises ValueError and others for a file that is not .npy
            raise self._damaged(f"{p.name} (closed-form budgets at {cut}) is not a budget matrix: {err}") from None
        if (not isinstance(eps, np.ndarray) or eps.ndim != 2 or eps.dtype.kind != "f" or np.isnan(eps).any()
                or (eps < 0).any() or (shape is not None and eps.shape != tuple(shape))):
            got = f"{getattr(eps, 'dtype', type(eps).__name__)} array of shape {getattr(eps, 'shape', '?')}"
            raise self._damaged(f"{p.name} (closed-form budgets at {cut}) is a {got}"
                                + (f", expected {tuple(shape)}" if shape is not None else ""))
        return eps.astype(np.float64), method, float(seconds), message


def _disk_full(directory: Path) -> bool:
    """Whether the filesystem of ``directory`` has (next to) no space left: SQLite reports a
    full disk during a WAL write as an I/O error."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 1 << 20
