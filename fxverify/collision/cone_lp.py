"""Collision descent over activation-pattern polytopes (ReLU cuts).

For fixed activation patterns the features are affine in the perturbations, and the smallest
budget is a linear cone program (variables t, a_u, a_v; perturbations delta = V a restricted to
the row space of the first layer, V from its SVD):

    minimise t  s.t.  ||a_u|| <= t,  ||a_v|| <= t,
                      sign constraints of every pattern (z >= 0 where active, z <= 0 where not),
                      equal features at the cut.

Hidden ReLU layers have a pattern per point; the last ReLU layer of a ReLU cut has one shared
pattern (active units: z_u = z_v >= 0; inactive units: z_u <= 0 and z_v <= 0). An affine cut
after ReLU layers asks for W (h_u - h_v) = 0 instead.

The duals of the sign constraints say which ReLUs block the objective; flipping a ReLU whose
constraint is tight keeps the current point feasible (its pre-activation is 0, where both
patterns agree), so every such step can only lower the budget. ``descent`` flips those
("safe") ReLUs and stops when none is left (profile ``risky_flips``: then try once the
others, which leave the current point infeasible; off by default, since such a flip lowered
the budget in none of 201 tries on five shipped FCNNs, yet costs a cone LP each); ``faithful``
follows the paper: midpoint start, flip every ReLU with a positive dual, stop when the
objective stops decreasing.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import numpy as np
import scipy.linalg

from ..backends.base import Backend, MinMaxNormProblem, SolverOptions
from .chain import Chain

HIDDEN, SHARED_ACTIVE, SHARED_INACTIVE = 0, 1, 2

#: a sign constraint whose dual exceeds this (rows are normalised) is worth flipping
DUAL_TOL = 1e-6
#: a constraint counts as tight when its slack is below this times max(1, t)
TIGHT_TOL = 1e-6
#: rows of the equality system whose pivot is below this (relative) are dependent
RANK_TOL = 1e-10
#: unit equality rows whose Gram Cholesky pivots all exceed this are independent without a QR
#: (the QR decides the rest)
GRAM_TOL = 1e-6
#: a cached layer-2 Jacobian is recomputed after this many rank updates (rounding drift)
_MAX_UPDATES = 16


@dataclass
class Patterns:
    hidden_u: list[np.ndarray]
    hidden_v: list[np.ndarray]
    shared: np.ndarray | None

    def copy(self) -> Patterns:
        return Patterns([h.copy() for h in self.hidden_u], [h.copy() for h in self.hidden_v],
                        None if self.shared is None else self.shared.copy())

    def key(self) -> bytes:
        parts = self.hidden_u + self.hidden_v + ([self.shared] if self.shared is not None else [])
        return b"|".join(np.packbits(p).tobytes() for p in parts)


@dataclass
class _LP:
    problem: MinMaxNormProblem
    row_type: np.ndarray
    row_layer: np.ndarray
    row_point: np.ndarray
    row_unit: np.ndarray

    @property
    def row_keys(self) -> np.ndarray:
        """An identity per inequality row that survives pattern changes (for warm starts)."""
        return ((self.row_type * 64 + self.row_layer) * 2 + self.row_point) * (1 << 32) + self.row_unit

    def warm(self, keys: np.ndarray | None, weight: float | None) -> MinMaxNormProblem:
        """The problem with the previous solve's tight rows (by identity) as solver hints."""
        if keys is None or keys.size == 0:
            return self.problem if weight is None else replace(self.problem, hints={"weight": weight})
        active = np.flatnonzero(np.isin(self.row_keys, keys))
        hints = {"active": [int(i) for i in active]}
        if weight is not None:
            hints["weight"] = weight
        return replace(self.problem, hints=hints)


@dataclass
class DescentOutcome:
    u_adv: np.ndarray | None
    v_adv: np.ndarray | None
    objective: float = math.inf
    iterations: int = 0
    lp_solves: int = 0
    seconds: float = 0.0
    message: str = ""
    history: list[float] = field(default_factory=list)
    problem: MinMaxNormProblem | None = None  # the LP of the best pattern (for --check-solver)

    @property
    def found(self) -> bool:
        return self.u_adv is not None


