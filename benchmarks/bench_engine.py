"""The collision engine on models beyond the paper's FCNNs, and the norms side by side.

1. ``fxverify collide ../shared/real-onnx/verivital_mnist_maxpool.onnx --spec specs/mnist_3v7.json
   --cut relu1 --pair I J`` (a convolution with 23,328 ReLUs), as a user runs it: the real CLI
   in a subprocess, wall time per pair including the model's load (target: <= 10 s a pair).
2. The paper's CNN (models/cnn_mnist_3v7_benign.onnx) at relu1 and pool1, l2: CPU seconds, LP
   solves and eps per pair (``Collider.collide_cuts``, this process, BLAS on one thread).
3. The regular FCNN at relu1, linear2, relu2, linear3 under l2, l-inf and l1 budgets (the
   default profile: the active-set solver for l2, HiGHS for the LPs), interleaved pair by pair:
   CPU seconds a pair and the ratio to l2.

Each part runs on the first images of MNIST 3 vs 7 (embedded data); options change the pairs.
"""

from __future__ import annotations

import _common  # noqa: F401  (sets BLAS threads before numpy loads)

import argparse
import resource
import statistics
import subprocess
import sys
import time

ROOT = _common.ROOT
REAL = ROOT.parent / "shared" / "real-onnx"


def part_cli(pairs, timeout):
    model = REAL / "verivital_mnist_maxpool.onnx"
    if not model.is_file():
        print(f"1. skipped: {model} not found\n")
        return
    print("1. fxverify collide verivital_mnist_maxpool.onnx --cut relu1 (real CLI, wall time incl. load)")
    rows = []
    for i, j in pairs:
        cmd = [sys.executable, "-m", "fxverify", "collide", str(model), "--spec", str(ROOT / "specs" / "mnist_3v7.json"),
               "--cut", "relu1", "--pair", str(i), str(j), "--json"]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        if res.returncode:
            rows.append([f"({i}, {j})", "error", "", res.stderr.strip()[-80:], "", ""])
            continue
        import json

        out = json.loads(res.stdout)["cuts"]
        r = out["relu1"]
        rows.append([f"({i}, {j})", f"{wall:.2f}", f"{cpu:.2f}", f"{r['seconds']:.2f}", r["iterations"],
                     f"{r['eps']:.6f} (input {out['input']['eps']:.6f})"])
    print(_common.table(["pair", "wall s", "CPU s", "relu1 s", "LP solves", "eps"], rows))
    for k, what in ((1, "wall"), (2, "CPU (the command, user + sys)")):
        vals = [float(r[k]) for r in rows if r[1] != "error"]
        if vals:
            verdict = "MET" if max(vals) <= 10.0 else "NOT MET"
            print(f"   {what}: max {max(vals):.2f} s, mean {statistics.mean(vals):.2f} s a pair (target <= 10 s): {verdict}")
    print()


def part_cnn(pairs, pts, cuts):
    import fxverify
    from fxverify.collision import Collider
    from fxverify.config import resolve_engine

    net = fxverify.load_model(ROOT / "models" / "cnn_mnist_3v7_benign.onnx")
    col = Collider(net, resolve_engine())
    col.collide_cuts(pts.X_a[-1], pts.X_b[-1], ("linear1",))  # warm-up: onnxruntime session, row space
    print(f"2. the paper's CNN (models/cnn_mnist_3v7_benign.onnx), l2, cuts {', '.join(cuts)}")
    rows = []
    for i, j in pairs:
        for cut in cuts:
            with _common.timed() as t:
                r = col.collide_cuts(pts.X_a[i], pts.X_b[j], (cut,))[cut]
            rows.append([f"({i}, {j})", cut, f"{t.cpu:.2f}", r.iterations, r.status.value, f"{r.eps:.6f}",
                         r.message[:60]])
    print(_common.table(["pair", "cut", "CPU s", "LP solves", "status", "eps", "note"], rows, "llrrlrl"))
    print()


def part_norms(pairs, pts, cuts, norms=("l2", "linf", "l1")):
    import fxverify
    from fxverify.collision import Collider
    from fxverify.config import resolve_engine

    net = fxverify.load_model(ROOT / "models" / "fcnn_mnist_3v7_benign.onnx")
    norms = tuple(norms)
    cols = {n: Collider(net, resolve_engine(None, n)) for n in norms}
    for col in cols.values():
        col.collide_cuts(pts.X_a[-1], pts.X_b[-1], ("linear1",))
    cpu = {n: [] for n in norms}
    lps = {n: [] for n in norms}
    print(f"3. the regular FCNN, cuts {', '.join(cuts)}: each norm's default backend, interleaved pair by pair")
    rows = []
    for k, (i, j) in enumerate(pairs):
        order = norms[k % len(norms):] + norms[:k % len(norms)]
        for n in order:
            with _common.timed() as t:
                res = cols[n].collide_cuts(pts.X_a[i], pts.X_b[j], cuts)
            cpu[n].append(t.cpu)
            lps[n].append(sum(res[c].iterations for c in cuts))
            rows.append([f"({i}, {j})", n, f"{t.cpu:.2f}", lps[n][-1],
                         " ".join(f"{res[c].eps:.4f}" for c in cuts)])
    print(_common.table(["pair", "norm", "CPU s", "LP solves", "eps at " + ", ".join(cuts)], rows, "llrrl"))
    base = statistics.mean(cpu["l2"])
    print()
    print(_common.table(["norm", "CPU s a pair", "LP solves a pair", "CPU s an LP", "x l2"],
                        [[n, f"{statistics.mean(cpu[n]):.2f}", f"{statistics.mean(lps[n]):.1f}",
                          f"{sum(cpu[n]) / max(1, sum(lps[n])):.3f}", f"{statistics.mean(cpu[n]) / base:.1f}"]
                         for n in norms]))
    print()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=3, help="pairs per part (the i-th image of each class)")
    ap.add_argument("--parts", nargs="+", default=["cli", "cnn", "norms"], choices=["cli", "cnn", "norms"])
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per CLI call")
    ap.add_argument("--norms", nargs="+", default=["l2", "linf", "l1"], choices=["l2", "linf", "l1"],
                    help="norms of part 3 (l2 first: the ratios are to it)")
    args = ap.parse_args()
    limiter = _common.pin_blas()  # noqa: F841
    from fxverify.spec import load_spec

    _common.header("bench_engine: convolutions, max-pools and norms")
    pts = load_spec(ROOT / "specs" / "mnist_3v7.json").load_points()
    pairs = [(k, k) for k in range(args.pairs)]
    if "cli" in args.parts:
        part_cli(pairs, args.timeout)
    if "cnn" in args.parts:
        part_cnn(pairs, pts, ("relu1", "pool1"))
    if "norms" in args.parts:
        part_norms(pairs, pts, ("relu1", "linear2", "relu2", "linear3"), args.norms)
    _common.footer()
    return 0


if __name__ == "__main__":
    sys.exit(main())
