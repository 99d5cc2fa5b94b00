"""Re-verification of collisions, independently of the method that found them.

A candidate (u_adv, v_adv) for the pair (u, v) is a collision at a cut when its features agree
relative to **the pair's own scale**, its original separation at that cut,
``sep = max |f(u) - f(v)|``:

* in the float64 IR: ``max |f(u_adv) - f(v_adv)| <= IR_TOLERANCE * sep``, and
* in onnxruntime on the original model, reading the cut's tensor (the sub-graph that ends at
  the cut): the same with the model's agreement tolerance (onnxruntime computes in float32,
  or float16 for a float16 model), against the separation onnxruntime computes;

and, when the analysis has an input domain, both points lie in it. Its budget is then
``max(||u_adv - u||, ||v_adv - v||)`` in the analysis' norm, measured from the points
themselves. A candidate that fails is never an edge.

The tolerance scales with the pair, not with ``max(1, |f|)``: rescaling a network's features
(its first layer's weights and every bias by any factor c > 0 scales every feature by c) gives
the same verdicts, and (u, v) themselves (residual = sep) are never accepted, however small
their features. A collision the descent proves has a residual that is rounding of the
magnitudes the layers produce (about 1e-12 of them), so a pair is only rejected when its
separation is itself within a millionth of rounding; features exactly equal at (u, v) (sep = 0)
need exactly equal features at the candidate.

:meth:`Verifier.check_many` verifies many candidates at one cut in one batch (the closed-form
cuts verify every edge that way; so does ``fxverify check``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir import Network
from ..norms import Domain, Norm, get_norm
from ..reference import OnnxReference

#: float64 features of a verified collision agree to this, relative to the pair's separation
IR_TOLERANCE = 1e-6
#: points may leave the input domain by this much (rounding of the solver's last digits)
DOMAIN_TOLERANCE = 1e-9
#: onnxruntime batches at most this many rows at once (memory of the cut's tensors)
BATCH_ROWS = 256


@dataclass(frozen=True)
class Verdict:
    ok: bool
    eps: float
    residual: float
    residual_onnx: float
    message: str = ""


@dataclass(frozen=True)
class Verdicts:
    """Verdicts of k candidates at one cut (arrays of length k)."""

    ok: np.ndarray
    eps: np.ndarray
    residual: np.ndarray
    separation: np.ndarray
    residual_onnx: np.ndarray
    separation_onnx: np.ndarray
    in_domain: np.ndarray
    tolerance_onnx: float

    def message(self, k: int) -> str:
        problems = []
        if not self.residual[k] <= IR_TOLERANCE * self.separation[k]:
            problems.append(f"float64 features differ by {self.residual[k]:.3g} (tolerance {IR_TOLERANCE:g} x the "
                            f"pair's separation {self.separation[k]:.3g})")
        if not self.residual_onnx[k] <= self.tolerance_onnx * self.separation_onnx[k]:
            problems.append(f"onnxruntime features differ by {self.residual_onnx[k]:.3g} (tolerance "
                            f"{self.tolerance_onnx:g} x the pair's separation {self.separation_onnx[k]:.3g})")
        if not self.in_domain[k]:
            problems.append("a point leaves the input domain")
        if not np.isfinite(self.eps[k]):
            problems.append("the points are not finite")
        return "; ".join(problems)

    def one(self, k: int = 0) -> Verdict:
        return Verdict(bool(self.ok[k]), float(self.eps[k]), float(self.residual[k]), float(self.residual_onnx[k]),
                       "" if self.ok[k] else self.message(k))


def _max_abs_diff(F: np.ndarray, G: np.ndarray) -> np.ndarray:
    return np.max(np.abs(F - G), axis=1) if F.shape[1] else np.zeros(F.shape[0])


class Verifier:
    """Checks candidates at any cut of one network (one onnxruntime session for all cuts)."""

    def __init__(self, net: Network, norm: Norm | str | None = None, domain: Domain | None = None) -> None:
        self.net = net
        self.norm = get_norm(norm)
        self.domain = domain
        self._ref = None

    @property
    def reference(self) -> OnnxReference:
        if self._ref is None:  # built on first use: a session per verifier, shared by all cuts
            self._ref = OnnxReference(self.net.source, [self.net.onnx_tensor(c) for c in self.net.cuts],
                                      self.net.input_map)
        return self._ref

    def clip(self, x: np.ndarray) -> np.ndarray:
        """x moved into the domain (a no-op without one)."""
        return x if self.domain is None else np.clip(x, self.domain.lo, self.domain.hi)

    def check(self, cut: str, u: np.ndarray, v: np.ndarray, u_adv: np.ndarray, v_adv: np.ndarray) -> Verdict:
        if not (np.all(np.isfinite(u_adv)) and np.all(np.isfinite(v_adv))):
            return Verdict(False, np.inf, np.nan, np.nan, "the points are not finite")
        return self.check_many(cut, u[None], v[None], u_adv[None], v_adv[None]).one()

    def _onnx(self, cut: str, X: np.ndarray) -> np.ndarray:
        tensor = self.net.onnx_tensor(cut)
        parts = [self.reference.run(X[k:k + BATCH_ROWS])[tensor] for k in range(0, len(X), BATCH_ROWS)]
        return np.concatenate(parts) if parts else np.zeros((0, self.net.cut_dim(cut)))

    def check_many(self, cut: str, U: np.ndarray, V: np.ndarray, Ua: np.ndarray, Va: np.ndarray) -> Verdicts:
        """Verdicts for the candidates (Ua[k], Va[k]) of the pairs (U[k], V[k]) (k x input_dim
        each), in batches: the IR and onnxruntime at the candidates and at the pairs."""
        k = len(U)
        finite = np.all(np.isfinite(Ua), axis=1) & np.all(np.isfinite(Va), axis=1)
        Ua, Va = np.where(finite[:, None], Ua, U), np.where(finite[:, None], Va, V)
        eps = np.maximum(self.norm.size(Ua - U), self.norm.size(Va - V))
        eps[~finite] = np.inf
        X = np.concatenate([Ua, Va, U, V])
        F = self.net.forward(X, cut=cut).reshape(4 * k, -1)
        R = self._onnx(cut, X).reshape(4 * k, -1)
        res, sep = _max_abs_diff(F[:k], F[k:2 * k]), _max_abs_diff(F[2 * k:3 * k], F[3 * k:])
        res_o, sep_o = _max_abs_diff(R[:k], R[k:2 * k]), _max_abs_diff(R[2 * k:3 * k], R[3 * k:])
        tol_onnx = self.net.agreement.tolerance if self.net.agreement is not None else 1e-4
        inside = np.ones(k, dtype=bool)
        if self.domain is not None:
            lo, hi = self.domain.lo - DOMAIN_TOLERANCE, self.domain.hi + DOMAIN_TOLERANCE
            inside = np.all((Ua >= lo) & (Ua <= hi) & (Va >= lo) & (Va <= hi), axis=1)
        ok = finite & (res <= IR_TOLERANCE * sep) & (res_o <= tol_onnx * sep_o) & inside
        return Verdicts(ok, eps, res, sep, res_o, sep_o, inside, tol_onnx)
