"""Re-verification of collisions, independently of the method that found them.

A candidate (u_adv, v_adv) is a collision at a cut when its features agree

* in the float64 IR: ``max |f(u_adv) - f(v_adv)| <= IR_TOLERANCE * max(1, max |f|)``, and
* in onnxruntime on the original model, reading the cut's tensor (the sub-graph that ends at
  the cut): the same with the model's agreement tolerance (onnxruntime computes in float32,
  or float16 for a float16 model);

and, when the analysis has an input domain, both points lie in it. Its budget is then
``max(||u_adv - u||, ||v_adv - v||)`` in the analysis' norm, measured from the points
themselves. A candidate that fails is never an edge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..ir import Network
from ..norms import Domain, Norm, get_norm
from ..reference import OnnxReference

#: float64 features of a verified collision agree to this, relative to max(1, |features|)
IR_TOLERANCE = 1e-6
#: points may leave the input domain by this much (rounding of the solver's last digits)
DOMAIN_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Verdict:
    ok: bool
    eps: float
    residual: float
    residual_onnx: float
    message: str = ""


def _rel(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    diff = float(np.max(np.abs(a - b))) if a.size else 0.0
    scale = max(1.0, float(np.max(np.abs(a))) if a.size else 0.0, float(np.max(np.abs(b))) if b.size else 0.0)
    return diff, scale


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
            return Verdict(False, math.inf, math.nan, math.nan, "the points are not finite")
        eps = max(float(self.norm.size(u_adv - u)), float(self.norm.size(v_adv - v)))
        fu, fv = self.net.forward(np.stack([u_adv, v_adv]), cut=cut)
        res, scale = _rel(fu, fv)
        ref = self.reference.run(np.stack([u_adv, v_adv]))[self.net.onnx_tensor(cut)]
        res_onnx, scale_onnx = _rel(ref[0], ref[1])
        tol_onnx = self.net.agreement.tolerance if self.net.agreement is not None else 1e-4
        problems = []
        if not res <= IR_TOLERANCE * scale:
            problems.append(f"float64 features differ by {res:.3g} (tolerance {IR_TOLERANCE:g} x {scale:.3g})")
        if not res_onnx <= tol_onnx * scale_onnx:
            problems.append(f"onnxruntime features differ by {res_onnx:.3g} "
                            f"(tolerance {tol_onnx:g} x {scale_onnx:.3g})")
        if self.domain is not None:
            for name, x in (("u", u_adv), ("v", v_adv)):
                if not self.domain.contains(x, DOMAIN_TOLERANCE):
                    problems.append(f"{name} leaves the domain [{self.domain.lo:g}, {self.domain.hi:g}] "
                                    f"(range [{x.min():.6g}, {x.max():.6g}])")
        return Verdict(not problems, eps, res, res_onnx, "; ".join(problems))
