"""A dual active-set solver for the descent's cone LPs (pure numpy/scipy).

The descent's cone LPs all have one shape:

    minimise t  s.t.  ||x_u|| <= t,  ||x_v|| <= t,  C x <= h,  A x = b      (x = (x_u, x_v))

and at their optimum only a few of the hundreds of sign constraints are tight. By the minimax
theorem the optimum solves, for the right weight w in (0, 1), the least-norm problem

    minimise  w ||x_u||^2 + (1 - w) ||x_v||^2   s.t.  C x <= h,  A x = b,

and phi(w) = ||x_u(w)||^2 - ||x_v(w)||^2 is non-increasing in w (it is the derivative of the
concave dual function), so the right w is its root, found by a safeguarded secant search.
Each least-norm problem is solved by the Goldfarb-Idnani dual active-set method: start from
the equality-constrained minimum, add the most violated inequality, drop constraints whose
multiplier would turn negative, with a Cholesky factor of the working set's Gram matrix
updated row by row. The working set carries over between weights and between solves
(``ConeProblem.hints``), so a descent step that flips a few ReLUs costs a few row updates.

The duals returned are those of the cone LP (z = QP multiplier / t), so the descent reads
them exactly as it reads cvxopt's.
"""

from __future__ import annotations

import math
import time

import numpy as np
import scipy.linalg
import scipy.sparse as sp
from scipy.linalg.blas import dtrsv as _dtrsv

from .base import Backend, Capability, Opt, ConeProblem, ConeSolution, MinMaxNormProblem, SolverOptions, Termination


class _Infeasible(Exception):
    pass


class _TimeLimit(Exception):
    pass


class _Numerical(Exception):
    pass


def _structure(p: ConeProblem):
    """Check the min-max-norm shape; return (r, C, h, A, b) or None."""
    n = p.n_vars
    if len(p.soc_sizes) != 2 or p.soc_sizes[0] != p.soc_sizes[1] or 1 + 2 * (p.soc_sizes[0] - 1) != n:
        return None
    r = p.soc_sizes[0] - 1
    c = np.zeros(n)
    c[0] = 1.0
    if not np.array_equal(p.c, c):
        return None
    soc = p.G[p.n_linear:]
    # the cone rows must be -[1 0 0; 0 I 0] and -[1 0 0; 0 0 I]: exactly 2 + 2r nonzeros, all -1,
    # in the right places
    if soc.shape != (2 * (1 + r), n) or np.any(p.h[p.n_linear:] != 0) or np.count_nonzero(soc) != 2 + 2 * r:
        return None
    ar = np.arange(r)
    if not (soc[0, 0] == -1 and soc[1 + r, 0] == -1 and np.all(soc[1 + ar, 1 + ar] == -1)
            and np.all(soc[2 + r + ar, 1 + r + ar] == -1)):
        return None
    C, h = p.G[:p.n_linear], p.h[:p.n_linear]
    if np.any(C[:, 0] != 0) or (p.A is not None and p.A.shape[0] and np.any(p.A[:, 0] != 0)):
        return None
    A = p.A[:, 1:] if p.A is not None and p.A.shape[0] else np.zeros((0, 2 * r))
    b = p.b if p.A is not None and p.A.shape[0] else np.zeros(0)
    return r, C[:, 1:], h, A, b


