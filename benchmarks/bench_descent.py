"""Descent speed and quality against the paper's method (``faithful``) on the same pairs.

Target (issue): descent pairs per CPU-second >= 30x the ``faithful`` method on the same pairs,
with eps equal or smaller on at least 95% of them.

For P deterministic cross-class pairs of the MNIST 3 vs 7 set, every solver profile (default:
faithful-cvxopt, the baseline, and descent-activeset; descent-cvxopt on request) runs
``Collider.collide_cuts(u, v, cuts)`` on the ReLU-side cuts (relu1, linear2, relu2, linear3
by default); the profiles are interleaved pair by pair (and the order rotates from pair to
pair) so that noise on a shared machine hits them alike. Then, also interleaved, each profile
runs relu1 alone (the paper's headline layer).

Note the starts: ``faithful`` starts every cut from the midpoint of the pair; ``descent``
starts each cut from the collision found at the shallower cut (and the midpoint), so its eps
never grows with depth.

Figures:
* CPU seconds per pair (time.process_time around collide_cuts, BLAS on one thread), pairs
  per CPU-second and the ratio against the baseline profile (total CPU over the same pairs);
* per cut: the wall seconds the Collision reports (``.seconds``; includes verification), LP
  solves (``.iterations``), and the eps comparison with the baseline: fraction of pairs with
  eps <= eps_baseline * (1 + 1e-6), and median / min / max of (eps - eps_baseline) / eps_baseline.
"""

from __future__ import annotations

import _common  # noqa: F401  (first: one BLAS thread for every library loaded below)

import argparse
import dataclasses
import json
import math
import statistics
import sys

import numpy as np

#: the default comparison: the paper's method against the shipped fast descent (the default
#: profile of the specs). Add descent-cvxopt (``--profiles faithful-cvxopt descent-cvxopt
#: descent-activeset``) to separate the algorithm from the LP backend; it costs ~8 CPU-s a
#: pair, so use fewer pairs then (``--pairs 10``) to stay within 10 minutes.
PROFILES = ("faithful-cvxopt", "descent-activeset")
CUTS = ("relu1", "linear2", "relu2", "linear3")
#: eps counts as "equal or smaller" when eps <= eps_baseline * (1 + REL_TOL)
REL_TOL = 1e-6


