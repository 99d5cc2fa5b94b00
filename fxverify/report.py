"""Writing an analysis: results.json, results.csv and plots of the bounds against eps."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from .analysis import Analysis

RESULTS_FORMAT = 1
FIELDS = ("cut", "eps", "edges", "loss01_lower", "ce_lower", "pairs_done", "pairs_failed")
LOSSES = (("loss01_lower", "0-1 loss lower bound", "loss01.png"),
          ("ce_lower", "cross-entropy lower bound", "cross_entropy.png"))


def _json_number(x):
    return None if isinstance(x, float) and not math.isfinite(x) else x


def results_document(a: Analysis) -> dict:
    return {
        "format": RESULTS_FORMAT,
        "fxverify_version": a.version,
        "model": {"path": a.model_path, "sha256": a.model_sha256},
        "spec": a.spec.to_dict(),
        "solver": a.profile.to_dict(),
        "points": {"classes": list(a.classes), "n_a": a.n_a, "n_b": a.n_b, "n": a.n_a + a.n_b},
        "complete": a.complete,
        "seconds": round(a.seconds, 3),
        "cuts": [{"cut": c.cut, "method": c.method, "pairs_total": c.pairs_total, "pairs_done": c.pairs_done,
                  "pairs_failed": c.pairs_failed, "pairs_not_applicable": c.pairs_not_applicable,
                  "solver_seconds": round(c.seconds, 3), "note": c.note} for c in a.cuts],
        "results": [{k: _json_number(v) for k, v in r.items()} for r in a.records()],
    }


def _plot(series: dict[str, list[tuple[float, float]]], ylabel: str, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for label, pts in series.items():
        xs, ys = zip(*pts) if pts else ((), ())
        ax.plot(xs, ys, marker="o", markersize=3, label=label)
    ax.set_xlabel("budget eps (l2, input space)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_results(a: Analysis, out_dir: str | Path) -> list[Path]:
    """Write results.json, results.csv, loss01.png and cross_entropy.png; return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "results.json", out / "results.csv"]
    paths[0].write_text(json.dumps(results_document(a), indent=2) + "\n")
    with open(paths[1], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(a.records())
    what = f"{Path(a.model_path).name}: classes {a.classes[0]} vs {a.classes[1]}, n = {a.n_a} + {a.n_b}"
    if not a.complete:
        what += " (incomplete: pairs not computed count as no edge)"
    for key, label, name in LOSSES:
        series = {c.cut: [(r.eps, getattr(r, key)) for r in c.records] for c in a.cuts}
        _plot(series, label, what, out / name)
        paths.append(out / name)
    return paths


def write_comparison(analyses: dict[str, Analysis], cut: str, out_dir: str | Path) -> list[Path]:
    """One cut across several models: compare.json, compare.csv and two plots."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for label, a in analyses.items():
        c = a.cut(cut)
        for r in c.records:
            rows.append({"model": label, "cut": cut, "eps": r.eps, "edges": r.edges, "loss01_lower": r.loss01_lower,
                         "ce_lower": r.ce_lower, "pairs_done": c.pairs_done, "pairs_failed": c.pairs_failed})
    first = next(iter(analyses.values()))
    doc = {"format": RESULTS_FORMAT, "fxverify_version": first.version, "cut": cut, "spec": first.spec.to_dict(),
           "models": {label: {"path": a.model_path, "sha256": a.model_sha256, "complete": a.complete,
                              "solver": a.profile.to_dict(), "out_dir": a.out_dir} for label, a in analyses.items()},
           "results": rows}
    paths = [out / "compare.json", out / "compare.csv"]
    paths[0].write_text(json.dumps(doc, indent=2) + "\n")
    with open(paths[1], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=("model",) + FIELDS)
        w.writeheader()
        w.writerows(rows)
    what = f"cut {cut}: classes {first.classes[0]} vs {first.classes[1]}, n = {first.n_a} + {first.n_b}"
    for key, label, name in LOSSES:
        series = {m: [(r.eps, getattr(r, key)) for r in a.cut(cut).records] for m, a in analyses.items()}
        _plot(series, label, what, out / f"compare_{name}")
        paths.append(out / f"compare_{name}")
    return paths
