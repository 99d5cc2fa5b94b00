"""Regenerate the paper's figures from the shipped models: ``python experiments/run.py NAME [...]``.

Every experiment is built on fxverify's public API (``load_model``, ``load_spec``,
``resolve_engine``, ``Collider``, ``bound``, ``lower_bounds``):

* **Points**: a seeded uniform sample of 1,500 training images per class from the full IDX files
  (``experiments/specs/*_pool.json``, seed 2021; ``scripts/fetch_data.sh data`` fetches them),
  permuted with the same seed and split into three disjoint subsets of 500. Closed-form cuts
  (input, first linear layer; l2 without a box) use all three subsets (n = 500 each); cuts that
  need the descent use the first ``n`` points of subset 0 (n = 100 on MNIST, 50 on
  Fashion-MNIST), and a layer-wise figure shows every cut on those same points.
* **Budgets**: the descent's per-pair budgets live in small committed files under
  ``experiments/budgets/`` (:mod:`budgets`), filled pair by pair and resumed on any machine;
  closed-form budgets are recomputed (seconds) with ``fxverify.bound``.
* **Bands**: every curve has a 95% percentile-bootstrap band (``--resamples``, default 200
  resamples of the n points of each class; matching and cross-entropy recomputed on the induced
  conflict graph, no new collisions; one resample set per experiment, so differences between
  curves are paired) (:mod:`bands`).

Outputs per experiment under ``--out`` (default ``experiments/out``): ``NAME/summary.json``
(every curve with its band, the commit, machine and times) and the two plots; ``--figures DIR``
copies the plots there (``docs/figures``).

    python experiments/run.py --list
    python experiments/run.py fig5 fig6 --figures docs/figures      # compute what is missing, plot
    python experiments/run.py --compute-only --stages 50,100 fig5 ... # the long runs (resumable)
    python experiments/run.py --no-compute --figures docs/figures     # plot from the stored budgets
    python experiments/run.py --smoke                                 # every experiment at tiny n (CI)
"""

from __future__ import annotations

import os

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS"):
    os.environ.setdefault(_v, "1")  # the descent's small LPs only contend with threaded BLAS

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, replace  # noqa: E402
from functools import lru_cache  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import fxverify  # noqa: E402
from budgets import BudgetFile, BudgetKey, git_revision, load_budgets  # noqa: E402

MODELS = ROOT / "models"
BUDGETS = HERE / "budgets"
SEED = 2021
POOL = {"mnist": HERE / "specs" / "mnist_3v7_pool.json", "fmnist": HERE / "specs" / "fmnist_3v7_pool.json"}
SUBSET = 500  # points per class in each of the three disjoint closed-form subsets
#: the budgets of every curve: 0.1 steps over [1, 3], where the crossover is tested
EPS = tuple([0.0, 0.5] + [round(1.0 + 0.1 * k, 1) for k in range(21)] + [3.5, 4.0, 4.5, 5.0])
CLOSED = ("input", "linear1")  # cuts with a closed form (l2, no box)
LAYERS = ("input", "linear1", "relu1", "linear2", "relu2", "linear3")

METHODS_MNIST = {"benign": "fcnn_mnist_3v7_benign", "PGD 1": "fcnn_mnist_3v7_pgd1", "PGD 2": "fcnn_mnist_3v7_pgd2",
                 "PGD 3": "fcnn_mnist_3v7_pgd3", "TRADES 2": "fcnn_mnist_3v7_trades2"}
METHODS_FMNIST = {"benign": "fcnn_fmnist_3v7_benign", "PGD 1": "fcnn_fmnist_3v7_pgd1",
                  "PGD 2": "fcnn_fmnist_3v7_pgd2", "PGD 3": "fcnn_fmnist_3v7_pgd3",
                  "TRADES 2": "fcnn_fmnist_3v7_trades2"}


