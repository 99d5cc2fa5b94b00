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
    assert spec.norm == "l2" and spec.cuts is None and spec.solver == "descent-activeset"
    assert spec.layout is None and spec.normalize is None and spec.domain is None
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
    (dict(GOOD, norm="l3"), r"invalid at norm: 'l3' is not one of \['l2', 'linf', 'l1'\]"),
    (dict(GOOD, normalize={"mean": [0.5]}), r"invalid at normalize: 'std' is a required property"),
    (dict(GOOD, normalize={"mean": 0.5, "std": 0}), r"invalid at normalize.std"),
    (dict(GOOD, normalize={"mean": [0.5], "std": [0.2, -1]}), r"invalid at normalize.std"),
    (dict(GOOD, normalize={"mean": [0.5, 0.4], "std": [0.2, 0.3, 0.1]}), r"2 means but 3 standard deviations"),
    (dict(GOOD, normalize={"mean": [], "std": 1}), r"invalid at normalize.mean"),
    (dict(GOOD, normalize={"mean": 0, "std": 1, "x": 1}), r"invalid at normalize: .*'x' was unexpected"),
    ('{"version": 1, "data": {"embedded": "mnist"}, "classes": [3, 7], "n_per_class": 5, "eps": [1], '
     '"normalize": {"mean": 1e999, "std": 1}}', r"invalid at normalize.mean: every value must be a finite number"),
    (dict(GOOD, domain=[1, 0]), r"invalid at domain: \[lo, hi\] needs lo < hi, got \[1, 0\]"),
    (dict(GOOD, domain=[0, 0]), r"needs lo < hi"),
    (dict(GOOD, domain=[0]), r"invalid at domain"),
    (dict(GOOD, domain=[0, "1"]), r"invalid at domain\[1\]"),
    ('{"version": 1, "data": {"embedded": "mnist"}, "classes": [3, 7], "n_per_class": 5, "eps": [1], '
     '"domain": [0, 1e999]}', r"invalid at domain: every value must be a finite number"),
    (dict(GOOD, layout="CHW"), r"invalid at layout: 'CHW' is not one of"),
    (dict(GOOD, layout="NCHW"), r"invalid at layout: a layout is only for npz data"),
    ('{"version": 1, "data": {"embedded": "mnist"}, "classes": [3, 7], "n_per_class": 5, "eps": [1], '
     '"time_budget": 1e999}', r"invalid at time_budget: must be a finite number"),
    ("[" * 100000 + "]" * 100000, r"nested too deeply to be a spec"),
    ("[" * 900 + "]" * 900, r"a spec is a JSON object"),
    (dict(GOOD, description=None, extra=[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]),
     r"nested more than 32 levels deep"),
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
    with pytest.raises(SpecError, match="spec file not found"):
        load_spec(tmp_path)  # a directory


@pytest.mark.parametrize("raw, message", [
    (bytes(range(256)) * 8, "is not a text file"),
    (b"\x00\x01\x02\x03garbage\x7f" * 10, "is not valid JSON"),
    (b"\x89PNG\r\n\x1a\n" + bytes(200), "is not a text file"),
    (b"", r"is not valid JSON: Expecting value at line 1 column 1"),
])
def test_binary_garbage_spec_is_one_clean_line(tmp_path, raw, message):
    p = tmp_path / "s.json"
    p.write_bytes(raw)
    with pytest.raises(SpecError, match=message) as e:
        load_spec(p)
    assert "\n" not in str(e.value)


def test_utf8_bom_is_accepted(tmp_path):
    p = tmp_path / "s.json"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode())
    assert load_spec(p).classes == (3, 7)


def test_norm_normalize_domain_layout_parse_and_roundtrip(tmp_path):
    np.savez(tmp_path / "c.npz", X=np.zeros((4, 3, 2, 2)), y=np.array([0, 1, 0, 1]))
    doc = dict(GOOD, data={"npz": "c.npz"}, classes=[0, 1], n_per_class=2, scaling="none", layout="NCHW",
               normalize={"mean": [0.4914, 0.4822, 0.4465], "std": [0.247, 0.243, 0.261]}, norm="linf",
               domain=[0, 1])
    spec = load_spec(_write(tmp_path, doc))
    assert spec.norm == "linf" and spec.layout == "NCHW" and spec.domain == (0.0, 1.0)
    assert spec.normalize == ((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261))
    d = spec.to_dict()
    assert d["normalize"] == {"mean": [0.4914, 0.4822, 0.4465], "std": [0.247, 0.243, 0.261]}
    assert d["norm"] == "linf" and d["domain"] == [0.0, 1.0] and d["layout"] == "NCHW"
    assert parse_spec(d, tmp_path, spec.path) == spec
    single = load_spec(_write(tmp_path, dict(GOOD, normalize={"mean": 0.1307, "std": 0.3081}, norm="l1"), "t.json"))
    assert single.normalize == ((0.1307,), (0.3081,)) and single.norm == "l1"
    assert parse_spec(single.to_dict(), tmp_path, single.path) == single
    assert "normalize" not in load_spec(_write(tmp_path, GOOD, "u.json")).to_dict()
    assert load_spec(_write(tmp_path, doc)).load_points().layout == "NCHW"