def pick_pairs(n: int, p: int, seed: int) -> list[tuple[int, int]]:
    """P cross-class pairs spread over the n x n grid: one row per stratum of n/P rows, and
    the column strata in a seeded permutation (a Latin-square-like design), deterministic."""
    if p > n:
        raise SystemExit(f"error: --pairs {p} is more than --n-per-class {n}")
    perm = np.random.default_rng(seed).permutation(p)
    mid = n // p // 2
    return [(k * n // p + mid, int(perm[k]) * n // p + mid) for k in range(p)]


def rel_diff(e: float, base: float) -> float:
    """(e - base) / base; +inf when only e is missing, -inf when only base is, 0 when both are."""
    if math.isinf(e) or math.isinf(base):
        return 0.0 if math.isinf(e) and math.isinf(base) else (math.inf if math.isinf(e) else -math.inf)
    return (e - base) / base if base > 0 else e - base


def not_worse(e: float, base: float) -> bool:
    return e <= base * (1 + REL_TOL) or math.isinf(base)


def fmt_rel(x: float) -> str:
    return "inf" if x == math.inf else ("-inf" if x == -math.inf else f"{x:+.2e}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(_common.ROOT / "models/fcnn_mnist_3v7_benign.onnx"))
    ap.add_argument("--spec", default=str(_common.ROOT / "specs/mnist_3v7.json"))
    ap.add_argument("--n-per-class", type=int, default=100, help="points per class the pairs are drawn from")
    ap.add_argument("--pairs", type=int, default=20, help="number of cross-class pairs (P)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the pair design")
    ap.add_argument("--profiles", nargs="+", default=list(PROFILES),
                    help="solver profiles, the first is the baseline (default: %(default)s)")
    ap.add_argument("--cuts", nargs="+", default=list(CUTS))
    ap.add_argument("--no-relu1-alone", action="store_true", help="skip the relu1-only runs")
    ap.add_argument("--json", help="also write every per-pair record to this file")
    args = ap.parse_args()

    limiter = _common.pin_blas()  # noqa: F841  (keeps BLAS on one thread)
    import fxverify
    from fxverify.collision import Collider
    from fxverify.results import CollisionStatus
    from fxverify.spec import load_spec

    _common.header("bench_descent: descent vs faithful on the same pairs")
    net = fxverify.load_model(args.model)
    spec = dataclasses.replace(load_spec(args.spec), n_per_class=args.n_per_class)
    pts = spec.load_points()
    pairs = pick_pairs(args.n_per_class, args.pairs, args.seed)
    profiles, base, cuts = args.profiles, args.profiles[0], tuple(args.cuts)
    from fxverify.config import resolve_engine

    colliders = {p: Collider(net, resolve_engine(p)) for p in profiles}

    # warm-up outside the measurements: backend imports, SVDs of every chain, relu1's descent
    wu, wv = pts.X_a[0], pts.X_b[-1]
    for p, col in colliders.items():
        col.collide_cuts(wu, wv, ("relu1",))
        for c in cuts:
            col.plan(c).row_space

    print(f"model {args.model}; {len(pairs)} pairs from {args.n_per_class} points per class "
          f"({pts.origin}); cuts {', '.join(cuts)}; baseline {base}")
    print(f"pairs (i, j): {pairs}\n")

    # ---- measurements, interleaved: per pair every profile, in an order rotating with the pair
    full = {p: [] for p in profiles}  # per pair: {"pair", "cpu", "wall", "cuts": {cut: {eps, seconds, ...}}}
    alone = {p: [] for p in profiles}  # per pair: {"pair", "cpu", "eps" at relu1, "found"}
    for k, (i, j) in enumerate(pairs):
        u, v = pts.X_a[i], pts.X_b[j]
        order = profiles[k % len(profiles):] + profiles[: k % len(profiles)]
        for p in order:
            with _common.timed() as t:
                res = colliders[p].collide_cuts(u, v, cuts)
            full[p].append({"pair": [i, j], "cpu": t.cpu, "wall": t.wall,
                            "cuts": {c: {"eps": r.eps, "seconds": r.seconds, "iterations": r.iterations,
                                         "status": r.status.value} for c, r in res.items()}})
        if not args.no_relu1_alone:
            for p in order:
                with _common.timed() as t:
                    r = colliders[p].collide_cuts(u, v, ("relu1",))["relu1"]
                alone[p].append({"pair": [i, j], "cpu": t.cpu, "eps": r.eps,
                                 "found": r.status is CollisionStatus.FOUND})
        line = "  ".join(f"{p} {full[p][-1]['cpu']:.2f}s" for p in profiles)
        print(f"  pair {k + 1:>3}/{len(pairs)} ({i:>3},{j:>3}): CPU {line}", flush=True)
    print()

    n = len(pairs)
    base_cpu = sum(r["cpu"] for r in full[base])

    # ---- table 1: whole pairs (all requested cuts)
    rows = []
    for p in profiles:
        cpu = [r["cpu"] for r in full[p]]
        per_pair_ratio = [b["cpu"] / r["cpu"] for b, r in zip(full[base], full[p])]
        lps = [sum(c["iterations"] for c in r["cuts"].values()) for r in full[p]]
        failed = sum(c["status"] != "found" for r in full[p] for c in r["cuts"].values())
        rows.append([p, f"{sum(cpu):.2f}", f"{sum(cpu) / n:.3f}", f"{statistics.median(cpu):.3f}",
                     f"{n / sum(cpu):.3f}", f"{base_cpu / sum(cpu):.2f}x", f"{statistics.median(per_pair_ratio):.2f}x",
                     f"{statistics.mean(lps):.1f}", failed])
    print(f"All cuts ({', '.join(cuts)}) per pair, CPU time (process_time), {n} pairs:")
    print(_common.table(["profile", "CPU s total", "CPU s/pair", "median", "pairs/CPU-s", f"ratio vs {base}",
                         "median per-pair ratio", "LP solves/pair", "failed cuts"], rows))
    print()

    # ---- table 2: per cut
    rows = []
    for c in cuts:
        base_sec = sum(r["cuts"][c]["seconds"] for r in full[base])
        for p in profiles:
            sec = sum(r["cuts"][c]["seconds"] for r in full[p])
            its = statistics.mean(r["cuts"][c]["iterations"] for r in full[p])
            eps = [r["cuts"][c]["eps"] for r in full[p]]
            beps = [r["cuts"][c]["eps"] for r in full[base]]
            ok = sum(not_worse(e, b) for e, b in zip(eps, beps))
            rd = [rel_diff(e, b) for e, b in zip(eps, beps)]
            fails = sum(r["cuts"][c]["status"] != "found" for r in full[p])
            rows.append([c if p == profiles[0] else "", p, f"{sec / n:.3f}", f"{base_sec / sec:.2f}x" if sec else "-",
                         f"{its:.1f}", f"{statistics.median(e for e in eps):.4f}", f"{ok}/{n} ({ok / n:.0%})",
                         fmt_rel(statistics.median(rd)), fmt_rel(min(rd)), fmt_rel(max(rd)), fails])
    print("Per cut: Collision.seconds (wall, includes verification) and eps vs the baseline on the same pair:")
    print(_common.table(["cut", "profile", "s/pair", "ratio", "LP solves", "median eps", "eps <= base",
                         "median rel diff", "min", "max", "failed"], rows, "llrrrrrrrrr"))
    print()

    # ---- every cut at once: pairs not worse at every cut, and pooled over (pair, cut)
    rows = []
    for p in profiles[1:]:
        all_ok = sum(all(not_worse(r["cuts"][c]["eps"], b["cuts"][c]["eps"]) for c in cuts)
                     for r, b in zip(full[p], full[base]))
        pooled = sum(not_worse(r["cuts"][c]["eps"], b["cuts"][c]["eps"]) for c in cuts
                     for r, b in zip(full[p], full[base]))
        m = n * len(cuts)
        rows.append([p, f"{all_ok}/{n} ({all_ok / n:.0%})", f"{pooled}/{m} ({pooled / m:.0%})"])
    if rows:
        print(f"eps <= {base} eps x (1 + {REL_TOL:g}):")
        print(_common.table(["profile", "pairs, at every cut", "(pair, cut) pooled"], rows))
        print()

    # ---- relu1 alone
    if not args.no_relu1_alone:
        base1 = sum(r["cpu"] for r in alone[base])
        rows = []
        for p in profiles:
            cpu = sum(r["cpu"] for r in alone[p])
            ok = sum(not_worse(r["eps"], b["eps"]) for r, b in zip(alone[p], alone[base]))
            rd = [rel_diff(r["eps"], b["eps"]) for r, b in zip(alone[p], alone[base])]
            rows.append([p, f"{cpu / n:.3f}", f"{n / cpu:.2f}", f"{base1 / cpu:.2f}x", f"{ok}/{n} ({ok / n:.0%})",
                         fmt_rel(statistics.median(rd)), fmt_rel(min(rd)), fmt_rel(max(rd)),
                         sum(not r["found"] for r in alone[p])])
        print("relu1 alone (collide_cuts(u, v, ('relu1',)); descent also computes input and linear1 in closed form):")
        print(_common.table(["profile", "CPU s/pair", "pairs/CPU-s", f"ratio vs {base}", "eps <= base",
                             "median rel diff", "min", "max", "failed"], rows))
        print()

    # ---- verdict against the target
    print("Target: >= 30x pairs per CPU-second of the baseline, eps equal or smaller on >= 95% of pairs")
    for p in profiles[1:]:
        ratio = base_cpu / sum(r["cpu"] for r in full[p])
        all_ok = sum(all(not_worse(r["cuts"][c]["eps"], b["cuts"][c]["eps"]) for c in cuts)
                     for r, b in zip(full[p], full[base])) / n
        verdict = "MET" if ratio >= 30 and all_ok >= 0.95 else "NOT MET"
        print(f"  {p}: all cuts {ratio:.2f}x, eps not worse at every cut on {all_ok:.0%} of pairs -> {verdict}")
        if not args.no_relu1_alone:
            r1 = sum(r["cpu"] for r in alone[base]) / sum(r["cpu"] for r in alone[p])
            ok1 = sum(not_worse(r["eps"], b["eps"]) for r, b in zip(alone[p], alone[base])) / n
            verdict = "MET" if r1 >= 30 and ok1 >= 0.95 else "NOT MET"
            print(f"  {p}: relu1 alone {r1:.2f}x, eps not worse on {ok1:.0%} of pairs -> {verdict}")

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"pairs": pairs, "cuts": cuts, "full": full, "relu1_alone": alone}, f, indent=1)
        print(f"\nwrote {args.json}")
    _common.footer()
    return 0


if __name__ == "__main__":
    sys.exit(main())
