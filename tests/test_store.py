"""The result store: one run per directory (flock), damaged databases are one error line."""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from fxverify.store import LOCK_NAME, PairRow, ResultStore, StoreError

HOLD = """
import sys, time
from fxverify.store import ResultStore
s = ResultStore(sys.argv[1], "fp")
print("open", flush=True)
time.sleep(60)
"""

TRY = """
import sys
from fxverify.store import ResultStore, StoreError
try:
    ResultStore(sys.argv[1], "fp").close()
except StoreError as err:
    print("refused:", err)
else:
    print("opened")
"""


def _rows(n: int, cut: str = "relu1") -> list[PairRow]:
    return [PairRow(cut, i, j, 1.0 + i + j / 1000, "found", "descent", "activeset", 0.01, 1e-9, 1e-7, 3,
                    "x" * 40) for i in range(n) for j in range(n)]


def test_a_second_store_on_the_same_directory_is_refused_with_the_holders_pid(tmp_path):
    with ResultStore(tmp_path, "fp") as first:
        first.add_pairs(_rows(2))
        with pytest.raises(StoreError, match=rf"{tmp_path} is in use by another fxverify run \(pid {os.getpid()}\)"):
            ResultStore(tmp_path, "fp")
        other = subprocess.run([sys.executable, "-c", TRY, str(tmp_path)], capture_output=True, text=True, timeout=60)
        assert other.returncode == 0, other.stderr
        assert other.stdout.strip() == f"refused: {tmp_path} is in use by another fxverify run (pid {os.getpid()}); " \
                                       f"wait for it to end or use another --out directory"
    # closed: the lock is free again, the rows are there
    with ResultStore(tmp_path, "fp") as again:
        assert len(again.done_pairs("relu1")) == 4
    assert (tmp_path / LOCK_NAME).exists()


def test_the_lock_ends_with_its_process_even_after_kill_dash_9(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(StoreError, match=rf"in use by another fxverify run \(pid {holder.pid}\)"):
            ResultStore(tmp_path, "fp")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        holder.stdout.close()
    with ResultStore(tmp_path, "fp") as store:
        assert store.done_pairs("relu1") == set()


def test_temporary_matrix_files_are_unique_and_cleaned_up(tmp_path):
    with ResultStore(tmp_path, "fp") as store:
        eps = np.arange(6.0).reshape(2, 3)
        store.add_matrix("linear1", eps, "closed_form", 0.1)
        got = store.matrix("linear1")
        np.testing.assert_array_equal(got[0], eps)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def _garble(path, where: float, length: int = 4096) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(int(size * where))
        f.write(np.random.default_rng(0).integers(0, 256, length, dtype=np.uint8).tobytes())


@pytest.mark.parametrize("where", [0.3, 0.5, 0.8])
def test_a_store_with_garbled_pages_is_one_error_line(tmp_path, where):
    with ResultStore(tmp_path, "fp", {"spec": {"a": 1}}) as store:
        for cut in ("relu1", "relu2"):
            store.add_pairs(_rows(40, cut))
    db = tmp_path / "results.sqlite"
    assert db.stat().st_size > 100_000 and not (tmp_path / "results.sqlite-wal").exists()
    _garble(db, where)
    with pytest.raises(StoreError, match=r"results.sqlite is (damaged|not a usable fxverify result store)") as e:
        with ResultStore(tmp_path, "fp") as store:
            for cut in ("relu1", "relu2"):  # if opening passed, any query must fail cleanly
                store.pair_rows(cut)
                store.done_pairs(cut)
    assert "\n" not in str(e.value)
    # the failed open released its lock: opening again gives the same clean error, not "in use"
    with pytest.raises(StoreError):
        ResultStore(tmp_path, "fp").pair_rows("relu1")


def test_a_query_failing_after_opening_is_a_store_error(tmp_path):
    store = ResultStore(tmp_path, "fp")
    try:
        real = store.db

        class Broken:
            def execute(self, *a, **k):
                raise sqlite3.DatabaseError("database disk image is malformed")

            executemany = execute

            def close(self):
                real.close()

        store.db = Broken()
        for call in (lambda: store.done_pairs("relu1"), lambda: store.pair_rows("relu1"),
                     lambda: store.matrix("linear1"), lambda: store.add_pairs(_rows(1))):
            with pytest.raises(StoreError, match=r"is damaged or cannot be written \(database disk image is "
                                                 r"malformed\)"):
                call()
    finally:
        store.close()


def test_rows_roundtrip_with_missing_residuals(tmp_path):
    row = PairRow("relu1", 0, 1, math.inf, "failed", "descent", "activeset", 0.5, math.nan, math.nan, 2, "no")
    with ResultStore(tmp_path, "fp") as store:
        store.add_pairs([row])
        (got,) = store.pair_rows("relu1")
    assert got.eps == math.inf and math.isnan(got.residual) and math.isnan(got.residual_onnx)
    assert (got.cut, got.i, got.j, got.status, got.iterations) == ("relu1", 0, 1, "failed", 2)


def test_concurrent_runs_on_one_directory_never_crash(tmp_path):
    """Two `fxverify distances` on the same --out at once, five times: each ends with the
    results or with the one-line "in use" refusal, never a traceback; the store stays whole."""
    import json

    from conftest import MODELS, SPECS

    spec = json.loads((SPECS / "mnist_3v7.json").read_text())
    spec.update(n_per_class=3, cuts=["input", "linear1", "relu1"])
    spec.pop("time_budget", None)
    sp = tmp_path / "spec.json"
    sp.write_text(json.dumps(spec))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "fxverify", "distances", str(MODELS / "fcnn_tiny_mnist_3v7_benign.onnx"),
           "--spec", str(sp), "--out", str(out), "--jobs", "1"]
    outcomes = []
    for _ in range(5):
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        for p in procs:
            stdout, stderr = p.communicate(timeout=120)
            assert "Traceback" not in stderr, stderr
            if p.returncode == 0:
                outcomes.append("ok")
            else:
                assert p.returncode == 2, stderr
                lines = stderr.strip().splitlines()
                assert len(lines) == 1 and "is in use by another fxverify run (pid " in lines[0], stderr
                outcomes.append("refused")
    assert "ok" in outcomes
    con = sqlite3.connect(out / "results.sqlite")
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("SELECT COUNT(*) FROM pairs WHERE cut = 'relu1'").fetchone()[0] == 9
    con.close()


