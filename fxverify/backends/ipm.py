"""A structured interior-point solver for the descent's min-max-norm problems (pure numpy/scipy).

The descent's problems all have one shape (:class:`~fxverify.backends.base.MinMaxNormProblem`):

    minimise t  s.t.  ||x_u|| <= t,  ||x_v|| <= t,  C x <= h,  A x = b,  lb <= x <= ub,

with x = (x_u, x_v), every row of C touching the variables of one point only, and the norm
l2, l-inf or l1. Generic solvers see a big sparse LP or cone LP and take seconds per solve;
this one solves the *homogenised* problem (x = s / tau, t = 1 / tau)

    maximise tau  s.t.  ||s_u|| <= 1,  ||s_v|| <= 1,  C s <= h tau,  A s = b tau,
                        lb tau <= s <= ub tau,  0 <= tau <= tau_max,

in which the norm balls are simple constraints of each point's own variables, and the problem
is always feasible (s = 0, tau = 0) and bounded: a pattern whose LP is infeasible shows as
tau* = 0, no infeasibility detection needed. It is a primal-dual path-following method
(Mehrotra predictor-corrector with Nesterov-Todd scaling, as in CVXOPT's cone solvers) whose
Newton systems are solved through their structure: the Hessian of each point's constraints is
``C_p' D C_p + diag + rank one`` (the ball: l-inf a diagonal, l1 a diagonal plus rank one after
eliminating its auxiliary variables, l2 a multiple of I plus rank one), the two points couple
only through tau and the q equalities, so every iteration factors two r x r (or m_p x m_p, by
the Woodbury identity, when a point has fewer rows than variables) matrices and one
(1 + q) x (1 + q) Schur complement. When a point has many more rows than variables (a
convolution's sign rows at a deep cut), its Hessian is formed from the rows that matter: those
whose weight D_i is not negligible next to the largest (constraint reduction; the residuals
always use every row).

Rows that the equalities pin to their bound leave the feasible set without an interior; the
path then stalls (two vanishing steps end the try) and the backend re-solves without those rows
(:func:`_implied_rows`), their duals 0.

Duals are returned in the convention of the original problem (``z >= 0`` for ``C x <= h``,
``y`` for ``A x = b``: the homogenised ones divided by tau*), so the descent reads them as it
reads any other backend's.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
from scipy.linalg.blas import dsyrk

from .base import Backend, Capability, ConeSolution, MinMaxNormProblem, Opt, SolverOptions, Termination

#: tau is capped here (eps >= 1 / TAU_MAX): a pattern at which the points collide unperturbed
#: would make the homogenised problem unbounded
TAU_MAX = 1e12
#: a row weight below this times the largest is left out of a point's Hessian (constraint
#: reduction; only when the point has more rows than variables)
REDUCE_TOL = 1e-12
#: an iterate this accurate (relative gap and residuals) is returned when the Newton systems
#: become too ill-conditioned to go on (the last digits of the optimum)
NEAR_OPTIMAL = 1e-8
#: two steps in a row shorter than this end the solve as a numerical failure (a stalled path)
STALL_STEP = 1e-8


class _Numerical(Exception):
    pass


class _TimeLimit(Exception):
    pass


# ----------------------------------------------------------------------------------------------
# second-order cone algebra (x = (x0, x1), x0 >= ||x1||)
# ----------------------------------------------------------------------------------------------
def _soc_det(x: np.ndarray) -> float:
    return float(x[0] * x[0] - x[1:] @ x[1:])


def _soc_prod(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The Jordan product x o y."""
    return np.concatenate([[x @ y], x[0] * y[1:] + y[0] * x[1:]])


def _soc_div(x: np.ndarray, d: np.ndarray) -> np.ndarray:
    """v with x o v = d."""
    v0 = (x[0] * d[0] - x[1:] @ d[1:]) / _soc_det(x)
    return np.concatenate([[v0], (d[1:] - v0 * x[1:]) / x[0]])


def _soc_step(x: np.ndarray, dx: np.ndarray) -> float:
    """The largest a in (0, inf] with x + a dx in the cone (x in its interior)."""
    a = dx[0] * dx[0] - dx[1:] @ dx[1:]
    b = x[0] * dx[0] - x[1:] @ dx[1:]
    c = _soc_det(x)
    # f(a) = c + 2 b a + a_ a^2 >= 0 and x0 + a dx0 >= 0
    lim = math.inf
    if dx[0] < 0:
        lim = -x[0] / dx[0]
    if a == 0:
        if b < 0:
            lim = min(lim, -c / (2 * b))
        return lim
    disc = b * b - a * c
    if disc < 0:
        return lim  # f keeps its sign (positive)
    sq = math.sqrt(disc)
    # roots of a t^2 + 2 b t + c; the first positive one
    r1 = (-b - sq) / a
    r2 = (-b + sq) / a
    roots = sorted(t for t in (r1, r2) if t > 0)
    return min(lim, roots[0]) if roots else lim


@dataclass
class _SocScaling:
    """Nesterov-Todd scaling of one second-order cone: W = eta (2 w w' - J), W z = W^-1 s."""

    w: np.ndarray
    eta: float

    @staticmethod
    def of(s: np.ndarray, z: np.ndarray) -> _SocScaling:
        ds, dz = _soc_det(s), _soc_det(z)
        if not (ds > 0 and dz > 0 and s[0] > 0 and z[0] > 0):
            raise _Numerical("second-order cone iterate left the cone")
        sn, zn = s / math.sqrt(ds), z / math.sqrt(dz)
        gamma = math.sqrt((1.0 + float(sn @ zn)) / 2.0)
        wbar = np.concatenate([[sn[0] + zn[0]], sn[1:] - zn[1:]]) / (2.0 * gamma)  # the NT point
        # W = eta (2 w w' - J) with w = (wbar + e) / sqrt(2 (wbar_0 + 1))  (w'Jw = 1; CVXOPT's)
        w = wbar.copy()
        w[0] += 1.0
        w /= math.sqrt(2.0 * w[0])
        return _SocScaling(w, (ds / dz) ** 0.25)

    def apply(self, v: np.ndarray) -> np.ndarray:
        """W v."""
        w = self.w
        out = 2.0 * float(w @ v) * w
        out[0] -= v[0]
        out[1:] += v[1:]
        return self.eta * out

    def apply_inv(self, v: np.ndarray) -> np.ndarray:
        """W^-1 v = (1 / eta) (2 J w w' J - J) v."""
        w = self.w
        a = np.concatenate([[w[0]], -w[1:]])  # J w
        out = 2.0 * float(a @ v) * a
        out[0] -= v[0]
        out[1:] += v[1:]
        return out / self.eta

    def hessian_tail(self) -> tuple[float, np.ndarray, float]:
        """(W^-2)[1:, 1:] = alpha I + rho g g'  as (alpha, g, rho)."""
        w = self.w
        e2 = self.eta * self.eta
        return 1.0 / e2, w[1:], (4.0 * float(w @ w) + 4.0) / e2


