"""The Auto-PGD baseline (fxverify/collision/apgd.py): its backward pass, its projection, and
its collisions (polished by one LP and verified)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from onnx import helper

import fxverify
from fxverify.collision import Collider
from fxverify.collision.apgd import ApgdSettings, FeatureMap, _project_ball_box, apgd_points
from fxverify.norms import Domain
from fxverify.results import CollisionStatus

from builders import make, save
from conftest import MODELS, SPECS


def _conv_pool_net(tmp_path, leaky=False):
    act = helper.make_node("LeakyRelu", ["c"], ["r"], alpha=0.1) if leaky else helper.make_node("Relu", ["c"], ["r"])
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"]), act,
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[1, 1]),
             helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("Gemm", ["f", "G"], ["y"], transB=1)]
    rng = np.random.default_rng(0)
    W = rng.standard_normal((2, 1, 2, 2)).astype(np.float32)
    G = rng.standard_normal((2, 18)).astype(np.float32)
    return fxverify.load_model(save(tmp_path, make(nodes, ["N", 1, 5, 5], inits={"W": W, "G": G}))), rng


@pytest.mark.parametrize("leaky", [False, True])
def test_backward_pass_matches_finite_differences(tmp_path, leaky):
    net, rng = _conv_pool_net(tmp_path, leaky)
    X = rng.uniform(0, 1, (2, 25))
    for cut in net.cuts[1:]:
        fm = FeatureMap(net, cut)
        G = rng.standard_normal((2, net.cut_dim(cut)))
        f, vals = fm.forward(X)
        np.testing.assert_allclose(f, net.forward(X, cut=cut))
        g = fm.backward(vals, G)
        d = rng.standard_normal(X.shape) * 1e-7
        f2, _ = fm.forward(X + d)
        assert np.sum(G * (f2 - f)) == pytest.approx(np.sum(g * d), rel=1e-4, abs=1e-12)


def test_projection_onto_ball_and_box_is_the_nearest_point():
    rng = np.random.default_rng(1)
    for _ in range(20):
        p = rng.uniform(0, 1, 6)
        lo, hi = -p, 1 - p  # the box [0, 1] around p, in perturbation coordinates
        y = rng.standard_normal(6)
        x = _project_ball_box(y, 0.7, (lo, hi))
        assert np.linalg.norm(x) <= 0.7 + 1e-9 and np.all(x >= lo - 1e-12) and np.all(x <= hi + 1e-12)
        # no feasible point is nearer (feasible: shrunk random points of the box)
        cand = np.clip(rng.standard_normal((4000, 6)), lo, hi)
        cand *= np.minimum(1.0, 0.7 / np.linalg.norm(cand, axis=1))[:, None]
        assert np.linalg.norm(y - x) <= np.min(np.linalg.norm(cand - y, axis=1)) + 1e-9


def test_apgd_collisions_are_exact_and_verified_on_the_tiny_model():
    net = fxverify.load_model(MODELS / "fcnn_tiny_mnist_3v7_benign.onnx")
    pts = fxverify.load_spec(SPECS / "mnist_3v7.json").load_points()
    col = Collider(net, fxverify.resolve_engine(None, method="apgd"))
    desc = Collider(net, fxverify.resolve_engine(None))
    u, v = pts.X_a[0], pts.X_b[0]
    for cut in ("relu1", "relu2", "linear3"):
        c = col.collide(cut, u, v)
        assert c.method == "apgd" and c.status is CollisionStatus.FOUND and c.verified, c.message
        assert "polished by one LP" in c.message and c.iterations == 1
        fu, fv = net.forward(np.stack([c.u_adv, c.v_adv]), cut=cut)
        np.testing.assert_allclose(fu, fv, atol=1e-6 * max(1.0, np.abs(fu).max()))
        assert c.eps == pytest.approx(max(np.linalg.norm(c.u_adv - u), np.linalg.norm(c.v_adv - v)))
        # the attack's upper end is the first linear map's midpoint: never above that budget
        assert c.eps <= desc.collide("linear1", u, v).eps * (1 + 1e-9)
    # the documented one-off call and an affine cut (its closed form, as for every method)
    assert fxverify.collide(net, "relu2", u, v, method="apgd").eps == pytest.approx(col.collide("relu2", u, v).eps)
    assert col.collide("linear1", u, v).method == "closed_form"


def test_apgd_points_in_the_box(tmp_path):
    net, rng = _conv_pool_net(tmp_path)
    u, v = rng.uniform(0, 1, 25), rng.uniform(0, 1, 25)
    p = apgd_points(net, "pool1", u, v, domain=Domain(0.0, 1.0), settings=ApgdSettings(iterations=30, bisections=4))
    for x in (p.u_adv, p.v_adv):
        assert x.min() >= 0.0 and x.max() <= 1.0
    assert np.linalg.norm(p.u_adv - u) <= p.eps + 1e-9 and np.linalg.norm(p.v_adv - v) <= p.eps + 1e-9
    col = Collider(net, fxverify.resolve_engine(None, domain=(0.0, 1.0), method="apgd"))
    c = col.collide("pool1", u, v)
    if c.status is CollisionStatus.FOUND:
        assert c.u_adv.min() >= 0 and c.u_adv.max() <= 1 and c.v_adv.min() >= 0 and c.v_adv.max() <= 1


def test_apgd_refuses_other_norms():
    net = fxverify.load_model(MODELS / "fcnn_tiny_mnist_3v7_benign.onnx")
    pts = fxverify.load_spec(SPECS / "mnist_3v7.json").load_points()
    c = fxverify.collide(net, "relu1", pts.X_a[0], pts.X_b[0], method="apgd", norm="linf")
    assert c.status is CollisionStatus.NOT_APPLICABLE and "l2" in c.message


def test_cli_collide_method_apgd():
    res = subprocess.run([sys.executable, "-m", "fxverify", "collide", str(MODELS / "fcnn_tiny_mnist_3v7_benign.onnx"),
                          "--spec", str(SPECS / "mnist_3v7.json"), "--cut", "relu2", "--pair", "0", "1", "--method",
                          "apgd", "--json"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    r = json.loads(res.stdout)["cuts"]["relu2"]
    assert r["method"] == "apgd" and r["status"] == "found" and r["verified"]
