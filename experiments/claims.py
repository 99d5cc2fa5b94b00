"""The paper's qualitative claims against our curves: ``claims.md`` (a markdown table written
by ``run.py`` after the figures: claim, our number with its 95% interval, verdict).

Verdict rules (percentile-bootstrap intervals over the n points of each class; a difference
between two curves on the same points is the paired difference of the same resamples):

* a claim that one curve lies above another *holds* where the interval of the difference lies
  above 0, is *contradicted* where it lies below 0 and *not resolved* where it contains 0;
* a claim about a region where both curves are exactly 0 (no edge in any resample) is
  *untestable* there;
* a claim that a layer adds *little* (or that a difference *disappears*) holds where the
  interval of the difference lies inside (-``SMALL``, ``SMALL``) (nats of cross-entropy), is
  contradicted where it lies beyond it, and is
  *untestable* where both curves sit at the same constant in every resample (both 0, or both
  saturated at ln 2: nothing is left to add);
* a claim that a bound is *large* reports the value with its interval (holds where the
  interval lies above 0; how large is the reader's call);
* a claim tested at several budgets states the budgets where each verdict applies.

Depth never lowers a bound *by construction* (a collision at a cut is one at every cut it
determines, and every curve takes the minimum with those cuts), so "bounds grow with depth" is
tested only as the strict increases of the layer rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bands import paired_difference

#: "adds little": the difference's 95% interval below this many nats of cross-entropy (7% of ln 2)
SMALL = 0.05


def fmt(v: float, lo: float, hi: float) -> str:
    if np.isnan(lo):
        return f"{v:.3f}"
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]"


class Table:
    def __init__(self, done) -> None:
        self.curves = {(r.name, c.label, c.cut, c.subset): c for r in done for c in r.curves}
        self.rows: list[tuple[str, str, str]] = []

    def get(self, exp: str, label: str, cut: str, subset: int = 0):
        return self.curves.get((exp, label, cut, subset))

    def get_like(self, c, subset: int):
        """The curve of the same experiment, model and cut on another subset."""
        return next((x for k, x in self.curves.items() if k[2] == c.cut and k[3] == subset and x.model == c.model
                     and x.n == c.n), None)

    def diff(self, a, b, eps: float, loss: str = "ce") -> tuple[float, float, float]:
        return paired_difference(a, b, eps, loss)

    @staticmethod
    def verdict(lo: float, hi: float, zero: bool = False) -> str:
        if zero:
            return "untestable"
        if np.isnan(lo):
            return "no interval"
        if lo > 0:
            return "holds"
        if hi < 0:
            return "contradicted"
        return "not resolved"

    def compare(self, claim: str, a, b, eps_list, loss: str = "ce", name_a: str = "", name_b: str = "") -> None:
        """Claim: curve a above curve b at each budget of eps_list."""
        if a is None or b is None:
            self.rows.append((claim, "not computed", "—"))
            return
        parts, verdicts = [], []
        for e in eps_list:
            d, lo, hi = self.diff(a, b, e, loss)
            ka = int(np.flatnonzero(np.isclose(a.grid, e))[0])
            zero = (a.boot(loss) is not None and not a.boot(loss)[:, ka].any() and not b.boot(loss)[:, ka].any())
            v = self.verdict(lo, hi, zero)
            verdicts.append(v)
            va, vb = a.at(e, loss), b.at(e, loss)
            others = ""
            reps = [(self.get_like(a, s), self.get_like(b, s)) for s in (1, 2)]
            reps = [(x, y) for x, y in reps if x is not None and y is not None]
            if reps:
                others = "; other subsets " + ", ".join(f"{x.at(e, loss)[0] - y.at(e, loss)[0]:+.3f}" for x, y in reps)
            parts.append(f"ε = {e:g}: {name_a or a.label} {fmt(*va)} vs {name_b or b.label} {fmt(*vb)}; "
                         f"difference {fmt(d, lo, hi)} ({v}{others})")
        self.rows.append((claim, "<br>".join(parts), summarise(verdicts, eps_list)))

    def small(self, claim: str, a, b, eps_list, name_a: str, name_b: str) -> None:
        """Claim: curves a and b differ little at each budget (the interval of a - b inside
        (-SMALL, SMALL))."""
        if a is None or b is None:
            self.rows.append((claim, "not computed", "—"))
            return
        parts, verdicts = [], []
        for e in eps_list:
            d, lo, hi = self.diff(a, b, e)
            k = int(np.flatnonzero(np.isclose(a.grid, e))[0])
            flat = a.bootce is not None and b.bootce is not None and np.ptp(a.bootce[:, k]) == 0 \
                and np.ptp(b.bootce[:, k]) == 0 and a.bootce[0, k] == b.bootce[0, k]
            v = "no interval" if np.isnan(lo) else "untestable" if flat else "holds" if -SMALL < lo and hi < SMALL \
                else "contradicted" if lo > SMALL or hi < -SMALL else "not resolved"
            verdicts.append(v)
            parts.append(f"ε = {e:g}: {name_a} {fmt(*a.at(e))} vs {name_b} {fmt(*b.at(e))}; difference "
                         f"{fmt(d, lo, hi)} ({v}{', both constant in every resample' if flat else ''})")
        self.rows.append((claim + f" (little: interval inside ±{SMALL:g})", "<br>".join(parts),
                          summarise(verdicts, eps_list)))

    def level(self, claim: str, c, eps_list, loss: str) -> None:
        """Claim: the bound of curve c is large at each budget (reported with its interval)."""
        if c is None:
            self.rows.append((claim, "not computed", "—"))
            return
        parts, verdicts = [], []
        for e in eps_list:
            v, lo, hi = c.at(e, loss)
            verdicts.append("no interval" if np.isnan(lo) else "holds" if lo > 0 else "not resolved")
            parts.append(f"ε = {e:g}: {'0-1' if loss == 'loss01' else 'CE'} {fmt(v, lo, hi)}")
        self.rows.append((claim, "<br>".join(parts), summarise(verdicts, eps_list)))

    def add(self, claim: str, number: str, verdict: str) -> None:
        self.rows.append((claim, number, verdict))

    def markdown(self) -> str:
        lines = ["| paper's claim | our number (95% interval) | verdict |", "|---|---|---|"]
        lines += [f"| {c} | {n} | {v} |" for c, n, v in self.rows]
        return "\n".join(lines) + "\n"


def summarise(verdicts: list[str], eps_list) -> str:
    kinds = dict.fromkeys(verdicts)
    if len(kinds) == 1:
        return f"**{verdicts[0]}**"
    return "; ".join(f"**{k}** at ε = {', '.join(f'{e:g}' for e, v in zip(eps_list, verdicts) if v == k)}"
                     for k in kinds)


def crossover(t: Table, claim: str, hi_train, lo_train, below: float) -> None:
    """The larger-eps_train model's bound above the smaller one's somewhere at eps < below, on
    the 0.1 grid over [1, below)."""
    if hi_train is None or lo_train is None:
        t.add(claim, "not computed", "—")
        return
    eps = [e for e in hi_train.grid if 1.0 - 1e-9 <= e < below - 1e-9]
    above, zero, lows = [], [], []
    for e in eps:
        d, lo, hi = t.diff(hi_train, lo_train, e)
        k = int(np.flatnonzero(np.isclose(hi_train.grid, e))[0])
        if not hi_train.bootce[:, k].any() and not lo_train.bootce[:, k].any():
            zero.append(e)
        elif lo > 0:
            above.append((e, d, lo, hi))
        lows.append((e, d, lo, hi))
    live = [x for x in lows if x[0] not in zero]
    if above:
        e, d, lo, hi = max(above, key=lambda x: x[2])
        t.add(claim, f"{hi_train.label} − {lo_train.label} > 0 at ε = {', '.join(f'{x[0]:g}' for x in above)}; "
              f"largest at ε = {e:g}: {fmt(d, lo, hi)}", "**holds**")
    elif not live:
        t.add(claim, f"both bounds are 0 in every resample at every ε in [1, {below:g}) (0.1 steps)",
              "**untestable** (no edges below ε_train)")
    else:
        e, d, lo, hi = max(live, key=lambda x: x[3])
        prefix = f"both 0 in every resample at ε ≤ {max(zero):g}; " if zero else ""
        t.add(claim, prefix + f"at ε = {live[0][0]:g}…{live[-1][0]:g} the difference {hi_train.label} − "
              f"{lo_train.label} never has an interval above 0 (largest upper end at ε = {e:g}: "
              f"{fmt(d, lo, hi)})", "**not seen**")


def write_claims(done, path: Path) -> str:
    t = Table(done)
    g = t.get
    for exp, lab in (("fig3", "benign"), ("fig4", "PGD 2"), ("fig3_fmnist", "benign"), ("fig4_fmnist", "PGD 2")):
        t.compare(f"{exp} ({lab}): the first ReLU adds much (relu1 above linear1)", g(exp, lab, "relu1"),
                  g(exp, lab, "linear1"), [2.0, 3.0, 4.0], name_a="relu1", name_b="linear1")
        t.small(f"{exp} ({lab}): the second linear layer adds little (linear2 − relu1)",
                g(exp, lab, "linear2"), g(exp, lab, "relu1"), [2.0, 3.0, 4.0], "linear2", "relu1")
        t.compare(f"{exp} ({lab}): the second ReLU adds measurably (relu2 above linear2)", g(exp, lab, "relu2"),
                  g(exp, lab, "linear2"), [2.0, 3.0, 4.0], name_a="relu2", name_b="linear2")
    for cut in ("input", "linear1", "relu1", "linear2", "relu2", "linear3"):
        t.compare(f"Adversarial training lowers the bound (benign above PGD 2), MNIST {cut}", g("fig3", "benign", cut),
                  g("fig4", "PGD 2", cut), [2.0, 3.0, 4.0])
    t.compare("Adversarial training lowers the bound (benign above PGD 2), Fashion-MNIST linear1",
              g("fig2_fmnist", "benign", "linear1"), g("fig2_fmnist", "PGD 2", "linear1"), [2.0, 3.0, 4.0])
    for cut in ("relu1", "linear2", "relu2", "linear3"):  # the layer-wise Fashion-MNIST runs (n = 50)
        t.compare(f"Adversarial training lowers the bound (benign above PGD 2), Fashion-MNIST {cut}",
                  g("fig3_fmnist", "benign", cut), g("fig4_fmnist", "PGD 2", cut), [2.0, 3.0, 4.0])
    for loss in ("loss01", "ce"):
        t.level(f"Even the PGD 2 extractor leaves a large unavoidable loss at its logits ({loss})",
                g("fig4", "PGD 2", "linear3"), [2.0, 3.0], loss)
    for e, c in (("fig2_mnist", "linear1"), ("fig5", "relu2")):
        t.compare(f"Larger ε_train lowers the bound at large ε: PGD 1 above PGD 2, {c}", g(e, "PGD 1", c),
                  g(e, "PGD 2", c), [3.5, 4.0, 4.5])
        t.compare(f"... PGD 2 above PGD 3, {c}", g(e, "PGD 2", c), g(e, "PGD 3", c), [3.5, 4.0, 4.5])
        crossover(t, f"Crossover: PGD 3 above PGD 2 at some ε < 3, {c}", g(e, "PGD 3", c), g(e, "PGD 2", c), 3.0)
        crossover(t, f"Crossover: PGD 2 above PGD 1 at some ε < 2, {c}", g(e, "PGD 2", c), g(e, "PGD 1", c), 2.0)
    t.compare("TRADES and PGD (ε_train 2) differ at linear1 (PGD 2 above TRADES 2)", g("fig2_mnist", "PGD 2", "linear1"),
              g("fig2_mnist", "TRADES 2", "linear1"), [3.0, 4.0])
    t.small("... and the difference largely disappears at relu2 (PGD 2 − TRADES 2)", g("fig5", "PGD 2", "relu2"),
            g("fig5", "TRADES 2", "relu2"), [3.0, 4.0], "PGD 2", "TRADES 2")
    t.compare("Narrower networks give higher bounds: small above regular, relu1", g("fig6", "small", "relu1"),
              g("fig6", "regular", "relu1"), [3.0, 3.5, 4.0, 4.5])
    t.compare("... smaller above small, relu1", g("fig6", "smaller", "relu1"), g("fig6", "small", "relu1"),
              [3.0, 3.5, 4.0, 4.5])
    models = [m for m in ("benign", "PGD 2", "TRADES 2") if g("fig11", m, "linear1") is not None]
    if models and g("fig11", models[0], "input") is not None:
        inp = g("fig11", models[0], "input")
        gap = max(float(np.max(np.abs(g("fig11", m, "linear1").ce - inp.ce))) for m in models)
        gap01 = max(float(np.max(np.abs(g("fig11", m, "linear1").loss01 - inp.loss01))) for m in models)
        t.add("The CNN's first convolution layer does not raise the bound over the input space (Fig. 11)",
              f"largest absolute difference linear1 − input over every ε of the grid and the {len(models)} models: CE {gap:.2g}, "
              f"0-1 {gap01:.2g} (n = {inp.n}; the convolution has rank 784, so it is injective)",
              "**holds** (exactly)" if gap == 0 and gap01 == 0 else "**contradicted**")
    else:
        t.add("The CNN's first convolution layer does not raise the bound over the input space (Fig. 11)",
              "not computed", "—")
    text = t.markdown()
    Path(path).write_text(text)
    return text
