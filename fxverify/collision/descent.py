"""Collision descent over activation patterns, for any piecewise-linear cut and any norm.

For fixed patterns the features are affine in the perturbations, and the smallest budget is a
convex program (variables a_u, a_v with x = p + V a; see :mod:`fxverify.collision.plan`):

    minimise max(||a_u||, ||a_v||)  s.t.  every hidden piece keeps each point in its pattern's
                                          piece (linear inequalities, :meth:`Piece.region`),
                                          equal features at the cut (linear equalities),
                                          the input domain box when one is set.

For l2 that is a cone LP, for l-inf and l1 an LP. A cut that is a ReLU has one pattern shared
by both points (active units: z_u = z_v >= 0; inactive: z_u <= 0 and z_v <= 0); any other cut
(an affine map after pieces, a max-pool) asks for equal features with separate patterns.

The duals of the pattern inequalities say which pieces block the objective. A move along a
tight inequality (the point sits on the boundary the two pieces share) keeps the current point
feasible, so it can only lower the budget. ``descent`` takes those ("safe") moves and stops when
none is left (profile ``risky_flips``: then try once the shared-pattern flips that leave the
point infeasible; off by default); ``faithful`` follows the paper: midpoint start, take every
move with a positive dual, stop when the objective stops decreasing.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from .. import linops
from ..backends.base import Backend, MinMaxNormProblem, SolverOptions, Termination, with_fallbacks
from ..pieces.base import rows as make_rows
from .plan import CutPlan, JacobianCache

HIDDEN = 0

#: a pattern inequality whose dual exceeds this (rows are normalised) is worth moving across
DUAL_TOL = 1e-6
#: an inequality counts as tight when its slack is below this times max(1, t)
TIGHT_TOL = 1e-6
#: rows of the equality system whose pivot is below this (relative) are dependent
RANK_TOL = 1e-10
#: unit equality rows whose Gram Cholesky pivots all exceed this are independent without a QR
#: (the QR decides the rest)
GRAM_TOL = 1e-6
#: equality systems with more rows than variables and more entries than this are replaced by an
#: orthonormal basis of their row space (from the Gram matrix) instead of a pivoted QR
GRAM_ENTRIES = 2_000_000
#: ... keeping the directions whose squared singular value exceeds this times the largest
GRAM_RANK_TOL = 1e-12


@dataclass(frozen=True)
class GridStop:
    """Stops a descent whose eps can no longer cross a grid value: a pair's edges change only
    when its eps crosses a budget of the grid (edge iff eps <= budget), and eps = 0 needs the
    points themselves to collide (checked before any descent), so once eps lies below every
    positive grid value no further step can change a bound. The stop is lossless for the bounds
    (the stored eps may be larger than the descent's local optimum). A rule that also stopped
    descents predicted (from their recent decrease) not to reach the next grid value below was
    measured and dropped: on 1,600 pairs it saved 18% of the time and lowered a cross-entropy
    bound by 0.0074 (benchmarks/README.md)."""

    grid: tuple[float, ...]

    def target(self, eps: float) -> float | None:
        """The largest positive grid value below eps (None: no grid value can still change)."""
        below = [g for g in self.grid if 0 < g < eps]
        return max(below) if below else None

    def reached(self, eps: float) -> bool:
        """No step below ``eps`` can change an edge at a grid value."""
        return self.target(eps) is None


@dataclass
class Patterns:
    """Per-point patterns of the hidden pieces (by name) and the shared pattern of the cut."""

    u: dict[str, np.ndarray]
    v: dict[str, np.ndarray]
    shared: np.ndarray | None

    def copy(self) -> Patterns:
        return Patterns({k: p.copy() for k, p in self.u.items()}, {k: p.copy() for k, p in self.v.items()},
                        None if self.shared is None else self.shared.copy())

    def key(self) -> bytes:
        parts = [p for side in (self.u, self.v) for p in side.values()] + \
            ([self.shared] if self.shared is not None else [])
        return b"|".join((np.packbits(p) if p.dtype == bool else p).tobytes() for p in parts)


@dataclass
class _LP:
    problem: MinMaxNormProblem
    row_type: np.ndarray
    row_piece: np.ndarray
    row_point: np.ndarray
    row_unit: np.ndarray
    row_aux: np.ndarray
    n_aux: np.ndarray  # per piece index
    #: rows left out because they do not depend on the perturbation (always satisfied): their
    #: (type, piece, point, unit, aux) and slack. A move that needs such a row to be tight (both
    #: points of a shared unit at z = 0) must see it
    const_meta: np.ndarray = None
    const_slack: np.ndarray = None

    @property
    def row_keys(self) -> np.ndarray:
        """An identity per inequality row that survives pattern changes (for warm starts)."""
        return (((self.row_piece * 4 + self.row_type) * 2 + self.row_point) << 42) \
            + self.row_unit * self.n_aux[self.row_piece] + self.row_aux

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
    failed: str = ""  # a cone LP failed (not "patterns infeasible"): the pair's result is a failure
    history: list[float] = field(default_factory=list)
    problem: MinMaxNormProblem | None = None  # the LP of the best pattern (for --check-solver)
    #: the deadline passed before the descent ended: the point (if any) is a valid collision but
    #: not the descent's result (a run abandons the cut; results never depend on timing)
    timed_out: bool = False
    #: every start's collision (``run(..., every=True)``), best first: the caller verifies them
    #: in this order and keeps the first that holds
    candidates: list[Candidate] = field(default_factory=list)

    @property
    def found(self) -> bool:
        return self.u_adv is not None


@dataclass(frozen=True)
class Candidate:
    """One start's collision (before verification) and the LP of its final pattern."""

    objective: float
    u_adv: np.ndarray
    v_adv: np.ndarray
    problem: MinMaxNormProblem | None


class PatternDescent:
    """Descent for one cut; holds what every pair shares (the plan, the solver)."""

    def __init__(self, plan: CutPlan, backend: Backend, options: SolverOptions, *, faithful: bool = False,
                 max_iter: int = 50, fallbacks: tuple[tuple[Backend, SolverOptions], ...] = (),
                 risky_flips: bool = False) -> None:
        if plan.kind != "pieces":
            raise ValueError(f"a pattern descent needs pieces at {plan.cut}, the cut is {plan.kind}")
        self.plan = plan
        self.backend = backend
        self.options = options
        self.faithful = faithful
        self.max_iter = max_iter
        self.fallbacks = tuple(fallbacks)
        self.risky_flips = risky_flips
        self.r = plan.n_vars
        self._jac = JacobianCache()
        self._n_aux = np.array([p.n_aux for p in plan.hidden] + [1], dtype=np.int64)
        # at a ReLU cut reading the first linear map directly, the equalities are rows of
        # W V (both points' copies): when its unit rows are well conditioned every subset is
        # independent (eigenvalues of a principal submatrix of their Gram matrix lie above its
        # smallest), so the per-LP check can be skipped
        self._first_rows_independent = False
        cut = plan.cut_node
        if plan.shared and not plan.hidden and plan.first is not None and cut.inputs[0] == plan.first.name:
            M = plan.first_jacobian
            if not sp.issparse(M) and M.shape[0] <= M.shape[1]:
                Mn = M / np.maximum(np.linalg.norm(M, axis=1, keepdims=True), 1e-300)
                lam_min = float(np.linalg.eigvalsh(Mn @ Mn.T)[0]) if Mn.size else 0.0
                self._first_rows_independent = lam_min > GRAM_TOL ** 2

    # ------------------------------------------------------------------ patterns --------
    def patterns_at(self, xu: np.ndarray, xv: np.ndarray) -> Patterns:
        pu, pv, shared = self.plan.patterns_at(xu, xv)
        return Patterns(pu, pv, shared)

    # ------------------------------------------------------------------ the LP ----------
    def build(self, u: np.ndarray, v: np.ndarray, pat: Patterns) -> _LP | None:
        plan, r = self.plan, self.r
        fu = plan.forms(u, pat.u, stop_before_cut=plan.shared, jac=self._jac)
        fv = plan.forms(v, pat.v, stop_before_cut=plan.shared, jac=self._jac)
        from ..ir import INPUT_CUT

        def form(f, p, name):
            return (p, plan._identity()) if name == INPUT_CUT else f[name]

        # inequality rows  C_row . (a_u, a_v) <= h, per block: (point whose columns they fill,
        # type, piece index, Rows)
        blocks = []
        for k, piece in enumerate(plan.hidden):
            for point, (f, p, pp) in enumerate(((fu, u, pat.u), (fv, v, pat.v))):
                c, J = form(f, p, piece.inputs[0])
                blocks.append((point, HIDDEN, k, piece.region(pp[piece.name], c, J)))
        cut = plan.cut_node
        if plan.shared:
            cu, Ju = form(fu, u, cut.inputs[0])
            cv, Jv = form(fv, v, cut.inputs[0])
            sb, (Eu, Ev, e) = cut.shared_region(pat.shared, cu, Ju, cv, Jv)
            blocks += [(point, typ, len(plan.hidden), rw) for point, typ, rw in sb]
        else:
            cu, Eu = fu[cut.name]
            cv, Ev = fv[cut.name]
            e = cv - cu
        eq_b = e
        eq_A = None
        if e.shape[0]:
            if e.shape[0] * 2 * r > GRAM_ENTRIES and e.shape[0] > 2 * r:
                eq_A = (Eu, Ev)  # many more equalities than variables: reduced through the Gram matrix
            else:
                eq_A = linops.to_dense(linops.hstack([Eu, -Ev]))

        # rows that do not depend on the perturbation are constants (checked, then left out);
        # the rest are normalised
        norms = [linops.row_norms(blk[3].R) for blk in blocks]
        scale = max(1.0, max((float(n.max(initial=0.0)) for n in norms), default=0.0))
        hmax = max(1.0, max((float(np.abs(blk[3].h).max(initial=0.0)) for blk in blocks), default=0.0))
        keeps, dropped = [], []
        for (point, typ, k, rw), n in zip(blocks, norms):
            const = n <= 1e-12 * scale
            if np.any(rw.h[const] < -1e-9 * hmax):
                return None  # a unit's piece is fixed and contradicts the pattern
            keeps.append(None if not const.any() else ~const)
            if const.any():
                c = np.flatnonzero(const)
                dropped.append((np.stack([np.full(c.size, typ), np.full(c.size, k), np.full(c.size, point),
                                          rw.unit[c], rw.aux[c]]), rw.h[c]))
        m = sum(int(blk[3].n if keep is None else keep.sum()) for blk, keep in zip(blocks, keeps))
        sparse = any(sp.issparse(blk[3].R) for blk in blocks)
        h = np.empty(m)
        meta = np.empty((5, m), dtype=np.int64)
        parts = []
        C = None if sparse else np.zeros((m, 2 * r))
        i = 0
        for (point, typ, k, rw), n, keep in zip(blocks, norms, keeps):
            R, rhs, units, aux = rw.R, rw.h, rw.unit, rw.aux
            if keep is not None:
                R, rhs, n, units, aux = R[keep], rhs[keep], n[keep], units[keep], aux[keep]
            cnt = rhs.shape[0]
            if sparse:
                Rn = sp.diags(1.0 / n) @ sp.csr_matrix(R) if cnt else sp.csr_matrix((0, r))
                z = sp.csr_matrix((cnt, r))
                parts.append(sp.hstack([Rn, z] if point == 0 else [z, Rn], format="csr"))
            else:
                np.divide(R, n[:, None], out=C[i:i + cnt, point * r:(point + 1) * r])
            h[i:i + cnt] = rhs / n
            meta[0, i:i + cnt], meta[1, i:i + cnt], meta[2, i:i + cnt] = typ, k, point
            meta[3, i:i + cnt], meta[4, i:i + cnt] = units, aux
            i += cnt
        if sparse:
            C = sp.vstack(parts, format="csr") if parts else sp.csr_matrix((0, 2 * r))
        A = b = None
        if isinstance(eq_A, tuple):
            reduced = _row_space_equalities(*eq_A, eq_b)
            if reduced is None:
                return None
            A, b = reduced if reduced[0].shape[0] else (None, None)
        elif eq_A is not None and eq_A.shape[0]:
            reduced = _independent_rows(eq_A, eq_b, independent=self._first_rows_independent)
            if reduced is None:
                return None  # inconsistent equalities: no collision with these patterns
            if reduced[0].shape[0]:
                A, b = reduced
        lb = ub = None
        if plan.domain is not None:
            (lu, hu), (lv, hv) = plan.box(u), plan.box(v)
            lb, ub = np.concatenate([lu, lv]), np.concatenate([hu, hv])
        problem = MinMaxNormProblem(C=C, h=h, A=A, b=b, norm=plan.norm.name, lb=lb, ub=ub)
        cmeta = np.hstack([d[0] for d in dropped]) if dropped else np.zeros((5, 0), dtype=np.int64)
        cslack = np.concatenate([d[1] for d in dropped]) if dropped else np.zeros(0)
        return _LP(problem, meta[0], meta[1], meta[2], meta[3], meta[4], self._n_aux, cmeta, cslack)

    # ------------------------------------------------------------------ moves -----------
    def _moves(self, lp: _LP, x: np.ndarray, z: np.ndarray, t: float, pat: Patterns):
        """(hidden moves as new per-point patterns or None, shared safe flips, shared risky flips)."""
        nl = lp.problem.n_linear
        dual = z[:nl]
        C = lp.problem.C
        slack = lp.problem.h - (C @ x[1:])
        tight = slack <= TIGHT_TOL * max(1.0, t)
        want = dual > DUAL_TOL
        take = want & (tight | self.faithful)
        new_u, new_v = {}, {}
        hidden = lp.row_type == HIDDEN
        for k, piece in enumerate(self.plan.hidden):
            sel_k = hidden & (lp.row_piece == k)
            for point, (pp, out) in enumerate(((pat.u, new_u), (pat.v, new_v))):
                sel = np.flatnonzero(sel_k & (lp.row_point == point))
                if not take[sel].any():
                    continue
                rw = make_rows(None, lp.problem.h[sel], lp.row_unit[sel], lp.row_aux[sel])
                moved = piece.moves(pp[piece.name], rw, dual[sel], take[sel])
                if moved is not None:
                    out[piece.name] = moved
        shared_safe = shared_risky = None
        if pat.shared is not None:
            sel = ~hidden
            cm, cs = lp.const_meta, lp.const_slack
            csel = cm[0] != HIDDEN
            nc = int(csel.sum())
            shared_safe, shared_risky = self.plan.cut_node.shared_moves(
                pat.shared, np.concatenate([lp.row_type[sel], cm[0][csel]]),
                np.concatenate([lp.row_unit[sel], cm[3][csel]]), np.concatenate([dual[sel], np.zeros(nc)]),
                np.concatenate([want[sel], np.zeros(nc, dtype=bool)]),
                np.concatenate([tight[sel], cs[csel] <= TIGHT_TOL * max(1.0, t)]), self.faithful, DUAL_TOL)
        return (new_u, new_v), shared_safe, shared_risky

    @staticmethod
    def _apply(pat: Patterns, hidden_moves, shared_flips) -> Patterns:
        new = pat.copy()
        new.u.update({k: p.copy() for k, p in hidden_moves[0].items()})
        new.v.update({k: p.copy() for k, p in hidden_moves[1].items()})
        if new.shared is not None and shared_flips is not None:
            new.shared ^= shared_flips
        return new

    # ------------------------------------------------------------------ the descent -----
    def _options(self, deadline: float | None) -> SolverOptions:
        """The LP options, with the time left before ``deadline`` as the time limit."""
        if deadline is None or "time_limit" not in self.backend.portable_options:
            return self.options
        left = max(1e-3, deadline - time.monotonic())
        limit = left if self.options.time_limit is None else min(left, self.options.time_limit)
        return replace(self.options, time_limit=limit)

    def solve_lp(self, u, v, pat, warm: tuple | None = None, deadline: float | None = None):
        """Build and solve the LP of ``pat``; ``warm`` = (tight row keys, weight) of the previous
        solve. A solve that is not optimal is retried with each fallback backend in turn (not
        after a time limit, and not once ``deadline``, a :func:`time.monotonic` time, passed)."""
        lp = self.build(u, v, pat)
        if lp is None:
            return None, None
        sol = self.backend.solve_min_max_norm(lp.warm(*warm) if warm else lp.problem, self._options(deadline))
        if _past(deadline):
            return lp, sol
        return lp, with_fallbacks(sol, lp.problem, self.fallbacks)

    def run(self, u: np.ndarray, v: np.ndarray, starts: list[tuple[np.ndarray, np.ndarray]],
            stop: GridStop | None = None, deadline: float | None = None, every: bool = False) -> DescentOutcome:
        """Descend from each start (pairs of points whose patterns seed the search); keep the best.
        ``stop``: end a descent when its next steps cannot cross a grid value (None: run each to
        its local optimum). ``deadline`` (a :func:`time.monotonic` time): past it the descent
        ends with ``timed_out`` set (its LPs get the time left as their limit). ``every``: descend
        from every start (one per distinct start pattern; a multi-start descent) and list every
        collision in ``candidates``, best first; otherwise a later start runs only when the
        earlier ones found nothing."""
        t0 = time.perf_counter()
        self._jac.clear()
        best = DescentOutcome(None, None)
        messages, failures, seen = [], [], set()
        for xu, xv in starts:
            pat = self.patterns_at(xu, xv)
            if every and pat.key() in seen:
                continue  # the same start pattern descends to the same point
            seen.add(pat.key())
            out = self._descend(u, v, pat, stop, deadline)
            best.timed_out |= out.timed_out
            best.iterations += out.iterations
            best.lp_solves += out.lp_solves
            if out.message:
                messages.append(out.message)
            if out.failed:
                failures.append(out.failed)
            if out.found and out.objective < best.objective:
                best.u_adv, best.v_adv, best.objective, best.history = out.u_adv, out.v_adv, out.objective, out.history
                best.problem = out.problem
            if out.found and every:
                best.candidates.append(Candidate(out.objective, out.u_adv, out.v_adv, out.problem))
            if best.timed_out or (best.found and not self.faithful and not every):
                break  # a later start is only a fallback
        best.candidates.sort(key=lambda c: c.objective)
        if every:
            messages.append(f"multi-start: {len(seen)} distinct start patterns, {len(best.candidates)} collisions")
        best.seconds = time.perf_counter() - t0
        best.message = "; ".join(dict.fromkeys(messages))
        best.failed = "; ".join(dict.fromkeys(failures))
        return best

    def _descend(self, u, v, pat: Patterns, stop: GridStop | None = None,
                 deadline: float | None = None) -> DescentOutcome:
        out = DescentOutcome(None, None)
        seen = {pat.key()}
        risky_pending = False  # the current pattern came from a risky flip of the best one
        warm = None
        plan, r = self.plan, self.r
        for it in range(self.max_iter):
            if _past(deadline):
                out.timed_out = True
                out.message = f"time budget reached at step {it + 1}"
                break
            out.iterations = it + 1
            lp, sol = self.solve_lp(u, v, pat, warm, deadline)
            out.lp_solves += lp is not None
            if lp is not None and not sol.ok and sol.termination is Termination.TIME_LIMIT and _past(deadline):
                out.timed_out = True
                out.message = f"time budget reached at step {it + 1}"
                break
            if lp is None or not sol.ok:
                empty = lp is None or sol.termination is Termination.INFEASIBLE  # every solver agrees
                if not empty:
                    # a solver failure, not an empty piece: the pair's result at this cut is a
                    # failure (counted and reported), even when an earlier step found a point
                    out.failed = f"LP failed: {sol.termination.value} ({sol.message})"
                    out.message = f"cone LP failed at step {it + 1}: {sol.termination.value} ({sol.message})"
                elif not out.found:
                    out.message = "cone LP failed at the start: patterns infeasible"
                break  # keep the best point found so far
            x = sol.x
            if sol.hints is not None:
                act = np.asarray(sol.hints.get("active", []), dtype=np.int64)
                warm = (lp.row_keys[act], sol.hints.get("weight"))
            au, av = x[1:1 + r], x[1 + r:1 + 2 * r]
            eps = max(float(plan.norm.size(au)), float(plan.norm.size(av)))
            out.history.append(eps)
            if eps < out.objective * (1 - 1e-9) - 1e-12:
                out.u_adv, out.v_adv, out.objective = u + plan.lift(au), v + plan.lift(av), eps
                out.problem = lp.problem
                risky_pending = False
                if stop is not None and stop.reached(eps):
                    out.message = "stopped: eps is below every positive grid value"
                    break
            elif self.faithful or risky_pending:
                break  # no decrease (the paper's stopping rule), or a risky flip did not pay
            hidden, shared_safe, shared_risky = self._moves(lp, x, sol.z, eps, pat)
            any_safe = bool(hidden[0] or hidden[1]) or (shared_safe is not None and shared_safe.any())
            if self.faithful:
                nxt = self._apply(pat, hidden, None if shared_safe is None else shared_safe | shared_risky)
            elif any_safe:
                # safe moves keep the current point feasible: the budget cannot increase
                nxt = self._apply(pat, hidden, shared_safe)
            elif self.risky_flips and shared_risky is not None and shared_risky.any():
                nxt = self._apply(pat, ({}, {}), shared_risky)
                risky_pending = True
            else:
                break  # a local optimum over neighbouring patterns
            key = nxt.key()
            if key in seen:
                break
            seen.add(key)
            pat = nxt
        return out


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


def _row_space_equalities(Eu, Ev, b: np.ndarray):
    """``Eu a_u - Ev a_v = b`` (many rows, few variables) as ``Q x = c`` with Q an orthonormal
    basis of the rows' span (from the eigenvectors of the Gram matrix A'A, n x n), or None when
    the system is inconsistent. When Eu and Ev are the same rows (a cut right after the first
    linear map) the basis is {(y, -y) / sqrt(2)} for y in the span of Eu's rows: half the size."""
    n = Eu.shape[1]
    same = (Eu is Ev) or (linops.is_sparse(Eu) == linops.is_sparse(Ev) and Eu.shape == Ev.shape and (
        (Eu != Ev).nnz == 0 if linops.is_sparse(Eu) else np.array_equal(Eu, Ev)))
    norms = linops.row_norms(linops.hstack([Eu, Ev]))
    nz = norms > 1e-12 * max(1.0, float(norms.max(initial=0.0)))
    if np.any(np.abs(b[~nz]) > 1e-9 * max(1.0, float(np.abs(b).max(initial=0.0)))):
        return None
    inv = 1.0 / norms[nz]
    Eu, Ev, b = linops.scale_rows(Eu[nz], inv), linops.scale_rows(Ev[nz], inv), b[nz] * inv
    B = Eu if same else linops.hstack([Eu, -Ev])
    G = linops.to_dense(B.T @ B)
    Bb = np.asarray(B.T @ b).ravel()
    full = _full_rank_solve(G, Bb)
    if full is not None:  # the rows span every direction: any orthonormal basis, the identity's
        Uk, y = np.eye(G.shape[0]), full
    else:
        lam, U = np.linalg.eigh(G)
        keep = lam > GRAM_RANK_TOL * max(float(lam[-1]) if lam.size else 0.0, 1e-300)
        Uk, lk = U[:, keep], lam[keep]
        y = Uk @ ((Uk.T @ Bb) / lk)  # the least-norm solution of B y = b
    if same:
        # A x = B (x_u - x_v): any x with x_u - x_v = y (+ null-space parts) solves it
        resid = np.asarray(B @ y).ravel() - b
        Q = np.hstack([Uk.T, -Uk.T]) / np.sqrt(2.0)
        x0 = np.concatenate([y, np.zeros(n)])
    else:
        resid = np.asarray(B @ y).ravel() - b
        Q, x0 = Uk.T, y
    if np.max(np.abs(resid), initial=0.0) > 1e-7 * max(1.0, float(np.abs(b).max(initial=0.0))):
        return None
    return np.ascontiguousarray(Q), Q @ x0


def _full_rank_solve(G: np.ndarray, g: np.ndarray) -> np.ndarray | None:
    """G^-1 g when the Gram matrix G is safely of full rank (a Cholesky factor and LAPACK's
    condition estimate: cond_2 <= n cond_1 < 0.1 / GRAM_RANK_TOL, so an eigendecomposition
    would keep every direction), else None. A Cholesky costs a tenth of the eigendecomposition."""
    n = G.shape[0]
    if n == 0:
        return None
    L, info = scipy.linalg.lapack.dpotrf(G, lower=True, clean=True)
    if info != 0:
        return None
    rcond, info = scipy.linalg.lapack.dpocon(L, float(np.abs(G).sum(axis=0).max()), uplo="L")
    if info != 0 or not rcond * 0.1 > n * GRAM_RANK_TOL:
        return None
    return scipy.linalg.cho_solve((L, True), g, check_finite=False)


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
