"""Solver profiles: the shipped ones, overrides, validation, and the descent switches they carry."""

from __future__ import annotations

import json

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
