"""Extra starts for a multi-start descent (profile ``multistart``, e.g. ``descent-tight``).

A start is a pair of points (x_u, x_v); the descent begins at their activation patterns. Starts
where both points are the same x are always feasible at a ReLU cut (the features collide at x,
so the LP of x's patterns has a solution), whatever x is:

* ``segment``: x = u + t (v - u) at t = k / (segment + 1): the budget split unevenly between the
  two points, where the midpoint splits it evenly;
* ``random``: x = the midpoint plus a random move in the perturbation space (the first linear
  map's row space under l2 without a domain), its length a uniform 5-50% of the midpoint
  budget; inside the domain when one is set. Seeded by the profile's seed, the cut and the
  pair's bytes: the same pair gives the same starts in any run, order or process;
* ``apgd``: the Auto-PGD attack's points (:func:`fxverify.collision.apgd.apgd_points`), none
  at a cut the attack has no backward pass for.
"""

from __future__ import annotations

import zlib

import numpy as np

from .apgd import apgd_points
from .plan import CutPlan

#: random moves: their length as a share of the midpoint budget, drawn uniformly in this range
RANDOM_SCALE = (0.05, 0.5)


def extra_starts(plan: CutPlan, u: np.ndarray, v: np.ndarray, multistart) -> list[tuple[np.ndarray, np.ndarray]]:
    """The profile's extra starts for the pair (u, v) at ``plan``'s cut (a
    :class:`~fxverify.profiles.Multistart`)."""
    starts = segment_starts(u, v, multistart.segment)
    starts += random_starts(plan, u, v, multistart.random, multistart.seed)
    if multistart.apgd:
        starts += apgd_start(plan, u, v)
    return starts


def segment_starts(u: np.ndarray, v: np.ndarray, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for k in range(1, count + 1):
        x = u + (k / (count + 1)) * (v - u)
        out.append((x, x))
    return out


def pair_seed(seed: int, cut: str, u: np.ndarray, v: np.ndarray) -> list[int]:
    """A seed sequence from the profile's seed, the cut and the pair's bytes."""
    return [seed, zlib.crc32(cut.encode()), zlib.crc32(np.ascontiguousarray(u).tobytes()),
            zlib.crc32(np.ascontiguousarray(v).tobytes())]


def random_starts(plan: CutPlan, u: np.ndarray, v: np.ndarray, count: int, seed: int
                  ) -> list[tuple[np.ndarray, np.ndarray]]:
    if count == 0:
        return []
    rng = np.random.default_rng(pair_seed(seed, plan.cut, u, v))
    V = plan.basis
    mid = (u + v) / 2.0
    radius = float(np.linalg.norm((v - u) if V is None else V.T @ (v - u))) / 2.0
    out = []
    for _ in range(count):
        g = rng.standard_normal(u.shape[0] if V is None else V.shape[1])
        d = g if V is None else V @ g
        x = mid + d * (radius * rng.uniform(*RANDOM_SCALE) / max(float(np.linalg.norm(d)), 1e-300))
        if plan.domain is not None:
            x = np.clip(x, plan.domain.lo, plan.domain.hi)
        out.append((x, x))
    return out


def apgd_start(plan: CutPlan, u: np.ndarray, v: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    try:
        pts = apgd_points(plan.net, plan.cut, u, v, basis=plan.basis, domain=plan.domain)
    except NotImplementedError:
        return []
    return [(pts.u_adv, pts.v_adv)]
