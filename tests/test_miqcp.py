"""The exact method (MIQCP through Pyomo) against enumeration of activation regions; licences."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import fxverify
from fxverify.backends.base import Availability
from fxverify.backends.registry import get_backend
from fxverify.collision import Collider, collide
from fxverify.collision.chain import chain_of
from fxverify.collision.miqcp import preactivation_bounds
from fxverify.errors import SolverError
from fxverify.results import CollisionStatus

from test_collision import TINY, exact_eps, fcnn, random_tiny_net

EXACT = ["scip", "gurobi"]


def _usable(name):
    b = get_backend(name)
    if not b.availability():
        pytest.skip(f"{name}: {b.availability_detail()}")
    return b


@pytest.mark.parametrize("name", EXACT)
@pytest.mark.parametrize("d, widths, final", TINY[::2] + [TINY[-1]])
def test_exact_equals_enumeration_and_descent_is_never_below(tmp_path, name, d, widths, final, capsys):
    _usable(name)
    rng, Ws, bs, net = random_tiny_net(tmp_path, d, widths, final)
    cut = net.cuts[-1]
    ex, de = Collider(net, name, "exact"), Collider(net)
    gaps = []
    for _ in range(3):
        u, v = rng.uniform(-1, 1, d), rng.uniform(-1, 1, d)
        star = exact_eps(Ws, bs, u, v, final_affine=final)
        e = ex.collide(cut, u, v)
        c = de.collide_cuts(u, v, (cut,))[cut]
        assert e.status is CollisionStatus.FOUND and e.verified and e.termination == "optimal"
        assert e.eps == pytest.approx(star, rel=1e-5, abs=1e-6), (e.eps, star)
        assert e.eps_lower <= e.eps and e.eps_lower == pytest.approx(star, rel=1e-4, abs=1e-5)
        assert c.eps >= e.eps - 1e-6
        gaps.append(c.eps - e.eps)
    with capsys.disabled():
        print(f"\n  {name} d={d} widths={widths} final={final}: descent - exact {np.round(gaps, 5).tolist()}")


def test_bounds_contain_every_reachable_preactivation(tmp_path):
    rng = np.random.default_rng(3)
    Ws = [rng.standard_normal((5, 4)), rng.standard_normal((3, 5))]
    bs = [rng.standard_normal(5), rng.standard_normal(3)]
    net = fcnn(tmp_path, Ws, bs)
    ch = chain_of(net, "relu2")
    V = ch.first_svd.V
    p = rng.uniform(-1, 1, 4)
    bounds = preactivation_bounds(ch, V, p, 0.7)
    for _ in range(2000):
        a = rng.standard_normal(V.shape[1])
        a *= 0.7 * rng.uniform() ** 0.25 / np.linalg.norm(a)
        x = p + V @ a
        z1 = ch.weights[0] @ x + ch.biases[0]
        z2 = ch.weights[1] @ np.maximum(z1, 0) + ch.biases[1]
        for z, bd in zip((z1, z2), bounds):
            assert np.all(z >= bd.lower - 1e-9) and np.all(z <= bd.upper + 1e-9)


def test_exact_on_the_shipped_tiny_model_with_scip(tiny_model):
    _usable("scip")
    net = fxverify.load_model(tiny_model)
    from fxverify.data import load_embedded, select_points

    pts = select_points(load_embedded("mnist"), (3, 7), 2)
    r = collide(net, "relu2", pts.X_a[1], pts.X_b[1], method="exact", solver="exact-scip")
    d = collide(net, "relu2", pts.X_a[1], pts.X_b[1])
    assert r.verified and r.termination == "optimal" and r.eps <= d.eps + 1e-9
    assert r.eps_lower == pytest.approx(r.eps, rel=1e-5)


def test_check_solver_records_the_difference(tiny_model):
    _usable("scip")
    net = fxverify.load_model(tiny_model)
    from fxverify.data import load_embedded, select_points

    pts = select_points(load_embedded("mnist"), (3, 7), 2)
    r = collide(net, "relu2", pts.X_a[1], pts.X_b[1], check_solver="scip")
    assert r.check_solver == "scip" and math.isfinite(r.check_eps)
    assert abs(r.check_difference) <= 1e-5 * r.eps


def test_mosek_without_a_licence_is_a_clear_error(tiny_model):
    b = get_backend("mosek")
    if b.availability() is Availability.FULL:
        pytest.skip("a MOSEK licence is present here")
    assert b.availability() in (Availability.NOT_FOUND, Availability.BAD_LICENSE)
    assert ("licence" in b.availability_detail()) or ("not installed" in b.availability_detail())
    net = fxverify.load_model(tiny_model)
    with pytest.raises(SolverError, match="backend 'mosek' is not usable"):
        collide(net, "relu1", np.zeros(784), np.ones(784) * 0.5, method="exact", solver="exact-mosek")


def test_gurobi_size_limited_licence_names_the_model_size(shipped_model):
    b = _usable("gurobi")
    if b.availability() is not Availability.LIMITED:
        pytest.skip("a full Gurobi licence is present here")
    net = fxverify.load_model(shipped_model)
    from fxverify.data import load_embedded, select_points

    pts = select_points(load_embedded("mnist"), (3, 7), 1)
    with pytest.raises(SolverError, match=r"licence too small: the model has \d+ variables .* at most 200"):
        collide(net, "relu1", pts.X_a[0], pts.X_b[0], method="exact", solver="exact-gurobi")


def test_a_broken_plugin_is_a_warning_not_a_crash(monkeypatch):
    from fxverify.backends import registry

    monkeypatch.setattr(registry, "_entry_points", lambda: {"ghost": "no.such.module:Backend",
                                                           "wrong": "fxverify.errors:FxverifyError"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        classes = registry.backend_classes()
    assert "cvxopt" in classes and "ghost" not in classes and "wrong" not in classes
    msgs = [str(w.message) for w in caught if issubclass(w.category, registry.PluginWarning)]
    assert any("'ghost'" in m and "ModuleNotFoundError" in m for m in msgs)
    assert any("'wrong'" in m and "not a fxverify Backend" in m for m in msgs)


def test_a_plugin_from_an_entry_point_is_found(monkeypatch):
    from fxverify.backends import registry

    monkeypatch.setattr(registry, "_entry_points", lambda: {"cvxopt2": "fxverify_test_plugin:Plugin"})
    import sys
    import types

    from fxverify.backends.cvxopt_backend import CvxoptBackend

    mod = types.ModuleType("fxverify_test_plugin")

    class Plugin(CvxoptBackend):
        name = "cvxopt2"

    mod.Plugin = Plugin
    monkeypatch.setitem(sys.modules, "fxverify_test_plugin", mod)
    assert registry.get_backend("cvxopt2").name == "cvxopt2"


def test_model_size_is_known_before_the_model_is_built(tiny_model):
    pytest.importorskip("pyomo")
    from fxverify.backends.pyomo_backends import model_size as built_size
    from fxverify.collision.miqcp import build_exact_model, model_size
    from fxverify.data import load_embedded, select_points

    net = fxverify.load_model(tiny_model)
    pts = select_points(load_embedded("mnist"), (3, 7), 2)
    col = Collider(net, "descent-activeset")
    for cut in ("relu1", "relu2", "linear3"):
        d = col._descent(cut)
        for radius in (0.5, 2.0):
            em = build_exact_model(d.chain, d.V, pts.X_a[0], pts.X_b[1], radius)
            assert model_size(d.chain, d.V, pts.X_a[0], pts.X_b[1], radius) == built_size(em.model), cut
