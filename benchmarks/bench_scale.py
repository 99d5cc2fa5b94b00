"""End-to-end rate of the main job (`fxverify bound`), extrapolated to the 1000-point study.

Target (issue): all cuts of the regular FCNN for the 1000-point 3v7 set (500 per class,
250,000 pairs) on a 9-value eps grid in <= 30 min on 2 cores.

Running 250,000 pairs is far beyond a benchmark's time, so this runs the real command line

    python -m fxverify bound MODEL --spec <spec with n_per_class K> --out <tmp> --jobs J

for small K (K^2 pairs each, default K = 10 and 20: 100 and 400 pairs) in a fresh output
directory, timing the wall clock and the CPU of the child processes (its worker processes
included), and how many cores other processes used meanwhile. Three extrapolations to
250,000 pairs: the rate of the largest run; a straight line through the runs, wall = fixed +
per_pair x pairs, which separates the start-up cost (model load and onnxruntime check, worker
start) from the per-pair cost; and the CPU per pair divided by the jobs (cores fully used, no
other load). The verdict uses the most favourable of them. ``results.json`` gives the time of
the closed-form cuts (input, linear1: all pairs at once) and the summed per-collision seconds
of the descent cuts.

For comparison, the same solver profile then runs in this process (BLAS on one thread) on the
first pairs of the largest run, ``Collider.collide_cuts`` at the descent cuts only: the ratio of
the command's marginal CPU per pair to it is the overhead of the pipeline (workers, store,
verification is in both).
"""

from __future__ import annotations

import _common  # noqa: F401  (sets one BLAS thread for the children too, through the environment)

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_PAIRS = 250_000
TARGET_SECONDS = 30 * 60


def child_cpu() -> float:
    """CPU seconds (user + system) of every waited-for child process so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_bound(model: str, spec: dict, k: int, jobs: int, solver: str | None, work: Path) -> dict:
    """One `fxverify bound` run on the first k images per class; returns its figures."""
    spec = dict(spec, n_per_class=k)
    spec_path = work / f"spec_k{k}.json"
    spec_path.write_text(json.dumps(spec, indent=2))
    out = work / f"out_k{k}"
    cmd = [sys.executable, "-m", "fxverify", "bound", model, "--spec", str(spec_path), "--out", str(out),
           "--jobs", str(jobs)] + (["--solver", solver] if solver else [])
    c0, w0, b0 = child_cpu(), time.perf_counter(), _common.system_busy()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - w0, child_cpu() - c0
    others = _common.system_busy() - b0 - cpu  # CPU seconds other processes took meanwhile
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"error: `{' '.join(cmd)}` exited with {proc.returncode}")
    doc = json.loads((out / "results.json").read_text())
    closed = sum(c["solver_seconds"] for c in doc["cuts"] if c["method"] == "closed_form")
    descent = sum(c["solver_seconds"] for c in doc["cuts"] if c["method"] != "closed_form")
    return {"k": k, "pairs": k * k, "wall": wall, "cpu": cpu, "others": max(0.0, others),
            "analysis_seconds": doc["seconds"], "closed_form_seconds": closed, "descent_seconds": descent,
            "complete": doc["complete"], "failed": sum(c["pairs_failed"] for c in doc["cuts"]),
            "solver": doc["solver"]["name"],
            "cuts": [c["cut"] for c in doc["cuts"]], "eps": doc["spec"]["eps"], "cmd": " ".join(cmd)}


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares line y = fixed + slope * x; one point: the line through the origin."""
    if len(xs) < 2:
        return 0.0, ys[0] / xs[0]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - slope * mx, slope


