"""Every convolutional model of ``../shared/real-onnx/`` as a user runs it (issue 19's table).

For each model and each norm (l2, l-inf): ``fxverify bound MODEL --spec S --n 2 --cuts
FIRST_RELU,DEEPEST --norm N --jobs J --time-budget T`` in a subprocess, the real CLI, and from
its results.json the pairs completed at each cut (of 4), the failed ones, the wall time, and the
CPU time of the command and its workers (``resource.getrusage(RUSAGE_CHILDREN)``).

Data: the MNIST models read the embedded MNIST 3 vs 7 (first 2 images a class, pixels / 255);
the CIFAR-shaped models (no data ships with them) read 2 + 2 synthetic images, uniform in [0, 1]
with a fixed seed, written here in the model's layout (NCHW, or NHWC for tf2onnx's
``tf_traffic64``). Pixels in [0, 1]; the adversary unbounded (no box), as the paper's.

Target (issue 19): all 4 pairs at both cuts within 10 minutes on 2 cores, l2 and l-inf.
"""

from __future__ import annotations

import _common  # noqa: F401  (sets BLAS threads before numpy loads)

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = _common.ROOT
REAL = ROOT.parent / "shared" / "real-onnx"

#: model -> (data: "mnist" or the synthetic layout, first ReLU cut, deepest piece / add cut)
MODELS = {
    "keras_mnist_maxpool": ("mnist", "relu1", "relu3"),
    "verivital_mnist_maxpool": ("mnist", "relu1", "pool1"),
    "oval_cifar_deep": ("NCHW", "relu1", "relu5"),
    "tf_traffic64": ("NHWC", "relu1", "relu2"),
    "resnet_2b": ("NCHW", "relu1", "relu6"),
}
#: budget grid per norm (pixels in [0, 1])
GRIDS = {"l2": [0.0, 0.25, 0.5, 1.0, 2.0, 4.0], "linf": [0.0, 0.005, 0.01, 0.02, 0.05, 0.1],
         "l1": [0.0, 1.0, 2.0, 5.0, 10.0, 20.0]}


def write_spec(tmp: Path, data: str, model: str) -> Path:
    if data == "mnist":
        doc = {"version": 1, "data": {"embedded": "mnist"}, "split": "train", "classes": [3, 7],
               "n_per_class": 2, "selection": {"method": "first"}, "scaling": "divide_255"}
    else:
        rng = np.random.default_rng(20261207)
        X = rng.uniform(0.0, 1.0, size=(4, 3, 32, 32)).astype(np.float32)
        if data == "NHWC":
            X = np.ascontiguousarray(X.transpose(0, 2, 3, 1))
        npz = tmp / f"{model}_synthetic.npz"
        np.savez(npz, X=X, y=np.array([0, 0, 1, 1]))
        doc = {"version": 1, "data": {"npz": str(npz)}, "layout": data, "classes": [0, 1], "n_per_class": 2,
               "selection": {"method": "first"}, "scaling": "none"}
    doc.update(eps=GRIDS["l2"], cuts="all", solver="descent-activeset")
    path = tmp / f"{model}.json"
    path.write_text(json.dumps(doc))
    return path


def run_one(model: str, norm: str, tmp: Path, jobs: int, budget: float) -> list:
    data, first, deep = MODELS[model]
    spec = write_spec(tmp, data, model)
    out = tmp / f"{model}__{norm}"
    cmd = [sys.executable, "-m", "fxverify", "bound", str(REAL / f"{model}.onnx"), "--spec", str(spec), "--out", str(out),
           "--n", "2", "--cuts", f"{first},{deep}", "--norm", norm, "--eps", ",".join(map(str, GRIDS[norm])),
           "--jobs", str(jobs), "--time-budget", str(budget)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=budget + 300)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if res.returncode:
        return [model, norm, "error", "", "", f"{wall:.0f}", f"{cpu:.0f}", (res.stderr.strip().splitlines() or ["(no message)"])[-1][:70]]
    doc = json.loads((out / "results.json").read_text())
    cuts = {c["cut"]: c for c in doc["cuts"]}

    def done(c):
        return f"{cuts[c]['pairs_done']}/{cuts[c]['pairs_total']}" + (
            f" ({cuts[c]['pairs_failed']} failed)" if cuts[c]["pairs_failed"] else "")

    ok = all(cuts[c]["pairs_done"] == cuts[c]["pairs_total"] and not cuts[c]["pairs_failed"] for c in (first, deep))
    verdict = "MET" if ok and wall <= 600 else "NOT MET"
    return [model, norm, f"{first} {done(first)}", f"{deep} {done(deep)}", data if data != "mnist" else "MNIST",
            f"{wall:.0f}", f"{cpu:.0f}", verdict]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--norms", nargs="+", default=["l2", "linf"], choices=["l2", "linf", "l1"])
    ap.add_argument("--jobs", type=int, default=2, help="worker processes of each run (default 2: the target's cores)")
    ap.add_argument("--time-budget", type=float, default=600.0, help="seconds per run (the target: 600)")
    args = ap.parse_args()
    _common.header("bench_conv: every conv model of ../shared/real-onnx, bound --n 2, first ReLU and deepest cut")
    rows = []
    with tempfile.TemporaryDirectory() as t:
        for model in args.models:
            if not (REAL / f"{model}.onnx").is_file():
                rows.append([model, "", "skipped: not found", "", "", "", "", ""])
                continue
            for norm in args.norms:
                rows.append(run_one(model, norm, Path(t), args.jobs, args.time_budget))
                print("  " + " | ".join(rows[-1]), flush=True)
    print()
    print(_common.table(["model", "norm", "first cut: pairs", "deepest cut: pairs", "data", "wall s", "CPU s",
                         "<= 10 min"], rows, "llllllrl"))
    _common.footer()
    return 0


if __name__ == "__main__":
    sys.exit(main())