def test_data_errors_from_spec(tmp_path):
    with pytest.raises(DataError, match=r"class 11 is not present .* \(classes present: 0, 1, 2, 3, 4, 5, 6, 7, 8, "
                                        r"9\)"):
        load_spec(_write(tmp_path, dict(GOOD, classes=[3, 11]))).load_points()
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


def _image_model(tmp_path, in_shape, name):
    """A linear model on images of ``in_shape`` (batch 1 first): for an NHWC input, a Transpose
    to NCHW first, so both layouts compute the same function of the same image."""
    from onnx import helper

    from builders import make, save

    W = np.random.default_rng(1).standard_normal((3 * 4 * 5, 2)).astype(np.float32)
    nodes = []
    x = "x"
    if in_shape[-1] == 3:  # NHWC
        nodes.append(helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]))
        x = "t"
    nodes += [helper.make_node("Flatten", [x], ["f"]), helper.make_node("MatMul", ["f", "W"], ["y"])]
    return fxverify.load_model(save(tmp_path, make(nodes, list(in_shape), inits={"W": W}), name))


def test_4d_data_is_put_in_the_models_layout(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 3, 4, 5), dtype=np.uint8)  # NCHW
    y = np.array([0, 1] * 3)
    np.savez(tmp_path / "nchw.npz", X=images, y=y)
    np.savez(tmp_path / "nhwc.npz", X=images.transpose(0, 2, 3, 1), y=y)
    nchw_model = _image_model(tmp_path, (1, 3, 4, 5), "nchw.onnx")
    nhwc_model = _image_model(tmp_path, (1, 4, 5, 3), "nhwc.onnx")
    assert nchw_model.input_shape == (3, 4, 5) and nhwc_model.input_shape == (4, 5, 3)
    expected = nchw_model.forward(images.reshape(6, -1) / 255.0)
    for data, layout in (("nchw.npz", "NCHW"), ("nhwc.npz", "NHWC")):
        spec = load_spec(_write(tmp_path, dict(GOOD, data={"npz": data}, classes=[0, 1], n_per_class=3,
                                               layout=layout), f"{layout}.json"))
        raw = spec.load_points()
        for net in (nchw_model, nhwc_model):
            pts = check_compatible(raw, net, spec)
            assert pts.image_shape == net.input_shape
            np.testing.assert_allclose(net.forward(pts.X_a), expected[0::2], rtol=1e-12)
            np.testing.assert_allclose(net.forward(pts.X_b), expected[1::2], rtol=1e-12)
            if (layout == "NCHW") == (net is nchw_model):
                assert pts is raw  # already in the model's layout: untouched
    # 3-D (n, h, w) data keeps working on (1, 28, 28) models
    pts = load_spec(_write(tmp_path, GOOD)).load_points()
    from conftest import MODELS

    assert check_compatible(pts, fxverify.load_model(MODELS / "fcnn_tiny_mnist_3v7_benign.onnx")) is pts


def test_4d_data_that_does_not_fit_names_both_shapes(tmp_path):
    np.savez(tmp_path / "big.npz", X=np.zeros((4, 3, 5, 4)), y=np.array([0, 1, 0, 1]))
    net = _image_model(tmp_path, (1, 3, 4, 5), "nchw.onnx")
    spec = load_spec(_write(tmp_path, dict(GOOD, data={"npz": "big.npz"}, classes=[0, 1], n_per_class=2,
                                           layout="NCHW", scaling="none")))
    with pytest.raises(SpecError, match=r"the data's images have shape \(3, 5, 4\) \(NCHW; \(5, 4, 3\) in NHWC\) "
                                        r"but the model's input is \(3, 4, 5\)"):
        check_compatible(spec.load_points(), net, spec)
    np.savez(tmp_path / "nolayout.npz", X=np.zeros((4, 3, 4, 5)), y=np.array([0, 1, 0, 1]))
    spec = load_spec(_write(tmp_path, dict(GOOD, data={"npz": "nolayout.npz"}, classes=[0, 1], n_per_class=2,
                                           scaling="none")))
    with pytest.raises(DataError, match="state its layout in the spec"):
        spec.load_points()


