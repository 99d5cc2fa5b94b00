"""The documented Python functions check their arguments: a wrong type or value is an
ArgumentError (an FxverifyError) naming the argument, never a TypeError from deep inside and
never accepted silently; valid calls are unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import fxverify
from fxverify.errors import ArgumentError, FxverifyError

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "models" / "fcnn_tiny_mnist_3v7_benign.onnx"
SPEC = ROOT / "specs" / "mnist_3v7.json"


@pytest.fixture(scope="module")
def net():
    return fxverify.load_model(TINY)


@pytest.fixture(scope="module")
def uv():
    pts = fxverify.load_spec(SPEC).load_points()
    return pts.X_a[0], pts.X_b[0]


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(method="bogus"), "method 'bogus'"), (dict(domain=(0, 1, 2)), "domain"), (dict(domain=(1, 0)), "lo < hi"),
    (dict(norm=2), "norm"), (dict(solver=5), "solver"), (dict(check_solver=1), "check_solver")])
def test_collide_options(net, uv, kwargs, fragment):
    with pytest.raises(ArgumentError, match=fragment):
        fxverify.collide(net, "relu2", *uv, **kwargs)


@pytest.mark.parametrize("make, fragment", [
    (lambda u: [str(x) for x in u], "strings"), (lambda u: u + 0j, "complex"), (lambda u: u > 0.5, "booleans"),
    (lambda u: np.array([None] * len(u)), "objects"), (lambda u: [[1.0, 2.0], [3.0]], "u")])
def test_collide_points(net, uv, make, fragment):
    with pytest.raises(ArgumentError, match=fragment):
        fxverify.collide(net, "relu2", make(uv[0]), uv[1])


@pytest.mark.parametrize("network, fragment", [(None, "NoneType"), (str(TINY), "load_model"), (TINY, "load_model"),
                                               (42, "int")])
def test_collide_network(uv, network, fragment):
    with pytest.raises(ArgumentError, match=fragment):
        fxverify.collide(network, "relu2", *uv)
    with pytest.raises(ArgumentError):
        fxverify.Collider(network, fxverify.resolve_engine())


def test_collider_and_cut_types(net, uv):
    with pytest.raises(ArgumentError, match="Engine"):
        fxverify.Collider(net, "descent-activeset")
    with pytest.raises(ArgumentError, match="cut"):
        fxverify.collide(net, 3, *uv)
    col = fxverify.Collider(net, fxverify.resolve_engine())
    with pytest.raises(ArgumentError, match="grid"):
        col.collide_cuts(*uv, grid="12")
    with pytest.raises(ArgumentError, match="cuts"):
        col.collide_cuts(*uv, cuts="relu1")


@pytest.mark.parametrize("eps, grid, fragment", [
    ([[-1.0, 2.0]], [1.0], "negative"), ([[-np.inf, 2.0]], [1.0], "negative"), ([[0.5]], "0.5", "string"),
    ([[0.5 + 1j]], [1.0], "complex"), ([["a"]], [1.0], "strings"), ([[0.5]], [None], "real number"),
    ([[0.5]], 1.0, "list"), ([[0.5]], [-1.0], "non-negative"), ([[0.5]], [np.inf], "non-negative"),
    ([[0.5]], [True], "real number"), ([[np.nan]], [1.0], "NaN")])
def test_lower_bounds_arguments(eps, grid, fragment):
    with pytest.raises(FxverifyError, match=fragment):
        fxverify.lower_bounds(eps, grid)


def test_lower_bounds_valid_input_unchanged():
    r = fxverify.lower_bounds(np.array([[0.5, np.inf], [2.0, 1.0]]), [-0.0, 1.0, 2.0])
    assert [x.edges for x in r] == [0, 2, 3] and str(r[0].eps) == "0.0"


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(jobs=0), "jobs"), (dict(jobs=-1), "jobs"), (dict(jobs=1.5), "jobs"), (dict(jobs=True), "jobs"),
    (dict(solver_options="max_iterations=3"), "solver_options"), (dict(eps="0.5"), "eps"),
    (dict(classes="37"), "classes"), (dict(cuts="relu1"), "cuts"), (dict(n=2.5), "n"), (dict(n=0), "n"),
    (dict(time_budget=1e300), "time budget"), (dict(time_budget="10"), "time_budget"),
    (dict(eps=[-np.inf]), "eps"), (dict(out=5), "out"), (dict(norm=["l2"]), "norm"),
    (dict(exhaustive="yes"), "exhaustive"), (dict(executor=None), "executor"), (dict(progress=3), "progress")])
def test_bound_arguments(tmp_path, kwargs, fragment):
    kwargs = {"out": tmp_path / "out", **kwargs}
    with pytest.raises(FxverifyError, match=fragment):
        fxverify.bound(TINY, SPEC, **kwargs)
    assert not (tmp_path / "out").exists()  # refused before anything ran


@pytest.mark.parametrize("model", [None, 42, b"m.onnx"])
def test_bound_model_type(tmp_path, model):
    with pytest.raises(ArgumentError, match="model"):
        fxverify.bound(model, SPEC, out=tmp_path / "out", jobs=1)


def test_resolve_engine_and_loaders():
    with pytest.raises(ArgumentError, match="method"):
        fxverify.resolve_engine(method="bogus")
    with pytest.raises(ArgumentError, match="domain"):
        fxverify.resolve_engine(domain=(0, 1, 2))
    with pytest.raises(ArgumentError, match="solver"):
        fxverify.resolve_engine(solver=3.5)
    assert fxverify.resolve_engine(domain=[0, 1]).domain.hi == 1.0
    for bad in (None, 3, b"x.onnx"):
        with pytest.raises(ArgumentError):
            fxverify.load_model(bad)
        with pytest.raises(ArgumentError):
            fxverify.load_spec(bad)
    with pytest.raises(ArgumentError, match="already a loaded Network"):
        fxverify.load_model(fxverify.load_model(TINY))
    with pytest.raises(FxverifyError, match="empty"):
        fxverify.load_model("")


def test_argument_error_is_a_type_error_too():
    assert issubclass(ArgumentError, FxverifyError) and issubclass(ArgumentError, TypeError)