# ----------------------------------------------------------------------------------------------
# the problem in the solver's terms
# ----------------------------------------------------------------------------------------------
class _Point:
    """One point's rows: C_p s_p - h_p tau <= 0 (``sparse``: C_p is a CSR matrix)."""

    def __init__(self, C, h: np.ndarray, A: np.ndarray, lb, ub):
        self.C = C
        self.sparse = sp.issparse(C)
        self.CT = C.T.tocsr() if self.sparse else None
        self.h = h
        self.A = A  # q x r
        self.m, self.r = C.shape
        fin_lo = np.flatnonzero(np.isfinite(lb)) if lb is not None else np.zeros(0, dtype=np.int64)
        fin_hi = np.flatnonzero(np.isfinite(ub)) if ub is not None else np.zeros(0, dtype=np.int64)
        # domain rows: s_i - ub_i tau <= 0 (i in hi_idx), -s_i + lb_i tau <= 0 (i in lo_idx)
        self.hi_idx, self.hi = fin_hi, (np.asarray(ub, float)[fin_hi] if ub is not None else np.zeros(0))
        self.lo_idx, self.lo = fin_lo, (np.asarray(lb, float)[fin_lo] if lb is not None else np.zeros(0))

    def Cx(self, s: np.ndarray) -> np.ndarray:
        return self.C @ s

    def CTy(self, y: np.ndarray) -> np.ndarray:
        return (self.CT @ y) if self.sparse else (y @ self.C)


class _Problem:
    def __init__(self, p: MinMaxNormProblem, iu: np.ndarray, iv: np.ndarray):
        r = p.r
        self.r = r
        self.norm = p.norm
        C = p.C.tocsr() if sp.issparse(p.C) else np.asarray(p.C, dtype=np.float64)
        h = np.asarray(p.h, dtype=np.float64)
        q = p.n_eq
        A = np.asarray(p.A, dtype=np.float64) if q else np.zeros((0, 2 * r))
        self.b = np.asarray(p.b, dtype=np.float64) if q else np.zeros(0)
        self.q = q
        lb = None if p.lb is None else np.asarray(p.lb, dtype=np.float64)
        ub = None if p.ub is None else np.asarray(p.ub, dtype=np.float64)
        self.iu, self.iv = iu, iv
        pts = []
        for k, (rows, cols) in enumerate(((iu, slice(0, r)), (iv, slice(r, 2 * r)))):
            Cp = C[rows][:, cols]
            if sp.issparse(Cp):
                Cp = Cp.tocsr()
            else:
                Cp = np.ascontiguousarray(Cp)
            pts.append(_Point(Cp, h[rows], A[:, cols], None if lb is None else lb[cols],
                              None if ub is None else ub[cols]))
        self.pts = pts


def _split_rows(C, r: int):
    """Rows of C touching only x_u, and only x_v; None if some row touches both."""
    if sp.issparse(C):
        C = C.tocsr()
        col = C.indices
        row = np.repeat(np.arange(C.shape[0]), np.diff(C.indptr))
        nz = C.data != 0
        in_u = np.zeros(C.shape[0], dtype=bool)
        in_v = np.zeros(C.shape[0], dtype=bool)
        in_u[row[nz & (col < r)]] = True
        in_v[row[nz & (col >= r)]] = True
    else:
        in_u = np.any(C[:, :r] != 0, axis=1)
        in_v = np.any(C[:, r:] != 0, axis=1)
    if np.any(in_u & in_v):
        return None
    return np.flatnonzero(~in_v), np.flatnonzero(in_v)


# ----------------------------------------------------------------------------------------------
# the iterates
# ----------------------------------------------------------------------------------------------
def _orth_step(x: np.ndarray, dx: np.ndarray) -> float:
    neg = dx < 0
    if not neg.any():
        return math.inf
    return float(np.min(-x[neg] / dx[neg]))


