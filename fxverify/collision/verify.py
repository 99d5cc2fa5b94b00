"""Re-verification of collisions, independently of the method that found them.

A candidate (u_adv, v_adv) is a collision at a cut when its features agree

* in the float64 IR: ``max |f(u_adv) - f(v_adv)| <= IR_TOLERANCE * max(1, max |f|)``, and
* in onnxruntime on the original model, reading the cut's tensor (the sub-graph that ends at
  the cut): the same with ``ONNX_TOLERANCE`` (onnxruntime computes in float32).

Its budget is then ``max(||u_adv - u||, ||v_adv - v||)`` from the points themselves. A
candidate that fails is never an edge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..ir import Network
from ..onnx_import import AGREEMENT_TOLERANCE
from ..reference import OnnxReference

#: float64 features of a verified collision agree to this, relative to max(1, |features|)
IR_TOLERANCE = 1e-6
#: float32 onnxruntime features agree to this (the import agreement tolerance)
ONNX_TOLERANCE = AGREEMENT_TOLERANCE


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

    def __init__(self, net: Network) -> None:
        self.net = net
        self._ref = OnnxReference(net.source, [net.onnx_tensor(c) for c in net.cuts])

    def check(self, cut: str, u: np.ndarray, v: np.ndarray, u_adv: np.ndarray, v_adv: np.ndarray) -> Verdict:
        if not (np.all(np.isfinite(u_adv)) and np.all(np.isfinite(v_adv))):
            return Verdict(False, math.inf, math.nan, math.nan, "the points are not finite")
        eps = max(float(np.linalg.norm(u_adv - u)), float(np.linalg.norm(v_adv - v)))
        fu, fv = self.net.forward(np.stack([u_adv, v_adv]), cut=cut)
        res, scale = _rel(fu, fv)
        ref = self._ref.run(np.stack([u_adv, v_adv]))[self.net.onnx_tensor(cut)]
        res_onnx, scale_onnx = _rel(ref[0], ref[1])
        problems = []
        if not res <= IR_TOLERANCE * scale:
            problems.append(f"float64 features differ by {res:.3g} (tolerance {IR_TOLERANCE:g} x {scale:.3g})")
        if not res_onnx <= ONNX_TOLERANCE * scale_onnx:
            problems.append(f"onnxruntime features differ by {res_onnx:.3g} "
                            f"(tolerance {ONNX_TOLERANCE:g} x {scale_onnx:.3g})")
        return Verdict(not problems, eps, res, res_onnx, "; ".join(problems))
