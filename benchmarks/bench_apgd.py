"""The Auto-PGD baseline against the descent, side by side on the same pairs.

For each model and cut, the same random cross-class pairs get ``Collider.collide`` with the
default engine (the descent; it keeps the closed-form collision of the first linear layer when
that is better) and with ``method="apgd"`` (the attack, polished by one LP, verified),
interleaved pair by pair with a rotating order, timed with CPU time (BLAS on one thread).

Reported per cut: the share of pairs where the attack reaches the descent's eps (eps_apgd <=
1.01 eps_descent), where it is strictly better (< 0.99) and where it finds no verified collision;
the ratio eps_apgd / eps_descent (median, mean, max); CPU seconds a pair of each method. The
paper calls the Auto-PGD baseline "less effective" than its descent: it holds at a cut when
the attack reaches the descent's eps on fewer pairs than it is beaten, with its median ratio
above 1.

Defaults: the shipped 784-300-200-2 FCNN and the tiny 784-10-10-2 FCNN (every ReLU-side cut),
and the paper's CNN at relu1; 20 pairs of the first 500 embedded MNIST 3s and 7s (seed 0).
The attack's settings (100 iterations a budget, 10 bisections, success at 1% of the starting
feature distance) were chosen on 6 other pairs (the first 20 images, specs/mnist_3v7.json).
"""

from __future__ import annotations

import _common  # noqa: F401  (sets BLAS threads before numpy loads)

import argparse
import json
import statistics

import numpy as np

ROOT = _common.ROOT
DEFAULT = [("fcnn_mnist_3v7_benign", ("relu1", "linear2", "relu2", "linear3")),
           ("fcnn_tiny_mnist_3v7_benign", ("relu1", "linear2", "relu2", "linear3")),
           ("cnn_mnist_3v7_benign", ("relu1",))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--models", nargs="+", default=None, help="MODEL:CUT,CUT ... (default: see the docstring)")
    ap.add_argument("--json", default=None, help="also write the per-pair results here")
    args = ap.parse_args()
    limiter = _common.pin_blas()  # noqa: F841
    import fxverify
    from fxverify.collision import Collider
    from fxverify.data import load_embedded, select_points

    _common.header("bench_apgd: Auto-PGD baseline vs the descent, same pairs")
    plan = DEFAULT if not args.models else [(m.split(":")[0], tuple(m.split(":")[1].split(","))) for m in args.models]
    pts = select_points(load_embedded("mnist"), (3, 7), 500)
    rng = np.random.default_rng(args.seed)
    pairs = [(int(rng.integers(20, 500)), int(rng.integers(20, 500))) for _ in range(args.pairs)]
    print(f"{len(pairs)} random pairs of the first 500 MNIST 3s and 7s (images 20-499; seed {args.seed})\n")
    rows, detail = [], []
    for stem, cuts in plan:
        net = fxverify.load_model(ROOT / "models" / f"{stem}.onnx")
        cols = {"descent": Collider(net, fxverify.resolve_engine(None)),
                "apgd": Collider(net, fxverify.resolve_engine(None, method="apgd"))}
        for c in cols.values():  # warm-up (row spaces, sessions) on a pair outside the set
            for cut in cuts:
                c.collide(cut, pts.X_a[0], pts.X_b[0])
        for cut in cuts:
            eps = {k: [] for k in cols}
            cpu = {k: [] for k in cols}
            for n, (i, j) in enumerate(pairs):
                for k in (list(cols) if n % 2 == 0 else list(cols)[::-1]):
                    with _common.timed() as t:
                        r = cols[k].collide(cut, pts.X_a[i], pts.X_b[j])
                    eps[k].append(r.eps if r.status.value == "found" else np.inf)
                    cpu[k].append(t.cpu)
                detail.append({"model": stem, "cut": cut, "pair": [i, j], "eps_descent": eps["descent"][-1],
                               "eps_apgd": eps["apgd"][-1], "cpu_descent": cpu["descent"][-1],
                               "cpu_apgd": cpu["apgd"][-1]})
            ratio = np.array(eps["apgd"]) / np.array(eps["descent"])
            fin = ratio[np.isfinite(ratio)]
            rows.append([stem.replace("_mnist_3v7_benign", ""), cut, f"{np.mean(ratio <= 1.01):.0%}",
                         f"{np.mean(ratio < 0.99):.0%}", f"{np.mean(~np.isfinite(ratio)):.0%}",
                         f"{np.median(ratio):.3f}" if np.isfinite(np.median(ratio)) else "inf",
                         f"{fin.mean():.3f}" if fin.size else "-", f"{fin.max():.3f}" if fin.size else "-",
                         f"{statistics.mean(cpu['descent']):.3f}", f"{statistics.mean(cpu['apgd']):.3f}"])
            print(_common.table(["model", "cut", "reaches", "better", "none", "median", "mean", "max",
                                 "CPU descent", "CPU apgd"], [rows[-1]]).splitlines()[-1], flush=True)
    print()
    print(_common.table(["model", "cut", "reaches (<=1.01)", "better (<0.99)", "no collision", "ratio median",
                         "mean", "max", "CPU-s descent", "CPU-s apgd"], rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(detail, f, indent=1, default=float)
    _common.footer()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