class _LeastNorm:
    """Goldfarb-Idnani for  min 1/2 |y|^2  s.t.  rows(y) <= / = rhs, with y = D^(-1/2) x.

    Rows are stored unscaled (in x); the weight w scales the u and v column blocks. Working-set
    entries: k >= 0 is inequality row k, k < 0 is equality row -1-k."""

    def __init__(self, C, h, A, b, r, tol):
        self.C, self.h, self.A, self.b, self.r, self.tol = C, h, A, b, r, tol
        self.sparse = sp.issparse(C)
        self.Cn = (np.sqrt(np.asarray(C.multiply(C).sum(axis=1)).ravel()) if self.sparse
                   else np.sqrt(np.einsum("ij,ij->i", C, C)))
        self.Cn[self.Cn == 0] = 1.0
        self.n_eq = A.shape[0]
        self.eq_rows = np.arange(self.n_eq)  # the equality rows in use (see _reduce_equalities)
        self._gram = None  # (working set, Ku, Kv) of the last fixed-set root
        # dense rows touching one point only (the descent's): products with a row can skip the
        # other point's zero half
        self._half = (not self.sparse) and C.shape[0] > 0 and bool(
            np.all((C[:, :r] == 0).all(axis=1) | (C[:, r:] == 0).all(axis=1)))
        self.proj = self._mirrored_equalities()

    def _mirrored_equalities(self) -> bool:
        """Equalities  Q (x_u - x_v) = b  with orthonormal rows sqrt(2) Q (a cut right after the
        first linear map: both points' features are the same rows of it). Their Gram matrix in
        the weighted space is then a multiple of I, so they are kept out of the working set: every
        row and step is projected onto their null space instead (the working set holds the sign
        rows only, often a tenth of its size with the equalities)."""
        r, q = self.r, self.n_eq
        if q < max(8, r // 4):
            return False
        Au = self.A[:, :r]
        if not np.array_equal(self.A[:, r:], -Au):
            return False
        G = Au @ Au.T
        G[np.diag_indices(q)] -= 0.5
        return float(np.max(np.abs(G))) <= 1e-10

    def _projector(self, sc):
        """(project, y0): the projection onto the null space of the weighted equalities and the
        least-norm point satisfying them (mirrored equalities only)."""
        r = self.r
        su, sv = float(sc[0]), float(sc[-1])
        alpha = (su * su + sv * sv) / 2.0
        Au = self.A[:, :r]

        def eq(y):  # A_y y (y: a vector, or rows)
            return (su * y[..., :r] - sv * y[..., r:]) @ Au.T

        def eqT(c):  # A_y' c (c: a vector, or rows)
            t = c @ Au
            return np.concatenate([su * t, -sv * t], axis=-1)

        def project(y):
            return y - eqT(eq(y)) / alpha

        return project, eqT(self.b) / alpha, eq, alpha

    def _equalities(self) -> list[int]:
        return [-1 - int(k) for k in self.eq_rows]

    def _reduce_equalities(self) -> None:
        """Keep a numerically independent subset of the equality rows (pivoted QR), once: the
        caller's rank test can pass rows that depend on each other to rounding (their Gram
        matrix is then not positive definite). Dependent rows that the kept ones do not imply
        make the constraints inconsistent."""
        if self.eq_rows.size < self.n_eq or not self.n_eq:
            raise np.linalg.LinAlgError("the equality rows depend on each other")
        _, R, piv = scipy.linalg.qr(self.A.T, mode="economic", pivoting=True, check_finite=False)
        d = np.abs(np.diag(R))
        keep = np.sort(piv[:int(np.sum(d > EQ_RANK_TOL * d[0]))])
        x = np.linalg.lstsq(self.A[keep], self.b[keep], rcond=None)[0]
        if np.max(np.abs(self.A @ x - self.b)) > ACCURACY * max(1.0, float(np.abs(self.b).max())):
            raise _Infeasible()
        self.eq_rows = keep

    def _rows(self, idx):
        """Rows (in x) and right-hand sides of working-set entries."""
        i = np.asarray(idx, dtype=np.int64)
        eq = i < 0
        N = np.empty((i.size, 2 * self.r))
        N[eq] = self.A[-1 - i[eq]]
        N[~eq] = self.C[i[~eq]].toarray() if self.sparse else self.C[i[~eq]]
        e = np.empty(i.size)
        e[eq] = self.b[-1 - i[eq]]
        e[~eq] = self.h[i[~eq]]
        return N, e

    def _scale(self, w):
        r = self.r
        return np.concatenate([np.full(r, 1 / math.sqrt(w)), np.full(r, 1 / math.sqrt(1 - w))])

    def _start(self, W, sc):
        """Equality-constrained minimum on W, dropping inequalities with negative multipliers."""
        while True:
            if not W:
                return W, np.zeros((0, 2 * self.r)), np.zeros((0, 0)), np.zeros(0)
            N, e = self._rows(W)
            N *= sc
            if self._gram is not None and self._gram[0] == W:
                # the weighted Gram of a working set the weight root just factored: N N' =
                # Ku / w + Kv / (1 - w), no product of the rows again
                G = self._gram[1] * (sc[0] * sc[0]) + self._gram[2] * (sc[-1] * sc[-1])
            else:
                G = N @ N.T
            try:
                L = scipy.linalg.cholesky(G, lower=True, check_finite=False)
            except np.linalg.LinAlgError:
                # a warm start whose rows depend on each other (after a pattern change a row and
                # the rows of neighbouring units can): keep the equalities and a maximal
                # independent subset of the rest instead of starting afresh
                keep = _independent_subset(W, G)
                if keep is None or len(keep) == len(W):
                    raise
                W = keep
                continue
            pi = -scipy.linalg.cho_solve((L, True), e, check_finite=False)
            neg = (pi < 0) & (np.asarray(W) >= 0)
            if not neg.any():
                return W, N, L, pi
            # any subset of rows with non-negative multipliers is a valid start: drop all
            # negative ones at once (a warm start after a pattern change has many)
            W = [i for k, i in enumerate(W) if not neg[k]]

    def solve(self, w: float, start: list[int]):
        r = self.r
        sc = self._scale(w)
        if self.proj:
            return self._solve_projected(w, sc, start)
        W = self._equalities() + [i for i in start if i >= 0]
        try:
            W, N, L, pi = self._start(W, sc)
        except np.linalg.LinAlgError:  # a warm-start row depends on the others: start afresh
            try:
                W, N, L, pi = self._start(self._equalities(), sc)
            except np.linalg.LinAlgError:  # equality rows that depend on each other
                self._reduce_equalities()
                W, N, L, pi = self._start(self._equalities(), sc)
        y = -N.T @ pi if W else np.zeros(2 * r)
        return self._iterate(W, N, L, pi, y, sc)

    def _solve_projected(self, w: float, sc, start: list[int]):
        """``solve`` with mirrored equalities kept out of the working set: the rows are projected
        onto their null space and the iterate starts at their least-norm solution y0."""
        project, y0, eq, alpha = self._projector(sc)
        W = [i for i in start if i >= 0]
        while True:
            if not W:
                N, L, pi = np.zeros((0, 2 * self.r)), np.zeros((0, 0)), np.zeros(0)
                break
            Ny, e = self._rows(W)
            Ny *= sc
            N = project(Ny)
            G = N @ N.T
            try:
                L = scipy.linalg.cholesky(G, lower=True, check_finite=False)
            except np.linalg.LinAlgError:
                keep = _independent_subset(W, G)
                W = [] if keep is None or len(keep) == len(W) else keep
                continue
            pi = -scipy.linalg.cho_solve((L, True), e - Ny @ y0, check_finite=False)
            neg = pi < 0
            if not neg.any():
                break
            W = [i for k, i in enumerate(W) if not neg[k]]
        y = y0 - N.T @ pi if W else y0.copy()
        x, W, pi = self._iterate(W, N, L, pi, y, sc, project)
        # the equalities' multipliers: y + N_y' pi + A_y' pi_e = 0 at the optimum
        y = x / sc
        Ny = self._rows(W)[0] * sc if W else np.zeros((0, 2 * self.r))
        pi_e = -eq(y + Ny.T @ pi) / alpha
        return x, [-1 - k for k in range(self.n_eq)] + list(W), np.concatenate([pi_e, pi])

    def _iterate(self, W, N, L, pi, y, sc, project=None):
        """The dual active-set iterations from a working set W (rows N in the weighted space,
        their Gram factor L, multipliers pi) at the point y. ``project``: the rows' projection
        onto the null space of equalities kept out of W (mirrored equalities)."""
        r = self.r
        inW = np.zeros(len(self.h), dtype=bool)
        inW[[i for i in W if i >= 0]] = True
        implied = np.zeros(len(self.h), dtype=bool)  # rows the working set implies (see below)
        # working rows and Cholesky factor in buffers that grow by doubling (no copy per step)
        k = len(W)
        cap = max(16, 2 * k)
        Nb = np.zeros((cap, 2 * r))
        Nb[:k] = N
        Lb = np.zeros((cap, cap))
        Lb[:k, :k] = L
        isineq = np.zeros(cap, dtype=bool)
        isineq[:k] = np.asarray(W) >= 0
        for _ in range(10 * (len(self.h) + 10)):
            s = (self.C @ (y * sc) - self.h) / self.Cn
            s[inW | implied] = -np.inf
            p = int(np.argmax(s)) if s.size else -1
            if p < 0 or s[p] <= self.tol:
                return y * sc, W, pi
            if self.sparse:  # the row in y-space, and its non-zero columns
                row = self.C[p]
                nz = row.indices
                ap = np.zeros(2 * r)
                ap[nz] = row.data
                ap *= sc
            else:
                ap = self.C[p] * sc
                nz = np.flatnonzero(ap) if self._half else None
            a_true = ap  # the row itself (its slack); ap: the direction it constrains
            if project is not None:
                ap, nz = project(ap), None
            piP = 0.0
            while True:  # move along constraint p until it is satisfied (full step) or a drop
                N, L = Nb[:k], Lb[:k, :k]
                if k:
                    Nap = N @ ap if nz is None or nz.size > r else N[:, nz] @ ap[nz]
                    rr = _cho_solve_view(L, Nap)
                    z = ap - N.T @ rr
                else:
                    rr = np.zeros(0)
                    z = ap
                zz = float(z @ z)
                slack = float(a_true @ y - self.h[p])
                t1 = slack / zz if zz > 1e-14 * float(ap @ ap) else math.inf
                t2, drop = math.inf, -1
                if k:
                    cand = np.flatnonzero((rr > 1e-14) & isineq[:k])
                    if cand.size:
                        q = pi[cand] / rr[cand]
                        j = int(np.argmin(q))
                        t2, drop = float(q[j]), int(cand[j])
                if math.isinf(t1) and piP == 0.0 and s[p] <= ACCURACY * max(1.0, float(np.linalg.norm(y * sc))):
                    # p is (numerically) a combination of the working rows and its violation
                    # is rounding in what they imply (a pattern row the equalities fix): it
                    # holds to the accuracy every returned point is held to. Dropping other
                    # rows to satisfy it (with multipliers ~ violation / |z|) or declaring
                    # the constraints inconsistent would act on rounding: leave it out
                    implied[p] = True
                    break
                if math.isinf(t1) and math.isinf(t2):
                    raise _Infeasible()
                step = min(t1, t2)
                if not math.isinf(t1):
                    y = y - step * z
                pi = pi - step * rr
                piP += step
                if t1 <= t2:  # full step: p joins the working set
                    if k == cap:
                        cap *= 2
                        Nb2 = np.zeros((cap, 2 * r))
                        Nb2[:k] = Nb[:k]
                        Lb2 = np.zeros((cap, cap))
                        Lb2[:k, :k] = Lb[:k, :k]
                        isineq = np.concatenate([isineq, np.zeros(cap - isineq.size, dtype=bool)])
                        Nb, Lb = Nb2, Lb2
                    if k:
                        l12 = _dtrsv(Lb[:k, :k].T, Nap, lower=0, trans=1)
                        d = float(ap @ ap - l12 @ l12)
                        if d <= 1e-12 * float(ap @ ap):
                            raise _Numerical()
                        Lb[k, :k] = l12
                        Lb[k, k] = math.sqrt(d)
                    else:
                        Lb[0, 0] = math.sqrt(float(ap @ ap))
                    Nb[k] = ap
                    isineq[k] = True
                    k += 1
                    W.append(p)
                    inW[p] = True
                    pi = np.append(pi, piP)
                    break
                # partial step: constraint `drop` leaves the working set
                inW[W[drop]] = False
                W.pop(drop)
                pi = np.delete(pi, drop)
                Nb[drop:k - 1] = Nb[drop + 1:k]
                isineq[drop:k - 1] = isineq[drop + 1:k]
                _chol_delete(Lb, k, drop)
                k -= 1
        raise _Numerical()

    def fixed_set_root(self, W: list[int], w0: float):
        """With the working set W held fixed (as equalities), the weight where both norms are
        equal, and the point and multipliers there; None when there is no such weight (and for
        mirrored equalities, whose working sets leave them out: the caller then searches the
        weight with full solves, each warm-started)."""
        if not W:
            return None
        if self.proj:
            return self._fixed_set_root_mirrored(W, w0)
        r = self.r
        Nx, e = self._rows(W)
        Ku, Kv = Nx[:, :r] @ Nx[:, :r].T, Nx[:, r:] @ Nx[:, r:].T
        self._gram = (list(W), Ku, Kv)
        # the multipliers solve M(w) lam = -e with M(w) = Ku / w + Kv / (1 - w) (positive
        # definite: the working rows are independent). phi(w) = |x_u|^2 - |x_v|^2 is
        # non-increasing in w, and phi' costs one more solve with the same Cholesky factor,
        # so safeguarded Newton finds the root in a few factorisations of a |W| x |W| matrix
        # (a generalised eigendecomposition, which diagonalises M(w) for every w at once,
        # costs about 25 of them, and is no more accurate at the extreme weights where the
        # rows touching one point only make phi jump)

        def phi(w):
            cf = scipy.linalg.cho_factor(Ku * (1.0 / w) + Kv * (1.0 / (1.0 - w)), lower=True, check_finite=False)
            return _balance(w, lambda rhs: scipy.linalg.cho_solve(cf, rhs, check_finite=False), e,
                            lambda lam: Ku @ lam, lambda lam: Kv @ lam)

        root = _fixed_root(phi, w0)
        if root is None:
            return None
        w, lm = root
        x = np.concatenate([-Nx[:, :r].T @ lm / w, -Nx[:, r:].T @ lm / (1 - w)])
        nu, nv = float(x[:r] @ x[:r]), float(x[r:] @ x[r:])
        if not abs(nu - nv) <= BALANCE_TOL * (nu + nv):
            # a sign change of the computed phi that is not a root (rounding blown up at an
            # extreme weight, w or 1 - w ~ 1e-8): not the fixed-set optimum. The caller then
            # searches the weight with full solves
            return None
        return w, x, lm

    def _fixed_set_root_mirrored(self, W: list[int], w0: float):
        """fixed_set_root when W holds every mirrored equality (first) and sign rows: the
        equalities' block of Ku and Kv is I / 2, so M(w) is solved through the Schur complement
        of that block (|W| = q + k costs q k^2 + k^3, not (q + k)^3)."""
        r, q = self.r, self.n_eq
        Wi = [i for i in W if i >= 0]
        if list(W[:q]) != [-1 - k for k in range(q)] or len(W) != q + len(Wi):
            return None
        Au = self.A[:, :r]
        if Wi:
            Ni, ei = self._rows(Wi)
        else:
            Ni, ei = np.zeros((0, 2 * r)), np.zeros(0)
        ee = self.b
        Nu, Nv = Ni[:, :r], Ni[:, r:]
        Bu, Bv = Au @ Nu.T, -(Au @ Nv.T)  # cross blocks (q x k)
        Uii, Vii = Nu @ Nu.T, Nv @ Nv.T

        def Kmul(lam, which):
            le, li = lam[:q], lam[q:]
            B, Kii = (Bu, Uii) if which == "u" else (Bv, Vii)
            return np.concatenate([le / 2 + B @ li, B.T @ le + Kii @ li])

        e = np.concatenate([ee, ei])

        def factor(w):
            iw, iv = 1.0 / w, 1.0 / (1.0 - w)
            me = (iw + iv) / 2
            B = Bu * iw + Bv * iv
            S = Uii * iw + Vii * iv - (B.T @ B) / me
            cf = scipy.linalg.cho_factor(S, lower=True, check_finite=False) if S.size else None

            def solve(rhs):
                re, ri = rhs[:q], rhs[q:]
                li = scipy.linalg.cho_solve(cf, ri - B.T @ re / me, check_finite=False) if cf else np.zeros(0)
                return np.concatenate([(re - B @ li) / me, li])
            return solve

        def phi(w):
            return _balance(w, factor(w), e, lambda lam: Kmul(lam, "u"), lambda lam: Kmul(lam, "v"))

        root = _fixed_root(phi, w0)
        if root is None:
            return None
        w, lm = root
        le, li = lm[:q], lm[q:]
        tu = le @ Au
        x = np.concatenate([-(tu + Nu.T @ li) / w, -(-tu + Nv.T @ li) / (1 - w)])
        nu, nv = float(x[:r] @ x[:r]), float(x[r:] @ x[r:])
        if not abs(nu - nv) <= BALANCE_TOL * (nu + nv):
            return None
        return w, x, lm

    def kkt(self, x, W, pi) -> bool:
        """Is x (with multipliers pi on W) optimal: feasible and dual feasible?"""
        ineq = np.asarray([k for k, i in enumerate(W) if i >= 0], dtype=np.int64)
        if ineq.size and np.min(pi[ineq]) < 0:
            return False
        s = (self.C @ x - self.h) / self.Cn
        return not s.size or float(s.max()) <= self.tol


def _independent_subset(W: list[int], G: np.ndarray) -> list[int] | None:
    """The equalities of the working set W (entries < 0) and a maximal linearly independent
    subset of its inequality rows, by a pivoted Cholesky factorisation of their Gram matrix G
    after projecting out the equalities; None when the equalities themselves are dependent."""
    Wa = np.asarray(W)
    ie, ii = np.flatnonzero(Wa < 0), np.flatnonzero(Wa >= 0)
    S = G[np.ix_(ii, ii)]
    if ie.size:
        try:
            Le = scipy.linalg.cholesky(G[np.ix_(ie, ie)], lower=True, check_finite=False)
        except np.linalg.LinAlgError:
            return None
        T = scipy.linalg.solve_triangular(Le, G[np.ix_(ie, ii)], lower=True, check_finite=False)
        S = S - T.T @ T
    if not ii.size:
        return list(W)
    tol = 1e-10 * max(float(np.max(np.diag(G))), 1e-300)
    _, piv, rank, _ = scipy.linalg.lapack.dpstrf(S, lower=1, tol=tol)
    keep = set(ie.tolist()) | set(ii[piv[:rank] - 1].tolist())
    return [w for k, w in enumerate(W) if k in keep]


def _cho_solve_view(L: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Solve L L' x = b for a lower factor L that is a view into a larger buffer: BLAS trsv on
    its transpose reads it in place (scipy's cho_solve copies a non-contiguous factor first,
    which costs as much as the solve)."""
    U = L.T  # upper, Fortran-ordered with the buffer's leading dimension
    return _dtrsv(U, _dtrsv(U, b, lower=0, trans=1), lower=0, trans=0)


def _chol_delete(Lb: np.ndarray, k: int, j: int) -> None:
    """In place: the lower Cholesky factor ``Lb[:k, :k]`` of a Gram matrix becomes that of the
    Gram matrix without row and column j (in ``Lb[:k-1, :k-1]``; row and column k-1 are
    zeroed). Removing row j of L leaves one super-diagonal entry per later row; Givens rotations
    of neighbouring columns remove them: O(k^2) instead of a new factorisation."""
    Lb[j:k - 1, :k] = Lb[j + 1:k, :k]
    for i in range(j, k - 1):
        a, b = Lb[i, i], Lb[i, i + 1]
        if b == 0.0:
            continue
        rad = math.hypot(a, b)
        c, s = a / rad, b / rad
        ci, cn = Lb[i:k - 1, i].copy(), Lb[i:k - 1, i + 1]
        Lb[i:k - 1, i] = c * ci + s * cn
        Lb[i:k - 1, i + 1] = c * cn - s * ci
        Lb[i, i + 1] = 0.0
    for i in range(j, k - 1):  # keep a positive diagonal
        if Lb[i, i] < 0:
            Lb[i:k - 1, i] *= -1.0
    Lb[k - 1, :] = 0.0
    Lb[:, k - 1] = 0.0


#: a returned point satisfies its (unit-row) constraints to this, relative to max(1, |x|)
ACCURACY = 1e-9

#: a fixed-set root must balance the squared norms to this relative accuracy
BALANCE_TOL = 1e-8

#: equality rows whose pivoted-QR pivot is below this (relative) depend on the others
EQ_RANK_TOL = 1e-10


def _balance(w: float, solve, e, ku_of, kv_of):
    """phi(w) = lam'Ku lam / w^2 - lam'Kv lam / (1-w)^2 with M(w) lam = -e, M(w) = Ku/w + Kv/(1-w)
    (``solve``: M(w)^-1 applied, ``ku_of``/``kv_of``: Ku, Kv applied), its derivative, lam and
    the sum of both squared norms: what :func:`_newton_root` needs."""
    iw, iv = 1.0 / w, 1.0 / (1.0 - w)
    lam = -solve(e)
    ku, kv = ku_of(lam), kv_of(lam)
    a, b = float(lam @ ku), float(lam @ kv)
    q = kv * iv * iv - ku * iw * iw  # dM/dw lam
    d = 2 * float(q @ solve(q)) - 2 * a * iw ** 3 - 2 * b * iv ** 3
    return a * iw * iw - b * iv * iv, d, lam, a * iw * iw + b * iv * iv


def _fixed_root(phi, w0):
    """(w, lam) at the root of phi near w0, or None (no root, or a singular M(w) on the way)."""
    try:
        w = _newton_root(phi, w0)
        if w is None:
            return None
        return w, phi(w)[2]
    except (np.linalg.LinAlgError, ValueError):
        return None


def _newton_root(phi, w0, max_steps=100):
    """Root of a non-increasing phi on (0, 1), phi(w) -> (value, derivative, payload, scale):
    Newton steps kept inside a sign bracket (bisection when a step leaves it or stalls);
    None when phi has no sign change in (0, 1)."""
    lo_lim, hi_lim = 1e-9, 1 - 1e-9
    lo, hi = 0.0, 1.0  # phi > 0 left of the root, <= 0 right of it
    w = min(max(w0, 1e-6), 1 - 1e-6)
    for _ in range(max_steps):
        f, d, _, scale = phi(w)
        if abs(f) <= 1e-13 * scale:
            return w
        if f > 0:
            lo = w
        else:
            hi = w
        if hi - lo <= 1e-14:
            return w
        nw = w - f / d if d < 0 else math.nan
        if not lo < nw < hi:  # outside the bracket (or a useless derivative): bisect,
            if hi == 1.0:     # or walk towards an open end geometrically
                nw = 1 - (1 - w) / 8
            elif lo == 0.0:
                nw = w / 8
            else:
                nw = (lo + hi) / 2
        if nw <= lo_lim or nw >= hi_lim:  # evaluate at the limit once; no sign change there: no root
            if w in (lo_lim, hi_lim):
                return None
            nw = lo_lim if nw <= lo_lim else hi_lim
        if abs(nw - w) <= 1e-15 * max(w, 1 - w):
            return nw
        w = nw
    return None


class ActiveSetBackend(Backend):
    name = "activeset"
    capabilities = frozenset({Capability.CONE_LP})
    required_modules = ("numpy", "scipy")
    install_hint = "built in"
    native_options = {"tol": Opt(float, positive=True, high=1e-2), "weight_tol": Opt(float, positive=True, high=0.1),
                      "max_weight_steps": Opt(int, low=1, high=10_000)}
    defaults = {"tol": 1e-10, "weight_tol": 1e-12, "max_weight_steps": 60}
    portable_options = frozenset({"time_limit"})  # checked between least-norm solves

    def version(self) -> str:
        return "1"

    @staticmethod
    def _weight_search(phi, w0, opt):
        """Root of the non-increasing phi on (0, 1): bracket, then Illinois regula falsi.
        Returns the evaluation with the smallest |phi| (a root at an end is accepted there)."""
        lo_lim, hi_lim = 1e-9, 1 - 1e-9
        w = min(max(w0, 1e-6), 1 - 1e-6)
        f, x, pi = phi(w)
        best = (abs(f), x, w, pi)
        lo = hi = None  # (w, f) with f > 0 (root to the right) / f <= 0 (root to the left)
        scale = max(1e-300, float(x @ x))
        for _ in range(opt["max_weight_steps"]):
            if f > 0:
                lo = (w, f)
            else:
                hi = (w, f)
            if abs(f) <= 1e-12 * scale:
                break
            if lo is None:  # every point so far has f <= 0: the root lies closer to 0
                if w <= lo_lim:
                    break
                w = max(lo_lim, w / 8)
            elif hi is None:
                if w >= hi_lim:
                    break
                w = min(hi_lim, 1 - (1 - w) / 8)
            else:
                if hi[0] - lo[0] <= opt["weight_tol"]:
                    break
                w = hi[0] - hi[1] * (hi[0] - lo[0]) / (hi[1] - lo[1])
                if not lo[0] < w < hi[0]:
                    w = (lo[0] + hi[0]) / 2
            prev_side = f > 0
            f, x, pi = phi(w)
            if abs(f) < best[0]:
                best = (abs(f), x, w, pi)
            if lo is not None and hi is not None and (f > 0) == prev_side:
                # Illinois: halve the value kept at the other end so it cannot stall
                if f > 0:
                    hi = (hi[0], hi[1] / 2)
                else:
                    lo = (lo[0], lo[1] / 2)
        _, x, w, pi = best
        return x, w, pi

    def solve_cone(self, problem: ConeProblem, options: SolverOptions) -> ConeSolution:
        t0 = time.perf_counter()
        st = None if sp.issparse(problem.G) else _structure(problem)
        if st is None:
            return ConeSolution(Termination.ERROR, solver=self.name, seconds=time.perf_counter() - t0,
                                message="activeset solves only min-max-norm cone LPs")
        r, C, h, A, b = st
        return self._solve(C, h, A, b, r, problem.hints or {}, options, problem.G.shape[0], t0)

    def solve_min_max_norm(self, problem: MinMaxNormProblem, options: SolverOptions) -> ConeSolution:
        t0 = time.perf_counter()
        if problem.norm != "l2":
            return ConeSolution(Termination.ERROR, solver=self.name, seconds=time.perf_counter() - t0,
                                message=f"activeset solves l2 problems only, not {problem.norm}")
        A = problem.A if problem.n_eq else np.zeros((0, 2 * problem.r))
        b = problem.b if problem.n_eq else np.zeros(0)
        C, h = problem.C, problem.h
        if problem.lb is not None or problem.ub is not None:  # box bounds as more inequality rows
            n2 = 2 * problem.r
            extra_C, extra_h = [], []
            if problem.ub is not None:
                extra_C.append(sp.identity(n2, format="csr"))
                extra_h.append(np.asarray(problem.ub, dtype=np.float64))
            if problem.lb is not None:
                extra_C.append(-sp.identity(n2, format="csr"))
                extra_h.append(-np.asarray(problem.lb, dtype=np.float64))
            if sp.issparse(C):
                C = sp.vstack([C] + extra_C, format="csr")
            else:
                C = np.vstack([C] + [e.toarray() for e in extra_C])
            h = np.concatenate([h] + extra_h)
        return self._solve(C, h, A, b, problem.r, problem.hints or {}, options, problem.n_linear, t0)

    def _solve(self, C, h, A, b, r, hints, options, n_z, t0) -> ConeSolution:
        """The min-max-norm problem; ``n_z``: the length of the returned dual vector z. A warm
        start that ends in failure is retried cold (a stale working set can mislead the
        active-set steps into declaring infeasibility)."""
        self.check_options(options)
        opt = dict(self.defaults)
        opt.update(options.native)
        opt["deadline"] = None if options.time_limit is None else t0 + float(options.time_limit)
        sol = self._attempt(C, h, A, b, r, hints, opt, n_z, t0)
        if not sol.ok and hints and sol.termination is not Termination.TIME_LIMIT:
            sol = self._attempt(C, h, A, b, r, {}, opt, n_z, t0)
        return sol

    def _attempt(self, C, h, A, b, r, hints, opt, n_z, t0) -> ConeSolution:
        ln = _LeastNorm(C, h, A, b, r, opt["tol"] * max(1.0, float(np.abs(h).max(initial=0.0))))
        work = [int(i) for i in hints.get("active", []) if 0 <= int(i) < len(h)]
        w = float(hints.get("weight", 0.5))
        calls = 0
        deadline = opt["deadline"]

        def solve(wt, ws):
            if deadline is not None and time.perf_counter() >= deadline:
                raise _TimeLimit
            return ln.solve(wt, ws)

        try:
            x = None
            # alternate: the least-norm point at weight w (active-set solve), then the weight
            # that balances the norms with that working set held fixed; stop when optimal
            for _ in range(opt["max_weight_steps"]):
                calls += 1
                x, work, pi = solve(w, work)
                f = float(x[:r] @ x[:r] - x[r:] @ x[r:])
                if abs(f) <= 1e-12 * max(1e-300, float(x @ x)):
                    break
                root = ln.fixed_set_root(work, w)
                if root is None:
                    x = None
                    break
                w2, x2, pi2 = root
                if ln.kkt(x2, work, pi2):
                    w, x, pi = w2, x2, pi2
                    break
                if abs(w2 - w) <= opt["weight_tol"]:
                    break
                w = w2
            else:
                x = None
            if x is None:  # no progress this way: bisect on the weight with full solves
                sets = {}

                def phi(wt):
                    nonlocal work, calls
                    calls += 1
                    xx, work, pp = solve(wt, work)
                    sets[wt] = list(work)
                    return float(xx[:r] @ xx[:r] - xx[r:] @ xx[r:]), xx, pp

                x, w, pi = self._weight_search(phi, w, opt)
                work = sets[w]
        except _TimeLimit:
            return ConeSolution(Termination.TIME_LIMIT, solver=self.name, seconds=time.perf_counter() - t0,
                                iterations=calls, message="activeset: time limit reached")
        except _Infeasible:
            return ConeSolution(Termination.INFEASIBLE, solver=self.name, seconds=time.perf_counter() - t0,
                                iterations=calls, message="activeset: constraints inconsistent")
        except (_Numerical, np.linalg.LinAlgError) as err:
            return ConeSolution(Termination.NUMERICAL_ERROR, solver=self.name, seconds=time.perf_counter() - t0,
                                iterations=calls, message=f"activeset: ill-conditioned working set {err}")
        # the point must satisfy its constraints to solver precision (at extreme weights the
        # updated factors can drift): an inaccurate point goes to the fallback, never to the caller
        scale = max(1.0, float(np.linalg.norm(x)))
        eq_res = float(np.max(np.abs(A @ x - b), initial=0.0))
        ineq_res = float(np.max((C @ x - h) / ln.Cn, initial=0.0))
        if eq_res > ACCURACY * scale or ineq_res > ACCURACY * scale + ln.tol:
            return ConeSolution(Termination.NUMERICAL_ERROR, solver=self.name, seconds=time.perf_counter() - t0,
                                iterations=calls, message=f"activeset: inaccurate point (equality residual "
                                                          f"{eq_res:.2g}, inequality violation {ineq_res:.2g})")
        xu, xv = x[:r], x[r:]
        t = max(float(np.linalg.norm(xu)), float(np.linalg.norm(xv)))
        # cone-LP duals: z = QP multiplier / t (QP with weights w, 1 - w)
        z = np.zeros(n_z)
        y = np.zeros(A.shape[0])
        if t > 0:
            for k, i in enumerate(work):
                if 0 <= i < n_z:
                    z[i] = pi[k] / t
                elif i < 0:
                    y[-1 - i] = pi[k] / t
        sol_x = np.concatenate([[t], x])
        return ConeSolution(Termination.OPTIMAL, x=sol_x, z=z, y=y, objective=t, iterations=calls,
                            seconds=time.perf_counter() - t0, solver=self.name,
                            message=f"weight {w:.6g}, {sum(1 for i in work if i >= 0)} tight sign constraints",
                            hints={"active": [i for i in work if 0 <= i < n_z], "weight": w})
