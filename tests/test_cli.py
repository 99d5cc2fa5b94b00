"""The command line, run as a real process: output, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from builders import make, rand, save


def fx(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "fxverify", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def assert_user_error(res, *fragments):
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr and "Traceback" not in (res.stdout or "")
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


def test_version():
    res = fx("--version")
    assert res.returncode == 0 and res.stdout.startswith("fxverify ")


def test_inspect_shipped_model(shipped_model):
    res = fx("inspect", shipped_model)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "cuts: input, linear1, relu1, linear2, relu2, linear3" in out
    assert "first affine map linear1: 300 x 784, rank 300" in out
    assert "onnxruntime check: agrees" in out
    assert "296,102" in out  # 784*300+300 + 300*200+200 + 200*2+2


def test_inspect_json(tiny_model):
    res = fx("inspect", tiny_model, "--json")
    assert res.returncode == 0, res.stderr
    s = json.loads(res.stdout)
    assert s["cuts"] == ["input", "linear1", "relu1", "linear2", "relu2", "linear3"]
    assert [l["out_shape"] for l in s["layers"]] == [[1, 10], [1, 10], [1, 10], [1, 10], [1, 2]]
    assert s["first_affine"]["rank"] == 10 and s["agreement"]["ok"] is True
    assert s["params"] == 784 * 10 + 10 + 10 * 10 + 10 + 10 * 2 + 2


def test_bad_models_exit_2_with_one_line(tmp_path, shipped_model):
    (tmp_path / "garbage.onnx").write_bytes(b"\x00\xffgarbage" * 50)
    (tmp_path / "trunc.onnx").write_bytes(shipped_model.read_bytes()[:100_000])
    sig = save(tmp_path, make([helper.make_node("MatMul", ["x", "W"], ["m"]),
                               helper.make_node("Sigmoid", ["m"], ["y"], name="act")], ["N", 3],
                              inits={"W": rand(3, 3)}), "sig.onnx")
    two = save(tmp_path, make([helper.make_node("Add", ["x", "z"], ["y"])], [1, 3],
                              extra_inputs=[helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 3])]), "two.onnx")
    ints = save(tmp_path, make([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)], [1, 3],
                               elem=TensorProto.INT32), "int.onnx")
    dyn = save(tmp_path, make([helper.make_node("Relu", ["x"], ["y"])], ["N", "C"]), "dyn.onnx")
    W = rand(3, 3)
    W[0, 0] = np.inf
    inf = save(tmp_path, make([helper.make_node("MatMul", ["x", "W"], ["y"])], ["N", 3], inits={"W": W}), "inf.onnx")
    cases = [
        (tmp_path / "missing.onnx", ["model file not found"]),
        (tmp_path / "garbage.onnx", ["not a valid ONNX"]),
        (tmp_path / "trunc.onnx", ["not a valid ONNX"]),
        (two, ["exactly one input", "'x', 'z'"]),
        (ints, ["element type INT32", "needs a float input"]),
        (dyn, ["dynamic dimension 1 ('C')"]),
        (inf, ["NaN or infinite"]),
    ]
    for path, fragments in cases:
        assert_user_error(fx("inspect", path), *fragments)


def test_usage_error_is_exit_2():
    res = fx("inspect")
    assert res.returncode == 2
    assert "Traceback" not in res.stderr


def test_unsupported_ops_make_later_cuts_unavailable(tmp_path):
    from conftest import REAL_ONNX

    sig = save(tmp_path, make([helper.make_node("MatMul", ["x", "W"], ["m"]),
                               helper.make_node("Sigmoid", ["m"], ["y"], name="act")], ["N", 784],
                              inits={"W": rand(784, 3)}), "sig.onnx")
    res = fx("inspect", sig)
    assert res.returncode == 0, res.stderr
    assert "cuts: input, linear1" in res.stdout and "Sigmoid 'act' (node 1, output 'y')" in res.stdout
    spec = tmp_path / "s.json"
    spec.write_text(json.dumps({"version": 1, "data": {"embedded": "mnist"}, "classes": [3, 7], "n_per_class": 2,
                                "eps": [1.0], "cuts": ["linear1", "linear9"]}))
    assert_user_error(fx("bound", sig, "--spec", spec, "--out", tmp_path / "o"), "linear9",
                      "that the model does not have")
    if not REAL_ONNX.is_dir():
        pytest.skip(f"third-party ONNX corpus not found at {REAL_ONNX}")
    res = fx("inspect", REAL_ONNX / "eran_mnist_sigmoid_6x200.onnx")
    assert res.returncode == 0 and "unavailable (not computed): linear2, linear3" in res.stdout
    spec.write_text(json.dumps({"version": 1, "data": {"embedded": "mnist"}, "classes": [3, 7], "n_per_class": 2,
                                "eps": [1.0], "cuts": ["linear1", "linear2"]}))
    assert_user_error(fx("bound", REAL_ONNX / "eran_mnist_sigmoid_6x200.onnx", "--spec", spec, "--out",
                         tmp_path / "o2"), "linear2", "cannot compute", "Sigmoid 'Sigmoid_6'")


def _small_spec(tmp_path, **over):
    doc = {"version": 1, "description": "test", "data": {"embedded": "mnist"}, "classes": [3, 7], "n_per_class": 3,
           "eps": [0.0, 1.0, 2.0, 3.0], "cuts": "all"}
    doc.update(over)
    p = tmp_path / "spec.json"
    p.write_text(json.dumps(doc))
    return p


def test_collide_one_pair(tmp_path, tiny_model):
    spec = _small_spec(tmp_path)
    res = fx("collide", tiny_model, "--spec", spec, "--cut", "relu2", "--pair", 0, 2, "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    cuts = doc["cuts"]
    assert list(cuts) == ["input", "linear1", "relu1", "linear2", "relu2"]
    assert all(c["status"] == "found" and c["verified"] for c in cuts.values())
    eps = [c["eps"] for c in cuts.values()]
    assert all(b <= a + 1e-12 for a, b in zip(eps, eps[1:]))
    assert len(cuts["relu2"]["u_adv"]) == 784
    table = fx("collide", tiny_model, "--spec", spec, "--cut", "relu1", "--pair", 1, 1)
    assert table.returncode == 0 and "relu1: verified collision, eps =" in table.stdout
    assert_user_error(fx("collide", tiny_model, "--spec", spec, "--cut", "relu7", "--pair", 0, 0), "unknown cut 'relu7'")
    assert_user_error(fx("collide", tiny_model, "--spec", spec, "--cut", "relu1", "--pair", 0, 3), "out of range")


def test_bound_end_to_end_writes_the_files(tmp_path, tiny_model):
    import csv

    spec = _small_spec(tmp_path)
    out = tmp_path / "out"
    res = fx("bound", tiny_model, "--spec", spec, "--out", out)
    assert res.returncode == 0, res.stderr
    doc = json.loads((out / "results.json").read_text())
    assert doc["model"]["sha256"] == __import__("hashlib").sha256(tiny_model.read_bytes()).hexdigest()
    assert doc["spec"]["n_per_class"] == 3 and doc["solver"]["name"] == "descent-activeset"
    assert doc["fxverify_version"] and doc["complete"] is True
    recs = doc["results"]
    cuts = ["input", "linear1", "relu1", "linear2", "relu2", "linear3"]
    assert [r["cut"] for r in recs] == [c for c in cuts for _ in range(4)]
    assert set(recs[0]) == {"cut", "eps", "edges", "loss01_lower", "ce_lower", "pairs_done", "pairs_failed"}
    assert all(r["pairs_done"] == 9 and r["pairs_failed"] == 0 for r in recs)
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(recs) and float(rows[5]["ce_lower"]) == pytest.approx(recs[5]["ce_lower"])
    for png in ("loss01.png", "cross_entropy.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # bounds monotone in eps and never lower at a deeper cut
    by = {c: [r for r in recs if r["cut"] == c] for c in cuts}
    for c in cuts:
        assert all(b["ce_lower"] >= a["ce_lower"] - 1e-12 for a, b in zip(by[c], by[c][1:]))
    for s, d in zip(cuts, cuts[1:]):
        assert all(rd["ce_lower"] >= rs["ce_lower"] - 1e-12 for rs, rd in zip(by[s], by[d]))
    # a second run resumes from the store and prints the same table
    again = fx("bound", tiny_model, "--spec", spec, "--out", out)
    assert again.returncode == 0 and json.loads((out / "results.json").read_text())["results"] == recs


def test_distances_and_compare(tmp_path, tiny_model, shipped_model):
    spec = _small_spec(tmp_path, cuts=["input", "linear1"])
    out = tmp_path / "d"
    res = fx("distances", tiny_model, "--spec", spec, "--out", out)
    assert res.returncode == 0, res.stderr
    z = np.load(out / "distances.npz")
    assert z["input"].shape == (3, 3) and np.all(np.isfinite(z["linear1"]))
    cmp_out = tmp_path / "cmp"
    res = fx("compare", tiny_model, shipped_model, "--spec", spec, "--cut", "linear1", "--out", cmp_out,
             "--label", "tiny", "--label", "regular")
    assert res.returncode == 0, res.stderr
    doc = json.loads((cmp_out / "compare.json").read_text())
    assert {r["model"] for r in doc["results"]} == {"tiny", "regular"}
    assert (cmp_out / "compare_cross_entropy.png").exists()
    assert_user_error(fx("compare", tiny_model, shipped_model, "--spec", spec, "--cut", "linear1", "--label", "a"),
                      "1 --label values for 2 models")


def test_bad_spec_and_mismatched_model_exit_2(tmp_path, tiny_model):
    assert_user_error(fx("bound", tiny_model, "--spec", tmp_path / "none.json"), "spec file not found")
    assert_user_error(fx("bound", tiny_model, "--spec", _small_spec(tmp_path, eps=[-1.0])), "eps[0]")
    assert_user_error(fx("bound", tiny_model, "--spec", _small_spec(tmp_path, classes=[3, 11])),
                      "class 11 is not present")
    assert_user_error(fx("bound", tiny_model, "--spec", _small_spec(tmp_path, n_per_class=900)),
                      "n_per_class=900 but class 3 has only 500")
    np.savez(tmp_path / "wide.npz", X=np.zeros((4, 100)), y=np.array([3, 7, 3, 7]))
    assert_user_error(fx("bound", tiny_model, "--spec", _small_spec(tmp_path, data={"npz": "wide.npz"}, n_per_class=2)),
                      "100 values per image but the model's input")
    assert_user_error(fx("bound", tiny_model, "--spec", _small_spec(tmp_path, cuts=["relu5"])), "relu5")
    assert_user_error(fx("bound", tiny_model, "--spec", _small_spec(tmp_path), "--solver", "nonesuch"),
                      "unknown solver 'nonesuch'")
    assert_user_error(fx("bound", tiny_model, "--spec", _small_spec(tmp_path), "--out", tmp_path / "o",
                         "--order", "random"), "unknown pair order 'random'")


def test_solvers_lists_every_backend_with_availability():
    res = fx("solvers", "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    names = {b["name"]: b for b in doc["backends"]}
    assert {"cvxopt", "activeset", "clarabel", "scip", "gurobi", "mosek"} <= set(names)
    assert names["cvxopt"]["availability"] == "full" and names["cvxopt"]["version"]
    assert names["mosek"]["availability"] in ("full", "not found", "bad license")
    assert "exact-scip" in doc["profiles"] and "descent-activeset" in doc["profiles"]
    table = fx("solvers")
    assert table.returncode == 0 and "activeset" in table.stdout and "profiles:" in table.stdout


def test_gap_on_the_tiny_model_writes_json_and_csv(tmp_path, tiny_model):
    pytest.importorskip("pyscipopt")
    spec = _small_spec(tmp_path)
    out = tmp_path / "gap"
    res = fx("gap", tiny_model, "--spec", spec, "--cut", "relu1", "--pairs", 2, "--out", out)
    assert res.returncode == 0, res.stderr
    doc = json.loads((out / "gap.json").read_text())
    assert doc["summary"]["pairs"] == 2 and doc["summary"]["fraction_exact"] == 1.0
    for r in doc["pairs"]:
        assert r["solved"] and r["descent_eps"] >= r["exact_eps"] - 1e-6 and r["exact_lower"] <= r["exact_eps"]
    assert (out / "gap.csv").read_text().count("\n") == 3
    assert "descent gap mean" in res.stdout


def test_exact_with_an_unusable_solver_is_one_error_line(tmp_path, tiny_model):
    spec = _small_spec(tmp_path)
    res = fx("collide", tiny_model, "--spec", spec, "--cut", "relu1", "--pair", 0, 0, "--method", "exact",
             "--solver", "cvxopt")
    assert_user_error(res, "cannot solve the exact method's MIQCP")


def test_solver_options_override_the_profile_from_the_command_line(tmp_path, tiny_model):
    spec = _small_spec(tmp_path, solver="descent-cvxopt")
    ok = fx("collide", tiny_model, "--spec", spec, "--cut", "relu1", "--pair", 0, 0, "-o", "kkt=chol",
            "-o", "max_iterations=3", "--json")
    assert ok.returncode == 0, ok.stderr
    assert_user_error(fx("collide", tiny_model, "--spec", spec, "--cut", "relu1", "--pair", 0, 0, "-o", "kkt_typo=1"),
                      "does not know option(s) kkt_typo")
    assert_user_error(fx("bound", tiny_model, "--spec", spec, "-o", "novalue"), "is not KEY=VALUE")


# -- a new user's first day (issue 13): clean one-line failures, progress, signals, budgets ----
def _error_line(res, *fragments, code=2):
    """Exactly one `error:` line on stderr (after any plain progress lines), no traceback."""
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr and "Traceback" not in (res.stdout or "")
    lines = res.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], res.stderr
    assert all(line.startswith("progress: ") for line in lines[:-1]), res.stderr
    for f in fragments:
        assert f in errors[0], errors[0]


def test_jobs_zero_is_one_error_line(tmp_path, tiny_model):
    for value in ("0", "-3"):
        assert_user_error(fx("bound", tiny_model, "--spec", _small_spec(tmp_path), "--jobs", value),
                          f"--jobs must be at least 1 (got {value})")
    assert_user_error(fx("distances", tiny_model, "--spec", _small_spec(tmp_path), "-j", "0"),
                      "--jobs must be at least 1")


def test_deeply_nested_or_binary_specs_are_one_error_line(tmp_path, tiny_model):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100000 + "]" * 100000)
    assert_user_error(fx("bound", tiny_model, "--spec", deep), "nested too deeply")
    junk = tmp_path / "junk.json"
    junk.write_bytes(bytes(range(256)) * 40)
    assert_user_error(fx("bound", tiny_model, "--spec", junk), "is not a text file")


def test_divide_255_on_data_in_0_1_is_one_error_line(tmp_path, tiny_model):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "unit.npz", X=rng.uniform(0, 1, (8, 28, 28)), y=np.array([3, 7] * 4))
    assert_user_error(fx("bound", tiny_model, "--spec", _small_spec(tmp_path, data={"npz": "unit.npz"},
                                                                     n_per_class=2, scaling="divide_255")),
                      "already lie in [0, ", '"scaling": "none"')
    np.savez(tmp_path / "bad_index.npz", X=np.zeros((4, 784)), y=np.array([3, 7] * 2), index=np.arange(3))
    assert_user_error(fx("bound", tiny_model, "--spec", _small_spec(tmp_path, data={"npz": "bad_index.npz"},
                                                                     n_per_class=2)),
                      "index has shape (3,), expected (4,)")


def test_every_mnist_pair_runs_from_the_embedded_data(tmp_path, tiny_model):
    res = fx("collide", tiny_model, "--spec", _small_spec(tmp_path, classes=[0, 9]), "--cut", "linear1",
             "--pair", 0, 1, "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["classes"] == [0, 9]


def test_unwritable_results_are_one_error_line(tmp_path, tiny_model):
    out = tmp_path / "out"
    (out / "results.json").mkdir(parents=True)
    _error_line(fx("bound", tiny_model, "--spec", _small_spec(tmp_path, cuts=["input", "linear1"]), "--out", out),
                "cannot write", "results.json: Is a directory")
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    # the store is whole: with the path freed, the same command finishes from it
    (out / "results.json").rmdir()
    ok = fx("bound", tiny_model, "--spec", _small_spec(tmp_path, cuts=["input", "linear1"]), "--out", out)
    assert ok.returncode == 0, ok.stderr
    from fxverify.report import validate_results

    validate_results(json.loads((out / "results.json").read_text()))


def test_a_garbled_store_is_one_error_line(tmp_path, tiny_model):
    spec = _small_spec(tmp_path, n_per_class=20, cuts=["input", "linear1", "relu1"])
    out = tmp_path / "out"
    assert fx("distances", tiny_model, "--spec", spec, "--out", out, "--jobs", "1").returncode == 0
    db = out / "results.sqlite"
    size = db.stat().st_size
    with open(db, "r+b") as f:
        f.seek(size // 2)
        f.write(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    _error_line(fx("bound", tiny_model, "--spec", spec, "--out", out, "--jobs", "1"), str(db))


def test_a_second_run_on_the_same_out_is_refused_at_once(tmp_path, shipped_model):
    import sqlite3
    import time

    spec = _small_spec(tmp_path, n_per_class=30, cuts=["relu1", "relu2"], solver="descent-activeset")
    out = tmp_path / "out"
    first = subprocess.Popen([sys.executable, "-m", "fxverify", "distances", str(shipped_model), "--spec", str(spec),
                              "--out", str(out), "--jobs", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and first.poll() is None:
            try:
                with sqlite3.connect(out / "results.sqlite") as con:
                    if con.execute("SELECT COUNT(*) FROM pairs").fetchone()[0]:
                        break
            except sqlite3.Error:
                pass
            time.sleep(0.1)
        assert first.poll() is None
        t0 = time.time()
        second = fx("bound", shipped_model, "--spec", spec, "--out", out)
        assert time.time() - t0 < 60
        assert_user_error(second, f"{out} is in use by another fxverify run (pid {first.pid})")
    finally:
        first.kill()
        first.wait()


def _children_of(pid: int) -> set[int]:
    import os

    kids = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                kids.add(int(d))
    return kids


def _running(pids) -> set[int]:
    alive = set()
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        if stat[stat.rindex(")") + 2:].split()[0] not in ("Z", "X"):
            alive.add(p)
    return alive


def test_sigterm_ends_a_run_cleanly(tmp_path, shipped_model):
    import os
    import signal
    import sqlite3
    import time

    spec = _small_spec(tmp_path, n_per_class=30, cuts=["relu1", "relu2"], solver="descent-activeset")
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "fxverify", "bound", str(shipped_model), "--spec", str(spec),
                             "--out", str(out), "--jobs", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            with sqlite3.connect(out / "results.sqlite") as con:
                if con.execute("SELECT COUNT(*) FROM pairs").fetchone()[0] >= 4:
                    break
        except sqlite3.Error:
            pass
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before SIGTERM"
    workers = _children_of(proc.pid)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=30)
    res = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    _error_line(res, "terminated (SIGTERM); results stored so far are kept", code=128 + signal.SIGTERM)
    time.sleep(1)
    assert not _running(workers), "workers outlived the run"
    with sqlite3.connect(out / "results.sqlite") as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = con.execute("SELECT cut, i, j FROM pairs").fetchall()
    relu1 = {(i, j) for c, i, j in rows if c == "relu1"}
    assert rows and {(i, j) for c, i, j in rows if c == "relu2"} <= relu1, "a cut after the cuts it starts from"
    assert not (out / "results.json").exists()
    assert os.path.exists(out / ".fxverify.lock")


def test_a_time_budget_is_hard_and_progress_lines_appear_without_a_terminal(tmp_path, shipped_model):
    import re
    import time

    spec = _small_spec(tmp_path, n_per_class=40, cuts=["relu1", "relu2"], solver="descent-activeset",
                       eps=[0.0, 2.0, 4.0])
    out = tmp_path / "out"
    res = fx("bound", shipped_model, "--spec", spec, "--out", out, "--jobs", "2", "--time-budget", 25)
    assert res.returncode == 0, res.stderr  # how close to the budget it ends: benchmarks/README.md
    doc = json.loads((out / "results.json").read_text())
    from fxverify.report import validate_results

    validate_results(doc)
    assert doc["complete"] is False
    relu = [c for c in doc["cuts"] if c["cut"] == "relu1"][0]
    assert 0 < relu["pairs_done"] < relu["pairs_total"] == 1600
    assert "incomplete" in res.stdout
    # progress: plain lines, every 5 s, with stage, pairs done/total, rate and ETA; no escape codes
    lines = res.stderr.strip().splitlines()
    assert lines and all(line.startswith("progress: ") for line in lines), res.stderr
    assert "\x1b" not in res.stderr
    ticks = [line for line in lines if re.fullmatch(r"progress: descent: [\d,]+/3,200 results \(\d+%\)"
                                                    r"(, [\d.]+ results/s, ETA \d+(h\d\dm|m\d\ds|s))?", line)]
    assert len(ticks) >= 1, res.stderr
    assert any("results/s, ETA" in line for line in ticks), res.stderr


def test_terminal_progress_leaves_no_stale_stage_rows(monkeypatch):
    import io
    import re

    from fxverify import cli

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    err = Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    with cli._progress() as report:
        report("closed form input", 0, 2)
        report("closed form linear1", 1, 2)
        report("closed form", 2, 2)
        report("descent", 0, 9)
        report("descent", 9, 9)
    monkeypatch.undo()
    last_frame = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", err.getvalue().split("\r")[-1])
    rows = [line.split()[:3] for line in last_frame.strip().splitlines()]
    assert [r[0] for r in rows] == ["closed", "descent"], last_frame
    assert "2/2" in last_frame and "9/9" in last_frame and "0/2" not in last_frame and "1/2" not in last_frame


def test_plain_progress_prints_nothing_for_a_short_run_and_ticks_for_a_long_one(monkeypatch):
    import io
    import time

    from fxverify import cli

    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    with cli._progress(interval=0.2) as report:
        report("descent", 0, 10)
        report("descent", 10, 10)
    assert err.getvalue() == ""
    with cli._progress(interval=0.2) as report:
        report("descent", 0, 10)
        time.sleep(0.15)
        report("descent", 3, 10)
        time.sleep(0.3)
        report("descent", 10, 10)
    lines = err.getvalue().splitlines()
    assert lines[0].startswith("progress: descent: 3/10 results (30%), ") and "ETA" in lines[0]
    assert lines[-1].startswith("progress: descent: 10/10 results (100%)")


def test_usage_errors_are_one_error_line(tmp_path, tiny_model):
    """Fault sweep: typer's usage errors (a missing option, a value of the wrong type, an
    unknown option or command) were multi-line boxes; now one `error:` line, exit 2."""
    spec = _small_spec(tmp_path)
    for args, fragment in [(("collide", tiny_model, "--spec", spec), "Missing option '--cut'"),
                           (("bound", tiny_model, "--spec", spec, "--jobs", "abc"), "Invalid value for '--jobs'"),
                           (("collide", tiny_model, "--spec", spec, "--cut", "relu1", "--pair", "0"), "--pair"),
                           (("inspect", tiny_model, "--bogus"), "No such option: --bogus"),
                           (("frobnicate",), "No such command 'frobnicate'")]:
        assert_user_error(fx(*args), fragment)
    bare = fx()  # no arguments: the help, as before
    assert bare.returncode == 2 and "Usage" in bare.stdout and not bare.stderr.strip()
    assert fx("--version").returncode == 0 and fx("bound", "--help").returncode == 0


def test_collide_checks_method_and_reads_solver_for_it(tmp_path, tiny_model):
    """Fault sweep: `--method bogus` ran a descent labelled "bogus" (exit 0); `--solver gurobi
    --method exact` was resolved as a descent profile first and refused for the wrong reason."""
    spec = _small_spec(tmp_path)
    pair = ("collide", tiny_model, "--spec", spec, "--cut", "relu1", "--pair", "0", "0")
    assert_user_error(fx(*pair, "--method", "bogus"), "--method 'bogus' is not a collision method")
    pytest.importorskip("gurobipy")
    res = fx(*pair, "--method", "exact", "--solver", "gurobi")
    assert res.returncode == 0, res.stderr
    assert "exact: optimal" in res.stdout


def test_gap_validates_its_options_before_solving(tmp_path, tiny_model):
    """Fault sweep: `--descent exact-scip` measured the exact method against itself, `--pairs`
    beyond the pairs there are was cut silently, an unwritable --out was a traceback."""
    spec = _small_spec(tmp_path, n_per_class=2)
    gap = ("gap", tiny_model, "--spec", spec, "--cut", "relu1")
    assert_user_error(fx(*gap, "--descent", "exact-scip", "--out", tmp_path / "g1"), "--descent 'exact-scip'")
    assert_user_error(fx(*gap, "--pairs", "1000", "--out", tmp_path / "g2"), "--pairs 1000", "only 4")
    (tmp_path / "file").write_text("x")
    assert_user_error(fx(*gap, "--pairs", "1", "--out", tmp_path / "file" / "sub"), "cannot create output directory")


def test_unwritable_distances_npz_and_stdout_are_one_error_line(tmp_path, tiny_model):
    spec = _small_spec(tmp_path, cuts=["input", "linear1"])
    out = tmp_path / "out"
    (out / "distances.npz").mkdir(parents=True)
    assert_user_error(fx("distances", tiny_model, "--spec", spec, "--out", out, "--jobs", "1"),
                      "cannot write", "distances.npz")
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    for args in (("inspect", tiny_model), ("solvers", "--json"), ("--version",)):
        with open("/dev/full", "wb") as full:
            res = subprocess.run([sys.executable, "-m", "fxverify", *map(str, args)], stdout=full,
                                 stderr=subprocess.PIPE, text=True, timeout=300)
        assert_user_error(res, "cannot write to standard output")


def test_bound_names_the_pairs_its_selection_skipped_and_without_it_computes_them(tmp_path, tiny_model):
    """--select-pairs (off by default): the second block of pairs is decided from the first
    block's results; the bounds equal those of the run without selection."""
    spec = Path(__file__).resolve().parent.parent / "specs" / "mnist_3v7.json"
    res = fx("bound", tiny_model, "--spec", spec, "--out", tmp_path / "sel", "--jobs", "1", "--eps", "0,0.5,1",
             "--select-pairs")
    assert res.returncode == 0, res.stderr
    doc = json.loads((tmp_path / "sel" / "results.json").read_text())
    skipped = {c["cut"]: c["pairs_skipped"] for c in doc["cuts"] if c["pairs_skipped"]}
    assert skipped, "the selection skipped nothing on this run; the test needs a run where it does"
    assert "pair selection: skipped" in " ".join(res.stdout.split())
    ex = fx("bound", tiny_model, "--spec", spec, "--out", tmp_path / "ex", "--jobs", "1", "--eps", "0,0.5,1")
    assert ex.returncode == 0, ex.stderr
    assert "pair selection" not in ex.stdout
    doc_ex = json.loads((tmp_path / "ex" / "results.json").read_text())
    assert all(c["pairs_skipped"] == 0 for c in doc_ex["cuts"])
    for a, b in zip(doc["results"], doc_ex["results"]):
        assert (a["cut"], a["eps"]) == (b["cut"], b["eps"])
        assert a["loss01_lower"] == pytest.approx(b["loss01_lower"]) and a["ce_lower"] == pytest.approx(b["ce_lower"])
    _error_line(fx("bound", tiny_model, "--spec", spec, "--out", tmp_path / "x", "--select-pairs", "--exhaustive"),
                "choose one")


