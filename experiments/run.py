"""Regenerate the paper's figures from the shipped models: ``python experiments/run.py NAME [...]``.

Each experiment names its models, data, subset size, budgets and cuts; it runs the library's
``analyze`` (resumable: results are stored under ``--out``, default ``experiments/out/NAME``) and
writes the plots (0-1 and cross-entropy lower bounds), JSON and CSV there. Subset sizes are chosen
to fit a 2-core machine and are printed with every result and written into every output:
closed-form cuts (input, first linear layer) use all 500 embedded images per class; cuts that need
the descent use the first N images per class (``--n`` overrides).

    python experiments/run.py --list
    python experiments/run.py fig2_mnist fig3 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fxverify.analysis import analyze  # noqa: E402
from fxverify.executors import make_executor  # noqa: E402
from fxverify.onnx_import import load_model  # noqa: E402
from fxverify.report import write_comparison, write_results  # noqa: E402
from fxverify.spec import load_spec  # noqa: E402

M = ROOT / "models"
METHODS_MNIST = {"benign": "fcnn_mnist_3v7_benign", "PGD 1": "fcnn_mnist_3v7_pgd1", "PGD 2": "fcnn_mnist_3v7_pgd2",
                 "PGD 3": "fcnn_mnist_3v7_pgd3", "TRADES 2": "fcnn_mnist_3v7_trades2"}
METHODS_FMNIST = {"benign": "fcnn_fmnist_3v7_benign", "PGD 1": "fcnn_fmnist_3v7_pgd1",
                  "PGD 2": "fcnn_fmnist_3v7_pgd2", "PGD 3": "fcnn_fmnist_3v7_pgd3",
                  "TRADES 2": "fcnn_fmnist_3v7_trades2"}
EPS = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0]


@dataclass(frozen=True)
class Experiment:
    title: str
    spec: str  # spec file the data, classes and selection come from
    models: dict  # label -> model file stem
    cuts: tuple  # one cut: a comparison across models; several: layer-wise curves of one model
    n: int  # images per class
    figure: str  # the paper's figure(s) this regenerates


EXPERIMENTS = {
    "fig2_mnist": Experiment("First linear layer across training methods, MNIST 3 vs 7", "specs/mnist_3v7.json",
                             METHODS_MNIST, ("linear1",), 500, "Fig. 2 (and Fig. 7, 0-1 loss)"),
    "fig2_fmnist": Experiment("First linear layer across training methods, Fashion-MNIST 3 vs 7",
                              "specs/fmnist_3v7.json", METHODS_FMNIST, ("linear1",), 500,
                              "Fig. 2 (and Fig. 7, 0-1 loss)"),
    "fig3": Experiment("Layer-wise bounds, benign FCNN, MNIST", "specs/mnist_3v7.json",
                       {"benign": "fcnn_mnist_3v7_benign"}, ("input", "linear1", "relu1", "linear2", "relu2", "linear3"),
                       20, "Fig. 3 (and Fig. 8, 0-1 loss)"),
    "fig4": Experiment("Layer-wise bounds, PGD (eps_train 2) FCNN, MNIST", "specs/mnist_3v7.json",
                       {"PGD 2": "fcnn_mnist_3v7_pgd2"}, ("input", "linear1", "relu1", "linear2", "relu2", "linear3"),
                       20, "Fig. 4 (and Fig. 9, 0-1 loss)"),
    "fig5": Experiment("Second ReLU layer across training methods, MNIST", "specs/mnist_3v7.json",
                       METHODS_MNIST, ("relu2",), 15, "Fig. 5 (and Fig. 10, 0-1 loss)"),
    "fig6": Experiment("Width: regular, small (2x narrower) and smaller (4x) FCNN, PGD 2, first ReLU, MNIST",
                       "specs/mnist_3v7.json", {"regular": "fcnn_mnist_3v7_pgd2", "small": "fcnn_small_mnist_3v7_pgd2",
                                                "smaller": "fcnn_smaller_mnist_3v7_pgd2"}, ("relu1",), 15, "Fig. 6"),
    "fig11": Experiment("CNN first convolution layer across training methods, MNIST", "specs/mnist_3v7.json",
                        {"benign": "cnn_mnist_3v7_benign", "PGD 2": "cnn_mnist_3v7_pgd2",
                         "TRADES 2": "cnn_mnist_3v7_trades2"}, ("linear1",), 500, "Fig. 11"),
}


def run(name: str, out_root: Path, jobs: int | None, n: int | None) -> dict:
    ex = EXPERIMENTS[name]
    size = n or ex.n
    spec = replace(load_spec(ROOT / ex.spec), n_per_class=size, eps=tuple(EPS), solver="descent-activeset",
                   cuts=None)
    out = out_root / name
    t0 = time.perf_counter()
    analyses = {}
    for label, stem in ex.models.items():
        net = load_model(M / f"{stem}.onnx")
        analyses[label] = analyze(net, spec, out_dir=out / stem, cuts=ex.cuts,
                                  executor=make_executor("local", jobs=jobs))
    if len(ex.cuts) == 1:
        paths = write_comparison(analyses, ex.cuts[0], out)
    else:
        (a,) = analyses.values()
        paths = write_results(a, out)
    note = {"experiment": name, "title": ex.title, "figure": ex.figure, "n_per_class": size,
            "pairs": size * size, "cuts": list(ex.cuts), "models": {k: f"models/{v}.onnx" for k, v in ex.models.items()},
            "eps": EPS, "solver": "descent-activeset", "seconds": round(time.perf_counter() - t0, 1),
            "command": f"python experiments/run.py {name}" + (f" --n {n}" if n else "")}
    (out / "experiment.json").write_text(json.dumps(note, indent=2) + "\n")
    return {"paths": paths, "analyses": analyses, **note}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="experiments to run (default: all)")
    ap.add_argument("--list", action="store_true", help="list the experiments and exit")
    ap.add_argument("--out", type=Path, default=ROOT / "experiments" / "out")
    ap.add_argument("--jobs", type=int, default=None, help="worker processes (default: every core)")
    ap.add_argument("--n", type=int, default=None, help="images per class (default: the experiment's)")
    ap.add_argument("--figures", type=Path, default=None, help="also copy the plots here (e.g. docs/figures)")
    args = ap.parse_args()
    if args.list:
        for k, e in EXPERIMENTS.items():
            print(f"{k:12s} {e.figure:32s} n={e.n:<4d} cuts={','.join(e.cuts)}  {e.title}")
        return 0
    unknown = [x for x in args.names if x not in EXPERIMENTS]
    if unknown:
        print(f"error: unknown experiment(s) {', '.join(unknown)}; see --list", file=sys.stderr)
        return 2
    for name in args.names or list(EXPERIMENTS):
        res = run(name, args.out, args.jobs, args.n)
        print(f"{name}: {res['title']} ({res['figure']}); n = {res['n_per_class']} per class, "
              f"{res['pairs']:,} pairs per model, {res['seconds']} s")
        for label, a in res["analyses"].items():
            for c in a.cuts:
                ce = ", ".join(f"{r.eps:g}:{r.ce_lower:.3f}" for r in c.records)
                print(f"  {label:10s} {c.cut:8s} CE lower bound by eps  {ce}")
        if args.figures:
            args.figures.mkdir(parents=True, exist_ok=True)
            for p in res["paths"]:
                if p.suffix == ".png":
                    shutil.copy(p, args.figures / f"{name}_{p.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