@dataclass(frozen=True)
class Experiment:
    title: str
    figure: str  # the paper's figure(s) this regenerates
    dataset: str  # "mnist" or "fmnist"
    models: dict  # label -> model file stem
    cuts: tuple  # one cut: a comparison across models; several: layer-wise curves of one model
    n: int = 100  # points per class at descent cuts (subset 0's first n)
    subsets: int = 3  # closed-form-only experiments: disjoint subsets of 500
    domain: tuple | None = None  # None: l2 in R^d, as the paper
    smoke_cuts: tuple | None = None  # --smoke: these cuts only (the box's descents cost ~20 CPU-s a pair)
    closed_n: int = 500  # closed-form-only experiments: points per class of each subset (at most SUBSET)

    @property
    def closed_only(self) -> bool:
        return self.domain is None and all(c in CLOSED for c in self.cuts)

    @property
    def threat(self) -> str:
        return ("l2 ball in R^d, no box (the paper's threat model)" if self.domain is None else
                f"l2 ball intersected with the [{self.domain[0]:g}, {self.domain[1]:g}] pixel box")


EXPERIMENTS = {
    # one subset: its closed forms took ~2.5 min per model and subset on the shared VM on 2026-12-07
    # (Fashion-MNIST's ~1 min), too long for all three in that session; raise to 3 to add the others
    "fig2_mnist": Experiment("First linear layer across training methods, MNIST 3 vs 7", "Fig. 2 (and Fig. 7, 0-1 loss)",
                             "mnist", METHODS_MNIST, ("linear1",), subsets=1),
    "fig2_fmnist": Experiment("First linear layer across training methods, Fashion-MNIST 3 vs 7",
                              "Fig. 2 (and Fig. 7, 0-1 loss)", "fmnist", METHODS_FMNIST, ("linear1",)),
    "fig3": Experiment("Layer-wise bounds, benign FCNN, MNIST", "Fig. 3 (and Fig. 8, 0-1 loss)", "mnist",
                       {"benign": "fcnn_mnist_3v7_benign"}, LAYERS),
    "fig3_box": Experiment("Layer-wise bounds, benign FCNN, MNIST, inside the [0, 1] box", "Fig. 3 with the box",
                           "mnist", {"benign": "fcnn_mnist_3v7_benign"}, ("input", "linear1", "relu1", "relu2"),
                           n=10, domain=(0.0, 1.0), smoke_cuts=("input", "linear1", "relu1")),
    "fig4": Experiment("Layer-wise bounds, PGD (eps_train 2) FCNN, MNIST", "Fig. 4 (and Fig. 9, 0-1 loss)", "mnist",
                       {"PGD 2": "fcnn_mnist_3v7_pgd2"}, LAYERS),
    "fig5": Experiment("Second ReLU layer across training methods, MNIST", "Fig. 5 (and Fig. 10, 0-1 loss)", "mnist",
                       METHODS_MNIST, ("relu2",)),
    "fig6": Experiment("Width: regular, small (2x narrower) and smaller (4x) FCNN, PGD 2, first ReLU, MNIST",
                       "Fig. 6", "mnist", {"regular": "fcnn_mnist_3v7_pgd2", "small": "fcnn_small_mnist_3v7_pgd2",
                                           "smaller": "fcnn_smaller_mnist_3v7_pgd2"}, ("relu1",)),
    "fig3_fmnist": Experiment("Layer-wise bounds, benign FCNN, Fashion-MNIST", "Figs. 3 and 8 on Fashion-MNIST",
                              "fmnist", {"benign": "fcnn_fmnist_3v7_benign"}, LAYERS, n=50),
    "fig4_fmnist": Experiment("Layer-wise bounds, PGD (eps_train 2) FCNN, Fashion-MNIST",
                              "Figs. 4 and 9 on Fashion-MNIST", "fmnist", {"PGD 2": "fcnn_fmnist_3v7_pgd2"}, LAYERS,
                              n=50),
    "fig11": Experiment("CNN first convolution layer across training methods, MNIST", "Fig. 11", "mnist",
                        {"benign": "cnn_mnist_3v7_benign", "PGD 2": "cnn_mnist_3v7_pgd2",
                         "TRADES 2": "cnn_mnist_3v7_trades2"}, ("input", "linear1"),
                        # fxverify.bound's closed forms at the 11,520-value convolution: one model and
                        # subset at n = 500 had not finished after 6 min (2 shared cores, 2026-12-07),
                        # about 1 min at n = 100
                        closed_n=100),
}