# ---- witnesses and fxverify check -------------------------------------------------------------
def _witness_run(tmp_path, model, **over):
    spec = _small_spec(tmp_path, **{"cuts": ["linear1", "relu1", "relu2"], **over})
    out = tmp_path / "out"
    res = fx("bound", model, "--spec", spec, "--out", out, "--jobs", "1")
    assert res.returncode == 0, res.stderr
    return spec, out


def test_check_passes_on_a_run_and_fails_against_another_model(tmp_path, tiny_model, shipped_model):
    spec, out = _witness_run(tmp_path, tiny_model)
    doc = json.loads((out / "results.json").read_text())
    w = np.load(out / "witnesses.npz")
    assert doc["witnesses"] == {"file": "witnesses.npz", "count": int(w["eps"].size),
                                "bytes": (out / "witnesses.npz").stat().st_size}
    assert set(map(str, w["cuts"][w["cut"]])) == {"linear1", "relu1", "relu2"}  # closed form included
    ok = fx("check", out)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "0 failed, 0 budget mismatches" in ok.stdout and "all hold" in ok.stdout
    n = int(np.sum(w["eps"] <= max(doc["spec"]["eps"])))
    assert f"{n:,} edges checked" in ok.stdout and n > 0
    other = fx("check", out, "--model", tiny_model.parent / "fcnn_small_mnist_3v7_benign.onnx")
    assert other.returncode == 1 and f"{n:,} failed" in other.stdout and "not the run's" in other.stdout


