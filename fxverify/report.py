"""Writing an analysis: results.json, results.csv and plots of the bounds against eps.

Every file is written to a temporary file in the output directory and renamed over its name,
so a failed write (a read-only directory, a full disk) never leaves a truncated file behind;
it is one :class:`ReportError` line. A name in the directory that is a symbolic link is
refused, never replaced or followed. ``results.json`` is described by the versioned schema
``fxverify/schemas/results-v3.json`` (:func:`results_schema`, :func:`validate_results`; format 3:
two or more classes, format 2 was two only); it names the threat model (norm, domain or
"unbounded"), and per cut every failed pair with its reason. The plots say the norm and the domain in their titles and axis labels.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import math
import os
import secrets
import textwrap
from collections.abc import Callable
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import IO

from .errors import FxverifyError
from .results import Analysis

RESULTS_FORMAT = 3
FIELDS = ("cut", "eps", "edges", "loss01_lower", "ce_lower", "pairs_done", "pairs_failed")
LOSSES = (("loss01_lower", "0-1 loss lower bound", "loss01.png"),
          ("ce_lower", "cross-entropy lower bound", "cross_entropy.png"))


class ReportError(FxverifyError):
    """An output file cannot be written."""


@lru_cache(maxsize=None)
def results_schema(version: int = RESULTS_FORMAT) -> dict:
    """The JSON schema of results.json ``format`` ``version`` (package data)."""
    return json.loads((resources.files("fxverify.schemas") / f"results-v{version}.json").read_text())


def validate_results(doc: dict) -> None:
    """Validate a results.json document against its schema (the spec inside against the spec
    schema); raise ``jsonschema.ValidationError`` on the first problem."""
    import jsonschema
    from referencing import Registry, Resource

    from .spec import schema as spec_schema

    registry = Registry().with_resources(
        [(s["$id"], Resource.from_contents(s)) for s in (results_schema(), spec_schema())])
    jsonschema.Draft202012Validator(results_schema(), registry=registry).validate(doc)


def _json_number(x):
    return None if isinstance(x, float) and not math.isfinite(x) else x


def _mkdir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ReportError(f"cannot create output directory {out}: {err.strerror or err}") from None


def _open_temp(path: Path) -> tuple[int, Path]:
    """A new file beside ``path``, unique per process and call, with the permissions the umask
    gives any new file (not mkstemp's 0600)."""
    tmp = path.parent / f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o666), tmp


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` through a temporary file in its directory (unique name, fsynced) renamed
    over it: readers see the old file or the whole new one, never a part. A symbolic link at
    ``path`` is refused (the results directory is never a way to write elsewhere)."""
    tmp = None
    if path.is_symlink():
        raise ReportError(f"{path} is a symbolic link; fxverify never writes through links in a results directory "
                          f"(remove it or use another --out directory)")
    try:
        fd, tmp = _open_temp(path)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as err:
        more = ""
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            more = ("; the computed results are kept in the directory's results.sqlite: free some space and rerun "
                    "the same command (it recomputes nothing stored)")
        raise ReportError(f"cannot write {path}: {err.strerror or err}{more}") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):  # the write's own error is the one reported
                os.unlink(tmp)



def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def _csv_text(fields, rows) -> str:
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def results_document(a: Analysis, witnesses: dict | None = None) -> dict:
    """The results.json document; ``witnesses``: {"file", "count", "bytes"} of the exported
    witness file (None: none exported)."""
    return {
        "format": RESULTS_FORMAT,
        "fxverify_version": a.version,
        "model": {"path": a.model_path, "sha256": a.model_sha256},
        "spec": a.spec.to_dict(),
        "solver": a.profile.to_dict(),
        "points": _points(a),
        "threat_model": {**a.threat_model.to_dict(), "label": a.threat_model.label},
        "arithmetic": "collisions are of the float64 map (residual ~1e-14 of the features); in onnxruntime's "
                      "float32 the features agree to ~1e-6 relative, not exactly",
        "unavailable_cuts": [{"cut": c, "reason": r} for c, r in a.unavailable],
        "complete": a.complete,
        "pairs_failed": a.pairs_failed,
        "seconds": round(a.seconds, 3),
        "witnesses": witnesses,
        "cuts": [{"cut": c.cut, "method": c.method, "pairs_total": c.pairs_total, "pairs_done": c.pairs_done,
                  "pairs_failed": c.pairs_failed, "pairs_not_applicable": c.pairs_not_applicable,
                  "pairs_skipped": c.pairs_skipped, "solver_seconds": round(c.seconds, 3), "note": c.note,
                  "failures": [{"i": f.i, "j": f.j, "reason": f.reason} for f in c.failures]} for c in a.cuts],
        "results": [{k: _json_number(v) for k, v in r.items()} for r in a.records()],
    }


def _points(a: Analysis) -> dict:
    """results.json's points: classes, points per class, all points, cross-class pairs (two
    classes: also n_a and n_b, as in format 2)."""
    doc = {"classes": list(a.classes), "n_per_class": list(a.counts), "n": a.n, "pairs": a.pairs}
    if len(a.classes) == 2:
        doc.update(n_a=a.counts[0], n_b=a.counts[1])
    return doc


#: line styles and markers; with 10 colours, (colour, style) differs for up to 40 curves and
#: the markers (7, coprime with 10) separate neighbours further
_STYLES = ("-", "--", "-.", ":")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def _plot(series: dict[str, list[tuple[float, float]]], ylabel: str, title: str, path: Path,
          legend_title: str = "cut", norm: str = "l2") -> None:
    """Curves of ``series`` against eps, legible with many curves: distinct colour and line
    style per curve, markers, the legend outside the axes, nothing cut off (tight bounding box)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = plt.get_cmap("tab10").colors
    n = len(series)
    ncol = 1 if n <= 20 else 2
    fig, ax = plt.subplots(figsize=(6.4 + 1.6 * ncol, 4.4), dpi=120)
    for k, (label, pts) in enumerate(series.items()):
        xs, ys = zip(*pts) if pts else ((), ())
        ys = [y if y is not None and math.isfinite(y) else float("nan") for y in ys]
        ax.plot(xs, ys, color=colours[k % 10], linestyle=_STYLES[(k // 10) % len(_STYLES)],
                marker=_MARKERS[k % len(_MARKERS)], markersize=4, linewidth=1.4, label=label)
    ax.set_xlabel(f"budget eps ({norm}, input space)")
    ax.set_ylabel(ylabel)
    ax.set_title("\n".join(textwrap.wrap(title, 70)), fontsize=9)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    if n:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, ncol=ncol,
                  title=legend_title, title_fontsize=8, handlelength=3.0)
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", bbox_inches="tight"))
    finally:
        plt.close(fig)


def write_results(a: Analysis, out_dir: str | Path, witnesses: dict | None = None) -> list[Path]:
    """Write results.json, results.csv, loss01.png and cross_entropy.png; return the paths."""
    out = Path(out_dir)
    _mkdir(out)
    paths = [out / "results.json", out / "results.csv"]
    _write_text(paths[0], json.dumps(results_document(a, witnesses), indent=2) + "\n")
    _write_text(paths[1], _csv_text(FIELDS, a.records()))
    what = f"{Path(a.model_path).name}: {a.points_label}, {a.threat_model.label}"
    if not a.complete:
        what += " (incomplete: pairs not computed count as no edge)"
    for key, label, name in LOSSES:
        series = {c.cut: [(r.eps, getattr(r, key)) for r in c.records] for c in a.cuts}
        _plot(series, label, what, out / name, norm=a.norm)
        paths.append(out / name)
    return paths


def write_comparison(analyses: dict[str, Analysis], cut: str, out_dir: str | Path) -> list[Path]:
    """One cut across several models: compare.json, compare.csv and two plots."""
    out = Path(out_dir)
    _mkdir(out)
    rows = []
    for label, a in analyses.items():
        c = a.cut(cut)
        for r in c.records:
            rows.append({"model": label, "cut": cut, "eps": r.eps, "edges": r.edges, "loss01_lower": r.loss01_lower,
                         "ce_lower": r.ce_lower, "pairs_done": c.pairs_done, "pairs_failed": c.pairs_failed})
    first = next(iter(analyses.values()))
    doc = {"format": RESULTS_FORMAT, "fxverify_version": first.version, "cut": cut, "spec": first.spec.to_dict(),
           "threat_model": {**first.threat_model.to_dict(), "label": first.threat_model.label},
           "models": {label: {"path": a.model_path, "sha256": a.model_sha256, "complete": a.complete,
                              "solver": a.profile.to_dict(), "out_dir": a.out_dir} for label, a in analyses.items()},
           "results": [{k: _json_number(v) for k, v in r.items()} for r in rows]}
    paths = [out / "compare.json", out / "compare.csv"]
    _write_text(paths[0], json.dumps(doc, indent=2) + "\n")
    _write_text(paths[1], _csv_text(("model",) + FIELDS, rows))
    what = f"cut {cut}: {first.points_label}, {first.threat_model.label}"
    for key, label, name in LOSSES:
        series = {m: [(r.eps, getattr(r, key)) for r in a.cut(cut).records] for m, a in analyses.items()}
        _plot(series, label, what, out / f"compare_{name}", legend_title="model", norm=first.norm)
        paths.append(out / f"compare_{name}")
    return paths
