from __future__ import annotations

import json

import numpy as np
import pytest

import fxverify
from fxverify.errors import DataError, SpecError
from fxverify.spec import check_compatible, load_spec, parse_spec, schema

from conftest import SPECS

GOOD = {"version": 1, "data": {"embedded": "mnist"}, "classes": [3, 7], "n_per_class": 5, "eps": [1.0, 0.5]}


def _write(tmp_path, doc, name="s.json"):
    p = tmp_path / name
    p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return p


@pytest.mark.parametrize("name", ["mnist_3v7.json", "fmnist_3v7.json"])
def test_shipped_specs_load(name, shipped_model):
    spec = load_spec(SPECS / name)
    pts = spec.load_points()
    assert pts.classes == (3, 7) and len(pts.X_a) == spec.n_per_class == len(pts.X_b)
    check_compatible(pts, fxverify.load_model(shipped_model), spec)
    assert spec.resolve_cuts(fxverify.load_model(shipped_model))[0] == "input"


def test_defaults_sorting_and_roundtrip(tmp_path):
    spec = load_spec(_write(tmp_path, GOOD))
    assert spec.eps == (0.5, 1.0)
    assert spec.split == "train" and spec.selection == "first" and spec.scaling == "divide_255"
    assert spec.norm == "l2" and spec.cuts is None and spec.solver == "descent-cvxopt"
    again = parse_spec(spec.to_dict(), tmp_path, spec.path)
    assert again == spec


def test_schema_is_versioned_package_data():
    s = schema(1)
    assert s["properties"]["version"] == {"const": 1, "description": "Spec format version."}
    assert s["additionalProperties"] is False


def test_relative_npz_path_resolves_against_the_spec(tmp_path):
    (tmp_path / "d").mkdir()
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d" / "pts.npz", X=rng.uniform(0, 1, (6, 4)), y=np.array([0, 1] * 3))
    doc = dict(GOOD, data={"npz": "d/pts.npz"}, classes=[0, 1], n_per_class=3, scaling="none",
               selection={"method": "random", "seed": 1})
    spec = load_spec(_write(tmp_path, doc))
    pts = spec.load_points()
    assert pts.X_a.shape == (3, 4)


@pytest.mark.parametrize("doc, message", [
    ("{not json", r"is not valid JSON: .* line 1 column 2"),
    ('{"version": 1, "eps": [NaN]}', "NaN, which is not a valid number"),
    ([1, 2], "a spec is a JSON object"),
    (dict(GOOD, version=2), "unsupported spec version 2"),
    ({k: v for k, v in GOOD.items() if k != "version"}, "unsupported spec version None"),
    (dict(GOOD, colour="blue"), r"Additional properties are not allowed \('colour' was unexpected\)"),
    (dict(GOOD, data={"embedded": "mnist", "extra": 1}), r"invalid at data: .*'extra' was unexpected"),
    (dict(GOOD, data={"embedded": "cifar"}), r"invalid at data.embedded: 'cifar' is not one of"),
    (dict(GOOD, eps=[0.5, -1.0]), r"invalid at eps\[1\]: -1.0 is less than the minimum of 0"),
    (dict(GOOD, eps=[]), r"invalid at eps"),
    (dict(GOOD, n_per_class=0), r"invalid at n_per_class: 0 is less than the minimum of 1"),
    (dict(GOOD, classes=[3]), r"invalid at classes"),
    (dict(GOOD, classes=[3, 3]), r"the two classes must differ"),
    (dict(GOOD, norm="linf"), r"invalid at norm"),
    (dict(GOOD, selection={"method": "random"}), r"invalid at selection: 'seed' is a required property"),
    (dict(GOOD, cuts=["relu1", "relu1"]), r"invalid at cuts"),
    (dict(GOOD, split="validation"), r"invalid at split"),
])
def test_bad_specs_one_clear_line(tmp_path, doc, message):
    with pytest.raises(SpecError, match=message) as e:
        load_spec(_write(tmp_path, doc))
    assert "\n" not in str(e.value)


def test_missing_spec_file(tmp_path):
    with pytest.raises(SpecError, match="spec file not found"):
        load_spec(tmp_path / "nope.json")


def test_data_errors_from_spec(tmp_path):
    with pytest.raises(DataError, match="class 5 is not present"):
        load_spec(_write(tmp_path, dict(GOOD, classes=[3, 5]))).load_points()
    with pytest.raises(DataError, match="n_per_class=600 but class 3 has only 500"):
        load_spec(_write(tmp_path, dict(GOOD, n_per_class=600))).load_points()
    with pytest.raises(DataError, match="npz file not found"):
        load_spec(_write(tmp_path, dict(GOOD, data={"npz": "missing.npz"}))).load_points()
    with pytest.raises(DataError, match="IDX directory not found"):
        load_spec(_write(tmp_path, dict(GOOD, data={"idx_dir": "nowhere"}))).load_points()


def test_dimension_mismatch_and_unknown_cuts(tmp_path, shipped_model):
    net = fxverify.load_model(shipped_model)
    np.savez(tmp_path / "small.npz", X=np.zeros((4, 10)), y=np.array([0, 1, 0, 1]))
    spec = load_spec(_write(tmp_path, dict(GOOD, data={"npz": "small.npz"}, classes=[0, 1], n_per_class=2,
                                           cuts=["relu1", "relu7"])))
    with pytest.raises(SpecError, match=r"the data has 10 values per image but the model's input \(1, 28, 28\) has 784"):
        check_compatible(spec.load_points(), net, spec)
    with pytest.raises(SpecError, match="cut.* relu7 that the model does not have"):
        spec.resolve_cuts(net)
