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