class IpmSolver:
    """One solve of a min-max-norm problem (see the module docstring)."""

    def __init__(self, problem: MinMaxNormProblem, tol: float = 1e-10, max_iter: int = 100,
                 deadline: float | None = None):
        split = _split_rows(problem.C, problem.r)
        if split is None:
            raise ValueError("a row of C touches both points")
        self.P = _Problem(problem, *split)
        self.tol = tol
        self.max_iter = max_iter
        self.deadline = deadline

    def solve(self):
        """(tau, [s_u, s_v], [row duals of u, of v], equality duals, iterations) of the
        homogenised problem. When the Newton systems become too ill-conditioned to go on (the
        row weights spread over many orders of magnitude near the optimum), the most accurate
        iterate is returned if it is within NEAR_OPTIMAL."""
        self._best = None
        try:
            # an overflow near the optimum (the row weights spread over many orders of
            # magnitude) is caught by the finiteness checks of each step, not by warnings
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                return self._iterate()
        except _Numerical:
            if self._best is not None and self._best[0] <= NEAR_OPTIMAL:
                return self._best[1]
            raise

    def _iterate(self):
        pt = _Iterate(self.P)
        it = 0
        best = None  # the most accurate iterate so far, for a numerical failure near the optimum
        stalled = 0
        for it in range(1, self.max_iter + 1):
            if self.deadline is not None and time.monotonic() >= self.deadline:
                raise _TimeLimit()
            R = pt.residuals()
            if R.gap <= self.tol * R.scale and R.pres <= self.tol * R.scale and R.dres <= self.tol * R.zscale:
                break
            acc = max(R.gap / R.scale, R.pres / R.scale, R.dres / R.zscale)
            if best is not None and best[0] <= NEAR_OPTIMAL and acc > 1e3 * best[0]:
                return best[1]  # the last digits: rounding made the step worse, keep the accurate point
            if best is None or acc <= best[0]:
                best = (acc, pt.snapshot(it))
                self._best = best
            # predictor (affine scaling), then Mehrotra's corrector with its centring weight
            newton = pt.newton_system()
            aff = pt.direction(R, newton, 0.0, None)
            ap, ad = pt.step_lengths(aff)
            sigma = min(1.0, max(0.0, pt.gap_after(aff, ap, ad) / R.gap)) ** 3
            step = pt.direction(R, newton, sigma * R.mu, pt.correction(aff, newton.soc))
            ap, ad = pt.step_lengths(step)
            # a path that no longer exists (e.g. rows without interior) shows as vanishing steps
            stalled = stalled + 1 if min(ap, ad) < STALL_STEP else 0
            if stalled >= 2:
                raise _Numerical(f"stalled (step lengths {ap:.1e}, {ad:.1e} at accuracy {acc:.1e})")
            pt.advance(step, min(1.0, 0.99 * ap), min(1.0, 0.99 * ad))
            if not (np.isfinite(pt.tau) and all(np.all(np.isfinite(v)) for v in pt.s)):
                raise _Numerical("the iterates are not finite")
            if pt.tau > TAU_MAX:
                break  # unbounded: the pattern lets the points collide (almost) unperturbed
        else:
            raise _Numerical(f"no convergence in {self.max_iter} iterations (accuracy {best[0]:.1e})")
        return pt.tau, pt.s, [pt.Z[k]["rows"] for k in range(2)], pt.y, it


@dataclass
class _Residuals:
    """The residuals of an iterate: primal per orthant block (rz), cones (rc), tau's slack (rt),
    equalities (re); dual in x (rx), sigma (rsig), tau (rtau); the duality gap, its mean mu, and
    the scaled norms the stopping test compares."""
    rz: list
    rc: list | None
    rt: np.ndarray
    re: np.ndarray
    rx: list
    rsig: list
    rtau: float
    gap: float
    mu: float
    pres: float
    dres: float
    scale: float
    zscale: float


@dataclass
class _Newton:
    """One iteration's scaling (orthant weights D = z / w, the cones' Nesterov-Todd scalings,
    tau's weight Dt) and its factored Newton system."""
    D: list
    soc: list | None
    Dt: np.ndarray
    kkt: "_KKT"


@dataclass
class _Step:
    dx: list
    dsig: list
    dtau: float
    dy: np.ndarray
    dW: list
    dZ: list
    dtw: np.ndarray
    dtz: np.ndarray
    dcw: list | None
    dcz: list | None


