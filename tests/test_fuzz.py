"""Fuzz tests (hypothesis): spec JSON, npz and IDX files, and ONNX graphs.

Whatever the input, the loaders either return a valid object or raise fxverify's own error
(one line); any other exception, a hang or a huge allocation is a bug. Each test is bounded
by its number of examples (deterministic: ``derandomize``), all together well under a minute
on one core; ``FXVERIFY_FUZZ_SCALE=10`` runs ten times as many.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import struct

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import fxverify  # noqa: E402
from fxverify.data import load_idx_dir, load_npz, read_idx  # noqa: E402
from fxverify.errors import FxverifyError  # noqa: E402
from fxverify.spec import load_spec  # noqa: E402

SCALE = int(os.environ.get("FXVERIFY_FUZZ_SCALE", "1"))


def fuzz(examples: int):
    return settings(max_examples=examples * SCALE, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


def one_line(err: FxverifyError) -> None:
    assert "\n" not in str(err) and str(err).strip(), repr(str(err))


# ---------------------------------------------------------------- spec JSON ---------------
GOOD = {"version": 1, "data": {"embedded": "mnist"}, "classes": [3, 7], "n_per_class": 2, "eps": [0.0, 1.0],
        "cuts": ["input", "relu1"]}
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                      st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12),
                      st.sampled_from([0, 1, -1, 1e20, 1e300, -0.0, 2**63, "all", "first", "random", "l2", "npz",
                                       "\x1b[2J", "../../etc/passwd", "\u202e"]))
json_value = st.recursive(json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                             st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                          max_leaves=12)
KEYS = list(GOOD) + ["split", "selection", "scaling", "layout", "normalize", "norm", "domain", "solver",
                     "time_budget", "description", "seed", "method", "mean", "std", "npz", "idx_dir"]


@st.composite
def spec_texts(draw) -> str:
    doc = json.loads(json.dumps(GOOD))
    for _ in range(draw(st.integers(0, 4))):
        key = draw(st.sampled_from(KEYS))
        action = draw(st.sampled_from(["set", "drop", "nest"]))
        if action == "drop":
            doc.pop(key, None)
        elif action == "nest":
            doc[key] = {draw(st.sampled_from(KEYS)): draw(json_value)}
        else:
            doc[key] = draw(json_value)
    text = json.dumps(doc, allow_nan=True)
    tweak = draw(st.sampled_from(["none", "dup", "truncate", "bytes"]))
    if tweak == "dup" and len(text) > 2:
        text = text[:-1] + f', "{draw(st.sampled_from(KEYS))}": {json.dumps(draw(json_value))}}}'
    elif tweak == "truncate":
        text = text[:draw(st.integers(0, len(text)))]
    elif tweak == "bytes":
        pos = draw(st.integers(0, len(text)))
        text = text[:pos] + draw(st.text(max_size=6)) + text[pos:]
    return text


@fuzz(300)
@given(text=spec_texts())
def test_fuzz_spec_json(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("spec") / "s.json"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        spec = load_spec(path)
    except FxverifyError as err:
        one_line(err)
        return
    # a spec that loads is valid: its resolved form loads again to the same spec
    again = path.with_name("again.json")
    again.write_text(json.dumps(spec.to_dict()))
    assert load_spec(again).to_dict() == spec.to_dict()
    assert all(e >= 0 and str(e) != "-0.0" for e in spec.eps)


# ---------------------------------------------------------------- npz -----------------------
DTYPES = ["uint8", "int8", "int64", "uint64", "float16", "float32", "float64", "bool", "complex64", "U3", "S2"]
SPECIAL = [0, 1, -1, 255, 3.7, 1e20, -1e20, 2**63, np.nan, np.inf, -np.inf]


@st.composite
def arrays(draw, max_dims: int = 5):
    shape = tuple(draw(st.lists(st.integers(0, 5), min_size=0, max_size=max_dims)))
    dtype = draw(st.sampled_from(DTYPES))
    n = int(np.prod(shape, dtype=np.int64))
    values = draw(st.lists(st.one_of(st.sampled_from(SPECIAL), st.integers(0, 9)), min_size=n, max_size=n))
    with np.errstate(all="ignore"):
        try:
            return np.array(values, dtype=np.float64).astype(dtype).reshape(shape)
        except (ValueError, OverflowError, TypeError):
            return np.zeros(shape, dtype=dtype)


@fuzz(200)
@given(X=arrays(), y=arrays(max_dims=2), index=st.one_of(st.none(), arrays(max_dims=2)),
       layout=st.sampled_from([None, "NCHW", "NHWC", "bogus"]), corrupt=st.integers(-1, 400))
def test_fuzz_npz(tmp_path_factory, X, y, index, layout, corrupt):
    path = tmp_path_factory.mktemp("npz") / "d.npz"
    arrays_ = {"X": X, "y": y} if index is None else {"X": X, "y": y, "index": index}
    buf = io.BytesIO()
    np.savez(buf, **arrays_)
    data = bytearray(buf.getvalue())
    if 0 <= corrupt < len(data):  # one byte flipped (in the zip headers or the .npy headers)
        data[corrupt] ^= 0xFF
    path.write_bytes(bytes(data))
    try:
        ds = load_npz(path, layout)
    except FxverifyError as err:
        one_line(err)
        return
    assert ds.X.ndim == 2 and len(ds.X) == len(ds.y) == len(ds.index) > 0
    assert ds.y.dtype == np.int64 and ds.X.dtype.kind in "uif"
    if ds.X.dtype.kind == "f":
        assert np.all(np.isfinite(ds.X))


# ---------------------------------------------------------------- IDX -----------------------
@st.composite
def idx_files(draw) -> bytes:
    code = draw(st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x07, 0xFF]))
    ndim = draw(st.integers(0, 5))
    dims = draw(st.lists(st.one_of(st.integers(0, 6), st.sampled_from([2**31, 2**32 - 1, 10**6])), min_size=ndim,
                         max_size=ndim))
    magic = draw(st.sampled_from([b"\x00\x00", b"\x00\x01", b"\x12\x34"]))
    head = magic + bytes([code, ndim]) + struct.pack(f">{ndim}I", *dims)
    payload = draw(st.binary(max_size=300))
    return head[:draw(st.integers(0, len(head)))] if draw(st.booleans()) and draw(st.booleans()) else head + payload


@fuzz(300)
@given(raw=idx_files(), gz=st.booleans())
def test_fuzz_idx_header(tmp_path_factory, raw, gz):
    path = tmp_path_factory.mktemp("idx") / ("x-idx3-ubyte.gz" if gz else "x-idx3-ubyte")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    try:
        arr = read_idx(path)
    except FxverifyError as err:
        one_line(err)
        return
    assert arr.nbytes <= len(raw)


@fuzz(60)
@given(images=idx_files(), labels=st.one_of(idx_files(), st.sampled_from([
    bytes([0, 0, 0x0E, 1]) + struct.pack(">I", 3) + np.array([3.7, 7.0, 1e20], ">f8").tobytes(),
    bytes([0, 0, 0x08, 1]) + struct.pack(">I", 2) + bytes([3, 7])])))
def test_fuzz_idx_directory(tmp_path_factory, images, labels):
    d = tmp_path_factory.mktemp("idxdir")
    (d / "train-images-idx3-ubyte").write_bytes(images)
    (d / "train-labels-idx1-ubyte").write_bytes(labels)
    try:
        ds = load_idx_dir(d)
    except FxverifyError as err:
        one_line(err)
        return
    assert len(ds.X) == len(ds.y) > 0 and ds.y.dtype == np.int64


# ---------------------------------------------------------------- ONNX graphs ---------------
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

OPS = ["MatMul", "Gemm", "Add", "Sub", "Mul", "Div", "Relu", "LeakyRelu", "MaxPool", "AveragePool", "Conv",
       "Flatten", "Reshape", "Transpose", "Pad", "Concat", "Sigmoid", "BatchNormalization", "Unsqueeze", "Squeeze",
       "Identity", "Dropout", "GlobalAveragePool", "Tile", "ConstantOfShape", "Loop"]


@st.composite
def graphs(draw) -> bytes:
    """A chain of random operations with random attributes and constants on a 4-D or 2-D input."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    four_d = draw(st.booleans())
    shape = [1, draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(1, 6))] if four_d else \
        [1, draw(st.integers(1, 12))]
    nodes, inits, cur = [], [], "x"

    def const(arr) -> str:
        name = f"c{len(inits)}"
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def rand(*s):
        return (rng.standard_normal(s) * draw(st.sampled_from([0.1, 1.0, 1e3]))).astype(np.float32)

    def current() -> list[int]:
        """The current tensor's shape as onnx infers it (the input's when it cannot): most
        operations are drawn to fit it, so that the graph is valid more often than not."""
        g = helper.make_graph(nodes, "part", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(cur, TensorProto.FLOAT, None)], inits)
        try:
            out = onnx.shape_inference.infer_shapes(helper.make_model(
                g, opset_imports=[helper.make_opsetid("", 13)])).graph.output[0]
            dims = [d.dim_value for d in out.type.tensor_type.shape.dim]
            return dims if dims and all(d > 0 for d in dims) else list(shape)
        except Exception:  # invalid so far
            return list(shape)

    for k in range(draw(st.integers(1, 5))):
        op = draw(st.sampled_from(OPS))
        out = f"t{k}"
        small = st.integers(0, 4)
        now = current()
        fits = draw(st.integers(0, 9)) < 8  # mostly shapes that fit, sometimes not
        if fits and op in ("MatMul", "Gemm") and len(now) != 2:
            nodes.append(helper.make_node("Flatten", [cur], [f"f{k}"]))
            cur, now = f"f{k}", [1, int(np.prod(now))]
        if op in ("MatMul", "Gemm"):
            w = rand(now[-1] if fits else draw(st.integers(1, 12)), draw(st.integers(1, 6)))
            nodes.append(helper.make_node(op, [cur, const(w)], [out], **({"transB": draw(st.integers(0, 1))}
                                                                          if op == "Gemm" else {})))
        elif op in ("Add", "Sub", "Mul", "Div"):
            c = rand(*(now[draw(st.integers(0, len(now))):] if fits else draw(st.lists(st.integers(1, 6), max_size=4))))
            ins = [cur, const(c)] if draw(st.booleans()) else [const(c), cur]
            nodes.append(helper.make_node(op, ins, [out]))
        elif op in ("MaxPool", "AveragePool", "Conv"):
            r = len(now) - 2 if fits and len(now) > 2 else draw(st.integers(1, 3))
            kernel = draw(st.lists(st.integers(1, 4), min_size=r, max_size=r))
            attrs = {"kernel_shape": kernel, "strides": draw(st.lists(st.integers(1, 3), min_size=r, max_size=r)),
                     "pads": draw(st.lists(small, min_size=2 * r, max_size=2 * r))}
            if draw(st.booleans()):
                attrs = {"kernel_shape": kernel, "auto_pad": draw(st.sampled_from(["SAME_UPPER", "VALID", "BOGUS"]))}
            ins = [cur]
            if op == "Conv":
                cin = now[1] if fits and len(now) > 1 else draw(st.integers(1, 3))
                ins.append(const(rand(draw(st.integers(1, 3)), cin, *kernel)))
            nodes.append(helper.make_node(op, ins, [out], **attrs))
        elif op == "Reshape":
            target = draw(st.lists(st.integers(-1, 12), min_size=1, max_size=4))
            nodes.append(helper.make_node(op, [cur, const(np.array(target, np.int64))], [out]))
        elif op == "Transpose":
            perm = draw(st.permutations(list(range(draw(st.integers(1, 4))))))
            nodes.append(helper.make_node(op, [cur], [out], perm=list(perm)))
        elif op == "Pad":
            pads = draw(st.lists(st.one_of(small, st.sampled_from([10**9, -1])), min_size=2, max_size=8))
            nodes.append(helper.make_node(op, [cur, const(np.array(pads, np.int64))], [out]))
        elif op == "Concat":
            nodes.append(helper.make_node(op, [cur, cur], [out], axis=draw(st.integers(-2, 3))))
        elif op == "BatchNormalization":
            c = now[1] if fits and len(now) > 1 else draw(st.integers(1, 4))
            var = rand(c) if draw(st.booleans()) else np.abs(rand(c))
            nodes.append(helper.make_node(op, [cur, const(rand(c)), const(rand(c)), const(rand(c)), const(var)],
                                          [out]))
        elif op in ("Unsqueeze", "Squeeze"):
            axes = draw(st.lists(st.integers(-4, 4), min_size=1, max_size=2))
            nodes.append(helper.make_node(op, [cur, const(np.array(axes, np.int64))], [out]))
        elif op == "Tile":
            reps = draw(st.lists(st.one_of(st.integers(1, 3), st.just(10**9)), min_size=len(shape), max_size=len(shape)))
            nodes.append(helper.make_node(op, [cur, const(np.array(reps, np.int64))], [out]))
        elif op == "ConstantOfShape":
            dims = draw(st.lists(st.one_of(st.integers(1, 4), st.just(10**7)), min_size=1, max_size=3))
            c = f"k{k}"
            nodes.append(helper.make_node(op, [const(np.array(dims, np.int64))], [c]))
            nodes.append(helper.make_node("Add", [cur, c], [out]))
        elif op == "Loop":
            body = helper.make_graph(
                [helper.make_node("Identity", ["c_in"], ["c_out"]), helper.make_node("Identity", ["v_in"], ["v_out"])],
                "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                         helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
                         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None)],
                [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None)])
            trip = draw(st.sampled_from([2, 10**12]))
            c = f"k{k}"
            nodes.append(helper.make_node("Loop", [const(np.array(trip, np.int64)), const(np.array(True)),
                                                   const(np.zeros(shape[1:], np.float32))], [c], body=body))
            nodes.append(helper.make_node("Add", [cur, c], [out]))
        else:
            attrs = {"alpha": draw(st.sampled_from([0.01, 0.5, -1.0, 2.0]))} if op == "LeakyRelu" else {}
            nodes.append(helper.make_node(op, [cur], [out], **attrs))
        cur = out
    g = helper.make_graph(nodes, "fuzz", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                          [helper.make_tensor_value_info(cur, TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", draw(st.sampled_from([11, 13, 17])))])
    m.ir_version = 8
    try:  # the output's shape as onnx infers it (the checker wants one), when it can
        out = onnx.shape_inference.infer_shapes(m).graph.output[0]
        if out.type.tensor_type.HasField("shape"):
            m.graph.output[0].CopyFrom(out)
    except Exception:  # an invalid random graph: keep it as it is
        pass
    return m.SerializeToString()


def _load(tmp_path_factory, raw: bytes):
    path = tmp_path_factory.mktemp("onnx") / "m.onnx"
    path.write_bytes(raw)
    try:
        net = fxverify.load_model(path)
    except FxverifyError as err:
        one_line(err)
        return None
    assert net.cuts[0] == "input" and net.agreement is not None
    return net


@fuzz(40)
@given(raw=graphs())
def test_fuzz_onnx_graphs(tmp_path_factory, raw):
    _load(tmp_path_factory, raw)


TINY = os.path.join(os.path.dirname(__file__), "..", "models", "fcnn_tiny_mnist_3v7_benign.onnx")


@fuzz(40)
@given(edits=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=4),
       cut=st.one_of(st.none(), st.floats(0, 1)))
def test_fuzz_onnx_bytes(tmp_path_factory, edits, cut):
    """The tiny model with bytes overwritten and possibly truncated."""
    with open(TINY, "rb") as f:
        data = bytearray(f.read())
    for where, value in edits:
        data[int(where * (len(data) - 1))] = value
    if cut is not None:
        data = data[:int(cut * len(data))]
    _load(tmp_path_factory, bytes(data))