class ReluDescent:
    """Descent for one ReLU cut; holds what is shared by every pair (SVD, reduced weights)."""

    def __init__(self, chain: Chain, backend: Backend, options: SolverOptions, *, faithful: bool = False,
                 max_iter: int = 50, fallback: tuple[Backend, SolverOptions] | None = None,
                 risky_flips: bool = False) -> None:
        if chain.kind != "relu":
            raise ValueError(f"ReluDescent needs a ReLU chain, got {chain.kind}")
        self.chain = chain
        self.backend = backend
        self.options = options
        self.faithful = faithful
        self.max_iter = max_iter
        self.fallback = fallback
        self.fallback_solves = 0
        self.risky_flips = risky_flips
        self._jac_cache: dict[bytes, tuple] = {}  # layer-2 Jacobians by layer-1 pattern
        rs = chain.first_svd
        self.V = rs.V  # d x r
        self.r = rs.rank
        self.M = chain.weights[0] @ self.V  # m1 x r
        self.n_hidden = chain.n_relu if chain.final else chain.n_relu - 1
        # at the first ReLU layer the equalities are rows of M (both points' copies): when the
        # unit rows of M are well conditioned, every subset is independent (eigenvalues of a
        # principal submatrix of their Gram matrix lie above its smallest), so the per-LP check
        # can be skipped
        self._first_layer_rows_independent = False
        if not chain.final and chain.n_relu == 1 and self.M.shape[0] <= self.M.shape[1]:
            Mn = self.M / np.maximum(np.linalg.norm(self.M, axis=1, keepdims=True), 1e-300)
            lam_min = float(np.linalg.eigvalsh(Mn @ Mn.T)[0]) if Mn.size else 0.0
            self._first_layer_rows_independent = lam_min > GRAM_TOL ** 2

    # ------------------------------------------------------------------ patterns --------
    def pre_activations(self, x: np.ndarray) -> list[np.ndarray]:
        W, b = self.chain.weights, self.chain.biases
        z = [W[0] @ x + b[0]]
        for k in range(1, self.chain.n_relu):
            z.append(W[k] @ np.maximum(z[-1], 0.0) + b[k])
        return z

    def patterns_at(self, xu: np.ndarray, xv: np.ndarray) -> Patterns:
        zu, zv = self.pre_activations(xu), self.pre_activations(xv)
        H = self.n_hidden
        shared = None if self.chain.final else (zu[-1] > 0) & (zv[-1] > 0)
        return Patterns([z > 0 for z in zu[:H]], [z > 0 for z in zv[:H]], shared)

    # ------------------------------------------------------------------ the cone LP -----
    def _layer2_jacobian(self, s: np.ndarray) -> np.ndarray:
        """W_2 diag(s) M: the layer-2 pre-activations' Jacobian in a, given layer 1's pattern s.
        The last few results of the current pair are kept, and a pattern close to a kept one is
        updated in rank |flips| instead of recomputed: descent steps flip a few units (deeper
        layers' Jacobians are recomputed in :meth:`_affine_in_alpha`)."""
        W = self.chain.weights[1]
        key = s.tobytes()
        hit = self._jac_cache.get(key)
        if hit is not None:
            return hit[1]
        best = None
        for s0, G0, depth in self._jac_cache.values():
            d = int(np.count_nonzero(s0 != s))
            if depth < _MAX_UPDATES and (best is None or d < best[0]):
                best = (d, s0, G0, depth)
        if best is not None and best[0] <= s.size // 8:
            diff = np.flatnonzero(best[1] != s)
            sign = np.where(s[diff], 1.0, -1.0)
            G = best[2] + W[:, diff] @ (sign[:, None] * self.M[diff])
            depth = best[3] + 1
        else:
            G, depth = W @ (s[:, None] * self.M), 0
        G.flags.writeable = False
        if len(self._jac_cache) >= 4:
            self._jac_cache.pop(next(iter(self._jac_cache)))
        self._jac_cache[key] = (s.copy(), G, depth)
        return G

    def _affine_in_alpha(self, p: np.ndarray, hidden: list[np.ndarray]):
        """Pre-activations of every layer as c_k + G_k a, for one point and its hidden patterns."""
        W, b = self.chain.weights, self.chain.biases
        c = W[0] @ p + b[0]
        G = self.M
        cs, Gs = [c], [G]
        for k in range(1, self.chain.n_relu):
            s = hidden[k - 1]
            c = W[k] @ np.where(s, c, 0.0) + b[k]
            G = self._layer2_jacobian(s) if k == 1 else W[k] @ (s[:, None] * G)
            cs.append(c)
            Gs.append(G)
        return cs, Gs

    def build(self, u: np.ndarray, v: np.ndarray, pat: Patterns) -> _LP | None:
        r, H = self.r, self.n_hidden
        cu, Gu = self._affine_in_alpha(u, pat.hidden_u)
        cv, Gv = self._affine_in_alpha(v, pat.hidden_v)
        # inequality rows  C_row . (a_u, a_v) <= h, collected per block as (point whose columns
        # they fill, rows, rhs, type, layer, units), then written straight into one array
        blocks = []
        for k in range(H):
            for point, (c, G, s) in enumerate(((cu[k], Gu[k], pat.hidden_u[k]), (cv[k], Gv[k], pat.hidden_v[k]))):
                sigma = np.where(s, 1.0, -1.0)  # active: -z <= 0; inactive: z <= 0
                blocks.append((point, -sigma[:, None] * G, sigma * c, HIDDEN, k, np.arange(len(c))))
        eq_A = eq_b = None
        if not self.chain.final:
            K = self.chain.n_relu - 1
            act = np.flatnonzero(pat.shared)
            ina = np.flatnonzero(~pat.shared)
            blocks.append((0, -Gu[K][act], cu[K][act], SHARED_ACTIVE, K, act))
            blocks.append((0, Gu[K][ina], -cu[K][ina], SHARED_INACTIVE, K, ina))
            blocks.append((1, Gv[K][ina], -cv[K][ina], SHARED_INACTIVE, K, ina))
            if act.size:
                eq_A = np.hstack([Gu[K][act], -Gv[K][act]])
                eq_b = cv[K][act] - cu[K][act]
        else:
            Wf = self.chain.weights[-1]
            su = pat.hidden_u[-1]
            sv = pat.hidden_v[-1]
            eq_A = np.hstack([Wf @ (su[:, None] * Gu[-1]), -(Wf @ (sv[:, None] * Gv[-1]))])
            eq_b = Wf @ np.where(sv, cv[-1], 0.0) - Wf @ np.where(su, cu[-1], 0.0)

        # every inequality row touches one point's block only: norms per block, and rows
        # that do not depend on the perturbation are constants (checked, then left out)
        norms = [np.sqrt(np.einsum("ij,ij->i", blk[1], blk[1])) for blk in blocks]
        scale = max(1.0, max((float(n.max(initial=0.0)) for n in norms), default=0.0))
        hmax = max(1.0, max((float(np.abs(blk[2]).max(initial=0.0)) for blk in blocks), default=0.0))
        keeps = []
        for blk, n in zip(blocks, norms):
            const = n <= 1e-12 * scale
            if np.any(blk[2][const] < -1e-9 * hmax):
                return None  # a unit's sign is fixed and contradicts the pattern
            keeps.append(None if not const.any() else ~const)
        m = sum(int(blk[2].shape[0] if keep is None else keep.sum()) for blk, keep in zip(blocks, keeps))
        C = np.zeros((m, 2 * r))
        h = np.empty(m)
        meta = np.empty((4, m), dtype=np.int64)
        i = 0
        for (point, rows, rhs, typ, layer, units), n, keep in zip(blocks, norms, keeps):
            if keep is not None:
                rows, rhs, n, units = rows[keep], rhs[keep], n[keep], units[keep]
            k = rhs.shape[0]
            np.divide(rows, n[:, None], out=C[i:i + k, point * r:(point + 1) * r])
            h[i:i + k] = rhs / n
            meta[0, i:i + k], meta[1, i:i + k], meta[2, i:i + k], meta[3, i:i + k] = typ, layer, point, units
            i += k
        A = b = None
        if eq_A is not None and eq_A.shape[0]:
            reduced = _independent_rows(eq_A, eq_b, independent=self._first_layer_rows_independent)
            if reduced is None:
                return None  # inconsistent equalities: no collision with these patterns
            if reduced[0].shape[0]:
                A, b = reduced
        return _LP(MinMaxNormProblem(C=C, h=h, A=A, b=b), meta[0], meta[1], meta[2], meta[3])

    # ------------------------------------------------------------------ flips -----------
    def _flips(self, lp: _LP, x: np.ndarray, z: np.ndarray, t: float, pat: Patterns):
        """(safe, risky) pattern changes suggested by the duals."""
        nl = lp.problem.n_linear
        dual = z[:nl]
        slack = lp.problem.h - lp.problem.C @ x[1:]
        tight = slack <= TIGHT_TOL * max(1.0, t)
        want = dual > DUAL_TOL
        safe_h = [np.zeros_like(h) for h in pat.hidden_u], [np.zeros_like(h) for h in pat.hidden_v]
        sel = want & (lp.row_type == HIDDEN)
        if not self.faithful:
            sel &= tight
        for layer, point, unit in zip(lp.row_layer[sel], lp.row_point[sel], lp.row_unit[sel]):
            safe_h[point][layer][unit] = True
        shared_safe = shared_risky = None
        if pat.shared is not None:
            m = pat.shared.size
            shared_safe = np.zeros(m, dtype=bool)
            shared_risky = np.zeros(m, dtype=bool)
            a = want & (lp.row_type == SHARED_ACTIVE) & (tight | self.faithful)
            shared_safe[lp.row_unit[a]] = True
            ina = lp.row_type == SHARED_INACTIVE
            # an inactive unit may turn active safely only when both points sit at z = 0
            tight_count = np.bincount(lp.row_unit[ina & tight], minlength=m)
            rows_count = np.bincount(lp.row_unit[ina], minlength=m)
            dual_sum = np.bincount(lp.row_unit[ina], weights=dual[ina], minlength=m)
            wants = dual_sum > DUAL_TOL
            both_tight = (tight_count == rows_count) & (rows_count > 0)
            shared_safe |= wants & both_tight
            shared_risky = wants & ~both_tight
        return safe_h, shared_safe, shared_risky

    @staticmethod
    def _apply(pat: Patterns, hidden_flips, shared_flips) -> Patterns:
        new = pat.copy()
        for k in range(len(new.hidden_u)):
            new.hidden_u[k] ^= hidden_flips[0][k]
            new.hidden_v[k] ^= hidden_flips[1][k]
        if new.shared is not None and shared_flips is not None:
            new.shared ^= shared_flips
        return new

    # ------------------------------------------------------------------ the descent -----
    def solve_lp(self, u, v, pat, warm: tuple | None = None):
        """Build and solve the cone LP of ``pat``; ``warm`` = (tight row keys, weight) of the
        previous solve. A solve that is not optimal is retried with the fallback backend."""
        lp = self.build(u, v, pat)
        if lp is None:
            return None, None
        sol = self.backend.solve_min_max_norm(lp.warm(*warm) if warm else lp.problem, self.options)
        if not sol.ok and self.fallback is not None:
            self.fallback_solves += 1
            sol = self.fallback[0].solve_min_max_norm(lp.problem, self.fallback[1])
        return lp, sol

    def run(self, u: np.ndarray, v: np.ndarray, starts: list[tuple[np.ndarray, np.ndarray]]) -> DescentOutcome:
        """Descend from each start (pairs of points whose patterns seed the search); keep the best."""
        t0 = time.perf_counter()
        # the Jacobian cache lives for one pair: rank updates then depend on this pair's own
        # steps only, so results do not depend on which pairs a process solved before
        self._jac_cache.clear()
        best = DescentOutcome(None, None)
        messages = []
        for xu, xv in starts:
            out = self._descend(u, v, self.patterns_at(xu, xv))
            best.iterations += out.iterations
            best.lp_solves += out.lp_solves
            if out.message:
                messages.append(out.message)
            if out.found and out.objective < best.objective:
                best.u_adv, best.v_adv, best.objective, best.history = out.u_adv, out.v_adv, out.objective, out.history
                best.problem = out.problem
            if best.found and not self.faithful:
                break  # a later start is only a fallback
        best.seconds = time.perf_counter() - t0
        best.message = "; ".join(dict.fromkeys(messages))
        return best

    def _descend(self, u, v, pat: Patterns) -> DescentOutcome:
        out = DescentOutcome(None, None)
        seen = {pat.key()}
        risky_pending = False  # the current pattern came from a risky flip of the best one
        warm = None
        for it in range(self.max_iter):
            out.iterations = it + 1
            lp, sol = self.solve_lp(u, v, pat, warm)
            out.lp_solves += lp is not None
            if lp is None or not sol.ok:
                if not out.found:
                    why = "patterns infeasible" if lp is None else f"{sol.termination.value} ({sol.message})"
                    out.message = f"cone LP failed at the start: {why}"
                break  # keep the best point found so far
            x = sol.x
            if sol.hints is not None:
                act = np.asarray(sol.hints.get("active", []), dtype=np.int64)
                warm = (lp.row_keys[act], sol.hints.get("weight"))
            au, av = x[1:1 + self.r], x[1 + self.r:]
            eps = max(float(np.linalg.norm(au)), float(np.linalg.norm(av)))
            out.history.append(eps)
            if eps < out.objective * (1 - 1e-9) - 1e-12:
                out.u_adv, out.v_adv, out.objective = u + self.V @ au, v + self.V @ av, eps
                out.problem = lp.problem
                risky_pending = False
            elif self.faithful or risky_pending:
                break  # no decrease (the paper's stopping rule), or a risky flip did not pay
            hidden, shared_safe, shared_risky = self._flips(lp, x, sol.z, eps, pat)
            any_safe = any(h.any() for side in hidden for h in side) or (shared_safe is not None and shared_safe.any())
            if self.faithful:
                nxt = self._apply(pat, hidden, None if shared_safe is None else shared_safe | shared_risky)
            elif any_safe:
                # safe flips keep the current point feasible: the budget cannot increase
                nxt = self._apply(pat, hidden, shared_safe)
            elif self.risky_flips and shared_risky is not None and shared_risky.any():
                no_hidden = ([np.zeros_like(h) for h in hidden[0]], [np.zeros_like(h) for h in hidden[1]])
                nxt = self._apply(pat, no_hidden, shared_risky)
                risky_pending = True
            else:
                break  # a local optimum over neighbouring patterns
            key = nxt.key()
            if key in seen:
                break
            seen.add(key)
            pat = nxt
        return out


