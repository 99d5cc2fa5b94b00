"""Writing results: atomic files, one-line errors, the results.json schema, legible plots."""

from __future__ import annotations

import errno
import json
import os
from dataclasses import replace

import numpy as np
import pytest

from fxverify.profiles import load_profile
from fxverify import report
from fxverify.analysis import Analysis, CutBounds, analyze, load_inputs
from fxverify.config import resolve_run
from fxverify.bounds import lower_bounds
from fxverify.executors import SerialExecutor
from fxverify.report import ReportError, results_document, results_schema, validate_results, write_results
from fxverify.spec import parse_spec
from fxverify.store import ResultStore

SPEC = {"version": 1, "data": {"embedded": "mnist"}, "classes": [3, 7], "n_per_class": 3,
        "eps": [0.0, 1.0, 2.0, 4.0], "cuts": "all"}


@pytest.fixture(scope="module")
def analysis(tmp_path_factory):
    from conftest import MODELS

    out = tmp_path_factory.mktemp("run")
    spec = parse_spec(SPEC, out, "spec.json")
    run = resolve_run(spec)
    net, points = load_inputs(MODELS / "fcnn_tiny_mnist_3v7_benign.onnx", run)
    return analyze(net, run, points, out_dir=out / "store", executor=SerialExecutor())