def test_check_catches_a_tampered_witness_in_the_file_and_in_the_store(tmp_path, tiny_model):
    import sqlite3
    import zipfile

    spec, out = _witness_run(tmp_path, tiny_model)
    w = dict(np.load(out / "witnesses.npz"))
    k = int(np.flatnonzero(w["eps"] <= 3.0)[-1])
    w["delta_u"] = w["delta_u"].copy()
    w["delta_u"][k] *= 0.9  # closer to u: a smaller budget, no longer a collision
    np.savez_compressed(out / "witnesses.npz", **w)
    res = fx("check", out)
    assert res.returncode == 1 and "1 failed" in res.stdout, res.stdout
    # a budget that does not match its points
    w["delta_u"][k] /= 0.9
    w["eps"] = w["eps"].copy()
    w["eps"][k] *= 0.5
    np.savez_compressed(out / "witnesses.npz", **w)
    res = fx("check", out)
    assert res.returncode == 1 and "1 budget mismatches" in res.stdout, res.stdout
    # in the store: the rerun recomputes nothing, exports the stored witness, check catches it
    from fxverify.store import pack_delta, unpack_delta

    with sqlite3.connect(out / "results.sqlite") as con:
        cut, i, j, du = con.execute("SELECT w.cut, w.i, w.j, w.delta_u FROM witnesses w JOIN pairs p "
                                    "USING (cut, i, j) WHERE w.cut = 'relu2' AND p.eps <= 3 LIMIT 1").fetchone()
        d = unpack_delta(du, 784) * 0.5
        con.execute("UPDATE witnesses SET delta_u = ? WHERE cut = ? AND i = ? AND j = ?", (pack_delta(d), cut, i, j))
    assert fx("bound", tiny_model, "--spec", spec, "--out", out, "--jobs", "1").returncode == 0
    res = fx("check", out)
    assert res.returncode == 1 and "failed" in res.stdout and "relu2" in res.stdout
    # not a witness file at all
    (out / "witnesses.npz").write_bytes(b"PK\x03\x04 garbage")
    _error_line(fx("check", out), "not a readable witness file")
    assert zipfile  # the format is numpy's npz (a zip of .npy arrays)