def _independent_rows(A: np.ndarray, b: np.ndarray, independent: bool = False):
    """Drop linearly dependent rows of A x = b (pivoted QR), normalising the rest.

    ``independent``: the caller knows that the non-zero rows are independent (with margin);
    they are only normalised.

    Returns (A', b') with possibly zero rows, or None when the system is inconsistent.
    cvxopt needs rank(A) = rows(A); given dependent rows it reports 'unknown' with a wrong
    objective instead of failing.
    """
    scale = np.linalg.norm(A, axis=1)
    nz = scale > 1e-12 * max(1.0, float(scale.max(initial=0.0)))
    if np.any(np.abs(b[~nz]) > 1e-9 * max(1.0, float(np.abs(b).max(initial=0.0)))):
        return None
    A, b = A[nz] / scale[nz, None], b[nz] / scale[nz]
    if A.shape[0] == 0 or independent:
        return A, b
    if A.shape[0] <= A.shape[1]:
        # fast path: unit rows whose Gram matrix is safely positive definite are independent
        try:
            L = scipy.linalg.cholesky(A @ A.T, lower=True, check_finite=False)
            if float(np.min(np.diag(L))) > GRAM_TOL:
                return A, b
        except np.linalg.LinAlgError:
            pass
    _, R, piv = scipy.linalg.qr(A.T, mode="economic", pivoting=True)
    d = np.abs(np.diag(R))
    rank = int(np.sum(d > RANK_TOL * d[0]))
    keep = np.sort(piv[:rank])
    if rank < A.shape[0]:
        x, *_ = np.linalg.lstsq(A[keep], b[keep], rcond=None)
        if np.max(np.abs(A @ x - b)) > 1e-7 * max(1.0, float(np.abs(b).max())):
            return None
    return A[keep], b[keep]