class _Iterate:
    """The homogenised iterate: primal s (and sigma for l1), tau, equality duals y; every
    orthant block's slack W and dual Z per point; the l2 cones' slack cw and dual cz; tau's
    slack tw and dual tz.

    Layout: variables s_u, s_v (r each), [sigma_u, sigma_v for l1], tau; inequality blocks per
    point: rows (m_p), domain hi (|hi_idx|), domain lo (|lo_idx|); l-inf: upper (r), lower (r);
    l1: plus (r), minus (r), sum (1); l2: a cone (1 + r); and tau >= 0."""

    def __init__(self, P: "_Problem"):
        self.P = P
        r, norm = P.r, P.norm
        self.l1, self.l2 = norm == "l1", norm == "l2"
        self.s = [np.zeros(r), np.zeros(r)]
        self.sig = [np.full(r, 1.0 / (2 * r)) for _ in range(2)] if self.l1 else None
        self.tau = 0.0
        self.y = np.zeros(P.q)
        self.W, self.Z = [], []
        for p in P.pts:
            sizes = {"rows": p.m, "hi": p.hi_idx.size, "lo": p.lo_idx.size}
            if norm in ("linf", "l1"):
                sizes.update(bu=r, bl=r)
            if self.l1:
                sizes["sum"] = 1
            self.W.append({key: np.ones(n) for key, n in sizes.items()})
            self.Z.append({key: np.ones(n) for key, n in sizes.items()})
        self.cw = [np.concatenate([[1.0], np.zeros(r)]) for _ in range(2)] if self.l2 else None
        self.cz = [np.concatenate([[1.0], np.zeros(r)]) for _ in range(2)] if self.l2 else None
        self.tw = np.ones(1)  # slack of -tau <= 0
        self.tz = np.ones(1)
        self.nu = sum(sum(v.size for v in wp.values()) for wp in self.W) + 1 + (2 if self.l2 else 0)

    def snapshot(self, it: int):
        return (self.tau, [v.copy() for v in self.s], [self.Z[k]["rows"].copy() for k in range(2)],
                self.y.copy(), it)

    def residuals(self) -> _Residuals:
        P, norm, W, Z, s, tau = self.P, self.P.norm, self.W, self.Z, self.s, self.tau
        # primal: G z + w - h = rz (per block)
        rz = []
        for k, p in enumerate(P.pts):
            d = {"rows": p.Cx(s[k]) - p.h * tau + W[k]["rows"],
                 "hi": s[k][p.hi_idx] - p.hi * tau + W[k]["hi"],
                 "lo": -s[k][p.lo_idx] + p.lo * tau + W[k]["lo"]}
            if norm == "linf":
                d["bu"] = s[k] - 1.0 + W[k]["bu"]
                d["bl"] = -s[k] - 1.0 + W[k]["bl"]
            elif self.l1:
                d["bu"] = s[k] - self.sig[k] + W[k]["bu"]
                d["bl"] = -s[k] - self.sig[k] + W[k]["bl"]
                d["sum"] = np.array([self.sig[k].sum() - 1.0]) + W[k]["sum"]
            rz.append(d)
        # cone: slack = (1, s) -> G rows [0; -I], h = (1, 0): G z + w - h = (w0 - 1, w1 - s)
        cw, cz = self.cw, self.cz
        rc = [np.concatenate([[cw[k][0] - 1.0], cw[k][1:] - s[k]]) for k in range(2)] if self.l2 else None
        rt = np.array([-tau + self.tw[0]])
        re = P.pts[0].A @ s[0] + P.pts[1].A @ s[1] - P.b * tau if P.q else np.zeros(0)
        rx, rsig, rtau = self._dual_residuals()
        gap = sum(float(W[k][key] @ Z[k][key]) for k in range(2) for key in W[k]) + float(self.tw @ self.tz)
        if self.l2:
            gap += sum(float(cw[k] @ cz[k]) for k in range(2))
        pres = max([float(np.abs(v).max(initial=0.0)) for d in rz for v in d.values()]
                   + [float(np.abs(rt).max()), float(np.abs(re).max(initial=0.0))]
                   + ([float(np.abs(v).max()) for v in rc] if self.l2 else []))
        dres = max([float(np.abs(v).max(initial=0.0)) for v in rx] + [abs(rtau)]
                   + [float(np.abs(v).max(initial=0.0)) for v in rsig])
        zscale = max([1.0, float(self.tz.max())] + [float(v.max(initial=0.0)) for zp in Z for v in zp.values()]
                     + ([float(v[0]) for v in cz] if self.l2 else []))
        return _Residuals(rz, rc, rt, re, rx, rsig, rtau, gap, gap / self.nu, pres, dres, max(1.0, tau), zscale)

    def _dual_residuals(self):
        """c + G' z + A' y = rx (c = -e_tau), per point, for sigma (l1) and for tau."""
        P, Z, y = self.P, self.Z, self.y
        rx, rsig = [], []
        rtau = -1.0 - self.tz[0]
        for k, p in enumerate(P.pts):
            g = p.CTy(Z[k]["rows"])
            g[p.hi_idx] += Z[k]["hi"]
            g[p.lo_idx] -= Z[k]["lo"]
            rtau += -float(p.h @ Z[k]["rows"]) - float(p.hi @ Z[k]["hi"]) + float(p.lo @ Z[k]["lo"])
            if P.norm in ("linf", "l1"):
                g += Z[k]["bu"] - Z[k]["bl"]
            if self.l1:
                rsig.append(-Z[k]["bu"] - Z[k]["bl"] + Z[k]["sum"][0])
            if self.l2:
                g -= self.cz[k][1:]
            if P.q:
                g += p.A.T @ y
            rx.append(g)
        if P.q:
            rtau -= float(P.b @ y)
        return rx, rsig, rtau

    def newton_system(self) -> _Newton:
        D = [{key: self.Z[k][key] / self.W[k][key] for key in self.W[k]} for k in range(2)]
        soc = [_SocScaling.of(self.cw[k], self.cz[k]) for k in range(2)] if self.l2 else None
        Dt = self.tz / self.tw
        return _Newton(D, soc, Dt, _KKT(self.P, D, soc, Dt, self.tau))

    def direction(self, R: _Residuals, N: _Newton, sig_mu: float, corr) -> _Step:
        """Solve the Newton system with complementarity target sig_mu e - corr."""
        W, Z = self.W, self.Z
        # orthant blocks: w dz + z dw = sig_mu - w z - corr  (per entry)
        # eliminate: dw = -rz - G dx ; dz = (target + z (rz + G dx)) / w
        #          = D (G dx) + tvec,  tvec = (target - w z + z rz) / w
        tv = []
        for k in range(2):
            t = {}
            for key in W[k]:
                cc = 0.0 if corr is None else corr[k][key]
                t[key] = (sig_mu - W[k][key] * Z[k][key] - cc + Z[k][key] * R.rz[k][key]) / W[k][key]
            tv.append(t)
        ct = 0.0 if corr is None else corr[2]
        tvt = (sig_mu - self.tw * self.tz - ct + self.tz * R.rt) / self.tw
        cvec = self._cone_terms(R, N, sig_mu, corr) if self.l2 else None
        dx, dsig, dtau, dy = N.kkt.solve(*self._newton_rhs(R, tv, tvt, cvec), -R.re)
        return self._recover(R, N, tv, tvt, cvec, dx, dsig, dtau, dy)

    def _cone_terms(self, R: _Residuals, N: _Newton, sig_mu: float, corr) -> list:
        """Cones: lambda o (W^-1 dw + W dz) = d_s, d_s = sig_mu e - lambda o lambda - corr
        => dz = W^-2 (G dx + rc) + W^-1 (lambda \\ d_s)   [since dw = -rc - G dx]; returns
        the constant part W^-2 rc + W^-1 u of dz per cone."""
        soc, r = N.soc, self.P.r
        cvec = []
        for k in range(2):
            lam = soc[k].apply(self.cz[k])
            e = np.zeros(r + 1)
            e[0] = 1.0
            dsv = sig_mu * e - _soc_prod(lam, lam) - (0.0 if corr is None else corr[3][k])
            u = _soc_div(lam, dsv)
            cvec.append(soc[k].apply_inv(soc[k].apply_inv(R.rc[k])) + soc[k].apply_inv(u))
        return cvec

    def _newton_rhs(self, R: _Residuals, tv, tvt, cvec):
        """Right-hand side of  H dx + A' dy = -rx - G' tvec  (per point, sigma, tau)."""
        bx, bsig = [], []
        btau = -R.rtau
        for k, p in enumerate(self.P.pts):
            g = -R.rx[k] - p.CTy(tv[k]["rows"])
            g[p.hi_idx] -= tv[k]["hi"]
            g[p.lo_idx] += tv[k]["lo"]
            btau += float(p.h @ tv[k]["rows"]) + float(p.hi @ tv[k]["hi"]) - float(p.lo @ tv[k]["lo"])
            if self.P.norm in ("linf", "l1"):
                g -= tv[k]["bu"] - tv[k]["bl"]
            if self.l1:
                bsig.append(-R.rsig[k] + tv[k]["bu"] + tv[k]["bl"] - tv[k]["sum"][0])
            if self.l2:
                g += cvec[k][1:]  # G' dz with G = [0; -I]: -dz[1:]
            bx.append(g)
        btau += tvt[0]
        return bx, bsig, btau

    def _recover(self, R: _Residuals, N: _Newton, tv, tvt, cvec, dx, dsig, dtau, dy) -> _Step:
        """The slacks' and duals' directions from dx, dsig, dtau."""
        norm = self.P.norm
        dW, dZ = [], []
        for k, p in enumerate(self.P.pts):
            gd = {"rows": p.Cx(dx[k]) - p.h * dtau, "hi": dx[k][p.hi_idx] - p.hi * dtau,
                  "lo": -dx[k][p.lo_idx] + p.lo * dtau}
            if norm == "linf":
                gd["bu"], gd["bl"] = dx[k], -dx[k]
            elif self.l1:
                gd["bu"], gd["bl"] = dx[k] - dsig[k], -dx[k] - dsig[k]
                gd["sum"] = np.array([dsig[k].sum()])
            dW.append({key: -R.rz[k][key] - gd[key] for key in gd})
            dZ.append({key: N.D[k][key] * gd[key] + tv[k][key] for key in gd})
        gt = np.array([-dtau])
        dtw = -R.rt - gt
        dtz = N.Dt * gt + tvt
        dcw = dcz = None
        if self.l2:
            dcw, dcz = [], []
            for k in range(2):
                gdx = np.concatenate([[0.0], -dx[k]])
                dcw.append(-R.rc[k] - gdx)
                dcz.append(N.soc[k].apply_inv(N.soc[k].apply_inv(gdx)) + cvec[k])
        return _Step(dx, dsig, dtau, dy, dW, dZ, dtw, dtz, dcw, dcz)

    def step_lengths(self, d: _Step) -> tuple[float, float]:
        ap = ad = math.inf
        for k in range(2):
            for key in self.W[k]:
                ap = min(ap, _orth_step(self.W[k][key], d.dW[k][key]))
                ad = min(ad, _orth_step(self.Z[k][key], d.dZ[k][key]))
        ap = min(ap, _orth_step(self.tw, d.dtw))
        ad = min(ad, _orth_step(self.tz, d.dtz))
        if self.l2:
            for k in range(2):
                ap = min(ap, _soc_step(self.cw[k], d.dcw[k]))
                ad = min(ad, _soc_step(self.cz[k], d.dcz[k]))
        return min(1.0, ap), min(1.0, ad)

    def gap_after(self, d: _Step, ap: float, ad: float) -> float:
        """The duality gap after steps ap (primal) and ad (dual) along d."""
        gap = float(((self.tw + ap * d.dtw) @ (self.tz + ad * d.dtz)))
        for k in range(2):
            for key in self.W[k]:
                gap += float((self.W[k][key] + ap * d.dW[k][key]) @ (self.Z[k][key] + ad * d.dZ[k][key]))
            if self.l2:
                gap += float((self.cw[k] + ap * d.dcw[k]) @ (self.cz[k] + ad * d.dcz[k]))
        return gap

    def correction(self, aff: _Step, soc) -> list:
        """Mehrotra's second-order term of the affine step, per block."""
        corr = [{key: aff.dW[k][key] * aff.dZ[k][key] for key in self.W[k]} for k in range(2)]
        corr.append(aff.dtw * aff.dtz)
        if self.l2:
            # in scaled coordinates: (W^-1 dw_a) o (W dz_a)
            corr.append([_soc_prod(soc[k].apply_inv(aff.dcw[k]), soc[k].apply(aff.dcz[k])) for k in range(2)])
        return corr

    def advance(self, d: _Step, ap: float, ad: float) -> None:
        for k in range(2):
            self.s[k] = self.s[k] + ap * d.dx[k]
            if self.l1:
                self.sig[k] = self.sig[k] + ap * d.dsig[k]
            for key in self.W[k]:
                self.W[k][key] = self.W[k][key] + ap * d.dW[k][key]
                self.Z[k][key] = self.Z[k][key] + ad * d.dZ[k][key]
            if self.l2:
                self.cw[k] = self.cw[k] + ap * d.dcw[k]
                self.cz[k] = self.cz[k] + ad * d.dcz[k]
        self.tau += ap * d.dtau
        self.tw = self.tw + ap * d.dtw
        self.tz = self.tz + ad * d.dtz
        self.y = self.y + ad * d.dy