def test_witnesses_none_stores_and_exports_none(tmp_path, tiny_model):
    spec = _small_spec(tmp_path, cuts=["relu1"])
    out = tmp_path / "out"
    res = fx("bound", tiny_model, "--spec", spec, "--out", out, "--jobs", "1", "--witnesses", "none")
    assert res.returncode == 0, res.stderr
    assert not (out / "witnesses.npz").exists()
    assert json.loads((out / "results.json").read_text())["witnesses"] is None
    _error_line(fx("check", out), "no witness file")
    _error_line(fx("bound", tiny_model, "--spec", spec, "--out", out, "--witnesses", "some"), "--witnesses 'some'")


def test_jobs_1_and_jobs_2_write_the_same_results(tmp_path, tiny_model):
    spec = _small_spec(tmp_path, n_per_class=4, cuts="all")
    docs = []
    for jobs in (1, 2):
        out = tmp_path / f"j{jobs}"
        res = fx("bound", tiny_model, "--spec", spec, "--out", out, "--jobs", jobs)
        assert res.returncode == 0, res.stderr
        docs.append(json.loads((out / "results.json").read_text()))
    assert docs[0]["results"] == docs[1]["results"]
    assert [c["failures"] for c in docs[0]["cuts"]] == [c["failures"] for c in docs[1]["cuts"]]


