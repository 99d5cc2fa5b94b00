"""The shipped 10-class MNIST models: the files their manifests describe, ten outputs in digit
order, and the accuracy their manifests claim on digits they were trained on."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnxruntime as ort
import pytest

import fxverify
from fxverify.data import load_embedded

from conftest import MODELS


@pytest.mark.parametrize("name", ["fcnn_mnist_10class_benign", "fcnn_mnist_10class_pgd2"])
def test_ten_class_model_matches_its_manifest(name):
    man = json.loads((MODELS / f"{name}.json").read_text())
    path = MODELS / man["file"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == man["sha256"]
    assert man["classes"] == list(range(10)) and man["architecture"]["layers"] == [784, 300, 200, 10]
    assert man["test"]["n"] == 10_000 and man["training"]["n_train"] == 60_000
    net = fxverify.load_model(path)
    assert net.cuts[-1] == "linear3"
    # output k is digit k: the embedded training images (500 of each digit) are classified at about
    # the clean test accuracy
    ds = load_embedded("mnist")
    X = (ds.X / 255.0).astype(np.float32).reshape(-1, 1, 28, 28)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = sess.run(["logits"], {"x": X})
    assert logits.shape == (len(X), 10)
    assert (logits.argmax(1) == ds.y).mean() >= man["test"]["clean_accuracy"] - 0.02
    feats = net.forward(X[:5].reshape(5, -1).astype(np.float64), cut="linear3")
    np.testing.assert_allclose(feats, logits[:5], atol=1e-3)