#: --smoke: every experiment at tiny sizes (a minute or two)
SMOKE = {"n": 3, "closed_n": 20, "subsets": 1, "resamples": 20}


# ---------------------------------------------------------------------------------------------
# Points
# ---------------------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def pool(dataset: str):
    """The dataset's pool (X_a, X_b, index_a, index_b), permuted with the seed: row k of each
    class is its k-th point in every use (subset s = rows 500 s .. 500 s + 499)."""
    path = POOL[dataset]
    try:
        p = fxverify.load_spec(path).load_points()
    except fxverify.FxverifyError as err:
        raise SystemExit(f"error: {err} (the experiments need the full IDX files: scripts/fetch_data.sh data)")
    rng = np.random.default_rng(SEED)
    pa, pb = rng.permutation(len(p.X_a)), rng.permutation(len(p.X_b))
    return p.X_a[pa], p.X_b[pb], p.index_a[pa], p.index_b[pb]


def points(dataset: str, subset: int, n: int):
    Xa, Xb, ia, ib = pool(dataset)
    s = slice(subset * SUBSET, subset * SUBSET + n)
    return Xa[s], Xb[s], ia[s], ib[s]


# ---------------------------------------------------------------------------------------------
# Budgets
# ---------------------------------------------------------------------------------------------
def descent_cuts(ex: Experiment) -> tuple[str, ...]:
    return tuple(c for c in ex.cuts if not (ex.domain is None and c in CLOSED))


def budget_keys(ex: Experiment) -> list[BudgetKey]:
    return [BudgetKey(ex.dataset, stem, c, ex.domain) for stem in ex.models.values() for c in descent_cuts(ex)]


_COLLIDERS: dict = {}


def collider(stem: str, domain):
    key = (stem, domain)
    if key not in _COLLIDERS:
        net = fxverify.load_model(MODELS / f"{stem}.onnx")
        _COLLIDERS[key] = fxverify.Collider(net, fxverify.resolve_engine("descent-activeset", norm="l2",
                                                                         domain=domain))
    return _COLLIDERS[key]


def fill_budgets(ex: Experiment, n: int, root: Path, upto: int, deadline: float | None, log=print,
                 cuts: tuple[str, ...] | None = None) -> bool:
    """Compute the experiment's missing descent budgets among its first ``upto`` points (only
    at ``cuts`` when given)."""
    Xa, Xb, ia, ib = points(ex.dataset, 0, n)
    ok = True
    for key in budget_keys(ex):
        if cuts is not None and key.cut not in cuts:
            continue
        col = collider(key.model, key.domain)
        bf = BudgetFile.open(key, root, col.net, ia, ib, n)
        ok &= bf.fill(col, Xa, Xb, min(upto, n), deadline, log)
        if not ok:
            break
    return ok


