"""ONNX -> layer IR.

``load_model(path)`` reads an ONNX classifier, folds every linear operation into the adjacent
affine map, and returns a :class:`~fxverify.ir.Network` of affine / ReLU / max-pool layers.
Every load is checked against onnxruntime at every cut (see :data:`AGREEMENT_TOLERANCE`).

How a graph becomes layers
--------------------------
The graph must be a chain: one float input, one output, and each activation tensor consumed
by one node. Nodes whose inputs are all constants (initializers, ``Constant`` nodes, the
static ``Shape`` of an activation) are evaluated with onnx's reference evaluator, which folds
exporter idioms such as PyTorch's ``Shape -> Gather -> Unsqueeze -> Concat -> Reshape``.

Operations on the activation are of four sorts:

* *primary* linear ops (Conv, Gemm, MatMul, AveragePool, GlobalAveragePool) each start a new
  affine layer: ``linearK`` (``poolK`` for average pools);
* *elementwise* linear ops (Add/Sub/Mul/Div by a constant, BatchNormalization, Transpose) and
  *layout* ops (Flatten, Reshape, Squeeze, Unsqueeze, Identity, Dropout, float Cast) fold into
  the open affine layer, or, when none is open, into the next primary op;
* ``Relu`` becomes ``reluK``; ``MaxPool`` becomes ``poolK``.

Every problem that makes a graph unsupported is collected and reported in one error.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import AgreementError, ModelError, UnsupportedModelError
from .ir import INPUT_CUT, Affine, Agreement, Layer, MaxPool, ModelSource, Network, Relu
from .reference import OnnxReference

#: The IR and onnxruntime must agree at every cut within
#: ``AGREEMENT_TOLERANCE * max(1, max |onnxruntime value at that cut|)``.
#: onnxruntime computes in float32 (relative precision ~6e-8); a few hundred accumulations
#: per layer over ten layers stay far below 1e-4, while any real import error (a wrong
#: transpose, a missed bias, a wrong padding) shows up at order 1e-2 or more.
AGREEMENT_TOLERANCE = 1e-4

#: Random inputs used for the check: uniform [0, 1) (the pixel range fxverify uses),
#: standard normal (signs), and uniform [0, 255) (models that rescale raw pixels themselves).
AGREEMENT_SEED = 20240611

PRIMARY_OPS = {"Conv", "Gemm", "MatMul", "AveragePool", "GlobalAveragePool"}
ELEMENTWISE_OPS = {"Add", "Sub", "Mul", "Div", "BatchNormalization", "Transpose"}
LAYOUT_OPS = {"Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Cast"}
NONLINEAR_OPS = {"Relu", "MaxPool"}
DATA_OPS = PRIMARY_OPS | ELEMENTWISE_OPS | LAYOUT_OPS | NONLINEAR_OPS

_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                onnx.TensorProto.BFLOAT16}


# ----------------------------------------------------------------------------------------
# Affine maps on flat vectors, in two forms: monomial (gather + scale) and dense.
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Map:
    """``y = W x + b`` with ``x`` of length ``in_dim``.

    Monomial form (``W`` is None): ``y[i] = scale[i] * x[src[i]] + offset[i]`` (``src[i] = -1``
    means no dependence on x). Transposes, broadcasts, elementwise constants and batch norms
    are monomial, so chains of them compose in O(d) without dense matrices.
    """

    in_dim: int
    offset: np.ndarray
    W: np.ndarray | None = None
    src: np.ndarray | None = None
    scale: np.ndarray | None = None

    @staticmethod
    def monomial(in_dim, src, scale, offset) -> _Map:
        src = np.asarray(src, dtype=np.int64)
        scale = np.broadcast_to(np.asarray(scale, dtype=np.float64), src.shape).ravel().copy()
        offset = np.broadcast_to(np.asarray(offset, dtype=np.float64), src.shape).ravel()
        src = src.ravel()
        scale[src < 0] = 0.0
        return _Map(in_dim, offset.copy(), src=src, scale=scale)

    @property
    def out_dim(self) -> int:
        return self.offset.shape[0]

    def dense(self) -> np.ndarray:
        if self.W is not None:
            return self.W
        W = np.zeros((self.out_dim, self.in_dim))
        ok = self.src >= 0
        W[np.nonzero(ok)[0], self.src[ok]] = self.scale[ok]
        return W

    def then(self, nxt: _Map) -> _Map:
        """The composition ``nxt(self(x))``."""
        if nxt.W is None:  # gather the rows of self
            safe = np.where(nxt.src >= 0, nxt.src, 0)
            off = nxt.scale * self.offset[safe] + nxt.offset
            if self.W is None:
                src = np.where(nxt.src >= 0, self.src[safe], -1)
                return _Map.monomial(self.in_dim, src, nxt.scale * self.scale[safe], off)
            return _Map(self.in_dim, off, W=nxt.scale[:, None] * self.W[safe])
        off = nxt.W @ self.offset + nxt.offset
        if self.W is not None:
            return _Map(self.in_dim, off, W=nxt.W @ self.W)
        import scipy.sparse as sp

        ok = self.src >= 0
        S = sp.csr_matrix((self.scale[ok], (np.nonzero(ok)[0], self.src[ok])), shape=(self.out_dim, self.in_dim))
        return _Map(self.in_dim, off, W=np.asarray((S.T @ nxt.W.T).T))


def _identity_gather(shape_in, shape_out_index: np.ndarray, factor=1.0, offset=0.0) -> _Map:
    return _Map.monomial(int(np.prod(shape_in, dtype=np.int64)), shape_out_index, factor, offset)


# ----------------------------------------------------------------------------------------
# Node bookkeeping
# ----------------------------------------------------------------------------------------
def _describe(node: onnx.NodeProto, index: int) -> str:
    name = f" {node.name!r}" if node.name else ""
    out = f", output {node.output[0]!r}" if node.output else ""
    return f"{node.op_type}{name} (node {index}{out})"


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _as_str(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class _Problem(Exception):
    """A problem with one node; collected into a one-line ModelError by the caller."""


# ----------------------------------------------------------------------------------------
# Window geometry shared by Conv, MaxPool and AveragePool
# ----------------------------------------------------------------------------------------
def _pool_geometry(node, spatial, kernel, *, allow_ceil=True):
    """Return (out_spatial, pads_begin, pads_end, strides, dilations) following ONNX rules."""
    a = _attrs(node)
    r = len(spatial)
    strides = list(a.get("strides", [1] * r))
    dil = list(a.get("dilations", [1] * r))
    auto_pad = _as_str(a.get("auto_pad", "NOTSET"))
    ceil_mode = int(a.get("ceil_mode", 0))
    if ceil_mode and not allow_ceil:
        raise _Problem("ceil_mode is not supported here")
    if len(strides) != r or len(dil) != r or len(kernel) != r:
        raise _Problem(f"strides/dilations/kernel do not match {r} spatial dimensions")
    eff = [(k - 1) * d + 1 for k, d in zip(kernel, dil)]
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        if any(d != 1 for d in dil):
            raise _Problem(f"combines dilations {dil} with auto_pad={auto_pad}, which onnxruntime rejects (Conv) or "
                           f"computes differently from the ONNX spec (pools); use explicit pads")
        out = [math.ceil(s / st) for s, st in zip(spatial, strides)]
        total = [max(0, (o - 1) * st + e - s) for o, st, e, s in zip(out, strides, eff, spatial)]
        small = [t // 2 for t in total]
        big = [t - t // 2 for t in total]
        pb, pe = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
        return out, pb, pe, strides, dil
    if auto_pad == "VALID":
        pb, pe = [0] * r, [0] * r
    elif auto_pad == "NOTSET":
        pads = list(a.get("pads", [0] * (2 * r)))
        if len(pads) != 2 * r:
            raise _Problem(f"pads has {len(pads)} entries, expected {2 * r}")
        pb, pe = pads[:r], pads[r:]
    else:
        raise _Problem(f"unknown auto_pad {auto_pad!r}")
    out = []
    for s, e, st, b, en in zip(spatial, eff, strides, pb, pe):
        span = s + b + en - e
        if span < 0:
            raise _Problem(f"kernel ({e}) larger than the padded input ({s + b + en})")
        o = (math.ceil if ceil_mode else math.floor)(span / st) + 1
        if ceil_mode and (o - 1) * st >= s + b:  # last window must start inside input or left pad
            o -= 1
        out.append(o)
    return out, pb, pe, strides, dil


def _windows(spatial, kernel, out, pb, strides, dil, pe=None):
    """Index table (prod(out), prod(kernel)) of flat spatial input positions; -1 = padding.

    With ``pe`` also returns a mask of positions inside the padded input (for
    count_include_pad)."""
    r = len(spatial)
    pos, inpad = [], []
    for d in range(r):
        p = np.arange(out[d])[:, None] * strides[d] - pb[d] + np.arange(kernel[d])[None, :] * dil[d]
        pos.append(p)
        if pe is not None:
            inpad.append((p >= -pb[d]) & (p < spatial[d] + pe[d]))
    # broadcast to (*out, *kernel)
    shape = tuple(out) + tuple(kernel)
    valid = np.ones(shape, dtype=bool)
    flat = np.zeros(shape, dtype=np.int64)
    in_padded = np.ones(shape, dtype=bool)
    for d in range(r):
        view = [1] * (2 * r)
        view[d], view[r + d] = out[d], kernel[d]
        p = pos[d].reshape(view)
        valid &= (p >= 0) & (p < spatial[d])
        flat = flat * spatial[d] + p
        if pe is not None:
            in_padded &= inpad[d].reshape(view)
    flat = np.where(valid, flat, -1).reshape(int(np.prod(out)), int(np.prod(kernel)))
    if pe is None:
        return flat
    return flat, in_padded.reshape(flat.shape)


# ----------------------------------------------------------------------------------------
# Converters: one per op family. Each gets (node, data input shape, constants) and returns
# a _Step describing the output.
# ----------------------------------------------------------------------------------------
@dataclass
class _Step:
    kind: str  # "layout" | "elementwise" | "primary" | "relu" | "maxpool"
    out_shape: tuple[int, ...]
    map: _Map | None = None
    window: np.ndarray | None = None
    params: int = 0
    avgpool: bool = False


def _const(node, consts, i, what):
    if i >= len(node.input) or node.input[i] == "":
        return None
    name = node.input[i]
    if name not in consts:
        raise _Problem(f"its {what} ({name!r}) is not a constant")
    v = consts[name]
    if v.dtype.kind in "fc" and not np.all(np.isfinite(v)):
        raise _Problem(f"its {what} ({name!r}) contains NaN or infinite values")
    return v


def _broadcast_shape(a, b):
    try:
        return tuple(np.broadcast_shapes(tuple(a), tuple(b)))
    except ValueError:
        raise _Problem(f"shapes {tuple(a)} and {tuple(b)} do not broadcast") from None


def _elementwise(node, shape, consts, data_pos):
    op = node.op_type
    c = _const(node, consts, 1 - data_pos, "constant operand").astype(np.float64)
    out = _broadcast_shape(shape, c.shape)
    d = int(np.prod(shape, dtype=np.int64))
    src = np.broadcast_to(np.arange(d).reshape(shape), out)
    cb = np.broadcast_to(c, out)
    if op == "Add":
        m = _identity_gather(shape, src, 1.0, cb)
    elif op == "Sub":
        m = _identity_gather(shape, src, 1.0, -cb) if data_pos == 0 else _identity_gather(shape, src, -1.0, cb)
    elif op == "Mul":
        m = _identity_gather(shape, src, cb, 0.0)
    else:  # Div
        if data_pos == 1:
            raise _Problem("divides by an activation (not linear)")
        if np.any(cb == 0):
            raise _Problem("divides by zero")
        m = _identity_gather(shape, src, 1.0 / cb, 0.0)
    return _Step("elementwise", out, m, params=int(c.size))


def _batchnorm(node, shape, consts):
    a = _attrs(node)
    if int(a.get("training_mode", 0)):
        raise _Problem("training_mode=1 (only inference batch norm is supported)")
    if any(o for o in node.output[1:]):
        raise _Problem("running statistics outputs are used (training-mode batch norm)")
    if len(shape) < 2:
        raise _Problem(f"input of shape {shape} has no channel axis")
    scale, bias, mean, var = (_const(node, consts, i, w).astype(np.float64)
                              for i, w in ((1, "scale"), (2, "bias"), (3, "mean"), (4, "variance")))
    C = shape[1]
    if any(t.shape != (C,) for t in (scale, bias, mean, var)):
        raise _Problem(f"parameters are not of shape ({C},)")
    eps = float(a.get("epsilon", 1e-5))
    if np.any(var + eps <= 0):
        raise _Problem("variance + epsilon is not positive")
    k = scale / np.sqrt(var + eps)
    view = (1, C) + (1,) * (len(shape) - 2)
    d = int(np.prod(shape, dtype=np.int64))
    m = _identity_gather(shape, np.arange(d).reshape(shape), np.broadcast_to(k.reshape(view), shape),
                         np.broadcast_to((bias - mean * k).reshape(view), shape))
    return _Step("elementwise", tuple(shape), m, params=4 * C)


def _transpose(node, shape, consts):
    r = len(shape)
    perm = list(_attrs(node).get("perm", list(range(r))[::-1]))
    if sorted(perm) != list(range(r)):
        raise _Problem(f"perm {perm} is not a permutation of {r} axes")
    d = int(np.prod(shape, dtype=np.int64))
    src = np.arange(d).reshape(shape).transpose(perm)
    out = tuple(shape[p] for p in perm)
    if perm == list(range(r)):
        return _Step("layout", out)
    return _Step("elementwise", out, _identity_gather(shape, src))


def _layout(node, shape, consts, opset):
    op, a = node.op_type, _attrs(node)
    d = int(np.prod(shape, dtype=np.int64))
    if op in ("Identity",):
        return _Step("layout", tuple(shape))
    if op == "Dropout":
        if len(node.output) > 1 and node.output[1]:
            raise _Problem("its mask output is used (training-mode dropout)")
        tm = _const(node, consts, 2, "training_mode") if len(node.input) > 2 and node.input[2] else None
        if tm is not None and bool(np.asarray(tm).ravel()[0]):
            raise _Problem("training_mode is true")
        return _Step("layout", tuple(shape))
    if op == "Cast":
        if int(a.get("to", 0)) not in _FLOAT_TYPES:
            raise _Problem("casts an activation to a non-float type")
        return _Step("layout", tuple(shape))
    if op == "Flatten":
        axis = int(a.get("axis", 1))
        axis = axis + len(shape) if axis < 0 else axis
        if not 0 <= axis <= len(shape):
            raise _Problem(f"axis {axis} out of range for shape {shape}")
        return _Step("layout", (int(np.prod(shape[:axis], dtype=np.int64)), int(np.prod(shape[axis:], dtype=np.int64))))
    if op == "Reshape":
        target = [int(t) for t in np.asarray(_const(node, consts, 1, "target shape")).ravel()]
        allowzero = int(a.get("allowzero", 0))
        out = [shape[i] if (t == 0 and not allowzero and i < len(shape)) else t for i, t in enumerate(target)]
        if out.count(-1) > 1:
            raise _Problem(f"target shape {target} has several -1")
        if -1 in out:
            rest = int(np.prod([t for t in out if t != -1], dtype=np.int64))
            if rest == 0 or d % rest:
                raise _Problem(f"cannot reshape {tuple(shape)} to {target}")
            out[out.index(-1)] = d // rest
        if int(np.prod(out, dtype=np.int64)) != d:
            raise _Problem(f"cannot reshape {tuple(shape)} to {target}")
        return _Step("layout", tuple(out))
    if op in ("Squeeze", "Unsqueeze"):
        axes = a.get("axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = [int(x) for x in np.asarray(_const(node, consts, 1, "axes")).ravel()]
        if op == "Squeeze":
            if axes is None:
                return _Step("layout", tuple(s for s in shape if s != 1))
            axes = [x + len(shape) if x < 0 else x for x in axes]
            if any(shape[x] != 1 for x in axes):
                raise _Problem(f"squeezes an axis that is not 1 in {tuple(shape)}")
            return _Step("layout", tuple(s for i, s in enumerate(shape) if i not in axes))
        if axes is None:
            raise _Problem("no axes given")
        r = len(shape) + len(axes)
        axes = sorted(x + r if x < 0 else x for x in axes)
        out = list(shape)
        for x in axes:
            out.insert(x, 1)
        return _Step("layout", tuple(out))
    raise AssertionError(op)  # pragma: no cover


def _conv(node, shape, consts):
    W = _const(node, consts, 1, "weight")
    if W is None:
        raise _Problem("has no weight")
    W = W.astype(np.float64)
    B = _const(node, consts, 2, "bias")
    if len(shape) < 3:
        raise _Problem(f"input of shape {tuple(shape)} has no spatial axes")
    if shape[0] != 1:
        raise _Problem(f"input has batch size {shape[0]} (fxverify analyses one sample at a time)")
    a = _attrs(node)
    C, spatial = shape[1], list(shape[2:])
    M, Cg = W.shape[0], W.shape[1]
    kernel = list(a.get("kernel_shape", W.shape[2:]))
    if list(W.shape[2:]) != kernel or len(kernel) != len(spatial):
        raise _Problem(f"weight of shape {W.shape} does not match the input {tuple(shape)}")
    group = int(a.get("group", 1))
    if C % group or M % group or C // group != Cg:
        raise _Problem(f"group={group} does not fit {C} input and {M} output channels with weight {W.shape}")
    out, pb, _, strides, dil = _pool_geometry(node, spatial, kernel, allow_ceil=False)
    if any(o <= 0 for o in out):
        raise _Problem(f"output spatial size {out} is empty")
    win = _windows(spatial, kernel, out, pb, strides, dil)  # (P, Q)
    P, Q = win.shape
    S = int(np.prod(spatial))
    Mg = M // group
    m = np.arange(M)
    cin = (m // Mg)[:, None] * Cg + np.arange(Cg)[None, :]  # (M, Cg) absolute input channel
    rows = np.broadcast_to((m[:, None] * P + np.arange(P)[None, :])[:, :, None, None], (M, P, Cg, Q))
    cols = cin[:, None, :, None] * S + win[None, :, None, :]
    vals = np.broadcast_to(W.reshape(M, 1, Cg, Q), (M, P, Cg, Q))
    ok = np.broadcast_to(win[None, :, None, :] >= 0, (M, P, Cg, Q))
    dense = np.zeros((M * P, C * S))
    dense[rows[ok], cols[ok]] = vals[ok]
    bias = np.zeros(M) if B is None else B.astype(np.float64).reshape(M)
    out_shape = (1, M) + tuple(out)
    return _Step("primary", out_shape, _Map(C * S, np.repeat(bias, P), W=dense),
                 params=int(W.size + (0 if B is None else B.size)))


def _avgpool(node, shape, consts):
    if len(shape) < 3 or shape[0] != 1:
        raise _Problem(f"input of shape {tuple(shape)} is not (1, C, spatial...)")
    C, spatial = shape[1], list(shape[2:])
    a = _attrs(node)
    if node.op_type == "GlobalAveragePool":
        kernel, out, pb, pe, strides, dil = spatial, [1] * len(spatial), [0] * len(spatial), [0] * len(spatial), \
            [1] * len(spatial), [1] * len(spatial)
        count_pad = 0
    else:
        kernel = list(a["kernel_shape"])
        out, pb, pe, strides, dil = _pool_geometry(node, spatial, kernel)
        count_pad = int(a.get("count_include_pad", 0))
    win, in_padded = _windows(spatial, kernel, out, pb, strides, dil, pe=pe)
    P, Q = win.shape
    S = int(np.prod(spatial))
    count = (in_padded if count_pad else (win >= 0)).sum(axis=1)
    dense = np.zeros((C * P, C * S))
    rows = np.broadcast_to(np.arange(C * P).reshape(C, P, 1), (C, P, Q))
    cols = np.arange(C)[:, None, None] * S + win[None, :, :]
    ok = np.broadcast_to(win[None] >= 0, (C, P, Q))
    vals = np.broadcast_to((1.0 / np.maximum(count, 1))[None, :, None], (C, P, Q))
    np.add.at(dense, (rows[ok], cols[ok]), vals[ok])
    return _Step("primary", (1, C) + tuple(out), _Map(C * S, np.zeros(C * P), W=dense), avgpool=True)


def _maxpool(node, shape, consts):
    if len(node.output) > 1 and node.output[1]:
        raise _Problem("its indices output is used")
    if len(shape) < 3 or shape[0] != 1:
        raise _Problem(f"input of shape {tuple(shape)} is not (1, C, spatial...)")
    C, spatial = shape[1], list(shape[2:])
    kernel = list(_attrs(node)["kernel_shape"])
    out, pb, _, strides, dil = _pool_geometry(node, spatial, kernel)
    win = _windows(spatial, kernel, out, pb, strides, dil)
    S = int(np.prod(spatial))
    table = np.where(win[None] >= 0, np.arange(C)[:, None, None] * S + win[None], -1)
    if np.any((win >= 0).sum(axis=1) == 0):
        raise _Problem("a pooling window lies entirely in the padding")
    return _Step("maxpool", (1, C) + tuple(out), window=table.reshape(C * win.shape[0], win.shape[1]))


def _gemm(node, shape, consts, data_pos):
    a = _attrs(node)
    alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
    tA, tB = int(a.get("transA", 0)), int(a.get("transB", 0))
    if data_pos == 2:
        raise _Problem("its bias C is an activation")
    if len(shape) != 2:
        raise _Problem(f"input of shape {tuple(shape)} is not 2-D")
    other = _const(node, consts, 1 - data_pos, "weight").astype(np.float64)
    if other.ndim != 2:
        raise _Problem(f"weight of shape {other.shape} is not 2-D")
    C = _const(node, consts, 2, "bias C")
    d = shape[0] * shape[1]
    perm = np.arange(d).reshape(shape)
    if data_pos == 0:
        Ap_idx = perm.T if tA else perm  # (M, K) indices into x
        Bp = other.T if tB else other  # (K, N)
        M, K = Ap_idx.shape
        if Bp.shape[0] != K:
            raise _Problem(f"inner dimensions differ: activation {Ap_idx.shape} times weight {Bp.shape}")
        N = Bp.shape[1]
        pre = _Map.monomial(d, Ap_idx.ravel(), 1.0, 0.0)
        dense = alpha * np.kron(np.eye(M), Bp.T)  # vec_row(A' B') = (I_M ⊗ B'^T) vec_row(A')
    else:
        Ap = other.T if tA else other  # (M, K)
        Bp_idx = perm.T if tB else perm  # (K, N)
        K, N = Bp_idx.shape
        M = Ap.shape[0]
        if Ap.shape[1] != K:
            raise _Problem(f"inner dimensions differ: weight {Ap.shape} times activation {Bp_idx.shape}")
        pre = _Map.monomial(d, Bp_idx.ravel(), 1.0, 0.0)
        dense = alpha * np.kron(Ap, np.eye(N))  # vec_row(A' B') = (A' ⊗ I_N) vec_row(B')
    bias = np.zeros((M, N)) if C is None else beta * np.broadcast_to(_bcast_check(C.astype(np.float64), (M, N)), (M, N))
    step = pre.then(_Map(M * K if data_pos == 0 else K * N, bias.ravel(), W=dense))
    return _Step("primary", (M, N), step, params=int(other.size + (0 if C is None else C.size)))


def _bcast_check(c, shape):
    _broadcast_shape(c.shape, shape)
    if tuple(np.broadcast_shapes(c.shape, shape)) != tuple(shape):
        raise _Problem(f"bias of shape {c.shape} does not broadcast to {shape}")
    return c


def _matmul(node, shape, consts, data_pos):
    other = _const(node, consts, 1 - data_pos, "weight").astype(np.float64)
    if other.ndim > 2:
        raise _Problem(f"constant operand of shape {other.shape} is batched (not supported)")
    shape = tuple(shape)
    d = int(np.prod(shape, dtype=np.int64))
    if data_pos == 0:
        if len(shape) == 1:  # (K,) @ (K, N) or (K,) @ (K,)
            if other.shape[0] != shape[0]:
                raise _Problem(f"inner dimensions differ: {shape} times {other.shape}")
            dense = other.T if other.ndim == 2 else other[None, :]
            out = (other.shape[1],) if other.ndim == 2 else ()
        else:
            K = shape[-1]
            if other.shape[0] != K:
                raise _Problem(f"inner dimensions differ: {shape} times {other.shape}")
            rows = d // K
            blk = other.T if other.ndim == 2 else other[None, :]
            dense = np.kron(np.eye(rows), blk)
            out = shape[:-1] + ((other.shape[1],) if other.ndim == 2 else ())
    else:
        if len(shape) == 1:  # (M, K) @ (K,)
            if other.shape[-1] != shape[0]:
                raise _Problem(f"inner dimensions differ: {other.shape} times {shape}")
            dense = other if other.ndim == 2 else other[None, :]
            out = (other.shape[0],) if other.ndim == 2 else ()
        else:
            K, N = shape[-2], shape[-1]
            if other.shape[-1] != K:
                raise _Problem(f"inner dimensions differ: {other.shape} times {shape}")
            A = other if other.ndim == 2 else other[None, :]
            batch = d // (K * N)
            dense = np.kron(np.eye(batch), np.kron(A, np.eye(N)))
            out = shape[:-2] + ((other.shape[0],) if other.ndim == 2 else ()) + (N,)
    return _Step("primary", tuple(out) if out else (1,), _Map(d, np.zeros(dense.shape[0]), W=dense),
                 params=int(other.size))


# ----------------------------------------------------------------------------------------
# Graph walk
# ----------------------------------------------------------------------------------------
def _scan(graph: onnx.GraphProto, const_names: set[str], input_name: str) -> list[str]:
    """Every node-level reason the graph is unsupported, in graph order."""
    data = {input_name}
    problems = []
    for i, node in enumerate(graph.node):
        data_in = [x for x in node.input if x in data]
        if not data_in or node.op_type == "Shape":
            continue
        desc = _describe(node, i)
        op = node.op_type
        if op not in DATA_OPS:
            problems.append(desc)
        elif len(data_in) > 1:
            verb = {"Add": "adds", "Sub": "subtracts", "Mul": "multiplies", "Div": "divides"}.get(op)
            problems.append(f"{desc} {verb} two activations (a residual or gated connection)" if verb
                            else f"{desc} combines several activations")
        data.update(o for o in node.output if o)
    return problems


def _fold(node, consts, opset_imports, shapes) -> dict[str, np.ndarray]:
    """Evaluate a node whose inputs are all constants."""
    if node.op_type == "Constant":
        a = _attrs(node)
        for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
            if key in a:
                v = a[key]
                return {node.output[0]: numpy_helper.to_array(v) if key == "value" else np.asarray(v)}
        raise _Problem("Constant without a supported value attribute")
    if node.op_type == "Shape" and node.input[0] in shapes:  # the static shape of an activation
        return {node.output[0]: np.asarray(shapes[node.input[0]], dtype=np.int64)}
    from onnx.reference import ReferenceEvaluator

    g = onnx.helper.make_graph([node], "fold", [onnx.ValueInfoProto(name=x) for x in node.input if x],
                               [onnx.ValueInfoProto(name=o) for o in node.output if o])
    m = onnx.helper.make_model(g, opset_imports=opset_imports)
    try:
        res = ReferenceEvaluator(m).run(None, {x: consts[x] for x in node.input if x})
    except Exception as err:  # the reference evaluator raises many exception types
        raise _Problem(f"cannot be evaluated as a constant: {err}") from None
    return {o: np.asarray(r) for o, r in zip([o for o in node.output if o], res)}


@dataclass
class _Block:
    """An affine layer under construction (or a prefix of ops waiting for a primary op)."""

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    tensor: str
    map: _Map | None = None
    ops: list[str] = field(default_factory=list)
    params: int = 0
    primary: bool = False
    avgpool: bool = False

    def add(self, m: _Map | None, out_shape, tensor, desc, params) -> None:
        if m is not None:
            self.map = m if self.map is None else self.map.then(m)
        self.out_shape, self.tensor = tuple(out_shape), tensor
        self.ops.append(desc)
        self.params += params


class _LayerBuilder:
    def __init__(self) -> None:
        self.layers: list[Layer] = []
        self.open: _Block | None = None  # affine layer with a primary op
        self.prefix: _Block | None = None  # ops waiting for a primary op
        self.count = {"linear": 0, "relu": 0, "pool": 0}

    def _name(self, kind: str) -> str:
        self.count[kind] += 1
        return f"{kind}{self.count[kind]}"

    def _emit_affine(self, b: _Block) -> None:
        d_in = int(np.prod(b.in_shape, dtype=np.int64))
        m = b.map if b.map is not None else _Map.monomial(d_in, np.arange(d_in), 1.0, 0.0)
        self.layers.append(Affine(name=self._name("pool" if b.avgpool else "linear"), in_shape=b.in_shape,
                                  out_shape=b.out_shape, ops=tuple(b.ops), onnx_tensor=b.tensor,
                                  weight=m.dense(), bias=m.offset, source_params=b.params))

    def _flush(self) -> None:
        if self.open is not None:
            self._emit_affine(self.open)
            self.open = None
        if self.prefix is not None:
            if self.prefix.map is not None:  # linear ops between two nonlinearities
                self._emit_affine(self.prefix)
            elif self.layers:  # pure reshapes: attach to the previous layer
                import dataclasses

                last = self.layers[-1]
                self.layers[-1] = dataclasses.replace(last, out_shape=self.prefix.out_shape,
                                                      onnx_tensor=self.prefix.tensor,
                                                      ops=last.ops + tuple(self.prefix.ops))
            self.prefix = None

    def step(self, step: _Step, in_shape, out_tensor: str, desc: str) -> None:
        if step.kind in ("layout", "elementwise"):
            target = self.open
            if target is None:
                if self.prefix is None:
                    self.prefix = _Block(tuple(in_shape), tuple(in_shape), out_tensor)
                target = self.prefix
            target.add(step.map, step.out_shape, out_tensor, desc, step.params)
        elif step.kind == "primary":
            if self.open is not None:
                self._emit_affine(self.open)
            blk = self.prefix or _Block(tuple(in_shape), tuple(in_shape), out_tensor)
            blk.add(step.map, step.out_shape, out_tensor, desc, step.params)
            blk.primary, blk.avgpool = True, step.avgpool
            self.open, self.prefix = blk, None
        else:
            self._flush()
            if step.kind == "relu":
                self.layers.append(Relu(name=self._name("relu"), in_shape=tuple(in_shape),
                                        out_shape=tuple(step.out_shape), ops=(desc,), onnx_tensor=out_tensor))
            else:
                self.layers.append(MaxPool(name=self._name("pool"), in_shape=tuple(in_shape),
                                           out_shape=tuple(step.out_shape), ops=(desc,), onnx_tensor=out_tensor,
                                           window=step.window))

    def finish(self) -> list[Layer]:
        self._flush()
        return self.layers


def _read(path: str | os.PathLike) -> tuple[onnx.ModelProto, bytes]:
    p = Path(path)
    if not p.exists():
        raise ModelError(f"model file not found: {p}")
    if p.is_dir():
        raise ModelError(f"model path is a directory, not an ONNX file: {p}")
    raw = p.read_bytes()
    if not raw:
        raise ModelError(f"{p} is empty, not an ONNX model")
    try:
        model = onnx.load_from_string(raw)
    except Exception as err:  # protobuf's DecodeError and friends
        raise ModelError(f"{p} is not a valid ONNX file (it may be truncated or not ONNX at all): {err}") from None
    if not model.graph.node:
        raise ModelError(f"{p} is not a valid ONNX model: its graph has no nodes (truncated or not ONNX?)")
    try:
        onnx.checker.check_model(model)
    except Exception as err:  # onnx.checker.ValidationError and others
        # The checker is stricter than runtimes (e.g. it wants shapes on graph outputs). A model
        # is malformed when onnxruntime cannot load it either.
        if not _onnxruntime_accepts(raw):
            raise ModelError(f"{p} is not a valid ONNX model: {str(err).strip().splitlines()[0]}") from None
    return model, raw


def _onnxruntime_accepts(raw: bytes) -> bool:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        ort.InferenceSession(raw, options, providers=["CPUExecutionProvider"])
    except Exception:  # onnxruntime raises its own untyped errors; any of them means "cannot load"
        return False
    return True


def _input_of(model: onnx.ModelProto, path) -> tuple[str, tuple, tuple[int, ...]]:
    g = model.graph
    init = {t.name for t in g.initializer}
    inputs = [i for i in g.input if i.name not in init]
    if len(inputs) != 1:
        names = ", ".join(repr(i.name) for i in inputs) or "none"
        raise ModelError(f"{path}: fxverify needs a model with exactly one input, this one has {len(inputs)} ({names})")
    inp = inputs[0]
    tt = inp.type.tensor_type
    if not inp.type.HasField("tensor_type"):
        raise ModelError(f"{path}: input {inp.name!r} is not a tensor")
    if tt.elem_type not in _FLOAT_TYPES:
        tname = onnx.TensorProto.DataType.Name(tt.elem_type)
        raise ModelError(f"{path}: input {inp.name!r} has element type {tname}; fxverify needs a float input")
    if not tt.HasField("shape"):
        raise ModelError(f"{path}: input {inp.name!r} has no shape (unresolvable dynamic shape)")
    onnx_shape, full = [], []
    for k, dim in enumerate(tt.shape.dim):
        if dim.HasField("dim_value") and dim.dim_value > 0:
            onnx_shape.append(int(dim.dim_value))
            full.append(int(dim.dim_value))
        elif k == 0:  # a symbolic or unknown batch axis: analyse one sample at a time
            onnx_shape.append(dim.dim_param or "?")
            full.append(1)
        else:
            label = dim.dim_param or "unknown"
            raise ModelError(f"{path}: input {inp.name!r} has a dynamic dimension {k} ({label!r}) that cannot be "
                             f"resolved; export the model with a fixed input shape")
    if len(g.output) != 1:
        raise ModelError(f"{path}: fxverify needs a model with exactly one output, this one has {len(g.output)}")
    return inp.name, tuple(onnx_shape), tuple(full)


def _build_layers(model: onnx.ModelProto, path, input_name: str, input_shape: tuple[int, ...]) -> list[Layer]:
    g = model.graph
    consts: dict[str, np.ndarray] = {}
    for t in g.initializer:
        try:
            consts[t.name] = numpy_helper.to_array(t)
        except Exception as err:  # a truncated file can leave tensors without their data
            raise ModelError(f"{path}: initializer {t.name!r} cannot be read (truncated file?): {err}") from None
    problems = _scan(g, set(consts), input_name)
    if problems:
        raise UnsupportedModelError(problems)

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    shapes: dict[str, tuple[int, ...]] = {input_name: input_shape}
    consumed: dict[str, str] = {}
    head = input_name
    builder = _LayerBuilder()
    for i, node in enumerate(g.node):
        desc = _describe(node, i)
        for x in node.input:
            if x and x not in consts and x not in shapes:
                raise ModelError(f"{path}: {desc} uses tensor {x!r} before it is produced (graph not in order)")
        data_in = [(k, x) for k, x in enumerate(node.input) if x in shapes]
        try:
            if not data_in or node.op_type == "Shape":
                consts.update(_fold(node, consts, model.opset_import, shapes))
                continue
            (pos, x), = data_in  # _scan guarantees one activation input
            if x in consumed:
                raise ModelError(f"{path}: tensor {x!r} feeds both {consumed[x]} and {desc}: branching graphs "
                                 f"(skip or residual connections) are not supported")
            if x != head:
                raise ModelError(f"{path}: {desc} reads {x!r}, which is not the latest activation: "
                                 f"the graph is not a single chain")
            consumed[x] = desc
            shape = shapes[x]
            op = node.op_type
            if op in ("Add", "Sub", "Mul", "Div"):
                step = _elementwise(node, shape, consts, pos)
            elif op == "BatchNormalization":
                if pos != 0:
                    raise _Problem("its parameters come from an activation")
                step = _batchnorm(node, shape, consts)
            elif op == "Transpose":
                step = _transpose(node, shape, consts)
            elif op in LAYOUT_OPS:
                if pos != 0:
                    raise _Problem("its shape or axes come from an activation")
                step = _layout(node, shape, consts, opset)
            elif op == "Conv":
                if pos != 0:
                    raise _Problem("takes its weights from an activation")
                step = _conv(node, shape, consts)
            elif op == "Gemm":
                step = _gemm(node, shape, consts, pos)
            elif op == "MatMul":
                step = _matmul(node, shape, consts, pos)
            elif op in ("AveragePool", "GlobalAveragePool"):
                step = _avgpool(node, shape, consts)
            elif op == "MaxPool":
                step = _maxpool(node, shape, consts)
            elif op == "Relu":
                step = _Step("relu", tuple(shape))
            else:  # pragma: no cover - _scan rejects these
                raise _Problem("is not supported")
        except _Problem as p:
            raise ModelError(f"{path}: {desc} {p}") from None
        out = node.output[0]
        shapes[out] = tuple(step.out_shape)
        head = out
        builder.step(step, shape, out, desc)
    if g.output[0].name != head:
        raise ModelError(f"{path}: the graph output {g.output[0].name!r} is not the end of the activation chain "
                         f"({head!r})")
    layers = builder.finish()
    for layer in layers:
        if isinstance(layer, Affine) and not (np.all(np.isfinite(layer.weight)) and np.all(np.isfinite(layer.bias))):
            raise ModelError(f"{path}: layer {layer.name} ({', '.join(layer.ops)}) has NaN or infinite weights")
    return layers


def check_agreement(net: Network, n_random: int = 8) -> Agreement:
    """Compare the float64 IR with onnxruntime at every cut on random inputs."""
    rng = np.random.default_rng(AGREEMENT_SEED)
    k = max(1, n_random // 4)
    d = net.input_dim
    X = np.concatenate([rng.uniform(0, 1, (n_random - 2 * k, d)), rng.standard_normal((k, d)),
                        rng.uniform(0, 255, (k, d))])
    cuts = net.cuts
    ref = OnnxReference(net.source, [net.onnx_tensor(c) for c in cuts]).run(X)
    diffs, scales = {}, {}
    feats = X
    for c in cuts:
        if c != INPUT_CUT:
            feats = net.layers[net.cut_index(c) - 1].apply(feats)
        r = ref[net.onnx_tensor(c)]
        if r.shape != feats.shape:
            raise AgreementError(f"{net.source.path}: cut {c} has {feats.shape[1]} features in the IR but "
                                 f"{r.shape[1]} in onnxruntime")
        diffs[c] = float(np.max(np.abs(r - feats))) if r.size else 0.0
        scales[c] = float(np.max(np.abs(r))) if r.size else 0.0
    return Agreement(max_abs_diff=diffs, scale=scales, tolerance=AGREEMENT_TOLERANCE, n_inputs=len(X))


def load_model(path: str | os.PathLike) -> Network:
    """Import an ONNX classifier as a :class:`Network` and check it against onnxruntime.

    Raises :class:`~fxverify.errors.ModelError` (one line) for unreadable files, unsupported
    operations (all listed), several inputs, non-float inputs, unresolvable dynamic shapes,
    or disagreement with onnxruntime above :data:`AGREEMENT_TOLERANCE`.
    """
    model, raw = _read(path)
    input_name, onnx_shape, full_shape = _input_of(model, path)
    layers = _build_layers(model, path, input_name, full_shape)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    source = ModelSource(path=str(path), sha256=hashlib.sha256(raw).hexdigest(), input_name=input_name,
                         output_name=model.graph.output[0].name, onnx_input_shape=onnx_shape, onnx_bytes=raw,
                         producer=f"{model.producer_name} {model.producer_version}".strip(), opset=opset)
    net = Network(layers=tuple(layers), input_tensor_shape=full_shape, source=source)
    agreement = check_agreement(net)
    bad = [c for c in net.cuts if not agreement.ok(c)]
    if bad:
        c = bad[0]
        raise AgreementError(
            f"{path}: the imported network disagrees with onnxruntime at cut {c} (max abs difference "
            f"{agreement.max_abs_diff[c]:.3g}, tolerance {AGREEMENT_TOLERANCE:g} x max(1, {agreement.scale[c]:.3g})); "
            f"cuts that disagree: {', '.join(bad)}")
    return Network(layers=net.layers, input_tensor_shape=full_shape, source=source, agreement=agreement)
