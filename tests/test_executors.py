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
from fxverify.executors import ExecutorError, PairJob, ProcessExecutor, SerialExecutor, make_executor
from fxverify.pipeline import compute_distances
from fxverify.profiles import load_profile


@pytest.fixture(scope="module")
def job():
    from conftest import MODELS

    net = fxverify.load_model(MODELS / "fcnn_tiny_mnist_3v7_benign.onnx")
    pts = select_points(load_embedded("mnist"), (3, 7), 3)
    return net, PairJob(net.source.path, net.source.sha256, load_profile("descent-activeset"), pts.X_a, pts.X_b,
                        ("relu1", "linear2", "relu2", "linear3"))


def _rows(executor, job, net=None):
    chunks = [((i, j),) for i in range(3) for j in range(3)]
    rows = [r for out in executor.run(job, chunks, net=net) for r in out]
    return {(r.cut, r.i, r.j): (r.eps, r.status) for r in rows}


def test_process_pool_gives_the_serial_results(job):
    net, jb = job
    serial = _rows(SerialExecutor(), jb, net)
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
    prof = load_profile("descent-activeset")
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
    serial = _rows(SerialExecutor(), jb, net)
    marker = tmp_path / "killed-once"
    ex = RayExecutor(workers=2, runtime_env={"env_vars": {KILL_ONCE_ENV: str(marker)}})
    rayed = _rows(ex, jb)
    assert marker.exists()  # a worker did die mid-task; its task ran again elsewhere
    assert rayed == serial