def test_a_real_results_json_validates_against_the_shipped_schema(analysis, tmp_path):
    import jsonschema

    write_results(analysis, tmp_path)
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc == json.loads(json.dumps(results_document(analysis)))
    validate_results(doc)
    s = results_schema(3)
    assert s["properties"]["format"] == {"const": 3, "description": "Format version of this file."}
    assert results_schema(1)["properties"]["format"]["const"] == 1  # the old formats stay readable
    assert results_schema(2)["properties"]["format"]["const"] == 2
    assert doc["points"] == {"classes": [3, 7], "n_per_class": [3, 3], "n": 6, "pairs": 9, "n_a": 3, "n_b": 3}
    assert doc["threat_model"] == {"norm": "l2", "domain": "unbounded", "label": "l2, unbounded"}
    assert all(c["failures"] == [] for c in doc["cuts"]) and "float64" in doc["arithmetic"]
    assert s["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    # the schema does reject what results_document never writes
    for bad in (dict(doc, format=1), dict(doc, extra=1), dict(doc, threat_model=dict(doc["threat_model"], domain=None)), dict(doc, spec=dict(doc["spec"], norm="l7")),
                dict(doc, results=[dict(doc["results"][0], loss01_lower=1.5)]),
                {k: v for k, v in doc.items() if k != "cuts"}):
        with pytest.raises(jsonschema.ValidationError):
            validate_results(bad)
    # an incomplete run (infinite cross-entropy written as null) validates too
    inf = replace(analysis, cuts=tuple(replace(c, pairs_done=0) for c in analysis.cuts))
    d = results_document(inf)
    d["results"][0]["ce_lower"] = None
    validate_results(json.loads(json.dumps(d)))


def _no_temporaries(d):
    return [p.name for p in d.iterdir() if p.name.endswith(".tmp")]


def test_a_failed_write_leaves_the_old_file_whole_and_no_temporaries(analysis, tmp_path, monkeypatch):
    write_results(analysis, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(ReportError, match=r"cannot write .*results.json: No space left on device") as e:
        write_results(analysis, tmp_path)
    assert "\n" not in str(e.value)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert not _no_temporaries(tmp_path)


def test_unwritable_outputs_are_one_line_errors(analysis, tmp_path, monkeypatch):
    (tmp_path / "dir" / "results.json").mkdir(parents=True)  # the path is a directory
    with pytest.raises(ReportError, match=r"cannot write .*results.json: Is a directory"):
        write_results(analysis, tmp_path / "dir")
    assert not _no_temporaries(tmp_path / "dir")
    (tmp_path / "file").write_text("x")  # the output directory is a file
    with pytest.raises(ReportError, match=r"cannot create output directory .*file"):
        write_results(analysis, tmp_path / "file")

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(report, "_open_temp", denied)  # a read-only directory (tests may run as root)
    with pytest.raises(ReportError, match=r"cannot write .*results.json: Permission denied"):
        write_results(analysis, tmp_path / "ro")
    monkeypatch.undo()
    if os.geteuid() != 0:  # a real read-only directory, where permissions bind
        ro = tmp_path / "ro2"
        ro.mkdir()
        ro.chmod(0o555)
        try:
            with pytest.raises(ReportError, match="Permission denied"):
                write_results(analysis, ro)
        finally:
            ro.chmod(0o755)


def test_plot_failure_is_one_line_and_the_store_stays_consistent(analysis, tmp_path, monkeypatch):
    import matplotlib.figure

    def broken(self, f, **k):
        f.write(b"\x89PNG partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", broken)
    with pytest.raises(ReportError, match=r"cannot write .*loss01.png: No space left on device"):
        write_results(analysis, tmp_path)
    assert not (tmp_path / "loss01.png").exists() and not _no_temporaries(tmp_path)
    assert json.loads((tmp_path / "results.json").read_text())["format"] == 3  # whole
    # the run's store is untouched: it opens, passes its check and holds every pair
    import sqlite3

    db = sqlite3.connect(os.path.join(analysis.out_dir, "results.sqlite"))
    assert db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    fp = db.execute("SELECT value FROM meta WHERE key = 'fingerprint'").fetchone()[0]
    db.close()
    with ResultStore(analysis.out_dir, fp) as store:
        assert len(store.done_pairs("relu1")) == 9


def _many_cuts(n_cuts: int) -> Analysis:
    rng = np.random.default_rng(0)
    grid = np.linspace(0, 4, 9)
    base = rng.uniform(1, 6, (10, 10))
    cuts = []
    for k in range(n_cuts):
        eps = base * (1 - 0.03 * k)
        cuts.append(CutBounds(f"relu{k + 1}" if k % 2 else f"linear{k + 1}", tuple(lower_bounds(eps, grid)),
                              100, 100, 0, 0, "descent", 1.0))
    spec = parse_spec(dict(SPEC, eps=list(grid)), ".", "spec.json")
    return Analysis(model_path="models/some_rather_long_model_name_of_a_nine_layer_network_for_testing.onnx",
                    model_sha256="0" * 64, spec=spec, profile=load_profile("descent-activeset"),
                    classes=(3, 7), n_a=10, n_b=10, cuts=tuple(cuts), seconds=1.0)


def test_plots_with_19_cuts_are_legible(tmp_path):
    from matplotlib.image import imread

    a = _many_cuts(19)
    write_results(a, tmp_path)
    validate_results(json.loads((tmp_path / "results.json").read_text()))
    for name in ("loss01.png", "cross_entropy.png", "results.json"):
        assert (tmp_path / name).stat().st_mode & 0o444 == 0o444 & ~_umask(), "the umask's permissions, not 0600"
    for name in ("loss01.png", "cross_entropy.png"):
        p = tmp_path / name
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and 20_000 < p.stat().st_size < 2_000_000
        img = imread(p)
        h, w = img.shape[:2]
        assert 400 < h < 1200 and 900 < w < 2000, (h, w)  # the legend is beside the axes, not on them
        # the title is not cut off: the top rows hold dark (text) pixels below a white margin
        dark = (img[..., :3].mean(axis=2) < 0.5)
        rows = np.flatnonzero(dark.any(axis=1))
        assert rows[0] > 0 and rows[-1] < h - 1
    # 19 curves: distinct (colour, line style) pairs and markers cycling
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    captured = {}
    real_close = plt.close

    def keep(fig):
        captured["fig"] = fig

    plt.close = keep
    try:
        report._plot({c.cut: [(r.eps, r.ce_lower) for r in c.records] for c in a.cuts}, "ce", "t", tmp_path / "x.png")
    finally:
        plt.close = real_close
    lines = captured["fig"].axes[0].get_lines()
    assert len(lines) == 19
    assert len({(l.get_color(), l.get_linestyle()) for l in lines}) == 19
    assert len({l.get_marker() for l in lines}) > 5
    legend = captured["fig"].axes[0].get_legend()
    assert legend is not None and legend.get_bbox_to_anchor().x0 > captured["fig"].axes[0].bbox.x1 - 1
    real_close(captured["fig"])


def _umask() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    pytest.skip("no Umask in /proc/self/status")


def test_plots_and_results_json_name_the_threat_model(tmp_path, monkeypatch):
    """An l-inf run in [0, 1]: the plots' axis says linf (not l2) and their titles the domain;
    results.json says the same; an l2 run without a domain is 'unbounded'."""
    import matplotlib.axes

    labels, titles = [], []
    monkeypatch.setattr(matplotlib.axes.Axes, "set_xlabel", lambda self, x, *a, **k: labels.append(x))
    real_title = matplotlib.axes.Axes.set_title
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title",
                        lambda self, t, *a, **k: (titles.append(t), real_title(self, t, *a, **k))[1])
    a = replace(_many_cuts(2), norm="linf", domain=(0.0, 1.0))
    write_results(a, tmp_path)
    assert labels == ["budget eps (linf, input space)"] * 2
    assert all("linf, domain [0, 1]" in t.replace("\n", " ") for t in titles)
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["threat_model"] == {"norm": "linf", "domain": [0.0, 1.0], "label": "linf, domain [0, 1]"}
    labels.clear()
    titles.clear()
    write_results(_many_cuts(2), tmp_path)
    assert labels == ["budget eps (l2, input space)"] * 2 and all("l2, unbounded" in t for t in titles)