def test_collide_with_a_time_budget_shows_timed_out_cuts_and_stores_nothing(tmp_path, shipped_model):
    spec = _small_spec(tmp_path, n_per_class=2)
    res = fx("collide", shipped_model, "--spec", spec, "--cut", "linear3", "--pair", 0, 1, "--time-budget", "0.001")
    assert res.returncode == 0, res.stderr
    assert "timed-out" in res.stdout and "no result: the time budget ended first" in res.stdout
    assert not any(p.name == "results.sqlite" for p in tmp_path.rglob("*"))


def test_a_failed_pair_is_named_with_its_reason(tmp_path, tiny_model):
    """A solver that fails (max_iterations=1 is not a failure; a backend error is): each failed
    pair's reason in results.json and, grouped, in the terminal."""
    spec = _small_spec(tmp_path, cuts=["relu1"])
    out = tmp_path / "out"
    pre = ("from fxverify.collision.descent import PatternDescent, DescentOutcome\n"
           "PatternDescent.run = lambda self, *a, **k: DescentOutcome(None, None, failed='LP failed: boom', "
           "message='cone LP failed at step 1: numerical error (boom)')\n")
    code = pre + "import sys\nfrom fxverify.cli import run\nsys.argv = ['fxverify'] + sys.argv[1:]\nrun()\n"
    res = subprocess.run([sys.executable, "-c", code, "bound", str(tiny_model), "--spec", str(spec), "--out", str(out),
                          "--jobs", "1"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    doc = json.loads((out / "results.json").read_text())
    relu1 = next(c for c in doc["cuts"] if c["cut"] == "relu1")
    assert len(relu1["failures"]) == 9 == relu1["pairs_failed"]
    assert relu1["failures"][0]["reason"] == "cone LP failed at step 1: numerical error (boom)"
    assert "9 pair computations failed" in res.stdout
    assert "9 x cone LP failed at step 1: numerical error (boom): relu1 (0, 0)" in " ".join(res.stdout.split())


def test_bound_on_k_classes_prints_writes_and_checks_them(tmp_path, tiny_model):
    spec = _small_spec(tmp_path)
    out = tmp_path / "k"
    res = fx("bound", tiny_model, "--spec", spec, "--out", out, "--classes", "0,1,2", "--n", 2, "--cuts",
             "linear1,relu1", "--jobs", 1)
    assert res.returncode == 0, res.stderr
    assert "3 classes (0, 1, 2), n = 3 x 2 = 6 points, 12 cross-class pairs" in " ".join(res.stdout.split())
    doc = json.loads((out / "results.json").read_text())
    assert doc["format"] == 3 and doc["points"] == {"classes": [0, 1, 2], "n_per_class": [2, 2, 2], "n": 6,
                                                    "pairs": 12}
    assert all(r["pairs_done"] == 12 for r in doc["results"]) and doc["complete"] is True
    check = fx("check", out)
    assert check.returncode == 0, (check.stdout, check.stderr)
    # the same directory for two classes is refused, naming the classes
    assert_user_error(fx("bound", tiny_model, "--spec", spec, "--out", out, "--classes", "0,1", "--n", 2, "--cuts",
                         "linear1,relu1", "--jobs", 1), "the classes", "stored [0, 1, 2], this run two classes")
    every = fx("bound", tiny_model, "--spec", spec, "--out", tmp_path / "all", "--classes", "all", "--n", 1,
               "--cuts", "input", "--jobs", 1)
    assert every.returncode == 0 and "10 classes (0, 1, 2, 3, 4, 5, 6, 7, 8, 9), n = 10 x 1 = 10 points, 45 " \
                                      "cross-class pairs" in " ".join(every.stdout.split()), every.stderr


def test_k_class_errors_are_one_line(tmp_path, tiny_model):
    spec = _small_spec(tmp_path)
    assert_user_error(fx("bound", tiny_model, "--spec", spec, "--classes", "3", "--out", tmp_path / "o"),
                      "at least two classes are needed, got [3]")
    assert_user_error(fx("bound", tiny_model, "--spec", spec, "--classes", "3,7,3", "--out", tmp_path / "o"),
                      "class 3 is listed more than once")
    assert_user_error(fx("bound", tiny_model, "--spec", spec, "--classes", "3,7,42", "--out", tmp_path / "o"),
                      "class 42 is not present")
    assert_user_error(fx("bound", tiny_model, "--spec", spec, "--classes", "0,1,2", "--select-pairs", "--out",
                         tmp_path / "o"), "is for two classes")
    assert_user_error(fx("collide", tiny_model, "--spec", spec, "--classes", "0,1,2", "--cut", "relu1", "--pair", 0,
                         1), "collide takes two classes")