def inprocess_cpu_per_pair(model: str, spec: dict, k: int, pairs: int, solver: str | None) -> tuple[float, int]:
    """CPU seconds per pair of collide_cuts at the descent cuts, in this process, on ``pairs``
    pairs spread evenly over the k x k pairs of the run (every (k^2 / pairs)-th, row-major)."""
    limiter = _common.pin_blas()  # noqa: F841  (keeps BLAS on one thread)
    import fxverify
    from fxverify.collision import Collider
    from fxverify.spec import parse_spec

    sp = parse_spec(dict(spec, n_per_class=k))
    net = fxverify.load_model(model)
    pts = sp.load_points()
    from fxverify.config import resolve_engine

    col = Collider(net, resolve_engine(solver or sp.solver))
    cuts = tuple(c for c in sp.resolve_cuts(net) if col.plan(c).kind not in ("identity", "affine"))
    every = [(i, j) for i in range(k) for j in range(k)]
    todo = every[::max(1, len(every) // pairs)][:pairs]
    col.collide_cuts(pts.X_a[-1], pts.X_b[-1], cuts)  # warm-up: backend imports, SVDs
    with _common.timed() as t:
        for i, j in todo:
            col.collide_cuts(pts.X_a[i], pts.X_b[j], cuts)
    return t.cpu / len(todo), len(todo)


def anytime_quality(model: str, spec: dict, k: int, solver: str | None, out: Path,
                    fractions: list[float]) -> tuple[list[list], int] | None:
    """How close the bounds of a run stopped by --time-budget come to the full run's, by pair order.

    Loads the complete store of the K = k run (nothing is recomputed) and, for each order and
    each fraction f, keeps only the first f of the descent pairs in that order (the others take
    the shallower closed-form budget, as an interrupted run does). Reports the share of the
    bound improvement (full run over no descent pair at all) that the kept pairs already give,
    summed over the descent cuts and the eps grid, for the 0-1 and the cross-entropy bound.
    None when the spec has no descent cut."""
    from dataclasses import replace

    import numpy as np

    import fxverify
    from fxverify.analysis import bounds_from_distances
    from fxverify.collision import Collider
    from fxverify.pipeline import Distances, compute_distances, promise_budgets, promise_order
    from fxverify.spec import parse_spec

    sp = parse_spec(dict(spec, n_per_class=k))
    net = fxverify.load_model(model)
    pts = sp.load_points()
    from fxverify.config import resolve_engine

    profile = resolve_engine(solver or sp.solver)
    d = compute_distances(net, pts, sp.resolve_cuts(net), profile, out)
    if not d.complete:
        raise SystemExit(f"error: the K = {k} store in {out} is incomplete")
    closed = [c for c in d.cuts if d.by_cut[c].method == "closed_form"]
    paired = [c for c in d.cuts if c not in closed]
    if not paired:
        return None
    shallow = promise_budgets(Collider(net, profile), pts, paired[0])  # what the pipeline orders by
    n_a, n_b = shallow.shape
    orders = {"file (row by row)": [(i, j) for i in range(n_a) for j in range(n_b)],
              "closed-form eps ascending": [divmod(int(f), n_b) for f in np.argsort(shallow, axis=None, kind="stable")],
              "promise (fxverify default)": promise_order(shallow)}

    def totals(mask):
        by_cut = {c: (d.by_cut[c] if c in closed else
                      replace(d.by_cut[c], eps=np.where(mask, d.by_cut[c].eps, np.inf), computed=mask))
                  for c in d.cuts}
        cuts, _ = bounds_from_distances(Distances(d.cuts, by_cut, n_a, n_b), sp.eps)
        recs = [r for c in cuts if c.cut in paired for r in c.records]
        return np.array([sum(r.loss01_lower for r in recs), sum(r.ce_lower for r in recs)])

    none, full = totals(np.zeros((n_a, n_b), bool)), totals(np.ones((n_a, n_b), bool))
    rows = []
    for name, order in orders.items():
        row = [name]
        for f in fractions:
            mask = np.zeros((n_a, n_b), bool)
            for i, j in order[:round(f * n_a * n_b)]:
                mask[i, j] = True
            got = totals(mask)
            share = [(g - z) / (h - z) if h > z else 1.0 for g, z, h in zip(got, none, full)]
            row.append(f"{share[0]:.0%} / {share[1]:.0%}")
        rows.append(row)
    return rows, n_a * n_b


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(_common.ROOT / "models/fcnn_mnist_3v7_benign.onnx"))
    ap.add_argument("--spec", default=str(_common.ROOT / "specs/mnist_3v7.json"),
                    help="base spec (its eps grid, data and solver; n_per_class is replaced)")
    ap.add_argument("--k", type=int, nargs="+", default=[10, 20], help="points per class of each run")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--solver", default=None, help="solver profile (default: the spec's)")
    ap.add_argument("--inprocess-pairs", type=int, default=40,
                    help="pairs (spread over the largest run) run in this process for the overhead ratio (0: skip)")
    ap.add_argument("--anytime", type=float, nargs="*", default=[0.05, 0.1, 0.25, 0.5],
                    help="fractions of the largest run's pairs for the anytime comparison (none: skip)")
    ap.add_argument("--keep", help="keep the specs and output directories under this directory")
    args = ap.parse_args()

    _common.header("bench_scale: `fxverify bound` end to end, extrapolated to 250,000 pairs")
    base = json.loads(Path(args.spec).read_text())
    spec_dir = Path(args.spec).resolve().parent
    for key, value in base["data"].items():  # a relative data path is relative to the base spec
        if key != "embedded" and not os.path.isabs(value):
            base["data"][key] = str(spec_dir / value)

    tmp = None if args.keep else tempfile.TemporaryDirectory(prefix="bench_scale_")
    work = Path(args.keep) if args.keep else Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    runs = []
    try:
        for k in args.k:
            runs.append(run_bound(args.model, base, k, args.jobs, args.solver, work))
            r = runs[-1]
            print(f"  K = {k}: {r['pairs']} pairs in {r['wall']:.1f} s wall", flush=True)
        anytime = None
        if args.anytime:
            anytime = anytime_quality(args.model, base, runs[-1]["k"], args.solver, work / f"out_k{runs[-1]['k']}",
                                      args.anytime)
    finally:
        if tmp is not None:
            tmp.cleanup()
    print(f"\ncommand (per run): {runs[0]['cmd']}")
    print(f"solver profile {runs[0]['solver']}; cuts {', '.join(runs[0]['cuts'])}; "
          f"{len(runs[0]['eps'])} eps values {runs[0]['eps']}\n")

    rows = []
    for r in runs:
        rows.append([r["k"], r["pairs"], f"{r['wall']:.1f}", f"{r['cpu']:.1f}", f"{r['others'] / r['wall']:.2f}",
                     f"{r['pairs'] / r['wall']:.2f}", f"{r['analysis_seconds']:.1f}", f"{r['closed_form_seconds']:.2f}",
                     f"{r['descent_seconds']:.1f}", f"{r['descent_seconds'] / r['pairs']:.3f}", r["failed"],
                     "yes" if r["complete"] else "NO"])
    print("Per run (wall: the whole command; CPU: all its processes; other load: cores used by other processes "
          "meanwhile, on average;\nclosed form / descent: seconds from results.json, descent summed over pairs and "
          "workers):")
    print(_common.table(["K", "pairs", "wall s", "CPU s", "other load", "pairs/s", "analysis s", "closed-form s",
                         "descent s", "descent s/pair", "failed", "complete"], rows))

    # Three extrapolations to TARGET_PAIRS; other processes on a shared machine only slow the
    # wall-clock ones, so the verdict uses the most favourable of the three.
    last = runs[-1]
    xs = [r["pairs"] for r in runs]
    wall_fixed, wall_pp = fit(xs, [r["wall"] for r in runs])
    cpu_fixed, cpu_pp = fit(xs, [r["cpu"] for r in runs])
    if cpu_pp <= 0 or len(runs) < 2:  # one run (or nonsense): CPU per pair of the largest run
        cpu_pp = last["cpu"] / last["pairs"]
    estimates = {
        f"rate of the largest run (K = {last['k']}, start-up included)": last["wall"] / last["pairs"] * TARGET_PAIRS,
        f"CPU per pair / {args.jobs} jobs (cores fully used, no other load)": cpu_pp * TARGET_PAIRS / args.jobs,
    }
    if len(runs) >= 2 and wall_fixed >= 0 and wall_pp > 0:
        estimates["line through the runs (wall = fixed + per pair x pairs)"] = wall_fixed + wall_pp * TARGET_PAIRS
    share = last["closed_form_seconds"] / (last["closed_form_seconds"] + last["descent_seconds"])

    if len(runs) >= 2:
        note = "" if wall_fixed >= 0 else "  (negative start-up: noise, or the runs' pairs differ in cost; not used)"
        print(f"\nfit: wall = {wall_fixed:.1f} s + {wall_pp:.4f} s x pairs  ->  {1 / wall_pp:.2f} pairs/s marginal "
              f"with {args.jobs} jobs{note}")
        print(f"fit: CPU  = {cpu_fixed:.1f} s + {cpu_pp:.4f} s x pairs  ->  {1 / cpu_pp:.2f} pairs per CPU-second")
    print(f"closed-form cuts: {share:.2%} of the collision seconds at K = {last['k']} (the rest is descent)")
    if args.inprocess_pairs > 0:
        inproc, m = inprocess_cpu_per_pair(args.model, base, last["k"], args.inprocess_pairs, args.solver)
        print(f"in this process, {m} pairs spread over K = {last['k']}: {inproc:.4f} CPU s/pair at the descent cuts; "
              f"the command's CPU per pair is {cpu_pp / inproc:.2f}x that")

    if anytime is not None:
        any_rows, any_pairs = anytime
        print(f"\nAnytime (--time-budget): share of the full run's bound improvement over the closed forms alone "
              f"that the first pairs\nof each order give (0-1 / cross-entropy, summed over the descent cuts and "
              f"eps values; K = {last['k']}, {any_pairs} pairs):")
        print(_common.table(["order"] + [f"first {f:.0%}" for f in args.anytime], any_rows))

    print(f"\nTarget: {TARGET_PAIRS:,} pairs, all cuts, {len(last['eps'])} eps values in <= "
          f"{TARGET_SECONDS / 60:.0f} min on 2 cores "
          f"(needs {TARGET_PAIRS / TARGET_SECONDS:.1f} pairs/s, i.e. <= "
          f"{TARGET_SECONDS * args.jobs / TARGET_PAIRS * 1000:.1f} ms CPU per pair on {args.jobs} cores)")
    print(_common.table(["extrapolation", "seconds", "hours", "/ target"],
                        [[k, f"{v:,.0f}", f"{v / 3600:.2f}", f"{v / TARGET_SECONDS:.1f}x"]
                         for k, v in estimates.items()]))
    best = min(estimates.values())
    print(f"  -> {'MET' if best <= TARGET_SECONDS else 'NOT MET'}: the most favourable estimate is "
          f"{best / TARGET_SECONDS:.1f}x the target (measured {cpu_pp * 1000:.0f} ms CPU per pair)")
    _common.footer()
    return 0


if __name__ == "__main__":
    sys.exit(main())