def closed_budgets(dataset: str, stem: str, subset: int, n: int, cuts: tuple[str, ...], out: Path) -> dict:
    """Closed-form budgets (l2, no box) of the first n points of a subset, by ``fxverify.bound``
    on the points written as an npz data set (raw pixels, so they load back bit for bit)."""
    Xa, Xb, ia, ib = points(dataset, subset, n)
    data = out / "data" / f"{dataset}_subset{subset}_n{n}.npz"
    if not data.exists():
        data.parent.mkdir(parents=True, exist_ok=True)
        X = np.round(np.vstack([Xa, Xb]) * 255).astype(np.uint8)
        if not np.array_equal(X / 255.0, np.vstack([Xa, Xb])):
            raise SystemExit("error: points are not raw pixels / 255")
        tmp = data.with_suffix(f".{os.getpid()}.tmp.npz")  # runs in parallel write their own
        np.savez(tmp, X=X, y=np.r_[np.full(n, 3), np.full(n, 7)], index=np.r_[ia, ib])
        tmp.replace(data)
    spec = {"version": 1, "data": {"npz": str(data)}, "split": "train", "classes": [3, 7], "n_per_class": n,
            "selection": {"method": "first"}, "scaling": "divide_255", "norm": "l2", "eps": [EPS[-1]],
            "cuts": list(cuts), "solver": "descent-activeset"}
    # only the budgets are used (the curves and bands are computed here): a one-value grid keeps
    # bound's own matching and cross-entropy programs (0.6 CPU-s each at n = 500) to one per cut
    a = fxverify.bound(collider(stem, None).net, spec, out=out / "closed" / f"{dataset}_s{subset}_n{n}_{stem}",
                       jobs=1, write=False, witnesses=False)
    if not a.complete or a.pairs_failed:
        raise SystemExit(f"error: closed-form budgets of {stem} incomplete or failed")
    return {c: a.eps_matrices[c] for c in cuts}


def complete(ex: Experiment, root: Path) -> dict:
    """(model, cut) -> the largest n' with every pair of the first n' points done in its budget
    file (0: no file)."""
    out = {}
    for key in budget_keys(ex):
        bf = load_budgets(key, root)
        out[(key.model, key.cut)] = 0 if bf is None else bf.complete_upto()
    return out


def descent_n(ex: Experiment, n: int, root: Path) -> tuple[int, dict]:
    """The points per class a figure of stored budgets shows, and the (model, cut) curves it
    leaves out: the largest complete square among the experiment's files (at most n); a file
    complete to fewer points is left out (with its count) rather than shrinking every curve."""
    done = complete(ex, root)
    m = min(n, max(done.values(), default=0))
    return m, {k: v for k, v in done.items() if v < m}


@dataclass
class Rendered:
    name: str
    curves: list
    note: dict
    paths: list


def experiment_curves(name: str, ex: Experiment, n: int, root: Path, out: Path, resamples: int,
                      subsets: int, closed_n: int) -> tuple[list, dict]:
    """Every curve of an experiment with its bootstrap resamples, and what it took."""
    from bands import Curve, bootstrap, bounds, resample_indices

    cache = out / "cache" / "bootstrap"
    curves, cpu, commits, failed = [], 0.0, set(), 0
    grid = np.asarray(EPS)
    missing = {}
    if ex.closed_only:
        runs = [(k, closed_n) for k in range(subsets)]
    else:
        m, missing = descent_n(ex, n, root)
        runs = [(0, m)]
        if m == 0:
            raise SystemExit(f"error: {name}: no complete budgets in {root} (compute them first)")
    for subset, m in runs:
        ia, ib = resample_indices(ex.dataset, m, m, resamples, SEED) if subset == 0 else (None, None)
        for label, stem in ex.models.items():
            net = collider(stem, ex.domain).net
            mats, fails, cpus = {}, {}, {}
            # the closed-form cuts shown or determining a shown cut: a pair whose descent failed
            # keeps their collisions (as fxverify.bound does)
            closed = tuple(c for c in CLOSED if ex.domain is None and
                           (c in ex.cuts or any(c in net.dominators(x) for x in ex.cuts)))
            if closed:
                mats.update(closed_budgets(ex.dataset, stem, subset, m, closed, out))
            for key in budget_keys(ex):
                if key.model != stem or (key.model, key.cut) in missing:
                    continue
                bf = load_budgets(key, root)
                _, _, pa, pb = points(ex.dataset, subset, m)
                if not (np.array_equal(bf.index_a[:m], pa) and np.array_equal(bf.index_b[:m], pb)):
                    raise SystemExit(f"error: {bf.path} is for other points")
                mats[key.cut] = bf.eps[:m, :m].astype(np.float64)
                fails[key.cut] = int(bf.failed[:m, :m].sum())
                cpus[key.cut] = float(bf.cpu[:m, :m].sum())
                commits.update(bf.meta.get("commits", []))
            shown = [c for c in ex.cuts if c in mats]
            for cut in shown:  # a collision at a determining cut is one here too
                for d in net.dominators(cut)[:-1]:
                    if d in mats:
                        mats[cut] = np.minimum(mats[cut], mats[d])
            for cut in shown:
                E = mats[cut]
                edges, l01, ce = bounds(E, grid)
                b01 = bce = None
                if ia is not None:
                    b01, bce = bootstrap(E, grid, ia, ib, cache)
                curves.append(Curve(label, ex.dataset, stem, cut, m, subset, ex.domain, grid, edges, l01, ce, b01,
                                    bce, fails.get(cut, 0), cpus.get(cut, 0.0)))
                cpu += cpus.get(cut, 0.0)
                failed += fails.get(cut, 0)
    note = {"n_per_class": runs[0][1], "subsets": len(runs), "pairs_per_curve": runs[0][1] ** 2,
            "descent_cpu_seconds": round(cpu, 1), "descent_pairs_failed": failed,
            "descent_commits": sorted(commits),
            "left_out": [f"{label_of(ex, mdl)} {cut} (budgets complete for {k} of {runs[0][1]} points per class)"
                         for (mdl, cut), k in sorted(missing.items())]}
    return curves, note


