"""The command line, run as a real process: output, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from onnx import TensorProto, helper

from builders import make, rand, save


def fx(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "fxverify", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def assert_user_error(res, *fragments):
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
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
        (sig, ["unsupported operation: Sigmoid 'act' (node 1, output 'y')"]),
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


def test_third_party_unsupported_models_exit_2():
    from conftest import REAL_ONNX

    if not REAL_ONNX.is_dir():
        pytest.skip(f"third-party ONNX corpus not found at {REAL_ONNX}")
    assert_user_error(fx("inspect", REAL_ONNX / "resnet_2b.onnx"),
                      "Add 'Add_6' (node 6, output '23') adds two activations")
    assert_user_error(fx("inspect", REAL_ONNX / "eran_mnist_sigmoid_6x200.onnx"),
                      "6 unsupported operations: Sigmoid 'Sigmoid_6'")


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
    assert doc["spec"]["n_per_class"] == 3 and doc["solver"]["name"] == "descent-cvxopt"
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
    assert_user_error(fx("bound", tiny_model, "--spec", _small_spec(tmp_path, classes=[3, 4])), "class 4 is not present")
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
    assert_user_error(res, "cannot solve the exact MIQCP")


def test_solver_options_override_the_profile_from_the_command_line(tmp_path, tiny_model):
    spec = _small_spec(tmp_path, solver="descent-cvxopt")
    ok = fx("collide", tiny_model, "--spec", spec, "--cut", "relu1", "--pair", 0, 0, "-o", "kkt=chol",
            "-o", "max_iterations=3", "--json")
    assert ok.returncode == 0, ok.stderr
    assert_user_error(fx("collide", tiny_model, "--spec", spec, "--cut", "relu1", "--pair", 0, 0, "-o", "kkt_typo=1"),
                      "does not know option(s) kkt_typo")
    assert_user_error(fx("bound", tiny_model, "--spec", spec, "-o", "novalue"), "is not KEY=VALUE")
