"""ONNX -> graph IR.

``load_model(path)`` reads an ONNX classifier, folds every linear operation into the adjacent
linear node, and returns a :class:`~fxverify.ir.Network` of linear nodes and pieces (ReLU, Leaky
ReLU, MaxPool). Every load is checked against onnxruntime at every cut (see
:data:`AGREEMENT_TOLERANCE`).

How a graph becomes nodes
-------------------------
The model needs one float input and one output. Nodes whose inputs are all constants
(initializers, ``Constant`` nodes, the static ``Shape`` of an activation) are evaluated with
onnx's reference evaluator, which folds exporter idioms such as PyTorch's
``Shape -> Gather -> Unsqueeze -> Concat -> Reshape``.

Every operation on activations is looked up in one table, :data:`OPS`, which says what it is:

* ``primary`` linear ops (Conv, Gemm, MatMul, AveragePool, GlobalAveragePool) start a new linear
  node: ``linearK`` (``poolK`` for average pools);
* ``elementwise`` linear ops (Add/Sub/Mul/Div by a constant, BatchNormalization, Transpose, Pad)
  and ``layout`` ops (Flatten, Reshape, Squeeze, Unsqueeze, Identity, Dropout, float Cast) fold
  into the open linear node, or, when none is open, into the next primary op;
* ``combine`` ops join several activations linearly: an Add/Sub of two activations (a residual
  connection) is ``addK``, a Concat ``concatK``;
* ``piece`` ops are piecewise linear: Relu and LeakyRelu become ``reluK``, MaxPool ``poolK``.

A linear expression is materialised as a node when a piece reads it, when another primary op
follows it, when it feeds several nodes, or at the graph's output. An operation the table
does not have (or cannot represent, e.g. a Mul of two activations) makes every cut that
depends on it *unavailable* (``Network.unavailable`` says why); the cuts before it load.
Linear maps keep their structure (:mod:`fxverify.linops`): a convolution is a sparse matrix,
never a dense Toeplitz matrix, and a map too large for memory is refused before allocation.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
import scipy.sparse as sp
from onnx import numpy_helper

from . import linops
from .errors import AgreementError, ArgumentError, ModelError
from .ir import INPUT_CUT, Agreement, Linear, ModelSource, Network, Node, Unavailable
from .linops import Map
from .pieces import MaxPool, Relu
from .reference import OnnxReference

#: The IR and onnxruntime must agree at every cut within
#: ``AGREEMENT_TOLERANCE * max(1, max |onnxruntime value at that cut|)``.
#: onnxruntime computes in float32 (relative precision ~6e-8); a few hundred accumulations
#: per layer over ten layers stay far below 1e-4, while any real import error (a wrong
#: transpose, a missed bias, a wrong padding) shows up at order 1e-2 or more. A model whose
#: input is float16 is compared at float16's precision instead (:data:`FLOAT16_TOLERANCE`).
AGREEMENT_TOLERANCE = 1e-4
#: float16 has a relative precision of ~1e-3: its inputs alone are rounded that much
FLOAT16_TOLERANCE = 3e-2

#: Random inputs used for the check: uniform [0, 1) (the pixel range fxverify uses),
#: standard normal (signs), and uniform [0, 255) (models that rescale raw pixels themselves).
AGREEMENT_SEED = 20240611

_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                onnx.TensorProto.BFLOAT16}


def _identity_gather(shape_in, shape_out_index: np.ndarray, factor=1.0, offset=0.0) -> Map:
    return Map.monomial(int(np.prod(shape_in, dtype=np.int64)), shape_out_index, factor, offset)


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
    """A node fxverify cannot represent: the cuts that depend on it become unavailable."""


class _Malformed(_Problem):
    """A node that is broken (NaN weights, ...): the whole model is refused."""


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
    linops.require_values(math.prod(out) * math.prod(kernel), f"a window table of {list(out)} windows of "
                                                              f"{list(kernel)}")
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


def _const(node, consts, i, what):
    if i >= len(node.input) or node.input[i] == "":
        return None
    name = node.input[i]
    if name not in consts:
        raise _Problem(f"its {what} ({name!r}) is not a constant")
    v = consts[name]
    if v.dtype.kind in "fc" and not np.all(np.isfinite(v)):
        raise _Malformed(f"its {what} ({name!r}) contains NaN or infinite values")
    return v


def _broadcast_shape(a, b):
    try:
        out = tuple(np.broadcast_shapes(tuple(a), tuple(b)))
    except ValueError:
        raise _Problem(f"shapes {tuple(a)} and {tuple(b)} do not broadcast") from None
    linops.require_values(math.prod(out), f"a broadcast to shape {list(out)}")
    return out


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
    return out, m, int(c.size)


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
    return tuple(shape), m, 4 * C


def _transpose(node, shape, consts):
    r = len(shape)
    perm = list(_attrs(node).get("perm", list(range(r))[::-1]))
    if sorted(perm) != list(range(r)):
        raise _Problem(f"perm {perm} is not a permutation of {r} axes")
    d = int(np.prod(shape, dtype=np.int64))
    src = np.arange(d).reshape(shape).transpose(perm)
    out = tuple(shape[p] for p in perm)
    if perm == list(range(r)):
        return out, None
    return out, _identity_gather(shape, src)


def _layout(node, shape, consts, opset):
    op, a = node.op_type, _attrs(node)
    d = int(np.prod(shape, dtype=np.int64))
    if op in ("Identity",):
        return tuple(shape)
    if op == "Dropout":
        if len(node.output) > 1 and node.output[1]:
            raise _Problem("its mask output is used (training-mode dropout)")
        tm = _const(node, consts, 2, "training_mode") if len(node.input) > 2 and node.input[2] else None
        if tm is not None and bool(np.asarray(tm).ravel()[0]):
            raise _Problem("training_mode is true")
        return tuple(shape)
    if op == "Cast":
        if int(a.get("to", 0)) not in _FLOAT_TYPES:
            raise _Problem("casts an activation to a non-float type")
        return tuple(shape)
    if op == "Flatten":
        axis = int(a.get("axis", 1))
        axis = axis + len(shape) if axis < 0 else axis
        if not 0 <= axis <= len(shape):
            raise _Problem(f"axis {axis} out of range for shape {shape}")
        return (int(np.prod(shape[:axis], dtype=np.int64)), int(np.prod(shape[axis:], dtype=np.int64)))
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
        return tuple(out)
    if op in ("Squeeze", "Unsqueeze"):
        axes = a.get("axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = [int(x) for x in np.asarray(_const(node, consts, 1, "axes")).ravel()]
        if op == "Squeeze":
            if axes is None:
                return tuple(s for s in shape if s != 1)
            axes = [x + len(shape) if x < 0 else x for x in axes]
            if any(shape[x] != 1 for x in axes):
                raise _Problem(f"squeezes an axis that is not 1 in {tuple(shape)}")
            return tuple(s for i, s in enumerate(shape) if i not in axes)
        if axes is None:
            raise _Problem("no axes given")
        r = len(shape) + len(axes)
        axes = sorted(x + r if x < 0 else x for x in axes)
        out = list(shape)
        for x in axes:
            out.insert(x, 1)
        return tuple(out)
    raise AssertionError(op)  # pragma: no cover


# ----------------------------------------------------------------------------------------
# Converters: one per op family. Each gets (node, data input shape, constants, position of the
# activation input) and returns a _Step: the output shape and the linear map (for linear ops)
# or the piece to create.
# ----------------------------------------------------------------------------------------
@dataclass
class _Step:
    out_shape: tuple[int, ...]
    map: Map | None = None  # None: a pure layout change (same flat order)
    params: int = 0
    primary: str | None = None  # "linear" | "pool": the op starts a new linear node of that name
    piece: type | None = None  # a piece class, created with ``piece_args``
    piece_args: dict = field(default_factory=dict)


def _conv(node, shape, consts, pos, opset):
    if pos != 0:
        raise _Problem("takes its weights from an activation")
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
    P, Q = int(np.prod(out, dtype=np.int64)), int(np.prod(kernel, dtype=np.int64))
    S = int(np.prod(spatial, dtype=np.int64))
    linops.require_sparse(M * P * Cg * Q, M * P, f"its {M * P:,} x {C * S:,} convolution")
    win = _windows(spatial, kernel, out, pb, strides, dil)  # (P, Q)
    Mg = M // group
    m = np.arange(M)
    cin = (m // Mg)[:, None] * Cg + np.arange(Cg)[None, :]  # (M, Cg) absolute input channel
    rows = np.broadcast_to((m[:, None] * P + np.arange(P)[None, :])[:, :, None, None], (M, P, Cg, Q))
    cols = cin[:, None, :, None] * S + win[None, :, None, :]
    vals = np.broadcast_to(W.reshape(M, 1, Cg, Q), (M, P, Cg, Q))
    ok = np.broadcast_to(win[None, :, None, :] >= 0, (M, P, Cg, Q))
    op = sp.csr_matrix((vals[ok], (rows[ok], cols[ok])), shape=(M * P, C * S))
    op.sum_duplicates()
    bias = np.zeros(M) if B is None else B.astype(np.float64).reshape(M)
    return _Step((1, M) + tuple(out), Map(C * S, np.repeat(bias, P), W=op),
                 params=int(W.size + (0 if B is None else B.size)), primary="linear")


def _avgpool(node, shape, consts, pos, opset):
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
    rows = np.broadcast_to(np.arange(C * P).reshape(C, P, 1), (C, P, Q))
    cols = np.arange(C)[:, None, None] * S + win[None, :, :]
    ok = np.broadcast_to(win[None] >= 0, (C, P, Q))
    vals = np.broadcast_to((1.0 / np.maximum(count, 1))[None, :, None], (C, P, Q))
    op = sp.csr_matrix((vals[ok], (rows[ok], cols[ok])), shape=(C * P, C * S))
    op.sum_duplicates()
    return _Step((1, C) + tuple(out), Map(C * S, np.zeros(C * P), W=op), primary="pool")


def _maxpool(node, shape, consts, pos, opset):
    if len(node.output) > 1 and node.output[1]:
        raise _Problem("its indices output is used")
    if len(shape) < 3 or shape[0] != 1:
        raise _Problem(f"input of shape {tuple(shape)} is not (1, C, spatial...)")
    C, spatial = shape[1], list(shape[2:])
    kernel = list(_attrs(node)["kernel_shape"])
    out, pb, _, strides, dil = _pool_geometry(node, spatial, kernel)
    win = _windows(spatial, kernel, out, pb, strides, dil)
    linops.require_values(C * win.size, f"a max-pool table of {C} x {win.shape[0]:,} windows of {win.shape[1]:,}")
    S = int(np.prod(spatial))
    table = np.where(win[None] >= 0, np.arange(C)[:, None, None] * S + win[None], -1)
    if np.any((win >= 0).sum(axis=1) == 0):
        raise _Problem("a pooling window lies entirely in the padding")
    return _Step((1, C) + tuple(out), piece=MaxPool,
                 piece_args={"window": table.reshape(C * win.shape[0], win.shape[1])})


def _relu(node, shape, consts, pos, opset):
    return _Step(tuple(shape), piece=Relu)


def _leaky_relu(node, shape, consts, pos, opset):
    alpha = float(_attrs(node).get("alpha", 0.01))
    if not 0.0 <= alpha < 1.0:
        raise _Problem(f"has alpha={alpha:g} (a slope outside [0, 1) is not injective-monotone)")
    return _Step(tuple(shape), piece=Relu, piece_args={"alpha": alpha})


def _kron_eye_left(n: int, B: np.ndarray):
    """I_n (x) B, dense when n == 1."""
    linops.require_sparse(n * int(np.size(B)), n * B.shape[0], f"a block-diagonal map of {n:,} blocks of {B.shape}")
    return B if n == 1 else sp.kron(sp.identity(n, format="csr"), sp.csr_matrix(B), format="csr")


def _kron_eye_right(A: np.ndarray, n: int):
    """A (x) I_n, dense when n == 1."""
    linops.require_sparse(n * int(np.size(A)), n * A.shape[0], f"a map of {A.shape} blocks times {n:,}")
    return A if n == 1 else sp.kron(sp.csr_matrix(A), sp.identity(n, format="csr"), format="csr")


def _gemm(node, shape, consts, data_pos, opset):
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
        pre = Map.monomial(d, Ap_idx.ravel(), 1.0, 0.0)
        op = _kron_eye_left(M, alpha * Bp.T)  # vec_row(A' B') = (I_M ⊗ B'^T) vec_row(A')
    else:
        Ap = other.T if tA else other  # (M, K)
        Bp_idx = perm.T if tB else perm  # (K, N)
        K, N = Bp_idx.shape
        M = Ap.shape[0]
        if Ap.shape[1] != K:
            raise _Problem(f"inner dimensions differ: weight {Ap.shape} times activation {Bp_idx.shape}")
        pre = Map.monomial(d, Bp_idx.ravel(), 1.0, 0.0)
        op = _kron_eye_right(alpha * Ap, N)  # vec_row(A' B') = (A' ⊗ I_N) vec_row(B')
    bias = np.zeros((M, N)) if C is None else beta * np.broadcast_to(_bcast_check(C.astype(np.float64), (M, N)), (M, N))
    m = Map(M * K if data_pos == 0 else K * N, bias.ravel(), W=op)
    return _Step((M, N), m if pre.is_identity else pre.then(m), params=int(other.size + (0 if C is None else C.size)),
                 primary="linear")


def _bcast_check(c, shape):
    _broadcast_shape(c.shape, shape)
    if tuple(np.broadcast_shapes(c.shape, shape)) != tuple(shape):
        raise _Problem(f"bias of shape {c.shape} does not broadcast to {shape}")
    return c


def _matmul(node, shape, consts, data_pos, opset):
    other = _const(node, consts, 1 - data_pos, "weight").astype(np.float64)
    if other.ndim > 2:
        raise _Problem(f"constant operand of shape {other.shape} is batched (not supported)")
    shape = tuple(shape)
    d = int(np.prod(shape, dtype=np.int64))
    if data_pos == 0:
        if len(shape) == 1:  # (K,) @ (K, N) or (K,) @ (K,)
            if other.shape[0] != shape[0]:
                raise _Problem(f"inner dimensions differ: {shape} times {other.shape}")
            op = other.T if other.ndim == 2 else other[None, :]
            out = (other.shape[1],) if other.ndim == 2 else ()
        else:
            K = shape[-1]
            if other.shape[0] != K:
                raise _Problem(f"inner dimensions differ: {shape} times {other.shape}")
            blk = other.T if other.ndim == 2 else other[None, :]
            op = _kron_eye_left(d // K, blk)
            out = shape[:-1] + ((other.shape[1],) if other.ndim == 2 else ())
    else:
        if len(shape) == 1:  # (M, K) @ (K,)
            if other.shape[-1] != shape[0]:
                raise _Problem(f"inner dimensions differ: {other.shape} times {shape}")
            op = other if other.ndim == 2 else other[None, :]
            out = (other.shape[0],) if other.ndim == 2 else ()
        else:
            K, N = shape[-2], shape[-1]
            if other.shape[-1] != K:
                raise _Problem(f"inner dimensions differ: {other.shape} times {shape}")
            A = other if other.ndim == 2 else other[None, :]
            batch = d // (K * N)
            op = _kron_eye_left(batch, _kron_eye_right(A, N))
            if linops.is_sparse(op) is False and batch > 1:  # pragma: no cover - _kron_eye_left makes it sparse
                op = sp.csr_matrix(op)
            out = shape[:-2] + ((other.shape[0],) if other.ndim == 2 else ()) + (N,)
    return _Step(tuple(out) if out else (1,), Map(d, np.zeros(op.shape[0]), W=op), params=int(other.size),
                 primary="linear")


def _pad(node, shape, consts, pos, opset):
    if pos != 0:
        raise _Problem("takes its pads from an activation")
    a = _attrs(node)
    mode = a.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if mode != "constant":
        raise _Problem(f"mode {mode!r} (only constant padding is linear)")
    if "pads" in a:
        pads = [int(p) for p in a["pads"]]
        value = float(a.get("value", 0.0))
    else:
        pads = [int(p) for p in np.asarray(_const(node, consts, 1, "pads")).ravel()]
        v = _const(node, consts, 2, "constant value")
        value = 0.0 if v is None else float(np.asarray(v).ravel()[0])
        if len(node.input) > 3 and node.input[3]:
            raise _Problem("pads selected axes (the axes input is not supported)")
    r = len(shape)
    if len(pads) != 2 * r or any(p < 0 for p in pads):
        raise _Problem(f"pads {pads} do not fit {r} axes (negative pads are not supported)")
    out = tuple(s + pads[i] + pads[r + i] for i, s in enumerate(shape))
    linops.require_values(math.prod(out), f"its padded output of shape {list(out)}")
    d = int(np.prod(shape, dtype=np.int64))
    src = np.full(out, -1, dtype=np.int64)
    src[tuple(slice(pads[i], pads[i] + shape[i]) for i in range(r))] = np.arange(d).reshape(shape)
    offset = np.where(src >= 0, 0.0, value)
    if np.array_equal(out, shape):
        return _Step(tuple(shape))
    return _Step(out, Map.monomial(d, src, 1.0, offset))


def _elementwise_step(node, shape, consts, pos, opset):
    step = _elementwise(node, shape, consts, pos)
    return _Step(step[0], step[1], params=step[2])


def _batchnorm_step(node, shape, consts, pos, opset):
    if pos != 0:
        raise _Problem("its parameters come from an activation")
    out, m, params = _batchnorm(node, shape, consts)
    return _Step(out, m, params=params)


def _transpose_step(node, shape, consts, pos, opset):
    out, m = _transpose(node, shape, consts)
    return _Step(out, m)


def _layout_step(node, shape, consts, pos, opset):
    if pos != 0:
        raise _Problem("its shape or axes come from an activation")
    return _Step(_layout(node, shape, consts, opset))


#: The op table: ONNX op type -> (family, converter). Families: "linear" ops map one activation
#: linearly (a converter's _Step has ``primary`` set when the op starts a new linear node),
#: "piece" ops create a piecewise-linear node, "combine" ops join several activations.
OPS = {
    "Conv": ("linear", _conv),
    "Gemm": ("linear", _gemm),
    "MatMul": ("linear", _matmul),
    "AveragePool": ("linear", _avgpool),
    "GlobalAveragePool": ("linear", _avgpool),
    "Add": ("linear", _elementwise_step),
    "Sub": ("linear", _elementwise_step),
    "Mul": ("linear", _elementwise_step),
    "Div": ("linear", _elementwise_step),
    "BatchNormalization": ("linear", _batchnorm_step),
    "Transpose": ("linear", _transpose_step),
    "Pad": ("linear", _pad),
    "Flatten": ("linear", _layout_step),
    "Reshape": ("linear", _layout_step),
    "Squeeze": ("linear", _layout_step),
    "Unsqueeze": ("linear", _layout_step),
    "Identity": ("linear", _layout_step),
    "Dropout": ("linear", _layout_step),
    "Cast": ("linear", _layout_step),
    "Relu": ("piece", _relu),
    "LeakyRelu": ("piece", _leaky_relu),
    "MaxPool": ("piece", _maxpool),
    "Concat": ("combine", None),
}
#: ops that combine two activations when both operands are activations
_COMBINING = {"Add": 1.0, "Sub": -1.0}
# ----------------------------------------------------------------------------------------
# The graph walk: activation tensors as linear expressions of materialised nodes
# ----------------------------------------------------------------------------------------
@dataclass
class _Expr:
    """An activation tensor: ``sum over terms of map(source's output)`` (a map of None is the
    identity on the source's flat output), or poisoned (depends on an unsupported op)."""

    shape: tuple[int, ...] | None
    terms: tuple[tuple[str, Map | None], ...] = ()
    tensor: str = ""
    ops: tuple[str, ...] = ()
    params: int = 0
    kind: str | None = None  # None (no primary op yet) | "linear" | "pool" | "add" | "concat"
    poison: str | None = None

    @property
    def pure(self) -> bool:
        """The plain output of one node (perhaps reshaped)."""
        return len(self.terms) == 1 and self.terms[0][1] is None

    def mapped(self, m: Map, dims: dict[str, int]) -> list[tuple[str, Map]]:
        """Terms after applying ``m`` to the whole expression (its offset added once)."""
        out = []
        for k, (src, t) in enumerate(self.terms):
            mk = m if k == 0 else Map(m.in_dim, np.zeros(m.out_dim), W=m.W, src=m.src, scale=m.scale)
            out.append((src, mk if t is None else t.then(mk)))
        return out


class _GraphBuilder:
    def __init__(self, path, input_name: str, input_shape: tuple[int, ...], consumers: dict[str, int]) -> None:
        self.path = path
        self.nodes: list[Node] = []
        self.dims = {INPUT_CUT: int(np.prod(input_shape, dtype=np.int64))}
        self.shapes = {INPUT_CUT: tuple(input_shape)}
        self.tensors = {INPUT_CUT: input_name}
        self.count = {"linear": 0, "relu": 0, "pool": 0, "add": 0, "concat": 0}
        self.unavailable: list[Unavailable] = []
        self.unsupported: list[str] = []
        self.consumers = consumers

    def _name(self, kind: str) -> str:
        self.count[kind] += 1
        return f"{kind}{self.count[kind]}"

    def materialise(self, e: _Expr) -> _Expr:
        """A node for a linear expression (a pure expression is its source already)."""
        if e.pure:
            return e
        name = self._name(e.kind or "linear")
        srcs = tuple(s for s, _ in e.terms)
        weights, bias = [], 0.0
        what = f"{name} ({', '.join(o.split(' (')[0] for o in e.ops)})"
        for src, m in e.terms:
            if m is None:
                d = self.dims[src]
                weights.append(np.eye(d) if d <= 256 else sp.identity(d, format="csr"))
            else:
                weights.append(m.operator(what))
                bias = bias + m.offset
        out_dim = int(np.prod(e.shape, dtype=np.int64))
        bias = np.broadcast_to(np.asarray(bias, dtype=np.float64), (out_dim,)).copy()
        for w in weights:
            if not (np.all(np.isfinite(w.data if linops.is_sparse(w) else w))):
                raise ModelError(f"{self.path}: {what} has NaN or infinite weights")
        if not np.all(np.isfinite(bias)):
            raise ModelError(f"{self.path}: {what} has NaN or infinite weights")
        node = Linear(name=name, inputs=srcs, in_shape=self.shapes[srcs[0]], out_shape=tuple(e.shape),
                      ops=e.ops, onnx_tensor=e.tensor, weights=tuple(weights), bias=bias, source_params=e.params)
        self._add(node)
        return _Expr(e.shape, ((name, None),), e.tensor)

    def _add(self, node: Node) -> None:
        self.nodes.append(node)
        self.dims[node.name] = node.out_dim
        self.shapes[node.name] = tuple(node.out_shape)
        self.tensors[node.name] = node.onnx_tensor

    def poisoned(self, node, reason: str) -> _Expr:
        """The output of an op that cannot be represented (or depends on one): the cut it would
        have started is unavailable."""
        fam = OPS.get(node.op_type, (None,))[0]
        kind = None
        if fam == "piece":
            kind = "pool" if node.op_type == "MaxPool" else "relu"
        elif node.op_type in ("Conv", "Gemm", "MatMul"):
            kind = "linear"
        elif node.op_type in ("AveragePool", "GlobalAveragePool"):
            kind = "pool"
        elif node.op_type == "Concat":
            kind = "concat"
        if kind is not None:
            self.unavailable.append(Unavailable(self._name(kind), reason))
        return _Expr(None, poison=reason)

    def linear(self, node, desc, x: _Expr, pos: int, conv, consts, opset) -> _Expr:
        step = conv(node, x.shape, consts, pos, opset)
        out = node.output[0]
        if step.primary is not None and x.kind is not None:  # each primary op starts its own node
            x = self.materialise(x)
        terms = x.terms if step.map is None else tuple(x.mapped(step.map, self.dims))
        kind = step.primary if step.primary is not None else x.kind
        return _Expr(tuple(step.out_shape), terms, out, x.ops + (desc,), x.params + step.params, kind)

    def piece(self, node, desc, x: _Expr, conv, consts, opset) -> _Expr:
        step = conv(node, x.shape, consts, 0, opset)
        src = self.materialise(x)
        (name_in, _), = src.terms
        kind = "pool" if step.piece is MaxPool else "relu"
        name = self._name(kind)
        p = step.piece(name=name, inputs=(name_in,), in_shape=tuple(x.shape), out_shape=tuple(step.out_shape),
                       ops=(desc,), onnx_tensor=node.output[0], **step.piece_args)
        self._add(p)
        return _Expr(tuple(step.out_shape), ((name, None),), node.output[0])

    def combine(self, node, desc, xs: list[tuple[int, _Expr]], consts) -> _Expr:
        op = node.op_type
        out = node.output[0]
        # each operand keeps its own cut: a pending primary op is materialised first
        xs = [(k, self.materialise(e) if e.kind is not None else e) for k, e in xs]
        if op in _COMBINING:
            if len(xs) != 2 or len(node.input) != 2:
                raise _Problem("does not have two operands")
            (_, a), (_, b) = sorted(xs, key=lambda t: t[0])
            shape = _broadcast_shape(a.shape, b.shape)
            terms = list(self._broadcast(a, shape, 1.0))
            terms += list(self._broadcast(b, shape, _COMBINING[op]))
            return _Expr(tuple(shape), self._merge(terms), out, a.ops + b.ops + (desc,), a.params + b.params, "add")
        # Concat of activations (and constants)
        axis = int(_attrs(node).get("axis", 0))
        parts = []
        for k, name in enumerate(node.input):
            e = next((e for kk, e in xs if kk == k), None)
            if e is None:
                c = _const(node, consts, k, f"input {k}")
                parts.append((None, np.asarray(c, dtype=np.float64)))
            else:
                parts.append((e, None))
        shapes = [tuple(e.shape) if e is not None else c.shape for e, c in parts]
        r = len(shapes[0])
        axis = axis + r if axis < 0 else axis
        if not 0 <= axis < r or any(len(s) != r or s[:axis] + s[axis + 1:] != shapes[0][:axis] + shapes[0][axis + 1:]
                                    for s in shapes):
            raise _Problem(f"cannot concatenate shapes {shapes} along axis {axis}")
        out_shape = list(shapes[0])
        out_shape[axis] = sum(s[axis] for s in shapes)
        tag = np.concatenate([np.full(s, k, dtype=np.int64) for k, s in enumerate(shapes)], axis=axis)
        pos = np.concatenate([np.arange(int(np.prod(s, dtype=np.int64))).reshape(s) for s in shapes], axis=axis)
        tag, pos = tag.ravel(), pos.ravel()
        terms, offset = [], np.zeros(tag.size)
        for k, (e, c) in enumerate(parts):
            sel = tag == k
            if e is None:
                offset[sel] = c.ravel()[pos[sel]]
                continue
            src = np.where(sel, pos, -1)
            g = Map.monomial(int(np.prod(e.shape, dtype=np.int64)), src, 1.0, 0.0)
            for s, t in e.terms:
                terms.append((s, g if t is None else t.then(g)))
        if not terms:  # pragma: no cover - a Concat of constants is folded before
            raise _Problem("has no activation input")
        s0, t0 = terms[0]
        terms[0] = (s0, Map(t0.in_dim, t0.offset + offset, W=t0.W, src=t0.src, scale=t0.scale))
        ops = sum((e.ops for e, _ in parts if e is not None), ())
        params = sum(e.params for e, _ in parts if e is not None)
        return _Expr(tuple(out_shape), self._merge(terms), out, ops + (desc,), params, "concat")

    def _broadcast(self, e: _Expr, shape, factor: float):
        d = int(np.prod(e.shape, dtype=np.int64))
        src = np.broadcast_to(np.arange(d).reshape(e.shape), shape)
        g = _identity_gather(e.shape, src, factor, 0.0)
        if g.is_identity:
            return e.terms
        return tuple(e.mapped(g, self.dims))

    def _merge(self, terms) -> tuple:
        """One term per source (x + x is 2x), every map explicit."""
        merged: dict[str, Map] = {}
        for src, m in terms:
            m = m if m is not None else Map.identity(self.dims[src])
            merged[src] = m if src not in merged else merged[src].plus(m)
        return tuple(merged.items())


def _consumers(g: onnx.GraphProto) -> dict[str, int]:
    count: dict[str, int] = {}
    for node in g.node:
        if node.op_type == "Shape":
            continue
        for x in node.input:
            if x:
                count[x] = count.get(x, 0) + 1
    for o in g.output:
        count[o.name] = count.get(o.name, 0) + 1
    return count


def _build_graph(model: onnx.ModelProto, path, input_name: str, input_shape: tuple[int, ...]):
    g = model.graph
    consts: dict[str, np.ndarray] = {}
    for t in g.initializer:
        try:
            consts[t.name] = numpy_helper.to_array(t)
        except Exception as err:  # a truncated file can leave tensors without their data
            raise ModelError(f"{path}: initializer {t.name!r} cannot be read (truncated file?): {err}") from None
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    b = _GraphBuilder(path, input_name, input_shape, _consumers(g))
    exprs: dict[str, _Expr] = {input_name: _Expr(tuple(input_shape), ((INPUT_CUT, None),), input_name)}
    shapes = {input_name: tuple(input_shape)}  # static shapes of activations (for Shape nodes)
    for i, node in enumerate(g.node):
        desc = _describe(node, i)
        for x in node.input:
            if x and x not in consts and x not in exprs:
                raise ModelError(f"{path}: {desc} uses tensor {x!r} before it is produced (graph not in order)")
        act = [(k, x) for k, x in enumerate(node.input) if x in exprs]
        if not act or node.op_type == "Shape":
            if node.op_type == "Shape" and act and exprs[act[0][1]].poison:
                out = _Expr(None, poison=exprs[act[0][1]].poison)
                exprs.update({o: out for o in node.output if o})
                continue
            try:
                consts.update(_fold(node, consts, model.opset_import, shapes))
            except _Problem as p:
                raise ModelError(f"{path}: {desc} {p}") from None
            for o in node.output:
                if o in consts:
                    linops.require_values(int(np.size(consts[o])), f"{desc}'s constant output")
            continue
        bad = next((exprs[x].poison for _, x in act if exprs[x].poison), None)
        if bad is not None:
            out = b.poisoned(node, bad)
        else:
            try:
                out = _convert(b, node, desc, [(k, exprs[x]) for k, x in act], consts, opset)
            except _Malformed as p:
                raise ModelError(f"{path}: {desc} {p}") from None
            except _Problem as p:
                for _, x in act:  # the cuts before the op stay available
                    exprs[x] = b.materialise(exprs[x])
                b.unsupported.append(f"{desc}: {p}")
                out = b.poisoned(node, f"it depends on {desc}: {p}")
        if out.shape is not None:
            linops.require_values(math.prod(out.shape), f"{desc}'s output of shape {list(out.shape)}")
        for o in node.output[:1]:
            if out.poison is None and b.consumers.get(o, 0) > 1:
                out = b.materialise(out)  # several readers share one node
            exprs[o] = out
            if out.shape is not None:
                shapes[o] = out.shape
    final = exprs.get(g.output[0].name)
    if final is None:
        raise ModelError(f"{path}: the graph output {g.output[0].name!r} is not computed from the input")
    if final.poison is None:
        b.materialise(final)
    return b.nodes, b.unavailable, b.unsupported


def _convert(b: _GraphBuilder, node, desc, act, consts, opset) -> _Expr:
    op = node.op_type
    if op not in OPS:
        raise _Problem(f"{op} is not a supported operation")
    fam, conv = OPS[op]
    if fam == "combine" or (op in _COMBINING and len(act) > 1):
        return b.combine(node, desc, act, consts)
    if len(act) > 1:
        verb = {"Mul": "multiplies", "Div": "divides", "MatMul": "multiplies", "Gemm": "multiplies"}.get(op, "combines")
        raise _Problem(f"{verb} two activations (not linear)")
    (pos, x), = act
    if fam == "piece":
        if pos != 0:
            raise _Problem("reads an activation in a parameter position")
        return b.piece(node, desc, x, conv, consts, opset)
    return b.linear(node, desc, x, pos, conv, consts, opset)
#: A constant Loop is folded only with a trip count up to this (exporters unroll real loops)
MAX_FOLD_ITERATIONS = 10_000


def _fold_size(node, consts) -> int | None:
    """The number of values a constant node would produce, for the operations whose output
    can be far larger than their inputs (None: bounded by the inputs). A Loop's trip count is
    checked here too: folding runs it."""
    op = node.op_type

    def c(i):
        return np.asarray(consts[node.input[i]]) if i < len(node.input) and node.input[i] else None

    def ints(v) -> list[int]:
        v = np.asarray(v).ravel()
        if v.dtype.kind == "f" and not np.all(np.isfinite(v)):
            raise _Problem("has a non-finite size")
        return [int(x) for x in v]

    if op == "Loop":
        trip = c(0)
        if trip is None or trip.size != 1:
            raise _Problem(f"has no constant trip count: a Loop is folded only with at most "
                           f"{MAX_FOLD_ITERATIONS:,} iterations")
        n = ints(trip)[0]
        if n > MAX_FOLD_ITERATIONS:
            raise _Problem(f"has trip count {n:,}: a Loop is folded only with at most {MAX_FOLD_ITERATIONS:,} "
                           f"iterations")
        return None
    if op == "ConstantOfShape":
        return math.prod(ints(c(0)))
    if op == "Expand":
        x, shape = c(0), ints(c(1))
        if any(d < 0 for d in shape):
            raise _Problem(f"has a negative size in {shape}")
        r = max(x.ndim, len(shape))
        a = [1] * (r - x.ndim) + list(x.shape)
        b = [1] * (r - len(shape)) + shape
        return math.prod(max(u, v) for u, v in zip(a, b))
    if op == "Tile":
        return c(0).size * math.prod(max(k, 0) for k in ints(c(1)))
    if op == "Range":
        start, limit, delta = (float(np.asarray(c(i)).ravel()[0]) for i in range(3))
        if not all(map(math.isfinite, (start, limit, delta))) or delta == 0:
            raise _Problem("has a non-finite or zero step")
        return max(math.ceil((limit - start) / delta), 0)
    if op == "OneHot":
        return c(0).size * max(ints(c(1))[0], 0)
    if op == "Pad":
        x = c(0)
        a = _attrs(node)
        pads = [int(v) for v in a["pads"]] if "pads" in a else ints(c(1))
        r = x.ndim
        if len(pads) == 2 * r:
            return math.prod(max(x.shape[i] + pads[i] + pads[r + i], 0) for i in range(r))
    return None


def _fold(node, consts, opset_imports, shapes) -> dict[str, np.ndarray]:
    """Evaluate a node whose inputs are all constants (sizes and trip counts checked first)."""
    if node.op_type == "Constant":
        a = _attrs(node)
        for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
            if key in a:
                v = a[key]
                return {node.output[0]: numpy_helper.to_array(v) if key == "value" else np.asarray(v)}
        if "sparse_value" in a:
            return {node.output[0]: numpy_helper.to_array(_dense(a["sparse_value"], "Constant"))}
        raise _Problem("Constant without a supported value attribute")
    try:
        size = _fold_size(node, consts)
    except _Problem:
        raise
    except Exception as err:  # malformed size inputs: the evaluator would fail on them too
        raise _Problem(f"cannot be evaluated as a constant: {type(err).__name__}: {err}") from None
    if size is not None:
        linops.require_values(size, f"{node.op_type} {node.name!r} (a constant)")
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


def _stat(p: Path, what: str):
    """``p``'s status (None when it does not exist); a path the system cannot even look up (a
    name too long, a loop of links) is an error naming the problem."""
    try:
        return p.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as err:
        shown = str(p) if len(str(p)) <= 200 else str(p)[:200] + "..."
        raise ModelError(f"cannot open {what} {shown}: {err.strerror or err}") from None


#: ONNX keeps a model in one protobuf message of at most 2 GiB; a model with external data is
#: read into one (fxverify and onnxruntime then see the same bytes, wherever the command runs).
MAX_MODEL_BYTES = (2 << 30) - 1


def _tensors(graph: onnx.GraphProto):
    """Every TensorProto of a graph and its sub-graphs: initializers, sparse initializers'
    values and indices, node attributes (Constant values)."""
    for t in graph.initializer:
        yield t
    for st in graph.sparse_initializer:
        yield st.values
        yield st.indices
    for node in graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            if a.HasField("sparse_tensor"):
                yield a.sparse_tensor.values
                yield a.sparse_tensor.indices
            for st in a.sparse_tensors:
                yield st.values
                yield st.indices
            if a.HasField("g"):
                yield from _tensors(a.g)
            for g in a.graphs:
                yield from _tensors(g)


def _external_file(model_path: Path, location: str, tensor: str) -> Path:
    """The file an external tensor names, resolved against the model's directory. Refused: an
    absolute location, one that leaves the directory (``..``), reaches a file through a
    symbolic link, or names anything but a regular file (a device, a FIFO)."""
    where = f"{model_path}: tensor {tensor!r} keeps its data in {location!r}"
    if not location or "\x00" in location:
        raise ModelError(f"{where}, which is not a file name")
    rel = Path(location)
    if rel.is_absolute() or location.startswith(("/", "\\")) or ".." in rel.parts or "\\" in location:
        raise ModelError(f"{where}: external data must be a file in the model's directory (no absolute path, "
                         f"no '..')")
    base = model_path.absolute().parent.resolve()  # as onnx and onnxruntime: beside the path given
    target = base / rel
    probe = base
    for part in rel.parts:  # no symbolic link on the way, not even inside the directory
        probe = probe / part
        try:
            if probe.is_symlink():
                raise ModelError(f"{where}, which is a symbolic link; external data must be a regular file in the "
                                 f"model's directory")
        except OSError as err:
            raise ModelError(f"{where}, which cannot be looked up: {err.strerror or err}") from None
    st = _stat(target, "external data file")
    if st is None:
        raise ModelError(f"{where}, but there is no such file beside the model ({target})")
    import stat as stat_

    if not stat_.S_ISREG(st.st_mode):
        raise ModelError(f"{where}, which is not a regular file (a directory, device or FIFO)")
    if os.path.commonpath([str(target.resolve()), str(base)]) != str(base):  # pragma: no cover - checked above
        raise ModelError(f"{where}, which lies outside the model's directory")
    return target


def _inline_external_data(model: onnx.ModelProto, model_path: Path) -> bool:
    """Read every external tensor's bytes (from the model's directory, whatever the working
    directory) into the model; True when there were any. Offsets and lengths are checked
    against the file before anything is read."""
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    external = [t for t in _tensors(model.graph) if uses_external_data(t)]
    if not external:
        return False
    total = model.ByteSize()
    files: dict[str, tuple[Path, int]] = {}
    plan = []
    for t in external:
        try:
            info = ExternalDataInfo(t)
            offset = int(info.offset) if info.offset is not None else 0
            length = int(info.length) if info.length is not None else None
        except (ValueError, TypeError) as err:
            raise ModelError(f"{model_path}: tensor {t.name!r} has malformed external data fields: {err}") from None
        location = info.location
        if location not in files:
            target = _external_file(model_path, location, t.name)
            files[location] = (target, target.stat().st_size)
        target, size = files[location]
        if offset < 0 or (length is not None and length < 0):
            raise ModelError(f"{model_path}: tensor {t.name!r} has a negative external data offset or length")
        if length is None:
            length = max(size - offset, 0)
        if offset + length > size:
            raise ModelError(f"{model_path}: tensor {t.name!r} needs bytes {offset:,} to {offset + length:,} of "
                             f"{location!r}, which has {size:,} bytes (truncated external data?)")
        total += length
        if total > MAX_MODEL_BYTES:
            raise ModelError(f"{model_path}: the model with its external data is larger than 2 GiB, more than "
                             f"fxverify reads into memory as one ONNX model")
        plan.append((t, target, offset, length))
    for t, target, offset, length in plan:
        try:
            with open(target, "rb") as f:
                f.seek(offset)
                data = f.read(length)
        except OSError as err:
            raise ModelError(f"{model_path}: cannot read external data {target}: {err.strerror or err}") from None
        if len(data) != length:
            raise ModelError(f"{model_path}: external data {target} ended early (truncated?)")
        t.raw_data = data
        del t.external_data[:]
        t.data_location = onnx.TensorProto.DEFAULT
    return True


def _dense(st: onnx.SparseTensorProto, where: str) -> onnx.TensorProto:
    """A sparse tensor as the dense tensor it stands for (size checked before allocating)."""
    dims = [int(d) for d in st.dims]
    if any(d < 0 for d in dims):
        raise ModelError(f"{where}: sparse tensor {st.values.name!r} has negative dimensions {dims}")
    size = math.prod(dims)
    linops.require_values(size, f"{where}: sparse tensor {st.values.name!r} of shape {dims}")
    try:
        values = numpy_helper.to_array(st.values).ravel()
        indices = numpy_helper.to_array(st.indices).astype(np.int64)
    except Exception as err:  # malformed tensors raise many types
        raise ModelError(f"{where}: sparse tensor {st.values.name!r} cannot be read: {err}") from None
    if indices.ndim == 2 and indices.shape == (values.size, len(dims)):
        if indices.size and (np.any(indices < 0) or np.any(indices >= np.asarray(dims))):
            raise ModelError(f"{where}: sparse tensor {st.values.name!r} has an index outside its shape {dims}")
        flat = np.ravel_multi_index(indices.T, dims) if values.size else np.zeros(0, np.int64)
    elif indices.ndim == 1 and indices.size == values.size:
        flat = indices
    else:
        raise ModelError(f"{where}: sparse tensor {st.values.name!r} has indices of shape {indices.shape} for "
                         f"{values.size} values of a tensor of shape {dims}")
    if flat.size and (flat.min() < 0 or flat.max() >= size):
        raise ModelError(f"{where}: sparse tensor {st.values.name!r} has an index outside its shape {dims}")
    dense = np.zeros(size, dtype=values.dtype)
    dense[flat] = values
    out = numpy_helper.from_array(dense.reshape(dims), st.values.name)
    return out


def _densify(model: onnx.ModelProto, path) -> onnx.ModelProto:
    """The model with its sparse initializers as ordinary (dense) initializers, which is how
    onnxruntime runs them too; the model itself when it has none."""
    if not len(model.graph.sparse_initializer):
        return model
    dense = onnx.ModelProto()
    dense.CopyFrom(model)
    sparse = list(dense.graph.sparse_initializer)
    del dense.graph.sparse_initializer[:]
    for st in sparse:
        dense.graph.initializer.append(_dense(st, str(path)))
    return dense


def _read(path: str | os.PathLike) -> tuple[onnx.ModelProto, bytes]:
    """The model (external data read in, sparse initializers made dense) and the bytes
    onnxruntime runs: the file itself, or the model with its external data in one piece."""
    p = Path(path)
    st = _stat(p, "model file")
    if st is None:
        raise ModelError(f"model file not found: {p}")
    import stat as stat_

    if stat_.S_ISDIR(st.st_mode):
        raise ModelError(f"model path is a directory, not an ONNX file: {p}")
    if not stat_.S_ISREG(st.st_mode):  # a FIFO or device: reading it could block forever
        raise ModelError(f"model path is not a regular file (a FIFO, socket or device?): {p}")
    if st.st_size > MAX_MODEL_BYTES:
        raise ModelError(f"{p} is larger than 2 GiB, more than one ONNX model can be")
    try:
        raw = p.read_bytes()
    except OSError as err:
        raise ModelError(f"cannot read model file {p}: {err.strerror or err}") from None
    if not raw:
        raise ModelError(f"{p} is empty, not an ONNX model")
    try:
        model = onnx.load_from_string(raw)
    except Exception as err:  # protobuf's DecodeError and friends
        raise ModelError(f"{p} is not a valid ONNX file (it may be truncated or not ONNX at all): {err}") from None
    if not model.graph.node:
        raise ModelError(f"{p} is not a valid ONNX model: its graph has no nodes (truncated or not ONNX?)")
    if _inline_external_data(model, p):
        raw = model.SerializeToString()
    try:
        onnx.checker.check_model(model)
    except Exception as err:  # onnx.checker.ValidationError and others
        # The checker is stricter than runtimes (e.g. it wants shapes on graph outputs). A model
        # is malformed when onnxruntime cannot load it either.
        if not _onnxruntime_accepts(raw):
            raise ModelError(f"{p} is not a valid ONNX model: {str(err).strip().splitlines()[0]}") from None
    return _densify(model, p), raw


def _onnxruntime_accepts(raw: bytes) -> bool:
    from .reference import quiet_onnxruntime

    ort = quiet_onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.intra_op_num_threads = 1
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
        elif dim.HasField("dim_value") and (dim.dim_value < 0 or k > 0):  # 0 or negative: no data
            raise ModelError(f"{path}: input {inp.name!r} has dimension {k} of size {dim.dim_value}; fxverify needs "
                             f"a non-empty input")
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


def _input_dtype(model: onnx.ModelProto, input_name: str) -> str:
    inp = next(i for i in model.graph.input if i.name == input_name)
    return {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.DOUBLE: "float64",
            onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.BFLOAT16: "bfloat16"}[
        inp.type.tensor_type.elem_type]


def tolerance_for(dtype: str) -> float:
    """How closely onnxruntime, computing in the model's input type, must agree with the IR."""
    return FLOAT16_TOLERANCE if dtype in ("float16", "bfloat16") else AGREEMENT_TOLERANCE


def check_agreement(net: Network, n_random: int = 8) -> Agreement:
    """Compare the float64 IR with onnxruntime at every cut on random inputs."""
    rng = np.random.default_rng(AGREEMENT_SEED)
    k = max(1, n_random // 4)
    d = net.input_dim
    X = np.concatenate([rng.uniform(0, 1, (n_random - 2 * k, d)), rng.standard_normal((k, d)),
                        rng.uniform(0, 255, (k, d))])
    if net.source.input_dtype in ("float16", "bfloat16"):
        # the model sees its inputs rounded to its own type: compare on the same inputs
        X = X.astype(np.float16).astype(np.float64)
    cuts = net.cuts
    ref = OnnxReference(net.source, [net.onnx_tensor(c) for c in cuts]).run(X)
    mine = net.evaluate(X, cuts)
    diffs, scales = {}, {}
    for c in cuts:
        r, feats = ref[net.onnx_tensor(c)], mine[c]
        if r.shape != feats.shape:
            raise AgreementError(f"{net.source.path}: cut {c} has {feats.shape[1]} features in the IR but "
                                 f"{r.shape[1]} in onnxruntime")
        diffs[c] = float(np.max(np.abs(r - feats))) if r.size else 0.0
        scales[c] = float(np.max(np.abs(r))) if r.size else 0.0
    return Agreement(max_abs_diff=diffs, scale=scales, tolerance=tolerance_for(net.source.input_dtype),
                     n_inputs=len(X))


def load_model(path: str | os.PathLike) -> Network:
    """Import an ONNX classifier as a :class:`Network` and check it against onnxruntime.

    Raises :class:`~fxverify.errors.ModelError` (one line) for unreadable files, several
    inputs, non-float inputs, unresolvable dynamic shapes, maps too large for memory, or
    disagreement with onnxruntime above the tolerance. Operations fxverify cannot represent do
    not stop the load: the cuts that depend on them are listed in ``Network.unavailable``.
    """
    if isinstance(path, Network):
        raise ArgumentError("load_model takes the path of an ONNX file; this is already a loaded Network")
    if not isinstance(path, (str, os.PathLike)) or isinstance(path, bytes):
        raise ArgumentError(f"load_model takes the path of an ONNX file (str or os.PathLike), not "
                            f"{type(path).__name__}")
    if isinstance(path, str) and not path.strip():
        raise ModelError("model path is empty")
    model, raw = _read(path)
    input_name, onnx_shape, full_shape = _input_of(model, path)
    try:
        linops.require_values(math.prod(full_shape), f"input {input_name!r} of shape {list(full_shape)}")
        nodes, unavailable, unsupported = _build_graph(model, path, input_name, full_shape)
    except linops.TooLarge as err:
        raise ModelError(f"{path}: {err}") from None
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    source = ModelSource(path=str(path), sha256=hashlib.sha256(raw).hexdigest(), input_name=input_name,
                         output_name=model.graph.output[0].name, onnx_input_shape=onnx_shape, onnx_bytes=raw,
                         producer=f"{model.producer_name} {model.producer_version}".strip(), opset=opset,
                         input_dtype=_input_dtype(model, input_name))
    net = Network(nodes=tuple(nodes), input_tensor_shape=full_shape, source=source, unavailable=tuple(unavailable),
                  unsupported=tuple(unsupported))
    agreement = check_agreement(net)
    bad = [c for c in net.cuts if not agreement.ok(c)]
    if bad:
        c = bad[0]
        raise AgreementError(
            f"{path}: the imported network disagrees with onnxruntime at cut {c} (max abs difference "
            f"{agreement.max_abs_diff[c]:.3g}, tolerance {agreement.tolerance:g} x max(1, {agreement.scale[c]:.3g})); "
            f"cuts that disagree: {', '.join(bad)}")
    return replace(net, agreement=agreement)