def test_one_of_errors_name_the_failing_constraint_not_another_branchs_type(tmp_path):
    """Fault sweep: "std": 0 is "<= the minimum of 0", not "0 is not of type 'array'"."""
    for std, msg in [(0, "normalize.std: 0 is less than or equal to the minimum of 0"),
                     ([], r"normalize.std: \[\] should be non-empty")]:
        with pytest.raises(SpecError, match=msg):
            load_spec(_write(tmp_path, {**GOOD, "normalize": {"mean": 0.1, "std": std}}))


def test_a_spec_path_that_is_a_directory_or_a_fifo_is_one_error(tmp_path):
    import os

    with pytest.raises(SpecError, match="is a directory"):
        load_spec(tmp_path)
    os.mkfifo(tmp_path / "fifo.json")
    with pytest.raises(SpecError, match="not a regular file"):
        load_spec(tmp_path / "fifo.json")


# ---- K classes --------------------------------------------------------------------------------
def test_a_list_of_classes_selects_every_class_grouped_in_spec_order(tmp_path):
    spec = load_spec(_write(tmp_path, dict(GOOD, classes=[8, 3, 7], n_per_class=2)))
    pts = spec.load_points()
    assert spec.classes == (8, 3, 7) and pts.classes == (8, 3, 7) and pts.multiclass
    assert pts.X_a is pts.X_b and pts.X_a.shape == (6, 784) and list(pts.labels) == [0, 0, 1, 1, 2, 2]
    two = load_spec(_write(tmp_path, dict(GOOD, classes=[8, 3], n_per_class=2), "t.json")).load_points()
    np.testing.assert_array_equal(pts.X_a[:4], np.concatenate([two.X_a, two.X_b]))
    assert not two.multiclass  # two classes keep the two-class form
    assert pts.pair_mask().sum() == 12 and parse_spec(spec.to_dict(), tmp_path, spec.path) == spec


def test_classes_all_takes_every_label_in_the_data(tmp_path):
    spec = load_spec(_write(tmp_path, dict(GOOD, classes="all", n_per_class=1)))
    assert spec.classes == "all" and spec.to_dict()["classes"] == "all"
    pts = spec.load_points()
    assert pts.classes == tuple(range(10)) and list(pts.labels) == list(range(10))
    fm = load_spec(_write(tmp_path, dict(GOOD, classes="all", data={"embedded": "fashion-mnist"}), "f.json"))
    assert fm.load_points().classes == (3, 7) and not fm.load_points().multiclass  # two present: two classes
    np.savez(tmp_path / "one.npz", X=np.zeros((3, 4)), y=np.array([5, 5, 5]))
    one = load_spec(_write(tmp_path, dict(GOOD, classes="all", data={"npz": "one.npz"}, scaling="none"), "o.json"))
    with pytest.raises(SpecError, match=r"classes \"all\": npz .*one.npz holds only class 5; at least two"):
        one.load_points()


@pytest.mark.parametrize("classes, message", [
    ([3], r"invalid at classes: at least two classes are needed, got \[3\]"),
    ([], r"invalid at classes: at least two classes are needed, got \[\]"),
    ([3, 7, 3], r"invalid at classes: class 3 is listed more than once in \[3, 7, 3\]; each class once"),
    ([1, 2, 2, 1], r"class 1, 2 is listed more than once"),
    ("some", r"invalid at classes"),
    ([3, -1, 4], r"invalid at classes"),
    ([3, 7.5], r"invalid at classes"),
])
def test_bad_class_lists_are_one_clear_error(tmp_path, classes, message):
    with pytest.raises(SpecError, match=message):
        load_spec(_write(tmp_path, dict(GOOD, classes=classes)))


def test_a_class_absent_from_the_data_is_named(tmp_path):
    with pytest.raises(DataError, match=r"class 12 is not present .* \(classes present: 0, 1, 2, 3, 4, 5, 6, 7, "
                                        r"8, 9\)"):
        load_spec(_write(tmp_path, dict(GOOD, classes=[0, 1, 12]))).load_points()


def test_classes_override_takes_all_and_lists():
    from fxverify.config import apply_overrides

    spec = parse_spec(GOOD, ".", "spec")
    assert apply_overrides(spec, classes="all").classes == "all"
    assert apply_overrides(spec, classes=[0, 1, 2]).classes == (0, 1, 2)
    with pytest.raises(SpecError, match=r"\(with command-line overrides\): invalid at classes: class 1 is listed"):
        apply_overrides(spec, classes=[1, 1, 2])