class _KKT:
    """The reduced Newton system  H dx + A' dy = bx,  A dx = by  of one iteration, factored.

    Unknowns: per point dx_p (r) [and dsig_p for l1, eliminated], dtau, dy (q). Per point
    H_pp = C_p' D C_p + diag + rank one, coupled to tau by k_p; the tau/equality block is solved
    by its Schur complement."""

    def __init__(self, P: _Problem, D, soc, Dt, tau):
        self.P = P
        self.D, self.soc, self.Dt = D, soc, Dt
        r, q = P.r, P.q
        norm = P.norm
        self.sig_elim = []
        self.fac = []
        Htt = float(Dt[0])
        kp = []
        for k, p in enumerate(P.pts):
            Dr = D[k]["rows"]
            diag = np.zeros(r)
            diag[p.hi_idx] += D[k]["hi"]
            diag[p.lo_idx] += D[k]["lo"]
            k_vec = -p.CTy(Dr * p.h)
            k_vec[p.hi_idx] -= D[k]["hi"] * p.hi
            k_vec[p.lo_idx] -= D[k]["lo"] * p.lo
            Htt += float(p.h @ (Dr * p.h)) + float(p.hi @ (D[k]["hi"] * p.hi)) + float(p.lo @ (D[k]["lo"] * p.lo))
            g = None
            rho = 0.0
            if norm == "linf":
                diag += D[k]["bu"] + D[k]["bl"]
                self.sig_elim.append(None)
            elif norm == "l1":
                dp, dm, ds = D[k]["bu"], D[k]["bl"], float(D[k]["sum"][0])
                e = dp + dm
                c = dm - dp  # H_{s,sigma} = diag(-dp + dm)
                # H_{sigma,sigma} = diag(e) + ds 11'; its inverse by Sherman-Morrison
                beta = ds / (1.0 + ds * float(np.sum(1.0 / e)))
                self.sig_elim.append((e, c, beta))
                # Schur onto s: diag(e - c^2/e) + beta (c/e)(c/e)'
                diag += e - c * c / e
                g = c / e
                rho = beta
            else:  # l2: (W^-2)[1:,1:] = alpha I + rho g g'
                alpha, g, rho = soc[k].hessian_tail()
                diag += alpha
                self.sig_elim.append(None)
            self.fac.append(_PointFactor(p, Dr, diag, g, rho, width=1 + q))
            kp.append(k_vec)
        self.kp = kp
        self.Htt = Htt
        # Schur complement of the (tau, y) block
        Bs = [np.column_stack([kp[k], P.pts[k].A.T]) if q else kp[k][:, None] for k in range(2)]
        self.B = Bs
        L0 = np.zeros((1 + q, 1 + q))
        L0[0, 0] = Htt
        if q:
            L0[0, 1:] = -P.b
            L0[1:, 0] = -P.b
        S = L0 - sum(self.fac[k].gram(Bs[k]) for k in range(2))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", sla.LinAlgWarning)  # an exactly singular Schur complement
                self.S = sla.lu_factor(S, check_finite=False)
        except (ValueError, np.linalg.LinAlgError, sla.LinAlgWarning) as err:
            raise _Numerical(f"Schur complement: {err}") from None

    def apply(self, dx, dsig, dtau, dy):
        """The exact reduced operator (every row, no regularisation) applied to a direction:
        (H dx + A' dy, H_sigma, H_tau, A dx - b dtau)."""
        P = self.P
        norm = P.norm
        ox, osig = [], []
        otau = float(self.Dt[0]) * dtau
        for k, p in enumerate(P.pts):
            D = self.D[k]
            g = D["rows"] * (p.Cx(dx[k]) - p.h * dtau)
            o = p.CTy(g)
            otau -= float(p.h @ g)
            gh = D["hi"] * (dx[k][p.hi_idx] - p.hi * dtau)
            gl = D["lo"] * (-dx[k][p.lo_idx] + p.lo * dtau)
            o[p.hi_idx] += gh
            o[p.lo_idx] -= gl
            otau += -float(p.hi @ gh) + float(p.lo @ gl)
            if norm == "linf":
                o += (D["bu"] + D["bl"]) * dx[k]
            elif norm == "l1":
                gp = D["bu"] * (dx[k] - dsig[k])
                gm = D["bl"] * (-dx[k] - dsig[k])
                o += gp - gm
                osig.append(-gp - gm + float(D["sum"][0]) * float(dsig[k].sum()))
            else:
                alpha, gv, rho = self.soc[k].hessian_tail()
                o += alpha * dx[k] + rho * float(gv @ dx[k]) * gv
            if P.q:
                o += p.A.T @ dy
            ox.append(o)
        oy = np.zeros(0)
        if P.q:
            otau -= float(P.b @ dy)
            oy = P.pts[0].A @ dx[0] + P.pts[1].A @ dx[1] - P.b * dtau
        return ox, osig, otau, oy

    def solve(self, bx, bsig, btau, by, refine: int = 2):
        """The direction, with ``refine`` rounds of iterative refinement against the exact
        operator (the factors leave out negligible rows and may be regularised)."""
        sol = self._solve(bx, bsig, btau, by)
        for _ in range(refine):
            ax, asig, atau, ay = self.apply(*sol)
            rx = [bx[k] - ax[k] for k in range(2)]
            rs = [bsig[k] - asig[k] for k in range(len(asig))]
            rt = btau - atau
            ry = by - ay if self.P.q else np.zeros(0)
            size = max([float(np.abs(v).max(initial=0.0)) for v in bx] + [abs(btau)]
                       + [float(np.abs(by).max(initial=0.0))])
            err = max([float(np.abs(v).max(initial=0.0)) for v in rx + rs] + [abs(rt)]
                      + [float(np.abs(ry).max(initial=0.0))])
            if not err > 1e-12 * max(size, 1e-300):
                break
            c = self._solve(rx, rs, rt, ry)
            sol = ([sol[0][k] + c[0][k] for k in range(2)], [sol[1][k] + c[1][k] for k in range(len(c[1]))],
                   sol[2] + c[2], sol[3] + c[3])
        return sol

    def _solve(self, bx, bsig, btau, by):
        P = self.P
        q = P.q
        bx = list(bx)
        for k in range(2):
            el = self.sig_elim[k]
            if el is not None:  # eliminate dsig: dsig = M^-1 (bsig - diag(c) dx)
                e, c, beta = el
                Mi_b = bsig[k] / e - beta * (1.0 / e) * float(np.sum(bsig[k] / e))
                bx[k] = bx[k] - c * Mi_b
        Zs = [self.fac[k].solve(bx[k]) for k in range(2)]
        rhs = np.concatenate([[btau], by]) - sum(self.B[k].T @ Zs[k] for k in range(2))
        sol = sla.lu_solve(self.S, rhs, check_finite=False)
        dtau, dy = float(sol[0]), sol[1:]
        dx = [Zs[k] - self.fac[k].solve(self.B[k] @ sol) for k in range(2)]
        dsig = []
        for k in range(2):
            el = self.sig_elim[k]
            if el is not None:
                e, c, beta = el
                v = bsig[k] - c * dx[k]
                dsig.append(v / e - beta * (1.0 / e) * float(np.sum(v / e)))
        if not (np.isfinite(dtau) and all(np.all(np.isfinite(v)) for v in dx)):
            raise _Numerical("the Newton system is singular")
        return dx, dsig, dtau, dy if q else np.zeros(0)


