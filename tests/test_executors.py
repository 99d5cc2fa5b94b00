"""Executors give identical results; a run killed with SIGKILL resumes and ends identical."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

import fxverify
from fxverify.data import load_embedded, select_points
from fxverify.executors import ExecutorError, PairTask, ProcessExecutor, RunJob, SerialExecutor, make_executor
from fxverify.pipeline import compute_distances
from fxverify.config import resolve_engine


CUTS = ("relu1", "linear2", "relu2", "linear3")


@pytest.fixture(scope="module")
def job():
    from conftest import MODELS

    net = fxverify.load_model(MODELS / "fcnn_tiny_mnist_3v7_benign.onnx")
    pts = select_points(load_embedded("mnist"), (3, 7), 3)
    return net, RunJob(net, resolve_engine("descent-activeset"), pts.X_a, pts.X_b)


class ListSource:
    """Hands out a fixed list of tasks."""

    def __init__(self, tasks):
        self.tasks = list(tasks)

    def next_task(self):
        return self.tasks.pop(0) if self.tasks else None


def _tasks():
    return [PairTask(i, j, CUTS) for i in range(3) for j in range(3)]


def _rows(executor, job):
    rows = [r for out in executor.run(job, ListSource(_tasks())) for r in out.rows]
    return {(r.cut, r.i, r.j): (r.eps, r.status) for r in rows}


def test_a_job_carries_the_loaded_network_to_the_workers(job, monkeypatch, tmp_path):
    """Workers get the network itself (pickled): nothing loads the model file again."""
    import pickle

    net, jb = job
    assert pickle.loads(pickle.dumps(jb)).net.source.sha256 == net.source.sha256
    calls = []
    monkeypatch.setattr("fxverify.onnx_import.load_model", lambda *a, **k: calls.append(a))
    assert len(_rows(SerialExecutor(), jb)) == 36 and not calls


def test_process_pool_gives_the_serial_results(job):
    net, jb = job
    serial = _rows(SerialExecutor(), jb)
    pooled = _rows(ProcessExecutor(2), jb)
    assert serial.keys() == pooled.keys() and len(serial) == 36
    for k in serial:
        assert pooled[k] == serial[k], k  # one BLAS thread everywhere: bit-identical


def test_make_executor_choices():
    assert isinstance(make_executor("local", jobs=1), SerialExecutor)
    assert isinstance(make_executor("local", jobs=2), ProcessExecutor)
    with pytest.raises(ExecutorError, match="unknown executor"):
        make_executor("slurm")
    with pytest.raises(ExecutorError, match="only for the ray executor"):
        make_executor("local", address="ray://x:1")


def test_kill_dash_9_then_rerun_recomputes_nothing_and_ends_identical(tmp_path, shipped_model):
    spec = json.loads((shipped_model.parent.parent / "specs" / "mnist_3v7.json").read_text())
    spec.update(n_per_class=3, cuts=["relu1", "relu2"], solver="descent-activeset")
    spec.pop("time_budget", None)
    sp = tmp_path / "spec.json"
    sp.write_text(json.dumps(spec))
    cmd = [sys.executable, "-m", "fxverify", "distances", str(shipped_model), "--spec", str(sp), "--jobs", "1"]
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = subprocess.Popen(cmd + ["--out", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = killed / "results.sqlite"
    deadline = time.time() + 120
    n = 0
    while time.time() < deadline and proc.poll() is None:
        if db.exists():
            try:
                with sqlite3.connect(db) as con:
                    n = con.execute("SELECT COUNT(*) FROM pairs").fetchone()[0]
            except sqlite3.Error:
                n = 0
            if n >= 4:  # two pairs (two cuts each) stored: kill mid-run
                break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with sqlite3.connect(db) as con:
        stored = {tuple(r[:3]): r[3] for r in con.execute("SELECT cut, i, j, eps FROM pairs")}
    assert 4 <= len(stored) < 18
    # rerun: stored pairs are kept as they are, the rest computed
    subprocess.run(cmd + ["--out", str(killed)], check=True, capture_output=True)
    subprocess.run(cmd + ["--out", str(clean)], check=True, capture_output=True)
    with sqlite3.connect(db) as con:
        after = {tuple(r[:3]): (r[3], r[4]) for r in con.execute("SELECT cut, i, j, eps, seconds FROM pairs")}
    assert len(after) == 18
    for k, eps in stored.items():
        assert after[k][0] == eps
    a, b = np.load(killed / "distances.npz"), np.load(clean / "distances.npz")
    for cut in ("relu1", "relu2"):
        np.testing.assert_array_equal(a[cut], b[cut])


def test_compute_distances_with_a_pool_equals_serial(job, tmp_path):
    net, jb = job
    pts = select_points(load_embedded("mnist"), (3, 7), 3)
    prof = resolve_engine("descent-activeset")
    s = compute_distances(net, pts, net.cuts, prof, tmp_path / "s", executor=SerialExecutor())
    p = compute_distances(net, pts, net.cuts, prof, tmp_path / "p", executor=ProcessExecutor(2))
    for c in net.cuts:
        np.testing.assert_array_equal(s.by_cut[c].eps, p.by_cut[c].eps)


def _ray_or_skip():
    try:
        import ray  # noqa: F401
    except ImportError:
        pytest.skip("ray is not installed (pip install 'fxverify[ray]')")


def test_ray_executor_on_a_local_instance_survives_a_dead_worker(job, tmp_path):
    _ray_or_skip()
    from fxverify.executors import KILL_ONCE_ENV, RayExecutor

    net, jb = job
    serial = _rows(SerialExecutor(), jb)
    marker = tmp_path / "killed-once"
    ex = RayExecutor(workers=2, runtime_env={"env_vars": {KILL_ONCE_ENV: str(marker)}})
    rayed = _rows(ex, jb)
    assert marker.exists()  # a worker did die mid-task; its task ran again elsewhere
    assert rayed == serial



# -- workers end with their run; the time budget is hard -----------------------------------
def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, state) of every process, from /proc."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        rest = stat[stat.rindex(")") + 2:].split()
        out[int(d)] = (int(rest[1]), rest[0])
    return out


def _descendants(pid: int) -> set[int]:
    table = _proc_table()
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, (pp, _) in table.items() if pp in frontier} - found
        found |= frontier
    return found


def _alive(pids) -> set[int]:
    table = _proc_table()
    return {p for p in pids if p in table and table[p][1] not in ("Z", "X")}


def _spec_file(tmp_path, shipped_model, n=30, **over):
    spec = json.loads((shipped_model.parent.parent / "specs" / "mnist_3v7.json").read_text())
    spec.update(n_per_class=n, cuts=["relu1", "relu2"], solver="descent-activeset", **over)
    spec.pop("time_budget", None)
    sp = tmp_path / "spec.json"
    sp.write_text(json.dumps(spec))
    return sp


def _start_and_wait_for_pairs(cmd, db, minimum=2, timeout=120):
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if db.exists():
            try:
                with sqlite3.connect(db) as con:
                    if con.execute("SELECT COUNT(*) FROM pairs").fetchone()[0] >= minimum:
                        return proc
            except sqlite3.Error:
                pass
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"the run stored no pairs in {timeout} s: {proc.communicate()[1][-2000:]}")


def test_kill_dash_9_of_the_run_ends_its_worker_processes(tmp_path, shipped_model):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "fxverify", "distances", str(shipped_model), "--spec",
           str(_spec_file(tmp_path, shipped_model)), "--jobs", "2", "--out", str(out)]
    proc = _start_and_wait_for_pairs(cmd, out / "results.sqlite")
    children = _descendants(proc.pid)
    assert len(children) >= 2, "the pool's workers run"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    deadline = time.time() + 10
    while _alive(children) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(children), f"orphaned workers still run: {_alive(children)}"


def test_a_hard_time_budget_abandons_pairs_in_flight(tmp_path):
    """exact-scip takes seconds per pair and cut: a budget that only lets the pool start ends
    the run (each task gets the time left; one still running after the grace is abandoned),
    stores only finished results (a deeper cut only after the cut that determines it) and
    leaves no worker running. (How close to the budget it ends is measured, not asserted:
    benchmarks/README.md.)"""
    pytest.importorskip("pyscipopt")
    from conftest import MODELS

    net = fxverify.load_model(MODELS / "fcnn_tiny_mnist_3v7_benign.onnx")
    pts = select_points(load_embedded("mnist"), (3, 7), 3)
    prof = resolve_engine("exact-scip")
    d = compute_distances(net, pts, ("relu1", "relu2"), prof, tmp_path, time_budget=4.0,
                          executor=ProcessExecutor(2))
    assert not d.complete
    with sqlite3.connect(tmp_path / "results.sqlite") as con:
        rows = con.execute("SELECT cut, i, j, status FROM pairs").fetchall()
    assert all(st in ("found", "failed") for *_, st in rows)
    relu1 = {(i, j) for c, i, j, _ in rows if c == "relu1"}
    assert {(i, j) for c, i, j, _ in rows if c == "relu2"} <= relu1
    assert d.by_cut["relu1"].n_done == len(relu1)
    leftover = [p for p in _alive(_descendants(os.getpid())) if "spawn_main" in _cmdline(p)]
    assert not leftover, f"workers left running: {leftover}"


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_serial_executor_starts_nothing_after_the_deadline(job):
    net, jb = job
    assert list(SerialExecutor().run(jb, ListSource(_tasks()), deadline=time.monotonic())) == []
    rows = [r for out in SerialExecutor().run(jb, ListSource(_tasks()), deadline=time.monotonic() + 3600)
            for r in out.rows]
    assert len(rows) == 36


def test_results_are_identical_with_jobs_1_jobs_2_ray_and_under_load(tmp_path):
    """The same run gives the same numbers whatever executes it: serially, on a pool of two
    while two other processes keep both cores busy, and on Ray (when installed); the order in
    which tasks finish changes nothing (one BLAS thread everywhere, no completion-order rule)."""
    from conftest import MODELS

    net = fxverify.load_model(MODELS / "fcnn_tiny_mnist_3v7_benign.onnx")
    pts = select_points(load_embedded("mnist"), (3, 7), 4)
    prof = resolve_engine("descent-activeset")
    grid = (0.0, 0.5, 1.0, 2.0)
    ref = compute_distances(net, pts, net.cuts, prof, tmp_path / "serial", executor=SerialExecutor(), grid=grid)
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        loaded = compute_distances(net, pts, net.cuts, prof, tmp_path / "pool", executor=ProcessExecutor(2),
                                   grid=grid)
    finally:
        for b in burners:
            b.kill()
            b.wait()
    runs = {"pool under load": loaded}
    try:
        import ray  # noqa: F401
    except ImportError:
        pass
    else:
        from fxverify.executors import RayExecutor

        runs["ray"] = compute_distances(net, pts, net.cuts, prof, tmp_path / "ray", executor=RayExecutor(workers=2),
                                        grid=grid)
    for name, d in runs.items():
        for c in net.cuts:
            np.testing.assert_array_equal(d.by_cut[c].eps, ref.by_cut[c].eps, err_msg=f"{name} {c}")
            assert d.by_cut[c].n_failed == ref.by_cut[c].n_failed == 0
