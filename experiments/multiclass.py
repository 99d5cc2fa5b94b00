"""The 10-class figure: K-class lower bounds beside the 3-vs-7 bounds of the same model.

``python experiments/multiclass.py [--figures docs/figures]``

For both 10-class MNIST models (``models/fcnn_mnist_10class_benign.onnx``,
``models/fcnn_mnist_10class_pgd2.onnx``) it computes, with the public API
(``fxverify.bound(..., classes=...)``), the 0-1 and cross-entropy lower bounds per cut of

* all ten digits (``classes="all"``: every cross-class pair of the 10·n points, the K-class
  bounds of ``lower_bounds_multiclass``), and
* digits 3 and 7 only (``classes=[3, 7]``: the two-class bounds), on the same first n points
  of each of those two digits,

over an l2 grid eps = 0, 0.5, ..., 5 in R^784 without a box (the paper's threat model), on the
embedded MNIST training images (500 per digit), pixels / 255, the first n of each digit. The
closed-form cuts (``input``, ``linear1``) use ``--n`` points per digit (default 100: 450,000
cross-class pairs for ten digits); ``relu1`` (a descent per pair) uses ``--relu-n`` (default 6;
0 skips it), with the closed-form cuts of those same points beside it. No bootstrap bands here:
the numbers are for the first n points of each digit.

Outputs under ``--out`` (default ``experiments/out/multiclass``): ``summary.json`` (every curve,
the commit, machine, load average, wall and CPU seconds), ``loss01.png`` and
``cross_entropy.png``; ``--figures DIR`` copies the plots there as ``multiclass_loss01.png`` and
``multiclass_cross_entropy.png``. The stores of the runs live under ``OUT/stores``, so a stopped
run resumes where it was (results are deterministic). ``--smoke``: n = 3 per digit, the input cut
only, four budgets, into a temporary directory (or ``--out``) — seconds.
"""

from __future__ import annotations

import os

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS"):
    os.environ.setdefault(_v, "1")  # the descent's small LPs only contend with threaded BLAS

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import fxverify  # noqa: E402
from budgets import git_revision  # noqa: E402
from run import machine  # noqa: E402

MODELS = {"benign": "models/fcnn_mnist_10class_benign.onnx", "PGD 2": "models/fcnn_mnist_10class_pgd2.onnx"}
CLASS_SETS = {"10-class": "all", "3 vs 7": [3, 7]}
EPS = tuple(round(0.5 * k, 1) for k in range(11))
CLOSED = ("input", "linear1")
THREAT = "l2 ball in R^784 (no box)"
DATA = "embedded MNIST training images (500 per digit), pixels / 255, first n of each digit"
SPEC = {
    "version": 1,
    "description": "MNIST embedded training images, first n of each digit, pixels / 255, l2 without a box "
                   "(experiments/multiclass.py).",
    "data": {"embedded": "mnist"},
    "split": "train",
    "classes": "all",
    "n_per_class": 1,
    "selection": {"method": "first"},
    "scaling": "divide_255",
    "norm": "l2",
    "eps": list(EPS),
    "cuts": "all",
    "solver": "descent-activeset",
}
SMOKE = {"n": 3, "relu_n": 0, "cuts": ("input",), "eps": (0.0, 2.0, 4.0, 5.0)}
CUT_COLORS = {"input": "#1f77b4", "linear1": "#d62728", "relu1": "#2ca02c"}


def cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (worker pools with --jobs > 1)."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def run_one(model: str, label: str, classes, n: int, cuts: tuple, eps: tuple, store: Path, jobs: int) -> dict:
    """One ``fxverify.bound`` call; its curves per cut, with the run's cost."""
    spec = dict(SPEC, eps=list(eps))
    t0, c0 = time.perf_counter(), cpu_seconds()
    a = fxverify.bound(str(ROOT / model), spec, classes=classes, n=n, cuts=list(cuts), eps=list(eps), out=store,
                       write=False, witnesses=False, jobs=jobs)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    if not a.complete or a.pairs_failed:
        raise SystemExit(f"error: {model} {label} n={n}: incomplete run ({a.pairs_failed} failed pairs); "
                         f"rerun to resume ({store})")
    return {
        "model": model, "classes": list(a.classes), "class_set": label, "n_per_class": n, "points": a.n,
        "pairs": a.pairs, "wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1), "store": str(store),
        "cuts": {cb.cut: {"method": cb.method, "pairs_done": cb.pairs_done, "note": cb.note,
                          "eps": [r.eps for r in cb.records], "edges": [int(r.edges) for r in cb.records],
                          "loss01_lower": [float(r.loss01_lower) for r in cb.records],
                          "ce_lower": [float(r.ce_lower) for r in cb.records]}
                 for cb in a.cuts},
    }