def test_a_stored_matrix_that_is_not_a_budget_matrix_is_a_store_error(tmp_path):
    """Fault sweep: a closed-form .npy whose sha256 matches (the database says it is whole) but
    that is not a budget matrix was a ValueError traceback; a mismatching one is recomputed."""
    import hashlib

    with ResultStore(tmp_path, "fp") as store:
        store.add_matrix("linear1", np.full((2, 3), 1.5), "closed_form", 0.1)
        eps, method, _, _ = store.matrix("linear1", shape=(2, 3))
        assert eps.shape == (2, 3) and method == "closed_form"
        (name,) = [r[0] for r in store.db.execute("SELECT file FROM matrices")]
        path = tmp_path / name

        def replace_with(data: bytes):
            path.write_bytes(data)
            store.db.execute("UPDATE matrices SET sha256 = ?", (hashlib.sha256(data).hexdigest(),))

        replace_with(b"\x93NUMPY garbage that is not an array" * 3)
        with pytest.raises(StoreError, match="is damaged"):
            store.matrix("linear1")
        import io

        buf = io.BytesIO()
        np.save(buf, np.zeros((3, 5)))
        replace_with(buf.getvalue())
        with pytest.raises(StoreError, match=r"shape \(3, 5\), expected \(2, 3\)"):
            store.matrix("linear1", shape=(2, 3))
        path.write_bytes(b"truncated")  # sha256 no longer matches: recompute
        assert store.matrix("linear1") is None


# ---- through the real CLI: nothing outside --out, every row validated, truthful messages ---------
def _fx(*args, env=None, pre=None):
    """``fxverify ARGS`` as a real process; ``pre``: Python run first in that process (a fault)."""
    code = (pre or "") + "\nimport sys\nfrom fxverify.cli import run\nsys.argv = ['fxverify'] + sys.argv[1:]\nrun()\n"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=600, env=env)


def _one_error(res, *fragments):
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr + res.stdout, res.stderr
    lines = [x for x in res.stderr.strip().splitlines() if not x.startswith("progress: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def cli_run(tmp_path):
    """A finished tiny run (relu1 computed pair by pair) and the command that made it."""
    from conftest import MODELS

    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"version": 1, "data": {"embedded": "mnist"}, "classes": [3, 7], "n_per_class": 2,
                                "eps": [0.0, 1.0, 2.0, 3.0], "cuts": ["linear1", "relu1"]}))
    out = tmp_path / "out"
    cmd = ["bound", MODELS / "fcnn_tiny_mnist_3v7_benign.onnx", "--spec", spec, "--out", out, "--jobs", "1"]
    res = _fx(*cmd)
    assert res.returncode == 0, res.stderr
    return cmd, out


@pytest.mark.parametrize("name", [LOCK_NAME, "results.sqlite", "results.sqlite-wal", "witnesses.npz",
                                  "results.json", "closed_form_matrix"])