def _cholesky(K: np.ndarray, what: str):
    """Cholesky factor of a symmetric positive (semi)definite K; near the optimum the row
    weights spread over many orders of magnitude, so a tiny multiple of I is added when the
    plain factorisation fails (static regularisation)."""
    if not np.all(np.isfinite(K)):
        raise _Numerical(f"{what} is not finite")
    if K.size == 0:
        return (K, True)
    top = float(np.max(np.abs(np.diag(K))))
    for reg in (0.0, 1e-14, 1e-12, 1e-10):
        try:
            if reg:
                K = K.copy()
                K[np.diag_indices(K.shape[0])] += reg * top
            return sla.cho_factor(K, lower=True, check_finite=False)
        except np.linalg.LinAlgError:
            continue
    raise _Numerical(f"{what} is not positive definite")


def _sym_gram(W: np.ndarray) -> np.ndarray:
    """W' W, both triangles (BLAS syrk: half the flops of a general product)."""
    if W.shape[0] == 0 or W.shape[1] == 0:  # (BLAS refuses a zero leading dimension)
        return np.zeros((W.shape[1], W.shape[1]))
    G = dsyrk(1.0, W, trans=1, lower=True)
    return G + np.tril(G, -1).T


class _PointFactor:
    """(C' diag(Dr) C + diag(d) + rho g g')^-1, by the normal equations (r x r Cholesky, from
    the rows whose weight matters) or by the Woodbury identity (m x m) when m < r."""

    def __init__(self, p: _Point, Dr: np.ndarray, d: np.ndarray, g, rho: float, width: int = 1):
        self.r = p.r
        self.d = d
        m = p.m
        # the Woodbury identity inverts diag(d): only while d spans a moderate range (near the
        # optimum l-inf's and l1's diagonal spreads over many orders of magnitude, where the
        # identity's subtraction loses the digits; measured: failures below 1e-10)
        well = d.size == 0 or float(d.min()) > 1e-10 * float(d.max())
        # flops of each way to factor and apply the inverse to ``width`` columns
        r_ = p.r
        if p.sparse:  # forming either matrix costs about the same (sum of squared row lengths)
            nnz = p.C.nnz
            normal = r_ ** 3 / 3 + 2 * r_ * r_ * width
            woodbury = m ** 3 / 3 + 2 * m * m * width + 2 * nnz * width
        else:
            normal = m * r_ * r_ + r_ ** 3 / 3 + 2 * r_ * r_ * width
            woodbury = m * m * r_ + m ** 3 / 3 + 2 * m * r_ * width + 2 * m * m * width
        self.mode = "woodbury" if (woodbury < normal and well) else "normal"
        if self.mode == "normal":
            keep = np.arange(m)
            if m > p.r and m:
                dmax = float(Dr.max())
                keep = np.flatnonzero(Dr > REDUCE_TOL * dmax)
            if p.sparse:
                Cq = p.C[keep] if keep.size < m else p.C
                CD = sp.diags(np.sqrt(Dr[keep])) @ Cq
                K = (CD.T @ CD).toarray() if keep.size else np.zeros((p.r, p.r))
            else:
                CD = p.C[keep] * np.sqrt(Dr[keep])[:, None]
                K = CD.T @ CD
            K[np.diag_indices(p.r)] += d
            if g is not None and rho:
                K += rho * np.outer(g, g)
            self.L = _cholesky(K, "a point's Hessian")
            self.g = None
        else:
            # K0 = diag(d) + C' Dr C ; K0^-1 = Di - Di C' (Dr^-1 + C Di C')^-1 C Di
            Di = 1.0 / d
            self.Di = Di
            if p.sparse:
                CDi = (p.C @ sp.diags(Di)).tocsr()
                M = (CDi @ p.C.T).toarray()
            else:
                CDi = p.C * Di[None, :]
                M = _sym_gram((p.C * np.sqrt(Di)[None, :]).T)  # C Di C' by syrk
            M[np.diag_indices(m)] += 1.0 / Dr
            self.Lm = _cholesky(M, "a point's Woodbury matrix")
            self.CDi = CDi
            self.g = None
            if g is not None and rho:
                # Sherman-Morrison for the rank one term on top of K0
                k0g = self._k0_solve(g[:, None])[:, 0]
                self.g, self.k0g = g, k0g
                self.sm = rho / (1.0 + rho * float(g @ k0g))

    def gram(self, B: np.ndarray) -> np.ndarray:
        """B' K^-1 B (symmetric) for the few columns of B (tau's and the equalities'), through
        one triangular solve with the factor instead of K^-1 B (half the flops of a solve)."""
        if self.mode == "normal":
            W = sla.solve_triangular(self.L[0], B, lower=True, check_finite=False)
            G = _sym_gram(W)
        else:
            G = _sym_gram(np.sqrt(self.Di)[:, None] * B)
            if self.CDi.shape[0]:
                T = sla.solve_triangular(self.Lm[0], self.CDi @ B, lower=True, check_finite=False)
                G -= _sym_gram(T)
        if self.g is not None:  # Sherman-Morrison: K^-1 = K0^-1 - sm k0g k0g'
            bg = B.T @ self.k0g
            G -= self.sm * np.outer(bg, bg)
        return G

    def _k0_solve(self, B: np.ndarray) -> np.ndarray:
        if self.CDi.shape[0] == 0:
            return self.Di[:, None] * B
        t = self.CDi @ B
        return self.Di[:, None] * B - self.CDi.T @ sla.cho_solve(self.Lm, t, check_finite=False)

    def solve(self, B: np.ndarray) -> np.ndarray:
        vec = B.ndim == 1
        B2 = B[:, None] if vec else B
        if self.mode == "normal":
            X = sla.cho_solve(self.L, B2, check_finite=False)
        else:
            X = self._k0_solve(B2)
            if self.g is not None:
                X = X - self.sm * np.outer(self.k0g, self.g @ X)
        return X[:, 0] if vec else X


