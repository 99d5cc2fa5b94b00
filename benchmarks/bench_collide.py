"""One-off calls: ``fxverify.collide(net, cut, u, v)`` with the documented defaults against the
paper-faithful method, per call, on random MNIST pairs.

Target (issue 14): the default >= 30x the faithful method's calls per CPU-second at relu1 and at
relu2 of the regular FCNN, with eps never worse. Each call is what a user writes:
``fxverify.collide(net, cut, u, v)`` (default profile, its caches warm after the first call on
the network, as for a user calling it in a loop) and
``fxverify.collide(net, cut, u, v, method="faithful", solver="faithful-cvxopt")``; calls are
interleaved pair by pair, in a rotating order, timed with CPU time (BLAS on one thread).
"""

from __future__ import annotations

import _common  # noqa: F401  (sets BLAS threads before numpy loads)

import argparse
import statistics
import sys

import numpy as np

ROOT = _common.ROOT


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=12)
    ap.add_argument("--cuts", nargs="+", default=["relu1", "relu2"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default=str(ROOT / "models" / "fcnn_mnist_3v7_benign.onnx"))
    args = ap.parse_args()
    limiter = _common.pin_blas()  # noqa: F841
    import fxverify
    from fxverify.data import load_embedded, select_points

    _common.header("bench_collide: one-off fxverify.collide calls, default vs faithful")
    net = fxverify.load_model(args.model)
    pts = select_points(load_embedded("mnist"), (3, 7), 500)
    rng = np.random.default_rng(args.seed)
    pairs = [(int(rng.integers(500)), int(rng.integers(500))) for _ in range(args.pairs)]
    calls = {"default": lambda c, u, v: fxverify.collide(net, c, u, v),
             "faithful": lambda c, u, v: fxverify.collide(net, c, u, v, method="faithful", solver="faithful-cvxopt")}
    for f in calls.values():  # warm-up: imports, row spaces, onnxruntime sessions (pair outside the set)
        for c in args.cuts:
            f(c, pts.X_a[-1], pts.X_b[-1])
    print(f"model {args.model}; {len(pairs)} random pairs of the first 500 MNIST 3s and 7s (seed {args.seed})\n")
    rows, summary = [], []
    for cut in args.cuts:
        cpu = {k: [] for k in calls}
        eps = {k: [] for k in calls}
        for n, (i, j) in enumerate(pairs):
            order = list(calls) if n % 2 == 0 else list(calls)[::-1]
            for k in order:
                with _common.timed() as t:
                    r = calls[k](cut, pts.X_a[i], pts.X_b[j])
                cpu[k].append(t.cpu)
                eps[k].append(r.eps)
            rows.append([cut, f"({i}, {j})", f"{cpu['default'][-1] * 1e3:.0f}", f"{cpu['faithful'][-1] * 1e3:.0f}",
                         f"{eps['default'][-1]:.5f}", f"{eps['faithful'][-1]:.5f}"])
        ratio = sum(cpu["faithful"]) / sum(cpu["default"])
        worse = sum(a > b * (1 + 1e-6) for a, b in zip(eps["default"], eps["faithful"]))
        summary.append([cut, f"{statistics.mean(cpu['default']) * 1e3:.0f}",
                        f"{statistics.mean(cpu['faithful']) * 1e3:.0f}", f"{ratio:.1f}x", f"{worse}/{len(pairs)}",
                        "MET" if ratio >= 30 and worse == 0 else "NOT MET"])
    print(_common.table(["cut", "pair", "default ms", "faithful ms", "default eps", "faithful eps"], rows))
    print()
    print(_common.table(["cut", "default ms/call", "faithful ms/call", "speed-up", "eps worse", "verdict"], summary))
    _common.footer()
    return 0


if __name__ == "__main__":
    sys.exit(main())