def test_a_symlink_in_out_is_refused_and_nothing_outside_is_touched(cli_run, tmp_path, name):
    cmd, out = cli_run
    if name == "closed_form_matrix":
        name = next(p.name for p in out.iterdir() if p.name.startswith("closed_form_"))
    victim = tmp_path / "elsewhere.bin"
    victim.write_bytes(b"precious")
    target = out / name
    if target.exists():
        target.unlink()
    target.symlink_to(victim)
    res = _fx(*cmd)
    _one_error(res, "symbolic link")
    assert victim.read_bytes() == b"precious"


def test_a_matrix_row_naming_a_file_outside_is_refused(cli_run, tmp_path):
    cmd, out = cli_run
    outside = tmp_path / "x.npy"
    np.save(outside, np.zeros((2, 2)))
    digest = hashlib.sha256(outside.read_bytes()).hexdigest()
    with sqlite3.connect(out / "results.sqlite") as con:
        con.execute("UPDATE matrices SET file = '../x.npy', sha256 = ?", (digest,))
    _one_error(_fx(*cmd), "is damaged", "'../x.npy'")


@pytest.mark.parametrize("update, what", [
    ("UPDATE pairs SET eps = -1 WHERE rowid = (SELECT MIN(rowid) FROM pairs)", "eps -1.0"),
    ("UPDATE pairs SET status = 'bogus' WHERE rowid = (SELECT MIN(rowid) FROM pairs)", "status 'bogus'"),
    ("UPDATE pairs SET i = 7 WHERE rowid = (SELECT MIN(rowid) FROM pairs)", "outside 2 x 2"),
    ("UPDATE pairs SET eps = 'abc' WHERE rowid = (SELECT MIN(rowid) FROM pairs)", "non-numeric"),
    ("UPDATE pairs SET eps = -1, status = 'found' WHERE rowid = (SELECT MAX(rowid) FROM pairs)", "eps -1.0"),
    ("UPDATE witnesses SET delta_u = x'00ff' WHERE rowid = (SELECT MIN(rowid) FROM witnesses)", "witness"),
])
def test_every_stored_row_is_validated_never_an_edge(cli_run, update, what):
    cmd, out = cli_run
    with sqlite3.connect(out / "results.sqlite") as con:
        con.execute(update)
    _one_error(_fx(*cmd), "is damaged", what)


def test_a_store_without_its_meta_rows_refuses_another_models_run(cli_run):
    from conftest import MODELS

    cmd, out = cli_run
    with sqlite3.connect(out / "results.sqlite") as con:
        con.execute("DELETE FROM meta")
    other = list(cmd)
    other[1] = MODELS / "fcnn_small_mnist_3v7_benign.onnx"
    _one_error(_fx(*other), "is damaged", "no record of the run")


@pytest.mark.parametrize("extra, named", [
    (["--eps", "0,2"], "the eps grid (--eps; --exhaustive: none): stored [0, 1, 2, 3], this run [0, 2]"),
    (["--norm", "linf"], "the norm (--norm): stored l2, this run linf"),
    (["--exhaustive"], "stored [0, 1, 2, 3], this run none (--exhaustive)"),
])
def test_reusing_out_with_another_setting_names_it_with_both_values(cli_run, extra, named):
    cmd, out = cli_run
    _one_error(_fx(*cmd, *extra), "holds results for different settings", named)


def test_a_full_disk_says_nothing_stored_was_lost_and_rerunning_resumes(cli_run, tmp_path):
    """SQLite's 'database or disk is full' (here: a page limit, the same error a full disk
    gives) and ENOSPC from a file write: never 'damaged ... delete it'."""
    cmd, out = cli_run
    con = sqlite3.connect(out / "results.sqlite", isolation_level=None)
    con.execute("DELETE FROM pairs")
    con.execute("DELETE FROM witnesses")
    con.execute("VACUUM")  # no free pages left: storing the pairs again needs new ones
    con.close()
    full_db = ("import sqlite3\n_c = sqlite3.connect\n"
               "def connect(*a, **k):\n    db = _c(*a, **k)\n"
               "    n = db.execute('PRAGMA page_count').fetchone()[0]\n"
               "    db.execute(f'PRAGMA max_page_count={n}')\n    return db\n"
               "sqlite3.connect = connect\n")
    line = _one_error(_fx(*cmd, pre=full_db), "no space left", "nothing stored so far was lost",
                      "rerun the same command to resume")
    assert "delete" not in line and "damaged" not in line
    enospc = ("import errno, os\n_f = os.fsync\n"
              "def fsync(fd):\n    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\nos.fsync = fsync\n")
    for p in out.glob("closed_form_*.npy"):
        p.unlink()
    line = _one_error(_fx(*cmd, pre=enospc), "no space left")
    assert "delete" not in line and "damaged" not in line
    assert _fx(*cmd).returncode == 0  # space back: the same command finishes from the store
