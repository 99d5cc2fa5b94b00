"""The exact method (and the descent, the closed forms and the affine LPs) against an independent
oracle: eps* by enumeration of the pieces of tiny networks, under l2, l-inf and l1 budgets, with
and without an input domain; the exact model's size and bounds; licences and solver plugins.

The oracle is built here, without fxverify's engine: each network is described by its own dense
layers (convolutions and max-pool windows computed here from the ONNX attributes), checked
against the import once, and eps* at a cut is the minimum over every combination of pieces of
both points (ReLU active / inactive per unit, max-pool argmax per window; at a ReLU cut the two
points' features must be equal) of the convex problem

    min max(||d_u||, ||d_v||)  s.t.  both points in their pieces, equal features at the cut
                                     (and the domain box),

solved by cvxopt's conelp for l2 (its dual objective: a lower bound even when the solve stops
early) and by scipy's linprog (HiGHS) for l-inf and l1. Combinations are dropped only soundly:

* a partial combination of one point whose region (an LP over the l-inf box of radius E around
  the point, which holds the ball of each norm) does not meet that box, E being the best budget
  known (first the midpoint's, which collides at every cut, then the pair problem at the
  midpoint's pieces);
* max-pool entries with identical affine values (inactive ReLUs) count as one choice;
* a pair of regions is solved in order of the larger of its two one-point minima, stopping once
  that exceeds the best value found.

The tests assert, for each norm, with and without a domain [0, 1]: (1) the exact method (SCIP,
HiGHS for l-inf / l1, Gurobi within its size-limited licence) equals eps*; (2) the descent is
never below it (mean gaps printed); (3) affine cuts (closed form, LP) equal it; (4) the input
cut is half the distance; (5) every returned collision re-verifies here.
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings
from dataclasses import dataclass

import numpy as np
import pytest
import scipy.linalg
from cvxopt import matrix, solvers
from onnx import helper
from scipy.optimize import linprog

import fxverify
from fxverify.backends.base import Availability
from fxverify.backends.registry import get_backend
from fxverify.collision import Collider, collide
from fxverify.config import resolve_engine
from fxverify.errors import SolverError
from fxverify.norms import get_norm
from fxverify.results import CollisionStatus

from builders import make, save

NORMS = ("l2", "linf", "l1")
DOMAINS = (None, (0.0, 1.0))
ORD = {"l2": 2, "linf": np.inf, "l1": 1}
#: pairs per (network, norm, domain)
N_PAIRS = 2


# =============================================================================================
# The networks, as the oracle sees them (dense layers built here) and as ONNX models
# =============================================================================================
@dataclass(frozen=True)
class Affine:
    W: np.ndarray
    b: np.ndarray


@dataclass(frozen=True)
class ReLU:
    alpha: float = 0.0


@dataclass(frozen=True)
class Pool:
    windows: tuple  # per output: the input indices of its window (padding left out)


def forward(layers, x) -> list[np.ndarray]:
    """The value after each layer (index 0: the input), float64."""
    vals = [np.asarray(x, np.float64)]
    for L in layers:
        z = vals[-1]
        if isinstance(L, Affine):
            vals.append(L.W @ z + L.b)
        elif isinstance(L, ReLU):
            vals.append(np.where(z >= 0, z, L.alpha * z))
        else:
            vals.append(np.array([z[list(w)].max() for w in L.windows]))
    return vals


def f32(a) -> np.ndarray:
    """The numbers as the ONNX model stores them (float32), in float64."""
    return np.asarray(np.asarray(a, np.float32), np.float64)


def conv_matrix(K, in_chw):
    """A stride-1 unpadded convolution with kernel K (Cout, Cin, kh, kw) as a dense matrix on
    flat C-order tensors; returns (matrix, output shape)."""
    co, ci, kh, kw = K.shape
    _, H, W = in_chw
    oh, ow = H - kh + 1, W - kw + 1
    M = np.zeros((co * oh * ow, ci * H * W))
    for o, i, j, c, a, b in itertools.product(range(co), range(oh), range(ow), range(ci), range(kh), range(kw)):
        M[(o * oh + i) * ow + j, (c * H + i + a) * W + j + b] += K[o, c, a, b]
    return M, (co, oh, ow)


def pool_windows(chw, kernel, strides, pads):
    """MaxPool windows (floor mode) of a (C, H, W) input; pads = (top, left, bottom, right)."""
    C, H, W = chw
    (kh, kw), (sh, sw), (pt, pl, pb, pr) = kernel, strides, pads
    oh, ow = (H + pt + pb - kh) // sh + 1, (W + pl + pr - kw) // sw + 1
    wins = []
    for c, i, j in itertools.product(range(C), range(oh), range(ow)):
        wins.append(tuple((c * H + y) * W + x for y in range(i * sh - pt, i * sh - pt + kh)
                          for x in range(j * sw - pl, j * sw - pl + kw) if 0 <= y < H and 0 <= x < W))
    return tuple(wins), (C, oh, ow)


@dataclass(frozen=True)
class Case:
    name: str
    layers: tuple
    model: object  # onnx ModelProto
    d: int
    #: the cuts (1-based layer counts) whose eps* is checked against the exact method
    piece_cuts: tuple


def mlp(name, d, widths, final, alpha=0.0, seed=0, piece_cuts=None) -> Case:
    """MatMul/Add/(Leaky)Relu layers of the given widths, then (``final``) an affine map to 2."""
    rng = np.random.default_rng(seed)
    dims = (d,) + widths + ((2,) if final else ())
    nodes, inits, layers, prev = [], {}, [], "x"
    a32 = float(np.float32(alpha))
    for k in range(len(dims) - 1):
        W = f32(rng.standard_normal((dims[k + 1], dims[k])))
        b = f32(rng.standard_normal(dims[k + 1]) * 0.5)
        inits[f"W{k}"], inits[f"b{k}"] = W.T.astype(np.float32), b.astype(np.float32)
        nodes += [helper.make_node("MatMul", [prev, f"W{k}"], [f"m{k}"]),
                  helper.make_node("Add", [f"m{k}", f"b{k}"], [f"a{k}"])]
        layers.append(Affine(W, b))
        prev = f"a{k}"
        if not (final and k == len(dims) - 2):
            if alpha:
                nodes.append(helper.make_node("LeakyRelu", [prev], [f"r{k}"], alpha=alpha))
            else:
                nodes.append(helper.make_node("Relu", [prev], [f"r{k}"]))
            layers.append(ReLU(a32))
            prev = f"r{k}"
    nodes[-1].output[0] = "y"
    return Case(name, tuple(layers), make(nodes, ["N", d], inits=inits), d,
                piece_cuts or (len(layers),))


def cnn(name, in_chw, kernel, pool_kernel, pool_strides, pool_pads=(0, 0, 0, 0), out=2, seed=0) -> Case:
    """Conv (one output channel, stride 1) -> Relu -> MaxPool -> Flatten -> Gemm."""
    rng = np.random.default_rng(seed)
    K = f32(rng.standard_normal((1, in_chw[0]) + tuple(kernel)))
    B = f32(rng.standard_normal(1) * 0.3)
    Mc, chw = conv_matrix(K, in_chw)
    wins, pchw = pool_windows(chw, pool_kernel, pool_strides, pool_pads)
    G = f32(rng.standard_normal((out, len(wins))))
    g = f32(rng.standard_normal(out) * 0.3)
    layers = (Affine(Mc, np.repeat(B, chw[1] * chw[2])), ReLU(), Pool(wins), Affine(G, g))
    nodes = [helper.make_node("Conv", ["x", "K", "B"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=list(pool_kernel), strides=list(pool_strides),
                              pads=[pool_pads[0], pool_pads[1], pool_pads[2], pool_pads[3]]),
             helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("Gemm", ["f", "G", "g"], ["y"], transB=1)]
    inits = {"K": K.astype(np.float32), "B": B.astype(np.float32), "G": G.astype(np.float32),
             "g": g.astype(np.float32)}
    return Case(name, layers, make(nodes, ["N", *in_chw], inits=inits), int(np.prod(in_chw)), (2, 3, 4))


CASES = {c.name: c for c in (
    mlp("mlp-relu", 4, (4,), final=False, seed=1),  # one hidden layer, ReLU cut
    mlp("mlp-affine", 3, (3,), final=True, seed=2),  # one hidden layer, final affine cut
    mlp("mlp-deep", 3, (3, 2), final=True, seed=3, piece_cuts=(4, 5)),  # two: ReLU cut, final affine cut
    mlp("mlp-leaky", 3, (3,), final=True, alpha=0.2, seed=4, piece_cuts=(2, 3)),  # Leaky ReLU cut, affine
    # a max-pool that does not tile its input: width 5, kernel 2, stride 2 (the last entry unused)
    cnn("cnn-edge", (1, 1, 6), (1, 2), (1, 2), (1, 2), seed=5),
    # overlapping windows (stride 1 < kernel 3) with padding at both ends
    cnn("cnn-overlap", (1, 1, 4), (1, 2), (1, 3), (1, 1), pool_pads=(0, 1, 0, 1), seed=6),
    # 2-D overlapping windows: a 2x3 map, kernel 2x2, stride 1
    cnn("cnn-2d", (1, 2, 4), (1, 2), (2, 2), (1, 1), seed=7),
)}

PIECE_CUTS = [(c.name, k) for c in CASES.values() for k in c.piece_cuts]


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    """name -> the imported network (its nodes one to one with the oracle's layers)."""
    tmp = tmp_path_factory.mktemp("exact")
    out = {}
    for c in CASES.values():
        net = fxverify.load_model(save(tmp, c.model, f"{c.name}.onnx"))
        assert len(net.nodes) == len(c.layers), (c.name, net.cuts)
        out[c.name] = net
    return out


def cut_of(net, k: int) -> str:
    """The cut after the oracle's first k layers."""
    return net.cuts[k]


def points(name: str, domain, i: int) -> tuple[np.ndarray, np.ndarray]:
    """The i-th pair of a case: inside the domain when there is one, in [-1, 1] otherwise."""
    c = CASES[name]
    rng = np.random.default_rng([sorted(CASES).index(name), 0 if domain is None else 1, i])
    lo, hi = (-1.0, 1.0) if domain is None else domain
    return rng.uniform(lo, hi, c.d), rng.uniform(lo, hi, c.d)


# =============================================================================================
# The oracle
# =============================================================================================
def _orth_equalities(E, e):
    """E y = e as Q'E y = Q'e with Q an orthonormal basis of range(E) (conelp needs full row
    rank); None when e is not in range(E) (no solution)."""
    if E.shape[0] == 0:
        return E, e
    Q = scipy.linalg.orth(E)
    if np.linalg.norm(Q @ (Q.T @ e) - e) > 1e-9 * max(1.0, np.linalg.norm(e)):
        return None
    return Q.T @ E, Q.T @ e


FAILED = -1.0


def min_max_norm(norm, k, n, G, h, E, e, lb, ub, point=False):
    """min t s.t. ||d_i|| <= t (i < k), G y <= h, E y = e, lb <= y <= ub over y = (d_1 .. d_k),
    d_i in R^n: a lower bound on the optimum (inf when infeasible, FAILED when the solver fails).
    ``point`` (polyhedral norms only): also return an optimal y."""
    ny = k * n
    const = np.abs(G).max(axis=1, initial=0.0) == 0.0 if G.shape[0] else np.zeros(0, dtype=bool)
    if np.any(h[const] < 0):  # a constant row that fails (e.g. at inactive units' values)
        return (math.inf, None) if point else math.inf
    G, h = G[~const], h[~const]
    eq = _orth_equalities(E, e)
    if eq is None:
        return (math.inf, None) if point else math.inf
    A, b = eq
    if norm == "l2":
        box = [np.eye(ny)[np.isfinite(ub)], -np.eye(ny)[np.isfinite(lb)]]
        Gl = np.vstack([G] + box)
        hl = np.concatenate([h, ub[np.isfinite(ub)], -lb[np.isfinite(lb)]])
        scale = np.maximum(np.linalg.norm(Gl, axis=1), 1e-300)
        Gl, hl = Gl / scale[:, None], hl / scale
        nx = 1 + ny  # variables (t, y)
        Gx = np.hstack([np.zeros((Gl.shape[0], 1)), Gl])
        soc = np.zeros((k * (1 + n), nx))  # (t, d_i) in the second-order cone
        for i in range(k):
            soc[i * (1 + n), 0] = -1.0
            soc[i * (1 + n) + 1:(i + 1) * (1 + n), 1 + i * n:1 + (i + 1) * n] = -np.eye(n)
        c = np.zeros(nx)
        c[0] = 1.0
        kw = {}
        if A.shape[0]:
            kw = dict(A=matrix(np.hstack([np.zeros((A.shape[0], 1)), A])), b=matrix(b))
        for tol in (1e-9, 1e-7):  # cvxopt may stop on rounding at the tighter tolerance
            try:
                r = solvers.conelp(matrix(c), matrix(np.vstack([Gx, soc])),
                                   matrix(np.concatenate([hl, np.zeros(soc.shape[0])])),
                                   dims={"l": Gx.shape[0], "q": [1 + n] * k, "s": []},
                                   options={"show_progress": False, "abstol": tol, "reltol": tol, "feastol": tol,
                                            "maxiters": 200}, **kw)
            except (ArithmeticError, ValueError):
                continue
            if r["status"] == "primal infeasible":
                return math.inf
            if r["status"] == "optimal":
                return float(r["dual objective"])
        return FAILED
    # l-inf / l1 as an LP over (t, y, [s])
    l1 = norm == "l1"
    nx = 1 + ny + (ny if l1 else 0)
    rows, rhs = [np.hstack([np.zeros((G.shape[0], 1)), G, np.zeros((G.shape[0], nx - 1 - ny))])], [h]
    I = np.eye(ny)
    if l1:  # -s <= y <= s, sum of each point's s <= t
        Z = np.zeros((ny, 1))
        rows += [np.hstack([Z, I, -I]), np.hstack([Z, -I, -I])]
        S = np.zeros((k, nx))
        S[:, 0] = -1.0
        for i in range(k):
            S[i, 1 + ny + i * n:1 + ny + (i + 1) * n] = 1.0
        rows.append(S)
        rhs += [np.zeros(ny), np.zeros(ny), np.zeros(k)]
    else:  # -t <= y <= t
        T = -np.ones((ny, 1))
        rows += [np.hstack([T, I]), np.hstack([T, -I])]
        rhs += [np.zeros(ny), np.zeros(ny)]
    c = np.zeros(nx)
    c[0] = 1.0
    bounds = ([(0, None)] + [(lo if np.isfinite(lo) else None, hi if np.isfinite(hi) else None)
                             for lo, hi in zip(lb, ub)] + [(0, None)] * (nx - 1 - ny))
    Aeq = np.hstack([np.zeros((A.shape[0], 1)), A, np.zeros((A.shape[0], nx - 1 - ny))]) if A.shape[0] else None
    r = linprog(c, A_ub=np.vstack(rows), b_ub=np.concatenate(rhs), A_eq=Aeq, b_eq=b if A.shape[0] else None,
                bounds=bounds, method="highs")
    if r.status == 2:
        return (math.inf, None) if point else math.inf
    if r.status != 0:
        return (FAILED, None) if point else FAILED
    return (float(r.fun), r.x[1:1 + ny]) if point else float(r.fun)


@dataclass
class Region:
    """One point's pieces through the layers before the cut: rows G d <= h, the cut's features
    c + D d, the one-point minimum of ||d|| over the region, the pattern of the cut layer."""

    low: float
    G: np.ndarray
    h: np.ndarray
    c: np.ndarray
    D: np.ndarray
    cut_pattern: tuple


def regions(layers, p, n_layers, norm, radius, lb, ub, guide=None) -> list[Region]:
    """Every piece combination of the point p through the first ``n_layers`` layers whose region
    meets the box of ``radius`` around p (and lb <= d <= ub). ``guide`` (layer -> choices): only
    that combination."""
    n = p.size
    out: list[Region] = []
    blo, bhi = np.maximum(lb, -radius), np.minimum(ub, radius)

    def impossible(R, r) -> bool:
        """No d in the box satisfies R d <= r (interval arithmetic)."""
        return bool(np.any(np.minimum(R * blo, R * bhi).sum(axis=1) > r + 1e-9))

    def witness(G, h):
        """A point of the region in the box, or None when there is none. min ||d||_inf is at most
        min ||d|| for each norm here, so comparing it with the radius is sound."""
        m, x = min_max_norm("linf", 1, n, G, h, np.zeros((0, n)), np.zeros(0), lb, ub, point=True)
        if m == FAILED:
            return np.full(n, np.nan)  # keep the branch, without a witness
        return x if m <= radius * (1 + 1e-7) + 1e-9 else None

    def leaf(G, h, c, D, pattern):
        if guide is not None:
            out.append(Region(0.0, G, h, c, D, pattern))
            return
        if np.all(h >= 0) and np.all(lb <= 0) and np.all(ub >= 0):
            m = 0.0  # p's own pieces
        else:
            m = min_max_norm(norm, 1, n, G, h, np.zeros((0, n)), np.zeros(0), lb, ub)
            if m == FAILED:  # a weaker bound
                m = min_max_norm("linf", 1, n, G, h, np.zeros((0, n)), np.zeros(0), lb, ub)
                assert m != FAILED, "the oracle's LP failed"
        if m <= radius * (1 + 1e-7) + 1e-9:
            out.append(Region(m, G, h, c, D, pattern))

    def layer(li, c, D, G, h, w, pattern):
        if li == n_layers:
            leaf(G, h, c, D, pattern)
            return
        L = layers[li]
        if isinstance(L, Affine):
            layer(li + 1, L.W @ c + L.b, L.W @ D, G, h, w, ())
            return
        if isinstance(L, ReLU):
            choices = [(True, False)] * c.size

            def rows(j, active):  # active: -z <= 0; inactive: z <= 0
                s = -1.0 if active else 1.0
                return s * D[j:j + 1], np.array([-s * c[j]])

            def through(sel):
                slope = np.where(sel, 1.0, L.alpha)
                return slope * c, slope[:, None] * D
        else:
            choices = []
            for win in L.windows:  # entries with identical values (inactive ReLUs) are one choice
                keep = []
                for o in win:
                    if not any(c[o] == c[q] and np.array_equal(D[o], D[q]) for q in keep):
                        keep.append(o)
                choices.append(tuple(keep))

            def rows(j, k):  # z[o] - z[k] <= 0 for the window's other entries o
                oth = [o for o in L.windows[j] if o != k]
                return D[oth] - D[k], c[k] - c[oth]

            def through(sel):
                idx = np.array(sel)
                return c[idx], D[idx]

        def unit(j, sel, G, h, w):
            if j == len(choices):
                c2, D2 = through(sel)
                layer(li + 1, c2, D2, G, h, w, tuple(sel))
                return
            for ch in choices[j]:
                if guide is not None and ch != guide[li][j]:
                    continue
                R, r = rows(j, ch)
                G2, h2 = np.vstack([G, R]), np.concatenate([h, r])
                w2 = w
                if guide is None and not np.all(R @ w <= r):  # the parent's witness is not one here
                    w2 = None if impossible(R, r) else witness(G2, h2)
                if w2 is not None:
                    unit(j + 1, sel + [ch], G2, h2, w2)

        unit(0, [], G, h, w)

    layer(0, p.astype(np.float64), np.eye(n), np.zeros((0, n)), np.zeros(0), np.zeros(n), ())
    return out


def _pair(norm, n, a: Region, b: Region, lb, ub) -> float:
    m = min_max_norm(norm, 2, n, scipy.linalg.block_diag(a.G, b.G), np.concatenate([a.h, b.h]),
                     np.hstack([a.D, -b.D]), b.c - a.c, lb, ub)
    assert m != FAILED, "the oracle's convex solver failed"
    return m


def oracle_eps(layers, n_layers: int, u, v, norm: str, domain=None) -> float:
    """eps* at the output of the first ``n_layers`` layers, by enumeration (a lower bound within
    solver tolerance: dual objectives for l2)."""
    n = u.size
    best = 0.5 * float(np.linalg.norm(u - v, ORD[norm]))  # the midpoint collides at every cut
    if domain is None:
        bounds = [(np.full(n, -np.inf), np.full(n, np.inf))] * 2
    else:
        bounds = [(domain[0] - u, domain[1] - u), (domain[0] - v, domain[1] - v)]
    lbs = np.concatenate([bounds[0][0], bounds[1][0]])
    ubs = np.concatenate([bounds[0][1], bounds[1][1]])
    # a first upper bound: both points in the pieces of their midpoint
    vals = forward(layers, (u + v) / 2)
    guide = {}
    for li, L in enumerate(layers[:n_layers]):
        if isinstance(L, ReLU):
            guide[li] = list(vals[li] >= 0)
        elif isinstance(L, Pool):
            guide[li] = [w[int(np.argmax(vals[li][list(w)]))] for w in L.windows]
    gu = regions(layers, u, n_layers, norm, best, *bounds[0], guide)
    gv = regions(layers, v, n_layers, norm, best, *bounds[1], guide)
    if gu and gv:
        best = min(best, _pair(norm, n, gu[0], gv[0], lbs, ubs))
    ru = regions(layers, u, n_layers, norm, best, *bounds[0])
    rv = regions(layers, v, n_layers, norm, best, *bounds[1])
    # at a ReLU cut, equal features need one pattern for both points (a unit active for one point
    # and inactive for the other has z = 0 for the first: that is both inactive)
    shared = n_layers > 0 and isinstance(layers[n_layers - 1], ReLU) and layers[n_layers - 1].alpha == 0.0
    for low, i, j in sorted((max(a.low, b.low), i, j) for i, a in enumerate(ru) for j, b in enumerate(rv)):
        if low >= best:
            break
        if shared and ru[i].cut_pattern != rv[j].cut_pattern:
            continue
        best = min(best, _pair(norm, n, ru[i], rv[j], lbs, ubs))
    return best


@functools.lru_cache(maxsize=None)
def oracle(name: str, k: int, norm: str, domain, i: int) -> float:
    u, v = points(name, domain, i)
    return oracle_eps(CASES[name].layers, k, u, v, norm, domain)


# =============================================================================================
# Helpers
# =============================================================================================
_COLLIDERS: dict = {}


def collider(net, solver=None, norm="l2", domain=None, method=None) -> Collider:
    key = (id(net), solver, norm, domain, method)
    if key not in _COLLIDERS:
        _COLLIDERS[key] = Collider(net, resolve_engine(solver, norm, domain, method=method))
    return _COLLIDERS[key]


def assert_verified(net, cut, u, v, c, norm, domain):
    """A returned collision re-verified here: equal float64 features, inside the domain, eps the
    larger perturbation norm."""
    assert c.status is CollisionStatus.FOUND and c.verified, c.message
    fu, fv = net.forward(c.u_adv, cut=cut), net.forward(c.v_adv, cut=cut)
    scale = max(1.0, float(np.abs(fu).max(initial=0.0)), float(np.abs(fv).max(initial=0.0)))
    assert float(np.abs(fu - fv).max(initial=0.0)) <= 1e-6 * scale
    if domain is not None:
        for x in (c.u_adv, c.v_adv):
            assert np.all(x >= domain[0] - 1e-9) and np.all(x <= domain[1] + 1e-9)
    eps = max(float(np.linalg.norm(c.u_adv - u, ORD[norm])), float(np.linalg.norm(c.v_adv - v, ORD[norm])))
    assert c.eps == pytest.approx(eps, rel=1e-12, abs=1e-15)


def _usable(name):
    b = get_backend(name)
    if not b.availability():
        pytest.skip(f"{name}: {b.availability_detail()}")
    return b


def _dom_id(d):
    return "nodomain" if d is None else "domain01"


# =============================================================================================
# The oracle's own model
# =============================================================================================
@pytest.mark.parametrize("name", sorted(CASES))
def test_the_oracle_describes_the_imported_network(nets, name):
    net, layers = nets[name], CASES[name].layers
    kinds = {Affine: "linear", ReLU: "relu", Pool: "maxpool"}
    assert [n.kind for n in net.nodes] == [kinds[type(L)] for L in layers]
    X = np.random.default_rng(0).uniform(-1, 1, (5, CASES[name].d))
    for x in X:
        vals = forward(layers, x)
        for k, cut in enumerate(net.cuts):
            np.testing.assert_allclose(vals[k], net.forward(x, cut=cut), rtol=1e-12, atol=1e-12)


def test_the_oracle_on_figure_1_of_the_paper():
    """f(x) = relu(x), u = (1, 4), v = (9, -5): eps = 5 under l2 (the paper's example)."""
    layers = (Affine(np.eye(2), np.zeros(2)), ReLU())
    assert oracle_eps(layers, 2, np.array([1.0, 4.0]), np.array([9.0, -5.0]), "l2") == pytest.approx(5.0, abs=1e-7)
    # l-inf: move v's first coordinate down 4 and u's up 4 (u's second to 0 needs 4 too)
    assert oracle_eps(layers, 2, np.array([1.0, 4.0]), np.array([9.0, -5.0]), "linf") == pytest.approx(4.0, abs=1e-7)


# =============================================================================================
# (1) exact = oracle, (2) descent >= oracle, (5) every collision re-verifies
# =============================================================================================
EXACT_SOLVERS = ("scip", "highs", "gurobi")


@pytest.mark.parametrize("domain", DOMAINS, ids=_dom_id)
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("name, k", PIECE_CUTS, ids=[f"{n}-{k}" for n, k in PIECE_CUTS])
@pytest.mark.parametrize("solver", EXACT_SOLVERS)
def test_exact_equals_the_oracle(nets, solver, name, k, norm, domain):
    if solver == "highs" and norm == "l2":
        pytest.skip("highs solves MILPs: the l2 model is an MIQCP")
    _usable(solver)
    net = nets[name]
    cut = cut_of(net, k)
    col = collider(net, f"exact-{solver}", norm, domain, "exact")
    for i in range(N_PAIRS):
        u, v = points(name, domain, i)
        star = oracle(name, k, norm, domain, i)
        try:
            e = col.collide(cut, u, v)
        except SolverError as err:
            if solver == "gurobi" and "licence too small" in str(err):
                pytest.skip(f"gurobi's size-limited licence: {err}")
            raise
        assert_verified(net, cut, u, v, e, norm, domain)
        assert e.termination == "optimal", e.message
        assert e.eps == pytest.approx(star, rel=1e-5, abs=1e-5), (e.eps, star)
        assert e.eps_lower <= e.eps
        assert e.eps_lower <= star * (1 + 1e-5) + 1e-6, "the proven lower bound exceeds eps*"
        assert e.eps_lower == pytest.approx(star, rel=1e-4, abs=1e-5)


_GAPS: dict = {}


@pytest.mark.parametrize("domain", DOMAINS, ids=_dom_id)
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("name, k", PIECE_CUTS, ids=[f"{n}-{k}" for n, k in PIECE_CUTS])
@pytest.mark.parametrize("profile", [None, "descent-tight"], ids=["default", "tight"])
def test_descent_is_never_below_the_oracle(nets, profile, name, k, norm, domain, capsys):
    """... and the multi-start descent (descent-tight) never above the default one."""
    net = nets[name]
    cut = cut_of(net, k)
    col = collider(net, profile, norm, domain)
    gaps = []
    for i in range(N_PAIRS):
        u, v = points(name, domain, i)
        star = oracle(name, k, norm, domain, i)
        c = col.collide(cut, u, v)
        assert_verified(net, cut, u, v, c, norm, domain)
        assert c.eps >= star - 1e-6, f"a collision below eps*: {c.eps} < {star}"
        if profile is not None:
            one = collider(net, None, norm, domain).collide(cut, u, v)
            assert c.eps <= one.eps * (1 + 1e-9) + 1e-12, f"multi-start worse than one start: {c.eps} > {one.eps}"
        gaps.append(c.eps - star)
    _GAPS.setdefault((profile or "default", norm, _dom_id(domain)), []).extend(gaps)
    with capsys.disabled():
        print(f"\n  {profile or 'default'} {name} {cut} {norm} {_dom_id(domain)}: descent - eps* mean "
              f"{np.mean(gaps):.5f} (max {np.max(gaps):.5f})", end="")


def test_descent_gaps_summary(capsys):
    """Prints the descent's mean gap per norm and domain over the cases above (run after them)."""
    if not _GAPS:
        pytest.skip("run with the descent tests")
    with capsys.disabled():
        for (profile, norm, dom), g in sorted(_GAPS.items()):
            print(f"\n  {profile} descent - eps*, {norm} {dom}: mean {np.mean(g):.5f} over {len(g)} pairs, "
                  f"{np.mean(np.asarray(g) > 1e-6):.0%} above eps*", end="")


# =============================================================================================
# (3) affine cuts and (4) the input cut
# =============================================================================================
@pytest.mark.parametrize("domain", DOMAINS, ids=_dom_id)
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_affine_cut_equals_the_oracle(nets, name, norm, domain):
    """linear1 (no piece before it): the closed form (l2, no domain) or the LP equals eps*; so
    does the exact method there."""
    net = nets[name]
    cut = cut_of(net, 1)
    col = collider(net, None, norm, domain)
    ex = collider(net, "exact-scip", norm, domain, "exact")
    for i in range(N_PAIRS):
        u, v = points(name, domain, i)
        star = oracle(name, 1, norm, domain, i)
        c = col.collide(cut, u, v)
        assert_verified(net, cut, u, v, c, norm, domain)
        assert c.method == ("closed_form" if norm == "l2" and domain is None else "lp")
        assert c.eps == pytest.approx(star, rel=1e-6, abs=1e-7), (c.eps, star)
        e = ex.collide(cut, u, v)
        assert_verified(net, cut, u, v, e, norm, domain)
        assert e.eps == pytest.approx(star, rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("domain", DOMAINS, ids=_dom_id)
@pytest.mark.parametrize("norm", NORMS)
def test_input_cut_is_half_the_distance(nets, norm, domain):
    for name in ("mlp-relu", "cnn-edge"):
        net = nets[name]
        for method, solver in ((None, None), ("exact", "exact-scip")):
            col = collider(net, solver, norm, domain, method)
            for i in range(N_PAIRS):
                u, v = points(name, domain, i)
                c = col.collide("input", u, v)
                half = 0.5 * float(np.linalg.norm(u - v, ORD[norm]))
                assert_verified(net, "input", u, v, c, norm, domain)
                assert c.eps == pytest.approx(half, rel=1e-12)
                assert oracle(name, 0, norm, domain, i) == pytest.approx(half, rel=1e-6)


# =============================================================================================
# The exact model: interval bounds and size
# =============================================================================================
def _ball(rng, n, norm, radius, count):
    """Perturbations in the ball of ``radius``: random ones inside, on the sphere, and the
    ball's extreme points along each axis (and the l-inf ball's vertices)."""
    if norm == "l2":
        g = rng.standard_normal((count, n))
        g /= np.linalg.norm(g, axis=1, keepdims=True)
        D = g * radius * rng.uniform(0, 1, (count, 1)) ** (1 / n)
    elif norm == "linf":
        D = rng.uniform(-radius, radius, (count, n))
        D = np.vstack([D, radius * rng.choice([-1.0, 1.0], (count, n))])
    else:
        w = rng.dirichlet(np.ones(n), count) * rng.choice([-1.0, 1.0], (count, n))
        D = w * radius * rng.uniform(0, 1, (count, 1)) ** (1 / n)
    axes = np.vstack([np.eye(n), -np.eye(n)]) * radius
    return np.vstack([D, axes])


@pytest.mark.parametrize("domain", DOMAINS, ids=_dom_id)
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("name", ["mlp-deep", "mlp-leaky", "cnn-overlap", "cnn-2d"])
def test_node_bounds_contain_every_reachable_value(nets, name, norm, domain):
    """The exact model's big-M come from these bounds: every value the network takes over the
    perturbed points lies inside them; on the first linear map (no domain) they are attained."""
    from fxverify.collision.exact import node_bounds
    from fxverify.collision.plan import CutPlan
    from fxverify.norms import Domain

    net = nets[name]
    plan = CutPlan.of(net, net.cuts[-1], get_norm(norm), None if domain is None else Domain(*domain))
    p = points(name, domain, 0)[0]
    radius = 0.6
    bounds = node_bounds(plan, p, radius)
    rng = np.random.default_rng(11)
    D = _ball(rng, p.size, norm, radius, 3000)
    X = p + D if domain is None else np.clip(p + D, *domain)  # clipping never leaves the ball
    assert np.all(np.linalg.norm(X - p, ORD[norm], axis=1) <= radius * (1 + 1e-12))
    vals = net.evaluate(X, [n.name for n in plan.nodes])
    vals["input"] = X
    for cut, (lo, hi) in bounds.items():
        assert np.all(vals[cut] >= lo - 1e-9) and np.all(vals[cut] <= hi + 1e-9), cut
    if domain is None:  # exact per unit on the first linear map: c +- dual_norm(row) * radius
        first = plan.first
        W = first.weight.toarray() if hasattr(first.weight, "toarray") else first.weight
        c = W @ p + first.bias
        dual = {"l2": np.linalg.norm(W, axis=1), "linf": np.abs(W).sum(axis=1), "l1": np.abs(W).max(axis=1)}[norm]
        np.testing.assert_allclose(bounds[first.name][0], c - dual * radius, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(bounds[first.name][1], c + dual * radius, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("norm", NORMS)
def test_model_size_is_known_before_the_model_is_built(nets, tiny_model, norm):
    pytest.importorskip("pyomo")
    from fxverify.backends.pyomo_backends import model_size as built_size
    from fxverify.collision.exact import build_exact_model, model_size
    from fxverify.collision.plan import CutPlan
    from fxverify.data import load_embedded, select_points
    from fxverify.norms import Domain

    mnist = fxverify.load_model(tiny_model)
    pts = select_points(load_embedded("mnist"), (3, 7), 2)
    configs = [(mnist, cut, dom, pts.X_a[0], pts.X_b[1], radius)
               for cut in ("relu1", "relu2", "linear3") for dom in DOMAINS for radius in (0.5, 2.0)]
    for name, c in CASES.items():
        for k in c.piece_cuts:
            for dom in DOMAINS:
                u, v = points(name, dom, 0)
                configs += [(nets[name], cut_of(nets[name], k), dom, u, v, radius) for radius in (0.3, 1.5)]
    for net, cut, dom, u, v, radius in configs:
        plan = CutPlan.of(net, cut, get_norm(norm), None if dom is None else Domain(*dom))
        em = build_exact_model(plan, u, v, radius)
        size = model_size(plan, u, v, radius)
        assert (size.variables, size.binaries, size.constraints, size.quadratic) == built_size(em.model), \
            (net.source.path, cut, dom, radius)
        assert size.binaries == em.n_binary
        assert size.quadratic == (norm == "l2")


# =============================================================================================
# The shipped tiny model, the check solver, licences, plugins
# =============================================================================================
def test_exact_on_the_shipped_tiny_model_with_scip(tiny_model):
    _usable("scip")
    net = fxverify.load_model(tiny_model)
    from fxverify.data import load_embedded, select_points

    pts = select_points(load_embedded("mnist"), (3, 7), 2)
    u, v = pts.X_a[1], pts.X_b[1]
    r = collide(net, "relu2", u, v, method="exact", solver="exact-scip")
    d = collide(net, "relu2", u, v)
    assert_verified(net, "relu2", u, v, r, "l2", None)
    assert r.termination == "optimal" and r.eps <= d.eps + 1e-9
    assert r.eps_lower == pytest.approx(r.eps, rel=1e-5)


def test_check_solver_records_the_difference(tiny_model):
    _usable("scip")
    net = fxverify.load_model(tiny_model)
    from fxverify.data import load_embedded, select_points

    pts = select_points(load_embedded("mnist"), (3, 7), 2)
    r = collide(net, "relu2", pts.X_a[1], pts.X_b[1], check_solver="scip")
    assert r.check_solver == "scip" and math.isfinite(r.check_eps)
    assert abs(r.check_difference) <= 1e-5 * r.eps


def test_highs_cannot_be_the_exact_solver_under_l2():
    with pytest.raises(SolverError, match="cannot solve the exact method's"):
        resolve_engine("exact-highs", "l2", method="exact")


def test_mosek_without_a_licence_is_a_clear_error(tiny_model):
    b = get_backend("mosek")
    if b.availability() is Availability.FULL:
        pytest.skip("a MOSEK licence is present here")
    assert b.availability() in (Availability.NOT_FOUND, Availability.BAD_LICENSE)
    assert ("licence" in b.availability_detail()) or ("not installed" in b.availability_detail())
    net = fxverify.load_model(tiny_model)
    with pytest.raises(SolverError, match="backend 'mosek' is not usable"):
        collide(net, "relu1", np.zeros(784), np.ones(784) * 0.5, method="exact", solver="exact-mosek")


@pytest.mark.parametrize("norm, d, width, limit", [
    ("l2", 110, 110, r"at most 200 variables with quadratic terms"),  # an MIQCP: 110 variables a point
    ("linf", 520, 4, r"at most 2000 variables and 2000 constraints"),  # a MILP: 4 x 520 ball rows a point
])
def test_gurobi_size_limited_licence_names_the_model_size(tmp_path, norm, d, width, limit):
    """A model over the limits of the pip wheel's licence is refused before it is built, with its
    size."""
    b = _usable("gurobi")
    if b.availability() is not Availability.LIMITED:
        pytest.skip("a full Gurobi licence is present here")
    rng = np.random.default_rng(5)
    W = rng.standard_normal((width, d)) / np.sqrt(d)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Relu", ["m"], ["y"])]
    net = fxverify.load_model(save(tmp_path, make(nodes, ["N", d], inits={"W": W.T.astype(np.float32)})))
    u, v = rng.uniform(0, 1, d), rng.uniform(0, 1, d)
    with pytest.raises(SolverError, match=r"gurobi: licence too small: the model has \d+ variables .*" + limit):
        collide(net, "relu1", u, v, method="exact", solver="exact-gurobi", norm=norm)


def test_a_broken_plugin_is_a_warning_not_a_crash(monkeypatch):
    from fxverify.backends import registry

    monkeypatch.setattr(registry, "_entry_points", lambda: {"ghost": "no.such.module:Backend",
                                                           "wrong": "fxverify.errors:FxverifyError"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        classes = registry.backend_classes()
    assert "cvxopt" in classes and "ghost" not in classes and "wrong" not in classes
    msgs = [str(w.message) for w in caught if issubclass(w.category, registry.PluginWarning)]
    assert any("'ghost'" in m and "ModuleNotFoundError" in m for m in msgs)
    assert any("'wrong'" in m and "not a fxverify Backend" in m for m in msgs)


def test_a_plugin_from_an_entry_point_is_found(monkeypatch):
    import sys
    import types

    from fxverify.backends import registry
    from fxverify.backends.cvxopt_backend import CvxoptBackend

    monkeypatch.setattr(registry, "_entry_points", lambda: {"cvxopt2": "fxverify_test_plugin:Plugin"})
    mod = types.ModuleType("fxverify_test_plugin")

    class Plugin(CvxoptBackend):
        name = "cvxopt2"

    mod.Plugin = Plugin
    monkeypatch.setitem(sys.modules, "fxverify_test_plugin", mod)
    assert registry.get_backend("cvxopt2").name == "cvxopt2"


# =============================================================================================
# Bugs outside the exact model that the oracle found, kept as regression tests: an unsafe shared
# flip taken as safe (a unit whose row for one point was a dropped constant), the active-set
# solver declaring a degenerate feasible LP infeasible, and an inaccurate active-set optimum at
# an extreme weight. The pyomo check solver on a sparse problem is tested below.
# =============================================================================================
_C128 = cnn("c128", (1, 1, 6), (1, 2), (1, 3), (1, 1), seed=128)
_C128_PAIR = ([0.010116575471231126, -0.1885978666977346, -1.3005346630084027, 1.2781865061230828,
               -0.8330614229251077, 0.4558258487999671],
              [-0.7396569063334733, -1.2434422119677344, -1.3153324257125512, 1.3166319087381284,
               -0.3594281760817215, -1.488929169974233])
REGRESSIONS = {
    # name: (network, norm, cut (layer count), u, v)
    "infeasible-after-move-l2": (
        mlp("m112", 2, (3, 2), final=True, seed=112), "l2", 4,
        [-0.412320285565833, 0.3597118622321811], [1.4622909361643557, 0.07666663946944419]),
    "infeasible-after-move-l1": (
        mlp("m121", 3, (2, 2), final=False, seed=121), "l1", 4,
        [-0.28274762535935105, 0.7925958744288071, 0.8882748709724417],
        [0.19035655863656586, -0.1206572279280218, -1.4242331413116096]),
    "activeset-inconsistent-mlp": (
        mlp("m108", 4, (4,), final=True, seed=108), "l2", 3,
        [-0.20687589384645388, 0.323019906879767, -0.9184736520857334, 0.503314510668468],
        [0.477494048521824, -1.486594377603153, -1.4280639875088097, 0.6952787816841881]),
    # the same net and pair found two faults, at two cuts
    "activeset-inconsistent-pool": (_C128, "l2", 3, *_C128_PAIR),
    "activeset-inaccurate-optimum": (_C128, "l2", 4, *_C128_PAIR),
}

@pytest.mark.parametrize("case", [
    "infeasible-after-move-l2", "infeasible-after-move-l1", "activeset-inconsistent-mlp",
    "activeset-inconsistent-pool", "activeset-inaccurate-optimum",
])
def test_regressions_found_by_the_oracle(tmp_path, case):
    c, norm, k, u, v = REGRESSIONS[case]
    u, v = np.array(u), np.array(v)
    net = fxverify.load_model(save(tmp_path, c.model))
    cut = cut_of(net, k)
    star = oracle_eps(c.layers, k, u, v, norm)
    d = Collider(net, resolve_engine(None, norm)).collide(cut, u, v)
    assert_verified(net, cut, u, v, d, norm, None)
    assert d.eps >= star - 1e-6, (d.eps, star)
    e = Collider(net, resolve_engine("exact-scip", norm, method="exact")).collide(cut, u, v)
    assert_verified(net, cut, u, v, e, norm, None)
    assert e.termination == "optimal" and e.eps == pytest.approx(star, rel=1e-5, abs=1e-5)


def test_a_pyomo_check_solver_on_a_sparse_problem(nets):
    _usable("scip")
    net = nets["cnn-edge"]
    u, v = points("cnn-edge", None, 0)
    r = collide(net, "relu1", u, v, check_solver="scip", norm="linf")
    assert r.check_solver == "scip" and math.isfinite(r.check_eps)