def label_of(ex: Experiment, stem: str) -> str:
    return next(k for k, v in ex.models.items() if v == stem)


def machine() -> str:
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf"]


def plot(name: str, ex: Experiment, curves: list, note: dict, out: Path, resamples: int) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    layerwise = len(ex.cuts) > 1
    main = [c for c in curves if c.subset == 0]
    n = main[0].n
    what = f"n = {n} per class" + (f" (subset 0 of {1 + max(c.subset for c in curves)}; dotted: the other disjoint "
                                   f"subsets)" if ex.closed_only and len(curves) > len(main) else "")
    for loss, ylabel, fname in (("ce", "cross-entropy lower bound", "cross_entropy.png"),
                                ("loss01", "0-1 loss lower bound", "loss01.png")):
        fig, ax = plt.subplots(figsize=(7.2, 4.8))
        for k, c in enumerate(main):
            color = COLORS[k % len(COLORS)]
            lab = c.cut if len(ex.models) == 1 else c.label if not layerwise else f"{c.label}, {c.cut}"
            if layerwise and len(ex.models) > 1 and c.cut == "input" and k:
                continue  # the input cut is the same for every model
            ax.plot(c.grid, c.values(loss), color=color, marker=".", ms=3, lw=1.4, label=lab)
            band = c.band(loss)
            if band is not None:
                ax.fill_between(c.grid, band[0], band[1], color=color, alpha=0.18, lw=0)
            for o in curves:
                if o.subset and o.model == c.model and o.cut == c.cut:
                    ax.plot(o.grid, o.values(loss), color=color, lw=0.8, ls=":")
        ax.set_xlabel("l2 budget eps (input space, pixels in [0, 1])")
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
        left = f"\nnot computed yet at this n: {'; '.join(note['left_out'])}" if note["left_out"] else ""
        ax.set_title(f"{ex.title}\n{ex.threat}\n{what}; bands: 95% bootstrap ({resamples} resamples){left}",
                     fontsize=7.5)
        fig.tight_layout()
        p = out / fname
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


SHOWN = (2.0, 2.5, 3.0, 3.5, 4.0, 4.5)