# ----------------------------------------------------------------------------------------------
#: a row of C whose normal lies in the span of A's rows to this relative residual is implied
#: by the equalities (its value is fixed on the whole feasible set)
IMPLIED_TOL = 1e-9


def _implied_rows(problem: MinMaxNormProblem):
    """The inequality rows whose value the equalities fix: ``(rows, values)`` with ``c_i x =
    values[i]`` for every x with ``A x = b`` (None when there are no equalities or none is).

    Such a row has no interior (when its value equals h_i: a unit that the equalities pin to
    its kink, e.g. active at one point and required to output what the other's inactive unit
    outputs), so the central path does not exist; the interior point then stalls at a
    positive gap while its duals grow without bound."""
    if not problem.n_eq:
        return None
    A = np.asarray(problem.A, dtype=np.float64)
    Q, R = np.linalg.qr(A.T)  # A = R' Q', Q orthonormal columns spanning A's rows
    C = problem.C.tocsr() if sp.issparse(problem.C) else np.asarray(problem.C, dtype=np.float64)
    CQ = np.asarray(C @ Q)
    size2 = np.asarray(C.multiply(C).sum(axis=1)).ravel() if sp.issparse(C) else np.einsum("ij,ij->i", C, C)
    # ||c - Q Q' c||^2 = ||c||^2 - ||Q' c||^2 picks the candidates (rounding: ~1e-8 relative);
    # their residuals are then computed directly, row by row (no dense copy of a sparse C)
    cand = np.flatnonzero(size2 - np.einsum("ij,ij->i", CQ, CQ) <= 1e-12 * np.maximum(size2, 1e-300))
    if cand.size == 0:
        return None
    Cc = C[cand].toarray() if sp.issparse(C) else C[cand]
    resid = np.linalg.norm(Cc - CQ[cand] @ Q.T, axis=1)
    rows = cand[resid <= IMPLIED_TOL * np.sqrt(np.maximum(size2[cand], 1e-300))]
    if rows.size == 0:
        return None
    # c_i = lam' A = lam' R' Q'  =>  R lam = Q' c_i  =>  c_i x = lam' b
    lam = sla.solve_triangular(R, CQ[rows].T, lower=False, check_finite=False)
    values = lam.T @ np.asarray(problem.b, dtype=np.float64)
    return (rows, values) if np.all(np.isfinite(values)) else None


