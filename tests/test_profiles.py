"""Solver profiles: the shipped ones, overrides, validation, and the descent switches they carry."""

from __future__ import annotations

import json

import numpy as np
import pytest

import fxverify
from fxverify.collision import Collider
from fxverify.config import resolve_engine
from fxverify.data import load_embedded, select_points
from fxverify.errors import SolverError
from fxverify.profiles import load_profile


def test_default_profile_descent_switches():
    p = load_profile(None)
    assert (p.method, p.start, p.risky_flips) == ("descent", "midpoint", False)
    d = p.to_dict()
    assert d["start"] == "midpoint" and d["risky_flips"] is False


def test_overrides_are_checked():
    p = load_profile("descent-activeset")
    assert p.with_overrides({"risky_flips": True}).risky_flips is True
    assert p.with_overrides({"start": "shallower"}).start == "shallower"
    with pytest.raises(SolverError, match="invalid at risky_flips: 'yes' is not of type 'boolean'"):
        p.with_overrides({"risky_flips": "yes"})
    with pytest.raises(SolverError, match="invalid at start: 'middle' is not one of"):
        p.with_overrides({"start": "middle"})
    # the profile schema's types and ranges, and the backend's own options, before any solve
    for bad, msg in [({"max_iterations": "abc"}, "max_iterations: 'abc' is not of type 'integer'"),
                     ({"max_iterations": float("inf")}, "max_iterations: inf is not of type 'integer'"),
                     ({"max_iterations": 0}, "max_iterations: 0 is less than the minimum of 1"),
                     ({"time_limit": -1}, "time_limit: -1")]:
        with pytest.raises(SolverError, match=msg):
            p.with_overrides(bad)
    from fxverify.config import resolve_engine

    cv = load_profile("descent-cvxopt")
    for bad, msg in [({"kkt": "bogus"}, "kkt='bogus' must be one of chol"),
                     ({"abstol": float("inf")}, "abstol=inf must be finite"),
                     ({"maxiters": 2.5}, "maxiters=2.5 must be an integer"),
                     ({"nonsense": 1}, "does not know option")]:
        with pytest.raises(SolverError, match=msg):
            resolve_engine(cv.with_overrides(bad))


def test_profile_file_fields_are_validated(tmp_path):
    good = {"version": 1, "method": "descent", "backend": "activeset", "risky_flips": True, "start": "shallower"}
    (tmp_path / "p.json").write_text(json.dumps(good))
    p = load_profile(str(tmp_path / "p.json"))
    assert p.risky_flips is True and p.start == "shallower"
    (tmp_path / "bad.json").write_text(json.dumps(dict(good, risky_flips=1)))
    with pytest.raises(SolverError, match="risky_flips"):
        load_profile(str(tmp_path / "bad.json"))


def test_risky_flips_only_add_lp_solves_and_never_raise_eps(shipped_model):
    net = fxverify.load_model(shipped_model)
    pts = select_points(load_embedded("mnist"), (3, 7), 6)
    plain = Collider(net, resolve_engine(load_profile(None)))
    risky = Collider(net, resolve_engine(load_profile(None).with_overrides({"risky_flips": True})))
    extra = 0
    for i, j in [(0, 1), (2, 3), (4, 5), (5, 0)]:
        a = plain.collide_cuts(pts.X_a[i], pts.X_b[j], ("relu1",))["relu1"]
        b = risky.collide_cuts(pts.X_a[i], pts.X_b[j], ("relu1",))["relu1"]
        assert b.eps <= a.eps * (1 + 1e-9)
        assert b.iterations >= a.iterations
        extra += b.iterations - a.iterations
    assert extra > 0, "the risky flips were never tried"


def test_non_finite_numbers_and_unknown_lp_backends_are_refused(tmp_path):
    """Fault sweep: the schema's ranges let NaN through (-o time_limit=NaN ran as if unset), and
    an unknown lp_backend was accepted silently under l2 (where it is not used)."""
    p = load_profile("descent-activeset")
    for bad, msg in [({"time_limit": float("nan")}, "time_limit: nan is not a finite number"),
                     ({"rel_gap": float("nan")}, "rel_gap: nan is not a finite number"),
                     ({"lp_backend": "nosuchsolver"}, "lp_backend: unknown solver backend 'nosuchsolver'")]:
        with pytest.raises(SolverError, match=msg):
            p.with_overrides(bad)
    f = tmp_path / "p.json"
    f.write_text('{"version": 1, "method": "descent", "backend": "activeset", "time_limit": NaN}')
    with pytest.raises(SolverError, match="contains NaN, which is not a valid number"):
        load_profile(str(f))
    f.write_text(json.dumps({"version": 1, "method": "descent", "backend": "activeset", "lp_backend": "bogus"}))
    with pytest.raises(SolverError, match="unknown solver backend 'bogus'"):
        load_profile(str(f))