def plot(summary: dict, out: Path) -> list[Path]:
    """One PNG per loss: a column per model, a row per point set (the closed-form cuts at n per
    digit; relu1 with the closed-form cuts of the same first relu-n points per digit)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    runs = summary["runs"]
    sizes = sorted({r["n_per_class"] for r in runs}, reverse=True)
    for loss, ylabel, fname in (("loss01_lower", "0-1 loss lower bound", "loss01.png"),
                                ("ce_lower", "cross-entropy lower bound", "cross_entropy.png")):
        fig, axes = plt.subplots(len(sizes), len(MODELS), figsize=(11, 1.0 + 3.9 * len(sizes)), sharey=True,
                                 squeeze=False)
        for row, size in zip(axes, sizes):
            for ax, (mlabel, model) in zip(row, MODELS.items()):
                for r in runs:
                    if r["model"] != model or r["n_per_class"] != size:
                        continue
                    ls = "-" if r["class_set"] == "10-class" else "--"
                    for cut, c in r["cuts"].items():
                        ax.plot(c["eps"], c[loss], color=CUT_COLORS.get(cut, "k"), ls=ls, lw=1.5, marker=".", ms=3,
                                label=f"{r['class_set']}, {cut}")
                ax.set_title(f"{mlabel} ({Path(model).name}), first {size} per digit "
                             f"({45 * size * size:,} / {size * size:,} pairs)", fontsize=8.5)
                ax.set_xlabel("l2 budget eps (input space, pixels in [0, 1])")
                ax.grid(alpha=0.3)
                ax.legend(fontsize=7, loc="upper left")
            row[0].set_ylabel(ylabel)
            row[0].set_ylim(bottom=0)
        fig.suptitle(f"{ylabel} of any classifier on the cut's features: all ten digits (solid) vs digits 3 and 7 "
                     f"(dashed)\nthreat model: {THREAT}; {DATA};\nno bands: the numbers are for these points only",
                     fontsize=8.5)
        fig.tight_layout()
        p = out / fname
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny n, input cut, four budgets, into a temporary dir")
    ap.add_argument("--out", type=Path, default=None, help="results (default experiments/out/multiclass)")
    ap.add_argument("--n", type=int, default=100, help="points per digit at the closed-form cuts (default 100)")
    ap.add_argument("--relu-n", type=int, default=6, help="points per digit at relu1 (default 6; 0: skip relu1)")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes per run (default 1)")
    ap.add_argument("--figures", type=Path, default=None, help="also copy the plots here (e.g. docs/figures)")
    args = ap.parse_args()
    n, relu_n, cuts, eps = args.n, args.relu_n, CLOSED, EPS
    if args.smoke:
        n, relu_n, cuts, eps = SMOKE["n"], SMOKE["relu_n"], SMOKE["cuts"], SMOKE["eps"]
    out = args.out or (Path(tempfile.mkdtemp(prefix="fxverify_multiclass_smoke_")) if args.smoke
                       else HERE / "out" / "multiclass")
    out.mkdir(parents=True, exist_ok=True)
    t0, c0 = time.perf_counter(), cpu_seconds()
    load0 = os.getloadavg()
    plan = [(n, cuts)] + ([(relu_n, CLOSED + ("relu1",))] if relu_n else [])
    runs = []
    for size, cs in plan:
        for mlabel, model in MODELS.items():
            for label, classes in CLASS_SETS.items():
                tag = "all" if classes == "all" else "-".join(map(str, classes))
                store = out / "stores" / f"{Path(model).stem}__{tag}__n{size}__{'-'.join(cs)}"
                r = run_one(model, label, classes, size, cs, eps, store, args.jobs)
                runs.append(r)
                last = {c: (round(v["loss01_lower"][-1], 4), round(v["ce_lower"][-1], 4)) for c, v in r["cuts"].items()}
                print(f"{mlabel:7s} {label:8s} n={size:<4d} {r['pairs']:>7d} pairs  {r['wall_seconds']:7.1f} s wall "
                      f"{r['cpu_seconds']:7.1f} CPU-s  (0-1, CE) at eps={eps[-1]:g}: {last}", flush=True)
    summary = {
        "title": "10-class vs 3-vs-7 lower bounds, 10-class MNIST models",
        "threat_model": THREAT, "data": DATA, "eps": list(eps), "n_closed": n, "cuts_closed": list(cuts), "n_relu1": relu_n,
        "models": MODELS, "solver": "descent-activeset (grid-aware descents: the bounds of --exhaustive)",
        "commit": git_revision(), "machine": machine(), "load_average_at_start": [round(x, 2) for x in load0],
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python experiments/multiclass.py " + " ".join(sys.argv[1:]),
        "smoke": bool(args.smoke), "runs": runs,
    }
    paths = plot(summary, out)
    summary["wall_seconds"] = round(time.perf_counter() - t0, 1)
    summary["cpu_seconds"] = round(cpu_seconds() - c0, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    if args.figures:
        args.figures.mkdir(parents=True, exist_ok=True)
        for p in paths:
            shutil.copy(p, args.figures / f"multiclass_{p.name}")
    print(f"wrote {out / 'summary.json'} and {', '.join(p.name for p in paths)}; "
          f"{summary['wall_seconds']:.0f} s wall, {summary['cpu_seconds']:.0f} CPU-s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