def _without_rows(problem: MinMaxNormProblem, rows: np.ndarray) -> tuple[MinMaxNormProblem, np.ndarray]:
    keep = np.setdiff1d(np.arange(problem.n_linear), rows)
    C = problem.C.tocsr()[keep] if sp.issparse(problem.C) else np.asarray(problem.C)[keep]
    return MinMaxNormProblem(C=C, h=np.asarray(problem.h)[keep], A=problem.A, b=problem.b, norm=problem.norm,
                             lb=problem.lb, ub=problem.ub), keep


class IpmBackend(Backend):
    name = "ipm"
    capabilities = frozenset({Capability.LP, Capability.CONE_LP})
    required_modules = ("numpy", "scipy")
    install_hint = "built in"
    native_options = {"tol": Opt(float, positive=True, high=1e-4), "max_iterations": Opt(int, low=5, high=1000)}
    defaults = {"tol": 1e-10, "max_iterations": 100}
    portable_options = frozenset({"time_limit"})

    def version(self) -> str:
        return "1"

    def solve_min_max_norm(self, problem: MinMaxNormProblem, options: SolverOptions) -> ConeSolution:
        t0 = time.perf_counter()
        self.check_options(options)
        opt = {**self.defaults, **options.native}
        deadline = None if options.time_limit is None else time.monotonic() + float(options.time_limit)
        sol = self._solve(problem, opt, deadline, t0)
        if sol.termination is not Termination.NUMERICAL_ERROR:
            return sol
        # a stalled path: rows that the equalities fix have no interior; solved without them (a
        # row fixed at h_i is satisfied by every feasible x; its dual is taken as 0, the
        # equalities carry its force, as the active set's; one fixed above h_i: infeasible)
        implied = _implied_rows(problem)
        if implied is None:
            return sol
        rows, values = implied
        h = np.asarray(problem.h, dtype=np.float64)[rows]
        over = values - h
        if np.any(over > 1e-9 * np.maximum(1.0, np.abs(h))):
            return ConeSolution(Termination.INFEASIBLE, solver=self.name, seconds=time.perf_counter() - t0,
                                message=f"ipm: infeasible ({int(np.sum(over > 0))} rows violated by every point "
                                        f"of the equalities)")
        reduced, keep = _without_rows(problem, rows)
        again = self._solve(reduced, opt, deadline, t0)
        if again.termination is not Termination.OPTIMAL:
            return again
        z = np.zeros(problem.n_linear)
        z[keep] = again.z
        return ConeSolution(Termination.OPTIMAL, x=again.x, z=z, y=again.y, objective=again.objective,
                            iterations=again.iterations, seconds=time.perf_counter() - t0, solver=self.name,
                            message=f"{again.message}, {rows.size} rows fixed by the equalities left out "
                                    f"(first try: {sol.message})")

    def _solve(self, problem: MinMaxNormProblem, opt: dict, deadline: float | None, t0: float) -> ConeSolution:
        try:
            solver = IpmSolver(problem, tol=opt["tol"], max_iter=opt["max_iterations"], deadline=deadline)
        except ValueError as err:
            return ConeSolution(Termination.ERROR, solver=self.name, seconds=time.perf_counter() - t0,
                                message=f"ipm: {err}")
        try:
            tau, s, zrows, y, it = solver.solve()
        except _TimeLimit:
            return ConeSolution(Termination.TIME_LIMIT, solver=self.name, seconds=time.perf_counter() - t0,
                                message="ipm: time limit reached")
        except (_Numerical, np.linalg.LinAlgError, ValueError) as err:
            return ConeSolution(Termination.NUMERICAL_ERROR, solver=self.name, seconds=time.perf_counter() - t0,
                                message=f"ipm: {err}")
        if not tau > 1e-9 * max(1.0, float(np.abs(np.concatenate(s)).max(initial=0.0))):
            return ConeSolution(Termination.INFEASIBLE, solver=self.name, seconds=time.perf_counter() - t0,
                                iterations=it, message=f"ipm: infeasible (tau* = {tau:.3g})")
        P = solver.P
        xu, xv = s[0] / tau, s[1] / tau
        x = np.concatenate([xu, xv])
        if problem.norm == "l2":
            t = max(float(np.linalg.norm(xu)), float(np.linalg.norm(xv)))
        elif problem.norm == "linf":
            t = max(float(np.abs(xu).max(initial=0.0)), float(np.abs(xv).max(initial=0.0)))
        else:
            t = max(float(np.abs(xu).sum()), float(np.abs(xv).sum()))
        z = np.zeros(problem.n_linear)
        z[P.iu] = zrows[0] / tau
        z[P.iv] = zrows[1] / tau
        yy = (-y / tau) if P.q else None
        return ConeSolution(Termination.OPTIMAL, x=np.concatenate([[t], x]), z=z, y=yy, objective=t,
                            iterations=it, seconds=time.perf_counter() - t0, solver=self.name,
                            message=f"ipm: {it} iterations")
