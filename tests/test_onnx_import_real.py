"""The importer on ONNX files exported by other toolchains (../shared/real-onnx)."""

from __future__ import annotations

import numpy as np
import pytest

import fxverify
from fxverify.reference import OnnxReference

from conftest import REAL_ONNX

pytestmark = pytest.mark.skipif(not REAL_ONNX.is_dir(),
                                reason=f"third-party ONNX corpus not found at {REAL_ONNX} (set FXVERIFY_REAL_ONNX)")

SUPPORTED = {
    "mnistfc_256x2.onnx": ("input linear1 relu1 linear2 relu2 linear3", (784, 1)),
    "eran_mnist_9x200.onnx": ("input " + " ".join(f"linear{k} relu{k}" for k in range(1, 10)), (1, 28, 28)),
    "oval_cifar_deep.onnx": ("input " + " ".join(f"linear{k} relu{k}" for k in range(1, 6)) + " linear6",
                             (3, 32, 32)),
    "verivital_mnist_maxpool.onnx": ("input linear1 relu1 pool1 linear2", (1, 28, 28)),
    "keras_mnist_maxpool.onnx": ("input linear1 relu1 linear2 relu2 pool1 linear3 relu3 linear4", (28, 28, 1)),
    "tf_traffic64.onnx": ("input linear1 linear2 linear3 relu1 linear4 relu2 linear5", (32, 32, 3)),
}


@pytest.mark.parametrize("name", sorted(SUPPORTED))
def test_real_model_loads_and_agrees(name):
    cuts, shape = SUPPORTED[name]
    net = fxverify.load_model(REAL_ONNX / name)
    assert " ".join(net.cuts) == cuts
    assert net.input_shape == shape
    ag = net.agreement
    assert all(ag.ok(c) for c in net.cuts)
    # independent check on fresh inputs, including the [0, 255] range of raw-pixel models
    rng = np.random.default_rng(99)
    for scale in (1.0, 255.0):
        X = rng.uniform(0, scale, (3, net.input_dim))
        ref = OnnxReference(net.source, [net.source.output_name]).run(X)[net.source.output_name]
        ours = net.forward(X)
        assert np.max(np.abs(ours - ref)) <= 1e-4 * max(1.0, np.max(np.abs(ref)))
        assert (ours.argmax(1) == ref.argmax(1)).all()


def test_nhwc_keras_model_on_real_digits():
    """A dropped Transpose gives right shapes but wrong numbers: compare on real MNIST digits."""
    from fxverify.data import load_embedded

    net = fxverify.load_model(REAL_ONNX / "keras_mnist_maxpool.onnx")
    X = load_embedded("mnist").X[:20] / 255.0
    ref = OnnxReference(net.source, [net.source.output_name]).run(X)[net.source.output_name]
    np.testing.assert_allclose(net.forward(X), ref, rtol=1e-4, atol=1e-4)
    assert (net.forward(X).argmax(1) == ref.argmax(1)).all()
    # the model reads these digits (3 and 7) correctly for the most part
    labels = load_embedded("mnist").y[:20]
    assert (ref.argmax(1) == labels).mean() >= 0.9


def test_oval_flatten_chain_folds_into_the_gemm():
    net = fxverify.load_model(REAL_ONNX / "oval_cifar_deep.onnx")
    gemm = net.node("linear5")
    assert [o.split()[0] for o in gemm.ops] == ["Reshape", "Gemm"]
    assert gemm.in_shape == (1, 8, 8, 8) and gemm.out_shape == (1, 100)


def test_sigmoid_model_loads_up_to_the_first_sigmoid():
    net = fxverify.load_model(REAL_ONNX / "eran_mnist_sigmoid_6x200.onnx")
    assert net.cuts == ("input", "linear1")  # Sub, Div, Flatten and the first Gemm
    assert [o.split()[0] for o in net.node("linear1").ops] == ["Sub", "Div", "Flatten", "Gemm"]
    assert [u.cut for u in net.unavailable] == [f"linear{k}" for k in range(2, 8)]
    assert all("Sigmoid 'Sigmoid_6' (node 6, output '21')" in u.reason for u in net.unavailable)


def test_resnet_loads_with_its_residual_adds():
    net = fxverify.load_model(REAL_ONNX / "resnet_2b.onnx")
    assert "add1" in net.cuts and "add2" in net.cuts and not net.unavailable
    assert all(net.agreement.ok(c) for c in net.cuts)
    # the first block: a 3x3 conv branch and a 1x1 stride-2 shortcut, both reading relu1
    add = net.node("add1")
    assert [net.node(x).inputs for x in add.inputs] == [("relu2",), ("relu1",)]
    assert net.dominators("relu3") == ("input", "linear1", "relu1", "add1", "relu3")
