"""All-pairs closed-form eps at affine cuts against a bare numpy matrix product of the same size.

Target (issue): the affine all-pairs eps for 12,000 points within 3x of a bare numpy matrix
product of the same size.

``all_pairs_eps(plan, X_a, X_b)`` (fxverify/collision/affine.py) projects both sets once
onto the row space of the first affine map (n x 784 @ 784 x r, r = rank, 300 for linear1; no
projection at the input cut), then, block by block, forms |a|^2 + |b|^2 - 2 a.b with one matrix
product, recomputes entries lost to cancellation directly, takes the square root and halves it
(at the input cut, pixel data is handled as exact integers). Its output is the n_a x n_b matrix.

Compared, interleaved (the order rotates every repeat), each repeated R times, BLAS on one thread:
* all_pairs_eps at linear1 and at input, 6,000 + 6,000 points;
* the bare product X_a @ X_b.T with X of shape (6000, 784) (the same size as the data);
* the bare product at the projected dimension, (6000, r) @ (r, 6000);
* the projection alone (X_a @ V and X_b @ V), the part of the linear1 figure before the products.
Figures: median CPU (process_time = user + system) and wall seconds, and ratios of medians.
The system part (page faults of fresh temporaries) varies from run to run, so the user time
and the page faults are printed as well.
"""

from __future__ import annotations

import _common  # noqa: F401  (first: one BLAS thread for every library loaded below)

import argparse
import gc
import statistics
import sys
from pathlib import Path

import numpy as np


def load_points(n: int, data: str, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """The first n training images of MNIST digits 3 and 7 (pixels / 255) from an IDX directory,
    or uniform [0, 1) random data of the same shape when the directory is missing."""
    from fxverify.data import load_idx_dir, select_points

    if Path(data).is_dir():
        pts = select_points(load_idx_dir(data, "train"), (3, 7), n)
        return pts.X_a, pts.X_b, f"MNIST 3 vs 7 from {data}, first {n} per class"
    rng = np.random.default_rng(seed)
    return rng.random((n, 784)), rng.random((n, 784)), f"uniform [0, 1) random data, seed {seed} ({data} missing)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(_common.ROOT / "models/fcnn_mnist_3v7_benign.onnx"))
    ap.add_argument("--data", default=str(_common.ROOT / "data/mnist"), help="IDX directory (MNIST layout)")
    ap.add_argument("--n-per-class", type=int, default=6000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--block", type=int, default=None, help="all_pairs_eps block size (default: the library's)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    limiter = _common.pin_blas()  # noqa: F841  (keeps BLAS on one thread)
    import fxverify
    from fxverify.collision.affine import DEFAULT_BLOCK, all_pairs_eps, projection, row_space
    from fxverify.collision.plan import CutPlan
    from fxverify.norms import get_norm

    _common.header("bench_affine: all-pairs closed-form eps vs a bare matrix product")
    net = fxverify.load_model(args.model)
    Xa, Xb, origin = load_points(args.n_per_class, args.data, args.seed)
    n = len(Xa)
    block = args.block or DEFAULT_BLOCK
    lin, inp = CutPlan.of(net, "linear1", get_norm("l2")), CutPlan.of(net, "input", get_norm("l2"))
    V = row_space(lin).V
    r = V.shape[1]
    Pa, Pb = Xa @ V, Xb @ V  # projected data for the bare r-dimensional product (not timed)
    print(f"{n} + {n} points ({origin}); linear1 is {net.node('linear1').weight.shape[0]} x {net.node('linear1').weight.shape[1]}, "
          f"rank r = {r}; block {block}; {args.repeats} repeats, interleaved\n")

    methods = {
        "all_pairs_eps linear1": lambda: all_pairs_eps(lin, Xa, Xb, block=block),
        "all_pairs_eps input": lambda: all_pairs_eps(inp, Xa, Xb, block=block),
        f"bare X_a @ X_b.T ({n}x{Xa.shape[1]})": lambda: Xa @ Xb.T,
        f"bare P_a @ P_b.T ({n}x{r})": lambda: Pa @ Pb.T,
        f"projection only (2 x {n}x{Xa.shape[1]} @ {Xa.shape[1]}x{r})": lambda: (projection(lin, Xa),
                                                                             projection(lin, Xb)),
    }
    names = list(methods)
    cpu = {m: [] for m in names}
    wall = {m: [] for m in names}
    parts = {m: [] for m in names}  # (user s, system s, minor page faults)
    for rep in range(args.repeats):
        order = names[rep % len(names):] + names[: rep % len(names)]
        for m in order:
            gc.collect()
            with _common.timed() as t:
                out = methods[m]()
            cpu[m].append(t.cpu)
            wall[m].append(t.wall)
            parts[m].append((t.user, t.sys, t.faults))
            del out
        print(f"  repeat {rep + 1}/{args.repeats} done", flush=True)
    print()

    # spot check: a few entries of each all-pairs matrix against the direct formula
    rng = np.random.default_rng(1)
    ii, jj = rng.integers(0, n, 200), rng.integers(0, n, 200)
    E_lin, E_in = all_pairs_eps(lin, Xa, Xb, block=block), all_pairs_eps(inp, Xa, Xb, block=block)
    direct_lin = np.linalg.norm((Xb[jj] - Xa[ii]) @ V, axis=1) / 2
    direct_in = np.linalg.norm(Xb[jj] - Xa[ii], axis=1) / 2
    err_lin = float(np.max(np.abs(E_lin[ii, jj] - direct_lin) / direct_lin))
    err_in = float(np.max(np.abs(E_in[ii, jj] - direct_in) / direct_in))
    del E_lin, E_in

    med = {m: statistics.median(cpu[m]) for m in names}
    med_user = {m: statistics.median(x[0] for x in parts[m]) for m in names}
    bare_d, bare_r = names[2], names[3]
    rows = []
    for m in names:
        user, system, faults = (statistics.median(x[k] for x in parts[m]) for k in range(3))
        rows.append([m, f"{med[m]:.3f}", f"{min(cpu[m]):.3f}", f"{max(cpu[m]):.3f}",
                     f"{statistics.median(wall[m]):.3f}", f"{user:.3f}", f"{system:.3f}", f"{faults:,.0f}",
                     f"{med[m] / med[bare_d]:.2f}x", f"{med[m] / med[bare_r]:.2f}x"])
    print("CPU and wall seconds (median of repeats; min and max CPU too; CPU = user + system, with minor page faults)"
          "\nand CPU ratios to the bare products:")
    print(_common.table(["computation", "CPU s", "min", "max", "wall s", "user s", "system s", "page faults",
                         "/ bare 784-dim", f"/ bare {r}-dim"], rows))
    print(f"\nspot check, 200 entries vs the direct formula: max relative error linear1 {err_lin:.1e}, "
          f"input {err_in:.1e}")

    print(f"\nTarget: all-pairs eps (linear1, {2 * n:,} points) within 3x of the bare product of the same size")
    d = Xa.shape[1]
    for what, m, ref in ((f"linear1 / bare {d}-dim product", names[0], bare_d),
                         (f"linear1 / bare {r}-dim product", names[0], bare_r),
                         (f"input / bare {d}-dim product", names[1], bare_d)):
        ratio, ratio_user = med[m] / med[ref], med_user[m] / med_user[ref]
        print(f"  {what}: {ratio:.2f}x CPU ({ratio_user:.2f}x user time alone) -> {'MET' if ratio <= 3 else 'NOT MET'}")
    _common.footer()
    return 0


if __name__ == "__main__":
    sys.exit(main())