# ---------------------------------------------------------------------------------------------
# descent-tight: the multi-start descent
# ---------------------------------------------------------------------------------------------
def test_descent_tight_profile_loads_and_is_checked(tmp_path):
    from fxverify.profiles import Multistart, builtin_profiles

    assert "descent-tight" in builtin_profiles()
    p = load_profile("descent-tight")
    assert p.method == "descent" and p.multistart == Multistart(segment=8, random=8, apgd=True, seed=0)
    assert resolve_engine(p).multistart == p.multistart
    assert load_profile(None).multistart is None and resolve_engine(None).multistart is None
    assert p.with_overrides({"max_iterations": 7}).multistart == p.multistart
    assert p.to_dict()["multistart"] == {"segment": 8, "random": 8, "apgd": True, "seed": 0}
    base = {"version": 1, "method": "descent", "backend": "activeset"}
    for bad, msg in [({"segment": -1}, "segment"), ({"random": 2.5}, "random"), ({"colour": 1}, "colour")]:
        (tmp_path / "bad.json").write_text(json.dumps(dict(base, multistart=bad)))
        with pytest.raises(SolverError, match=msg):
            load_profile(str(tmp_path / "bad.json"))


def _tiny_pairs():
    pts = select_points(load_embedded("mnist"), (3, 7), 20)
    return pts, [(16, 12), (16, 5), (0, 16), (1, 9)]


def test_multistart_is_never_worse_than_one_start_and_verified(tiny_model):
    net = fxverify.load_model(tiny_model)
    pts, pairs = _tiny_pairs()
    plain = Collider(net, resolve_engine(None))
    tight = Collider(net, resolve_engine("descent-tight"))
    again = Collider(net, resolve_engine("descent-tight"))
    lower = 0
    for cut in ("relu1", "relu2", "linear3"):
        for i, j in pairs:
            u, v = pts.X_a[i], pts.X_b[j]
            a = plain.collide_cuts(u, v, (cut,))[cut]
            b = tight.collide_cuts(u, v, (cut,))[cut]
            assert b.status.value == "found" and b.verified, b.message
            fu, fv = net.forward(b.u_adv, cut=cut), net.forward(b.v_adv, cut=cut)
            assert float(np.abs(fu - fv).max()) <= 1e-6 * max(1.0, float(np.abs(fu).max()))
            eps = max(float(np.linalg.norm(b.u_adv - u)), float(np.linalg.norm(b.v_adv - v)))
            assert b.eps == pytest.approx(eps, rel=1e-12)
            assert b.eps <= a.eps * (1 + 1e-9), (cut, i, j, a.eps, b.eps)
            lower += b.eps < a.eps * 0.99
            c = again.collide_cuts(u, v, (cut,))[cut]  # seeded: the same result in another collider
            assert c.eps == b.eps and np.array_equal(c.u_adv, b.u_adv)
    assert lower >= 3, "the extra starts never found a lower budget"


def test_random_starts_are_seeded_by_the_pair_and_stay_in_the_domain(tiny_model):
    from fxverify.collision.plan import CutPlan
    from fxverify.collision.starts import random_starts, segment_starts
    from fxverify.norms import Domain, get_norm

    net = fxverify.load_model(tiny_model)
    pts, _ = _tiny_pairs()
    u, v = pts.X_a[0], pts.X_b[0]
    plan = CutPlan.of(net, "relu2", get_norm("l2"))
    a, b = random_starts(plan, u, v, 3, 0), random_starts(plan, u, v, 3, 0)
    assert all(np.array_equal(x[0], y[0]) for x, y in zip(a, b))
    assert not np.array_equal(random_starts(plan, u, v, 1, 1)[0][0], a[0][0])
    assert not np.array_equal(random_starts(plan, v, u, 1, 0)[0][0], a[0][0])
    mid = (u + v) / 2
    radius = np.linalg.norm(plan.basis.T @ (v - u)) / 2
    for x, y in a:
        assert x is y or np.array_equal(x, y)
        assert 0.05 * radius * (1 - 1e-9) <= np.linalg.norm(x - mid) <= 0.5 * radius * (1 + 1e-9)
    boxed = CutPlan.of(net, "relu2", get_norm("l2"), Domain(0.0, 1.0))
    assert all(x.min() >= 0 and x.max() <= 1 for x, _ in random_starts(boxed, u, v, 4, 0))
    seg = segment_starts(u, v, 3)
    np.testing.assert_allclose(seg[1][0], mid)
    np.testing.assert_allclose(seg[0][0], u + 0.25 * (v - u))