def table_md(r: Rendered) -> str:
    """The experiment's curves at a few budgets, as markdown (cross-entropy, 95% band; the
    other disjoint subsets' values after a slash)."""
    nt = r.note
    subsets = f", {nt['subsets']} disjoint subsets" if nt["subsets"] > 1 else ""
    head = (f"**{nt['experiment']}** ({nt['figure']}): {nt['threat_model']}; n = {nt['n_per_class']} per class"
            f"{subsets}; " + (f"descent {nt['descent_cpu_seconds'] / 60:.0f} CPU-min on "
                               f"{', '.join(nt['descent_commits'])} ({nt['descent_pairs_failed']} failed pairs)"
                               if nt["descent_commits"] else "closed forms only")
            + f"; plotted at {nt['commit']}, {nt['date']}, {nt['machine']} (load {nt['load_average_1min']:g}), "
              f"{nt['render_wall_seconds']:.0f} s wall"
            + (f"; not computed yet at this n: {'; '.join(nt['left_out'])}" if nt["left_out"] else ""))
    cols = [e for e in SHOWN if any(np.isclose(e, g) for g in EPS)]
    lines = [head, "", "| curve | " + " | ".join(f"ε = {e:g}" for e in cols) + " |",
             "|---|" + "---|" * len(cols)]
    main = [c for c in r.curves if c.subset == 0]
    for c in main:
        cells = []
        for e in cols:
            v, lo, hi = c.at(e, "ce")
            cell = f"{v:.3f} [{lo:.3f}, {hi:.3f}]" if not np.isnan(lo) else f"{v:.3f}"
            others = [o.at(e, "ce")[0] for o in r.curves if o.subset and o.model == c.model and o.cut == c.cut]
            if others:
                cell += " / " + " / ".join(f"{x:.3f}" for x in others)
            cells.append(cell)
        name = c.cut if len(set(x.model for x in main)) == 1 else (
            c.label if len(set(x.cut for x in main)) == 1 else f"{c.label}, {c.cut}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render(name: str, ex: Experiment, n: int, root: Path, out_root: Path, resamples: int, subsets: int,
           closed_n: int, command: str) -> Rendered:
    t0 = time.perf_counter()
    out = out_root / name
    out.mkdir(parents=True, exist_ok=True)
    curves, note = experiment_curves(name, ex, n, root, out_root, resamples, subsets, closed_n)
    paths = plot(name, ex, curves, note, out, resamples)
    note = {"experiment": name, "title": ex.title, "figure": ex.figure, "threat_model": ex.threat,
            "dataset": ex.dataset, "cuts": list(ex.cuts), "models": {k: f"models/{v}.onnx" for k, v in ex.models.items()},
            "selection": f"seeded random (pool {POOL[ex.dataset].relative_to(ROOT)}, permutation seed {SEED})",
            "solver": "descent-activeset (every descent to its local optimum)", "resamples": resamples,
            **note, "commit": git_revision(), "machine": machine(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "render_wall_seconds": round(time.perf_counter() - t0, 1), "load_average_1min": round(os.getloadavg()[0], 1),
            "command": command,
            "curves": [c.to_dict() for c in curves]}
    (out / "summary.json").write_text(json.dumps(note, indent=1) + "\n")
    r = Rendered(name, curves, note, paths)
    (out / "table.md").write_text(table_md(r))
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="experiments (default: all)")
    ap.add_argument("--list", action="store_true", help="list the experiments and exit")
    ap.add_argument("--smoke", action="store_true", help="every experiment at tiny n, into --out/smoke (CI)")
    ap.add_argument("--out", type=Path, default=HERE / "out")
    ap.add_argument("--budgets", type=Path, default=None, help="budget files (default experiments/budgets)")
    ap.add_argument("--n", type=int, default=None, help="points per class at descent cuts (default: the "
                    "experiment's)")
    ap.add_argument("--compute-only", action="store_true", help="fill the budget files, no figures")
    ap.add_argument("--no-compute", action="store_true", help="figures from the stored budgets only (the "
                    "largest complete square of each file)")
    ap.add_argument("--stages", default=None, help="with --compute-only: fill every named experiment up to "
                    "each of these n in turn (e.g. 50,100)")
    ap.add_argument("--cuts", default=None, help="with --compute-only: only these cuts (e.g. relu1,relu2)")
    ap.add_argument("--hours", type=float, default=None, help="stop computing after this long (resumable)")
    ap.add_argument("--resamples", type=int, default=200, help="bootstrap resamples (default 200)")
    ap.add_argument("--figures", type=Path, default=None, help="also copy the plots here (e.g. docs/figures)")
    args = ap.parse_args()
    if args.list:
        for k, e in EXPERIMENTS.items():
            print(f"{k:12s} {e.figure:34s} n={e.n:<4d} cuts={','.join(e.cuts)}  {e.title}")
        return 0
    unknown = [x for x in args.names if x not in EXPERIMENTS]
    if unknown:
        print(f"error: unknown experiment(s) {', '.join(unknown)}; see --list", file=sys.stderr)
        return 2
    names = args.names or list(EXPERIMENTS)
    out = args.out / "smoke" if args.smoke else args.out
    root = args.budgets or (out / "budgets" if args.smoke else BUDGETS)
    resamples, subsets, closed_n = args.resamples, 3, SUBSET
    if args.smoke:
        resamples, subsets, closed_n = SMOKE["resamples"], SMOKE["subsets"], SMOKE["closed_n"]
    deadline = None if args.hours is None else time.monotonic() + 3600 * args.hours

    def pick(name: str) -> Experiment:
        ex = EXPERIMENTS[name]
        return replace(ex, cuts=ex.smoke_cuts) if args.smoke and ex.smoke_cuts else ex

    def size(ex: Experiment) -> int:
        if args.smoke:
            return 1 if ex.domain is not None else SMOKE["n"]
        return args.n or ex.n

    if args.compute_only:
        stages = [int(s) for s in args.stages.split(",")] if args.stages else [10 ** 9]
        for upto in stages:
            for name in names:
                ex = pick(name)
                if not descent_cuts(ex):
                    continue
                print(f"{name}: n = {min(upto, size(ex))} of {size(ex)}", flush=True)
                only = tuple(args.cuts.split(",")) if args.cuts else None
                if not fill_budgets(ex, size(ex), root, upto, deadline, lambda s: print(s, flush=True), only):
                    print("stopped at the time limit (resume with the same command)")
                    return 0
        return 0
    command = "python experiments/run.py " + " ".join(sys.argv[1:])
    done = []
    for name in names:
        ex = pick(name)
        t0 = time.perf_counter()
        if descent_cuts(ex) and not args.no_compute:
            if not fill_budgets(ex, size(ex), root, size(ex), deadline, lambda s: print(s, flush=True)):
                print(f"{name}: stopped at the time limit; plotting the complete part")
        if descent_cuts(ex) and descent_n(ex, size(ex), root)[0] == 0:
            print(f"{name}: no complete budgets yet in {root}; skipped")
            continue
        r = render(name, ex, size(ex), root, out, resamples, min(subsets, ex.subsets), min(closed_n, ex.closed_n),
                   command)
        done.append(r)
        print(f"{name}: {ex.title} ({ex.figure}); {ex.threat}; n = {r.note['n_per_class']} per class, "
              f"{time.perf_counter() - t0:.1f} s")
        for c in r.curves:
            if c.subset == 0:
                lo, hi = c.band("ce") if c.boot01 is not None else (c.ce, c.ce)
                shown = [k for k, e in enumerate(c.grid) if e in (2.0, 3.0, 4.0)]
                vals = ", ".join(f"{c.grid[k]:g}: {c.ce[k]:.3f} [{lo[k]:.3f}, {hi[k]:.3f}]" for k in shown)
                print(f"  {c.label:10s} {c.cut:8s} CE  {vals}")
        if args.figures:
            args.figures.mkdir(parents=True, exist_ok=True)
            for p in r.paths:
                shutil.copy(p, args.figures / f"{name}_{p.name}")
    if done:
        from claims import write_claims

        write_claims(done, out / "claims.md")
        (out / "tables.md").write_text("\n".join(table_md(r) for r in done))
        print(f"claims table: {out / 'claims.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
