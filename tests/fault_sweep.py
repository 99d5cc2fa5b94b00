#!/usr/bin/env python
"""Fault sweep: bad inputs and faults through the real ``fxverify`` command line.

Run as ``.venv/bin/python tests/fault_sweep.py [--quick] [--jobs N] [--only SUBSTRING] [-v]``.

Every case builds its own bad input (an ONNX file, a spec, a data file, a solver profile, a
command-line option, an output directory, a process fault) in a temporary directory, runs the
CLI in a subprocess (console script ``fxverify`` beside this Python, else ``python -m fxverify``),
and classifies the outcome:

* ``clean error``: exit code 2 (or the code the case documents, e.g. 143 for SIGTERM) and
  exactly one line on stderr, starting with ``error: `` (plain ``progress: `` lines, which a
  run without a terminal prints every few seconds, may come before it), no ``Traceback``
  anywhere; with the fragments the case names in that line;
* ``ok``: exit 0 and the specific correct result the case checks (a control run, an option that
  must be honoured, a cut that must not be reported, a damaged file that must be recomputed);
* ``traceback``: ``Traceback`` on stdout or stderr;
* ``silent result``: exit 0 where an error was expected, or exit 0 with a result that fails the
  case's check;
* ``outside access``: a file outside the run's directory that the case guards (a file an
  ``--out`` symlink points at, a secret beside the model) was created, changed or removed;
* ``hang``: no exit within the case's timeout (the whole process group is killed);
* ``other``: anything else (another exit code, several lines, an error line without the
  expected fragment, an error where a result was expected).

One line per case, then the totals; the exit code is 1 when any case is ``traceback``,
``silent result``, ``outside access``, ``hang`` or ``other`` (cases listed in
``KNOWN_FAILURES`` are reported as such and do not fail the sweep). ``--quick`` runs the 40
cases named in ``QUICK`` (about a minute on two cores); the full sweep runs 551 cases (about 26
minutes on two shared cores).

Besides the command line, the sweep drives the documented Python API (``api:`` cases: a short
script whose FxverifyError becomes one ``error:`` line and exit 2, anything else a traceback)
and the process's environment (closed or full standard streams, a broken pipe, an ASCII-only
encoding, ``prlimit`` memory and open-file limits, SIGTERM under a memory limit).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shlex
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "models" / "fcnn_tiny_mnist_3v7_benign.onnx"  # 784-10-10-2
SMALLER = ROOT / "models" / "fcnn_smaller_mnist_3v7_benign.onnx"
BIG = ROOT / "models" / "fcnn_mnist_3v7_benign.onnx"  # 784-300-200-2
SPEC = ROOT / "specs" / "mnist_3v7.json"

_SCRIPT = Path(sys.executable).parent / "fxverify"
CLI = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "fxverify"]

#: case name -> why it is a known failure (a bug in code this sweep's author may not change;
#: reported, not counted as a sweep failure). Keep empty when possible.
KNOWN_FAILURES: dict[str, str] = {}

#: The quick subset (CI, tests/test_fault_sweep.py): one or two cases of every class, about a
#: minute on two idle cores. Named here, in one place; the cases' own ``quick`` flags are reset to it.
QUICK = frozenset({
    "onnx: garbage bytes", "onnx: tiny model truncated at 16240 of 32480 bytes", "onnx: NaN weights",
    "onnx: Sigmoid cut requested via --cuts", "spec: control (valid base spec)", "spec: not JSON",
    "spec: wrong type for classes: '3,7'", "data: npz is garbage bytes", "data: values already in [0, 1] with divide_255",
    "idx: images truncated", "profile: unknown backend", "-o max_iterations=7 is honoured", "bound --jobs 0",
    "bound --eps a,b", "bound --n 2 --eps 0,0.25 --norm linf --classes 1,8 are honoured",
    "out: results.sqlite garbled (middle)", "out: store of another model in the same --out",
    "out: standard output is /dev/full (bound)", "out: store locked by a running fxverify",
    "SIGTERM of a running bound --jobs 2",
    # hostile and careless input (issues 23 and 24)
    "tty: inspect of a model with escapes in producer, node and input names",
    "extdata: inspect from another working directory agrees with onnxruntime",
    "extdata: location is '..' out of the model's directory",
    "sparse: a sparse_initializer loads and agrees with onnxruntime",
    "size: Loop with trip count 10^12 folded at load", "size: input of 10^8 values",
    "spec+: duplicate top-level key (eps twice)", "spec+: selection seed 1e20", "cli+: --time-budget 1e10",
    "path: a 5,000-character model path", "data+: IDX float labels 3.7 / 7.2 are refused, not truncated",
    "api: collide(method='bogus')", "api: collide with u as a list of strings",
    "api: lower_bounds with the grid as a string", "limit: prlimit --as 500 MB, bound --jobs 1",
    "limit: prlimit --nofile=16, bound --jobs 2", "env: stdout closed (>&-), inspect",
    "env: stderr on /dev/full keeps exit 2", "env: stdout a broken pipe (inspect | head)",
    "env: onnxruntime cannot run the model: no third-party log line before the error",
})

VERDICTS = ("clean error", "ok", "traceback", "silent result", "outside access", "hang", "other")
BAD = ("traceback", "silent result", "outside access", "hang", "other")


# ------------------------------------------------------------------------------------------
# Running and classifying
# ------------------------------------------------------------------------------------------
@dataclass
class Result:
    rc: int | None
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool = False
    note: str = ""  # what a custom runner observed (e.g. the store after a signal)


@dataclass
class Case:
    name: str
    args: list | None = None  # argv after `fxverify` (str / Path); None with a runner
    expect: str = "error"  # "error": one error line and code `code`; "ok": exit 0 and `check`
    contains: tuple[str, ...] = ()  # fragments the error line must hold (case-insensitive)
    check: Callable[[Result], str | None] | None = None  # ok / signal cases: None = correct, else why not
    setup: Callable[[], None] | None = None
    runner: Callable[[Case], Result] | None = None  # custom process-fault runner
    quick: bool = False
    timeout: float = 120.0
    code: int = 2  # the documented exit code of the error
    serial: bool = False  # run alone (timing-sensitive process faults)
    what: str = ""  # the expectation, shown with -v
    guard: tuple = ()  # files outside the run's directory that must stay as they are (or absent)


def fx(args, timeout: float = 120.0, cwd: Path | None = None) -> Result:
    """Run the CLI; on timeout kill its whole process group (workers included)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(CLI + [str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         cwd=cwd or WORK, start_new_session=True)
    return _finish(p, t0, timeout)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


def _error_lines(res: Result) -> tuple[list[str], list[str]]:
    """(error-ish lines, progress lines) of stderr."""
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    progress = [ln for ln in lines if ln.startswith("progress: ")]
    return [ln for ln in lines if not ln.startswith("progress: ")], progress


def classify(case: Case, res: Result) -> tuple[str, str]:
    if "Traceback" in res.stderr or "Traceback" in res.stdout:
        last = [ln for ln in res.stderr.strip().splitlines() if ln.strip()][-1:] or ["?"]
        return "traceback", last[0][:160]
    if res.timed_out:
        return "hang", f"no exit within {case.timeout:g} s"
    rest, progress = _error_lines(res)
    if case.expect == "code_only":  # stderr unreadable (closed, /dev/full): the exit code says it
        return ("clean error", f"exit {res.rc}") if res.rc == case.code else \
            ("silent result" if res.rc == 0 else "other", f"exit {res.rc} (expected {case.code})")
    if case.expect == "ok_or_error":  # either a checked result or one clean error line
        if res.rc == 0:
            why = case.check(res) if case.check else None
            return ("silent result", why) if why else ("ok", "")
        case = Case(case.name, expect="error", contains=case.contains, code=case.code, timeout=case.timeout)
    if case.expect == "ok":
        if res.rc == 0:
            why = case.check(res) if case.check else None
            return ("silent result", why) if why else ("ok", "")
        return "other", f"exit {res.rc} where a result was expected: {(rest or ['(no stderr)'])[-1][:160]}"
    # an error is expected
    if res.rc == 0:
        return "silent result", f"exit 0; stdout: {res.stdout.strip().splitlines()[-1][:120] if res.stdout.strip() else '(empty)'}"
    one = len(rest) == 1 and rest[0].startswith("error: ")
    last_is_error = one and res.stderr.strip().splitlines()[-1] == rest[0]
    if res.rc != case.code or not one or not last_is_error:
        shown = " | ".join(rest[:3])[:200] if rest else "(no stderr)"
        return "other", f"exit {res.rc} (expected {case.code}), {len(rest)} non-progress stderr line(s): {shown}"
    missing = [f for f in case.contains if f.lower() not in rest[0].lower()]
    if missing:
        return "other", f"error line lacks {missing!r}: {rest[0][:200]}"
    if case.check is not None:
        why = case.check(res)
        if why:
            return "other", why
    return "clean error", rest[0][:200]


def _snapshot(paths) -> dict:
    """State of guarded files: (kind, size, mtime, content hash) or None when absent."""
    import hashlib

    out = {}
    for path in paths:
        path = Path(path)
        try:
            st = path.lstat()
        except OSError:
            out[str(path)] = None
            continue
        digest = ""
        if path.is_file() and not path.is_symlink():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        out[str(path)] = (st.st_mode, st.st_size, st.st_mtime_ns, digest)
    return out


def run_case(case: Case) -> tuple[str, str, float]:
    try:
        if case.setup is not None:
            case.setup()
        before = _snapshot(case.guard)
        res = case.runner(case) if case.runner is not None else fx(case.args, case.timeout)
        after = _snapshot(case.guard)
    except Exception as err:  # a broken case is a sweep bug: show it as "other"
        return "other", f"sweep could not run the case: {type(err).__name__}: {err}", 0.0
    changed = [k for k in before if before[k] != after[k]]
    if changed:
        return "outside access", f"changed outside the run's directory: {', '.join(changed)[:200]}", res.seconds
    verdict, detail = classify(case, res)
    if res.note and verdict in ("clean error", "ok"):
        detail = f"{detail} [{res.note}]" if detail else res.note
    return verdict, detail, res.seconds


# ------------------------------------------------------------------------------------------
# Building bad inputs
# ------------------------------------------------------------------------------------------
WORK: Path = Path(".")  # set in main(): the temporary directory every case writes under


def p(name: str) -> Path:
    return WORK / name


def write(name: str, data: bytes | str) -> Path:
    path = p(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def _onnx():
    from onnx import TensorProto, helper, numpy_helper

    return TensorProto, helper, numpy_helper


def model_bytes(nodes, inputs, outputs, inits, opset: int = 13) -> bytes:
    TP, H, NH = _onnx()
    g = H.make_graph(nodes, "fault", inputs, outputs,
                     [NH.from_array(np.asarray(v), k) for k, v in inits.items()])
    m = H.make_model(g, opset_imports=[H.make_opsetid("", opset)], producer_name="fault_sweep")
    m.ir_version = 8
    return m.SerializeToString()


def vi(name, shape, elem=None):
    TP, H, _ = _onnx()
    return H.make_tensor_value_info(name, TP.FLOAT if elem is None else elem, shape)


_RNG = np.random.default_rng(20240611)


def w(*shape, scale=0.1) -> np.ndarray:
    return (_RNG.standard_normal(shape) * scale).astype(np.float32)


def mlp(name: str, *, w1: np.ndarray | None = None, in_shape=("N", 784), elem=None, extra_nodes=(),
        extra_inputs=(), extra_outputs=(), out_shape=("N", 2)) -> Path:
    """x -> MatMul -> Relu -> MatMul -> y (784-8-2), variants through the arguments."""
    TP, H, _ = _onnx()
    W1 = w(784, 8) if w1 is None else w1
    nodes = [H.make_node("MatMul", ["x", "W1"], ["h"]), H.make_node("Relu", ["h"], ["r"]),
             H.make_node("MatMul", ["r", "W2"], ["y"]), *extra_nodes]
    data = model_bytes(nodes, [vi("x", list(in_shape) if in_shape is not None else None, elem), *extra_inputs],
                       [vi("y", list(out_shape)), *extra_outputs], {"W1": W1, "W2": w(8, 2)})
    return write(name, data)


def models() -> dict[str, Callable[[], Path]]:
    """name -> builder of a bad (or special) ONNX file."""
    TP, H, _ = _onnx()

    def nan_w():
        W = w(784, 8)
        W[3, 2] = np.nan
        return mlp("m_nan.onnx", w1=W)

    def inf_w():
        W = w(784, 8)
        W[5, 1] = np.inf
        return mlp("m_inf.onnx", w1=W)

    def nan_bias():
        b = np.zeros(8, np.float32)
        b[0] = np.nan
        data = model_bytes([H.make_node("MatMul", ["x", "W1"], ["h0"]), H.make_node("Add", ["h0", "b"], ["h"]),
                            H.make_node("Relu", ["h"], ["r"]), H.make_node("MatMul", ["r", "W2"], ["y"])],
                           [vi("x", ["N", 784])], [vi("y", ["N", 2])], {"W1": w(784, 8), "b": b, "W2": w(8, 2)})
        return write("m_nanbias.onnx", data)

    def two_inputs():
        data = model_bytes([H.make_node("Add", ["x", "x2"], ["s"]), H.make_node("MatMul", ["s", "W1"], ["h"]),
                            H.make_node("Relu", ["h"], ["y"])],
                           [vi("x", ["N", 784]), vi("x2", ["N", 784])], [vi("y", ["N", 8])], {"W1": w(784, 8)})
        return write("m_2in.onnx", data)

    def two_outputs():
        return mlp("m_2out.onnx", extra_outputs=[vi("r", ["N", 8])])

    def int_input():
        data = model_bytes([H.make_node("Cast", ["x"], ["xf"], to=TP.FLOAT), H.make_node("MatMul", ["xf", "W1"], ["h"]),
                            H.make_node("Relu", ["h"], ["y"])],
                           [vi("x", ["N", 784], TP.INT64)], [vi("y", ["N", 8])], {"W1": w(784, 8)})
        return write("m_int.onnx", data)

    def dyn_dim():
        data = model_bytes([H.make_node("Flatten", ["x"], ["f"]), H.make_node("MatMul", ["f", "W1"], ["h"]),
                            H.make_node("Relu", ["h"], ["y"])],
                           [vi("x", ["N", "H", 28])], [vi("y", ["N", 8])], {"W1": w(784, 8)})
        return write("m_dyn.onnx", data)

    def no_shape():
        return mlp("m_noshape.onnx", in_shape=None)

    def sigmoid_mid():
        # linear1 relu1 linear2 | Sigmoid | linear3 relu2 (unavailable)
        data = model_bytes([H.make_node("MatMul", ["x", "W1"], ["h"]), H.make_node("Relu", ["h"], ["r"]),
                            H.make_node("MatMul", ["r", "W2"], ["g"]),
                            H.make_node("Sigmoid", ["g"], ["s"], name="squash"),
                            H.make_node("MatMul", ["s", "W3"], ["k"]), H.make_node("Relu", ["k"], ["y"])],
                           [vi("x", ["N", 784])], [vi("y", ["N", 2])],
                           {"W1": w(784, 8), "W2": w(8, 8), "W3": w(8, 2)})
        return write("m_sigmoid.onnx", data)

    def div_act():
        # q = relu1 / (relu1 + 1): a Div of two activations (not linear)
        one = np.ones((1,), np.float32)
        data = model_bytes([H.make_node("MatMul", ["x", "W1"], ["h"]), H.make_node("Relu", ["h"], ["r"]),
                            H.make_node("Add", ["r", "one"], ["d"]),
                            H.make_node("Div", ["r", "d"], ["q"], name="ratio"),
                            H.make_node("MatMul", ["q", "W2"], ["k"]), H.make_node("Relu", ["k"], ["y"])],
                           [vi("x", ["N", 784])], [vi("y", ["N", 2])], {"W1": w(784, 8), "W2": w(8, 2), "one": one})
        return write("m_div.onnx", data)

    def huge_conv():
        # a Conv whose sparse operator exceeds fxverify's limit (min(8 GiB, half the machine's
        # memory)) by far, while the file stays ~200 kB: nnz = outputs x (C_in x k x k)
        try:
            phys = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError):
            phys = 64 << 30
        limit = min(8 << 30, phys // 2)
        side = 128
        while 64 * side * side * 16 * 49 * 12 < 4 * limit:
            side *= 2
        data = model_bytes([H.make_node("Conv", ["x", "W"], ["c"], pads=[3, 3, 3, 3]),
                            H.make_node("Relu", ["c"], ["y"])],
                           [vi("x", ["N", 16, side, side])], [vi("y", ["N", 64, side, side])],
                           {"W": w(64, 16, 7, 7)})
        return write("m_hugeconv.onnx", data)

    def custom_op():
        data = model_bytes([H.make_node("MatMul", ["x", "W1"], ["h"]),
                            H.make_node("Frobnicate", ["h"], ["y"], domain="com.example.bogus")],
                           [vi("x", ["N", 784])], [vi("y", ["N", 8])], {"W1": w(784, 8)})
        return write("m_custom.onnx", data)

    def no_nodes():
        return write("m_nonodes.onnx", model_bytes([], [vi("x", ["N", 784])], [vi("x", ["N", 784])], {}))

    def const_output():
        data = model_bytes([H.make_node("MatMul", ["x", "W1"], ["h"]), H.make_node("Relu", ["W2"], ["y"])],
                           [vi("x", ["N", 784])], [vi("y", [8, 2])], {"W1": w(784, 8), "W2": w(8, 2)})
        return write("m_constout.onnx", data)

    def dangling():
        data = model_bytes([H.make_node("MatMul", ["x", "W1"], ["h"]), H.make_node("Add", ["h", "nowhere"], ["y"])],
                           [vi("x", ["N", 784])], [vi("y", ["N", 8])], {"W1": w(784, 8)})
        return write("m_dangling.onnx", data)

    def bad_opset():
        data = model_bytes([H.make_node("MatMul", ["x", "W1"], ["h"]), H.make_node("Relu", ["h"], ["y"])],
                           [vi("x", ["N", 784])], [vi("y", ["N", 8])], {"W1": w(784, 8)}, opset=999)
        return write("m_opset999.onnx", data)

    def shape_mismatch():
        data = model_bytes([H.make_node("MatMul", ["x", "W1"], ["h"]), H.make_node("Relu", ["h"], ["y"])],
                           [vi("x", ["N", 784])], [vi("y", ["N", 8])], {"W1": w(100, 8)})
        return write("m_mismatch.onnx", data)

    def input_100():
        data = model_bytes([H.make_node("MatMul", ["x", "W1"], ["h"]), H.make_node("Relu", ["h"], ["y"])],
                           [vi("x", ["N", 100])], [vi("y", ["N", 8])], {"W1": w(100, 8)})
        return write("m_in100.onnx", data)

    def batch2():
        return mlp("m_batch2.onnx", in_shape=(2, 784), out_shape=(2, 2))

    def zero_dim():
        data = model_bytes([H.make_node("Relu", ["x"], ["y"])], [vi("x", ["N", 0])], [vi("y", ["N", 0])], {})
        return write("m_zerodim.onnx", data)

    def scalar_input():
        data = model_bytes([H.make_node("Relu", ["x"], ["y"])], [vi("x", [])], [vi("y", [])], {})
        return write("m_scalar.onnx", data)

    return {"nan": nan_w, "inf": inf_w, "nanbias": nan_bias, "2in": two_inputs, "2out": two_outputs,
            "int": int_input, "dyn": dyn_dim, "noshape": no_shape, "sigmoid": sigmoid_mid, "div": div_act,
            "hugeconv": huge_conv, "custom": custom_op, "nonodes": no_nodes, "constout": const_output,
            "dangling": dangling, "opset999": bad_opset, "mismatch": shape_mismatch, "in100": input_100,
            "batch2": batch2, "zerodim": zero_dim, "scalar": scalar_input}


# ---- specs --------------------------------------------------------------------------------
BASE = {"version": 1, "data": {"embedded": "mnist"}, "classes": [3, 7], "n_per_class": 2,
        "eps": [0.0, 1.0, 2.0], "cuts": ["input", "linear1", "relu1"]}


def spec_doc(**over) -> dict:
    doc = json.loads(json.dumps(BASE))
    for k, v in over.items():
        if v is DROP:
            doc.pop(k, None)
        else:
            doc[k] = v
    return doc


DROP = object()


def spec_file(name: str, **over) -> Path:
    return write(f"specs/{name}.json", json.dumps(spec_doc(**over)))


# ---- data ---------------------------------------------------------------------------------
def mnist_subset(n: int = 30, classes=(3, 7)):
    """Raw uint8 MNIST images (n, 28, 28) and labels from the embedded set (first n per class)."""
    from importlib import resources

    with resources.as_file(resources.files("fxverify.datasets") / "mnist_train_first500.npz") as f:
        with np.load(f) as z:
            X, y = z["X"], z["y"]
    take = np.concatenate([np.flatnonzero(y == c)[:n] for c in classes])
    take.sort()
    return X[take].reshape(len(take), 28, 28).astype(np.uint8), y[take].astype(np.uint8)


def npz(name: str, **arrays) -> Path:
    path = p(f"data/{name}.npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def idx_bytes(arr: np.ndarray, code: int = 0x08) -> bytes:
    return bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def idx_dir(name: str, images: bytes | None = None, labels: bytes | None = None, gz: bool = False) -> Path:
    d = p(f"idx/{name}")
    d.mkdir(parents=True, exist_ok=True)
    X, y = mnist_subset(10)
    files = {"train-images-idx3-ubyte": idx_bytes(X) if images is None else images,
             "train-labels-idx1-ubyte": idx_bytes(y) if labels is None else labels}
    for fname, data in files.items():
        if data is _MISSING:
            continue
        if gz:
            (d / (fname + ".gz")).write_bytes(data if data.startswith(b"\x1f\x8b") else gzip.compress(data))
        else:
            (d / fname).write_bytes(data)
    return d


_MISSING = b"\x00MISSING"


def profile_file(name: str, doc=None, text: str | bytes | None = None) -> Path:
    if text is None:
        text = json.dumps(doc)
    return write(f"profiles/{name}.json", text)


# ------------------------------------------------------------------------------------------
# Checks on successful runs
# ------------------------------------------------------------------------------------------
def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def check_results(out: Path, **want) -> Callable[[Result], str | None]:
    """A check that results.json in ``out`` has the given values (dotted paths)."""

    def check(res: Result) -> str | None:
        try:
            doc = results(out)
        except (OSError, ValueError) as err:
            return f"results.json unreadable: {err}"
        for key, value in want.items():
            node = doc
            for part in key.split("__"):
                node = node[int(part)] if isinstance(node, list) else node.get(part)
            if callable(value):
                why = value(node)
                if why:
                    return f"{key}: {why}"
            elif node != value:
                return f"{key} is {node!r}, expected {value!r}"
        return None

    return check


def cut_names(expected: list[str]):
    def check(cuts) -> str | None:
        names = [c["cut"] for c in cuts]
        return None if names == expected else f"cuts {names}, expected {expected}"

    return check


# ------------------------------------------------------------------------------------------
# Process faults (custom runners)
# ------------------------------------------------------------------------------------------
def _children(pid: int) -> list[int]:
    kids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                kids.append(int(d))
    return kids


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def _alive(pids) -> list[int]:
    out = []
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if stat[stat.rindex(")") + 2:].split()[0] not in ("Z", "X"):
            out.append(pid)
    return out


def _stored_pairs(out: Path) -> int:
    try:
        with sqlite3.connect(f"file:{out / 'results.sqlite'}?mode=ro", uri=True, timeout=1) as con:
            return con.execute("SELECT COUNT(*) FROM pairs").fetchone()[0]
    except sqlite3.Error:
        return 0


def _start(args) -> subprocess.Popen:
    return subprocess.Popen(CLI + [str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=WORK, start_new_session=True)


def _wait_for_pairs(proc: subprocess.Popen, out: Path, n: int, timeout: float = 90.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if _stored_pairs(out) >= n:
            return True
        time.sleep(0.05)
    return False


def _finish(proc: subprocess.Popen, t0: float, timeout: float = 60.0, note: str = "") -> Result:
    try:
        out, err = proc.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        out, err = proc.communicate()
        timed_out = True
    return Result(None if timed_out else proc.returncode, (out or b"").decode("utf-8", "replace"),
                  (err or b"").decode("utf-8", "replace"), time.perf_counter() - t0, timed_out, note)


def _store_consistent(out: Path, n_cuts: int) -> str | None:
    """The store after a fault: whole (integrity check), at most ``n_cuts`` rows per pair, and
    results are per (pair, cut): a deeper cut of _LONG_SPEC_CUTS only where the cut it starts
    from is stored."""
    try:
        with sqlite3.connect(out / "results.sqlite") as con:
            ok = con.execute("PRAGMA integrity_check").fetchone()[0]
            rows = con.execute("SELECT cut, i, j FROM pairs").fetchall()
    except sqlite3.Error as err:
        return f"store unreadable after the fault: {err}"
    if ok != "ok":
        return f"store integrity check: {ok}"
    by_cut = {c: {(i, j) for cc, i, j in rows if cc == c} for c in _LONG_SPEC_CUTS}
    if len(rows) > n_cuts * len(by_cut[_LONG_SPEC_CUTS[0]] | by_cut[_LONG_SPEC_CUTS[-1]]):
        return "more rows than (pair, cut)s"
    if not by_cut[_LONG_SPEC_CUTS[-1]] <= by_cut[_LONG_SPEC_CUTS[0]]:
        return f"{_LONG_SPEC_CUTS[-1]} stored for a pair without {_LONG_SPEC_CUTS[0]}"
    return None


_LONG_SPEC_CUTS = ["relu1", "relu2"]


def _long_run_args(name: str, jobs: int, command: str = "bound") -> tuple[list, Path]:
    """A run on the shipped 784-300-200 model that lasts long enough to be interrupted."""
    spec = spec_file(name, n_per_class=30, cuts=_LONG_SPEC_CUTS, eps=[0.0, 2.0, 4.0])
    out = p(f"out/{name}")
    return [command, BIG, "--spec", spec, "--out", out, "--jobs", jobs], out


def run_signal(sig: int, name: str, jobs: int = 2) -> Callable[[Case], Result]:
    """Start a bound, wait until pairs are stored, send ``sig`` to the CLI process; then check
    the store (integrity, a cut only after the cut it starts from), that no worker outlived it,
    and no results.json."""

    def runner(case: Case) -> Result:
        args, out = _long_run_args(name, jobs)
        t0 = time.perf_counter()
        proc = _start(args)
        try:
            if not _wait_for_pairs(proc, out, 2):
                res = _finish(proc, t0, 5)
                return Result(res.rc, res.stdout, res.stderr + "\nsweep: the run ended (or stalled) before the "
                              "signal could be sent", res.seconds, res.timed_out)
            workers = _children(proc.pid)
            proc.send_signal(sig)
            res = _finish(proc, t0, 60)
        finally:
            _kill_group(proc.pid)
        time.sleep(1.0)
        problems = []
        if _alive(workers):
            problems.append(f"worker(s) {_alive(workers)} outlived the run")
        why = _store_consistent(out, len(_LONG_SPEC_CUTS))
        if why:
            problems.append(why)
        if (out / "results.json").exists():
            problems.append("results.json written by an interrupted run")
        res.note = "; ".join(problems) if problems else f"store consistent, {_stored_pairs(out)} rows kept"
        return res

    return runner


def run_stdout_full(args) -> Callable[[Case], Result]:
    """The command with its standard output on /dev/full (every write fails: ENOSPC)."""

    def runner(case: Case) -> Result:
        t0 = time.perf_counter()
        with open("/dev/full", "wb") as full:
            proc = subprocess.Popen(CLI + [str(a) for a in args], stdout=full, stderr=subprocess.PIPE, cwd=WORK,
                                    start_new_session=True)
            try:
                _, err = proc.communicate(timeout=case.timeout)
                return Result(proc.returncode, "", err.decode("utf-8", "replace"), time.perf_counter() - t0)
            except subprocess.TimeoutExpired:
                _kill_group(proc.pid)
                _, err = proc.communicate()
                return Result(None, "", err.decode("utf-8", "replace"), time.perf_counter() - t0, True)

    return runner


def _store_check(res: Result) -> str | None:
    bad = [s for s in ("outlived", "integrity", "partly", "unreadable", "written by") if s in res.note]
    return f"after the fault: {res.note}" if bad else None


def run_kill_worker(case: Case) -> Result:
    """kill -9 one worker process of a running bound --jobs 2: one error line, no orphans."""
    args, out = _long_run_args("killworker", 2)
    t0 = time.perf_counter()
    proc = _start(args)
    try:
        if not _wait_for_pairs(proc, out, 2):
            res = _finish(proc, t0, 5)
            return Result(res.rc, res.stdout, res.stderr + "\nsweep: the run ended before a worker could be killed",
                          res.seconds, res.timed_out)
        kids = _children(proc.pid)
        workers = [k for k in kids if "resource_tracker" not in _cmdline(k)]
        if not workers:
            res = _finish(proc, t0, 120)
            res.stderr += "\nsweep: no worker process found (is --jobs 2 running pairs in-process?)"
            return res
        os.kill(workers[0], signal.SIGKILL)
        res = _finish(proc, t0, 90)
    finally:
        _kill_group(proc.pid)
    time.sleep(1.0)
    left = _alive([k for k in kids if k != workers[0]])
    problems = [f"processes {left} outlived the run"] if left else []
    why = _store_consistent(out, len(_LONG_SPEC_CUTS))
    if why:
        problems.append(why)
    res.note = "; ".join(problems) if problems else "no orphans, store consistent"
    return res


def run_kill9_and_resume(case: Case) -> Result:
    """kill -9 of a running bound (whole process), then the same command again: it must finish
    from the store and give the same bounds as an uninterrupted run."""
    spec = spec_file("resume", n_per_class=20, cuts="all", eps=[0.0, 1.0, 2.0, 3.0])
    out, ref = p("out/resume"), p("out/resume_ref")
    args = ["bound", TINY, "--spec", spec, "--out", out, "--jobs", "1", "--order", "file"]
    t0 = time.perf_counter()
    proc = _start(args)
    killed = _wait_for_pairs(proc, out, 40, timeout=60)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    before = _stored_pairs(out)
    res = fx(args, 180)
    res.seconds = time.perf_counter() - t0
    if res.rc != 0:
        return res
    reference = fx(["bound", TINY, "--spec", spec, "--out", ref, "--jobs", "1"], 180)
    if reference.rc != 0:
        res.note = f"sweep: the reference run failed: {reference.stderr.strip()[:160]}"
        return res
    a = [(r["cut"], r["eps"], r["edges"]) for r in results(out)["results"]]
    b = [(r["cut"], r["eps"], r["edges"]) for r in results(ref)["results"]]
    same = a == b and results(out)["complete"]
    res.note = (f"killed with {before} rows stored (killed mid-run: {killed}); resumed run "
                + ("equals the uninterrupted one" if same else "DIFFERS from the uninterrupted one"))
    return res


def _resume_check(res: Result) -> str | None:
    if "DIFFERS" in res.note or "reference run failed" in res.note:
        return res.note
    return None


def run_locked(case: Case) -> Result:
    """A second run on an --out that a running fxverify holds: refused at once, naming the pid."""
    args, out = _long_run_args("locked", 1, command="distances")
    t0 = time.perf_counter()
    first = _start(args)
    try:
        if not _wait_for_pairs(first, out, 1):
            res = _finish(first, t0, 5)
            return Result(res.rc, res.stdout, res.stderr + "\nsweep: the first run ended before the second started",
                          res.seconds, res.timed_out)
        res = fx(["bound", TINY, "--spec", p("specs/base.json"), "--out", out], 60)
        if str(first.pid) not in res.stderr:
            res.note = f"the error does not name the holder's pid {first.pid}"
    finally:
        _kill_group(first.pid)
        first.communicate()
    return res


# ------------------------------------------------------------------------------------------
# The cases
# ------------------------------------------------------------------------------------------
def build_cases() -> list[Case]:
    cases: list[Case] = []
    add = cases.append
    M = models()
    built: dict[str, Path] = {}

    def model(key: str) -> Path:
        return p({"nan": "m_nan.onnx", "inf": "m_inf.onnx", "nanbias": "m_nanbias.onnx", "2in": "m_2in.onnx",
                  "2out": "m_2out.onnx", "int": "m_int.onnx", "dyn": "m_dyn.onnx", "noshape": "m_noshape.onnx",
                  "sigmoid": "m_sigmoid.onnx", "div": "m_div.onnx", "hugeconv": "m_hugeconv.onnx",
                  "custom": "m_custom.onnx", "nonodes": "m_nonodes.onnx", "constout": "m_constout.onnx",
                  "dangling": "m_dangling.onnx", "opset999": "m_opset999.onnx", "mismatch": "m_mismatch.onnx",
                  "in100": "m_in100.onnx", "batch2": "m_batch2.onnx", "zerodim": "m_zerodim.onnx",
                  "scalar": "m_scalar.onnx"}[key])

    def ensure(key: str) -> Callable[[], None]:
        def setup() -> None:
            if key not in built:
                built[key] = M[key]()

        return setup

    base = p("specs/base.json")

    # ---------------- ONNX files ----------------------------------------------------------
    tiny = TINY.read_bytes()
    add(Case("onnx: garbage bytes", ["inspect", p("garbage.onnx")], contains=("garbage.onnx",), quick=True,
             setup=None))
    add(Case("onnx: empty file", ["inspect", p("empty.onnx")], contains=("empty",), quick=True,
             setup=lambda: write("empty.onnx", b"")))
    add(Case("onnx: text file", ["inspect", p("text.onnx")],
             setup=lambda: write("text.onnx", "this is not an onnx model\n" * 10)))
    for off in (1, 7, 64, 500, 4096, len(tiny) // 2, len(tiny) - 200, len(tiny) - 1):
        add(Case(f"onnx: tiny model truncated at {off} of {len(tiny)} bytes", ["inspect", p(f"trunc{off}.onnx")],
                 quick=off in (64, len(tiny) // 2),
                 setup=lambda off=off: write(f"trunc{off}.onnx", tiny[:off])))
    big = BIG.read_bytes()
    add(Case("onnx: shipped model truncated at 60%, bound", ["bound", p("trunc_big.onnx"), "--spec", base,
                                                             "--out", p("out/trunc_big")],
             setup=lambda: write("trunc_big.onnx", big[:int(len(big) * 0.6)])))
    add(Case("onnx: file not found", ["inspect", p("nope.onnx")], contains=("not found",), quick=True))
    add(Case("onnx: a directory", ["inspect", p("adir.onnx")], contains=("directory",),
             setup=lambda: p("adir.onnx").mkdir(exist_ok=True)))
    add(Case("onnx: path under a regular file", ["inspect", p("garbage.onnx") / "m.onnx"],
             setup=None))
    add(Case("onnx: a FIFO (not a regular file)", ["inspect", p("fifo.onnx")], timeout=30,
             setup=lambda: p("fifo.onnx").exists() or os.mkfifo(p("fifo.onnx"))))
    add(Case("onnx: /dev/null", ["inspect", "/dev/null"], timeout=30))
    add(Case("onnx: NaN weights", ["inspect", model("nan")], contains=("nan",), quick=True, setup=ensure("nan")))
    add(Case("onnx: inf weights", ["inspect", model("inf")], contains=("inf",), setup=ensure("inf")))
    add(Case("onnx: NaN bias", ["bound", model("nanbias"), "--spec", base, "--out", p("out/nanbias")],
             contains=("nan",), setup=ensure("nanbias")))
    add(Case("onnx: several inputs", ["inspect", model("2in")], contains=("input",), quick=True, setup=ensure("2in")))
    add(Case("onnx: several outputs", ["inspect", model("2out")], contains=("output",), setup=ensure("2out")))
    add(Case("onnx: int input", ["inspect", model("int")], contains=("INT64",), quick=True, setup=ensure("int")))
    add(Case("onnx: dynamic non-batch dimension", ["inspect", model("dyn")], contains=("dynamic",), quick=True,
             setup=ensure("dyn")))
    add(Case("onnx: input without a shape", ["inspect", model("noshape")], contains=("shape",),
             setup=ensure("noshape")))
    add(Case("onnx: Sigmoid cut requested via --cuts", ["bound", model("sigmoid"), "--spec", base, "--cuts", "relu2",
                                                        "--out", p("out/sigmoid_cut")],
             contains=("relu2", "Sigmoid"), quick=True, setup=ensure("sigmoid")))
    add(Case("onnx: Sigmoid model, spec 'cuts' naming an unavailable cut",
             ["bound", model("sigmoid"), "--spec", p("specs/sig_cuts.json"), "--out", p("out/sigmoid_spec")],
             contains=("linear3",), setup=lambda: (ensure("sigmoid")(),
                                                   spec_file("sig_cuts", cuts=["linear1", "linear3"]))))
    sig_out = p("out/sigmoid_all")
    add(Case("onnx: Sigmoid model, --cuts all reports only the computed cuts",
             ["bound", model("sigmoid"), "--spec", base, "--cuts", "all", "--out", sig_out], expect="ok",
             setup=ensure("sigmoid"),
             check=lambda r: (check_results(sig_out, cuts=cut_names(["input", "linear1", "relu1", "linear2"]))(r)
                              or (None if "not computed" in r.stdout else "stdout does not say which cuts were "
                                                                          "not computed")),
             what="exit 0; results.json has input, linear1, relu1, linear2 only; stdout names the rest"))
    add(Case("onnx: Div by an activation, that cut via --cuts",
             ["bound", model("div"), "--spec", base, "--cuts", "relu2", "--out", p("out/div_cut")],
             contains=("relu2", "Div"), quick=True, setup=ensure("div")))
    add(Case("onnx: Div by an activation, inspect lists it unavailable", ["inspect", model("div"), "--json"],
             expect="ok", setup=ensure("div"),
             check=lambda r: None if any(u["cut"] == "relu2" for u in json.loads(r.stdout).get("unavailable", []))
             and "relu2" not in json.loads(r.stdout)["cuts"] else "relu2 not listed as unavailable",
             what="exit 0; relu2 unavailable (Div of two activations), not among the cuts"))
    add(Case("onnx: conv whose sparse operator exceeds the memory limit", ["inspect", model("hugeconv")],
             contains=("non-zeros",), timeout=90, setup=ensure("hugeconv")))
    add(Case("onnx: op from an unknown domain", ["inspect", model("custom")], setup=ensure("custom")))
    add(Case("onnx: graph without nodes", ["inspect", model("nonodes")], contains=("no nodes",),
             setup=ensure("nonodes")))
    add(Case("onnx: output not computed from the input", ["inspect", model("constout")], setup=ensure("constout")))
    add(Case("onnx: node reads an undefined tensor", ["inspect", model("dangling")], setup=ensure("dangling")))
    add(Case("onnx: opset 999", ["inspect", model("opset999")], setup=ensure("opset999")))
    add(Case("onnx: weight shape does not match the input", ["inspect", model("mismatch")],
             setup=ensure("mismatch")))
    add(Case("onnx: input of 100 values vs 784-pixel data", ["bound", model("in100"), "--spec", base, "--out",
                                                             p("out/in100")],
             contains=("784", "100"), quick=True, setup=ensure("in100")))
    add(Case("onnx: fixed batch size 2 (one sample of 1568 values) vs 784-pixel data",
             ["bound", model("batch2"), "--spec", base, "--out", p("out/batch2")], contains=("1568",),
             setup=ensure("batch2")))
    add(Case("onnx: zero-size input dimension", ["inspect", model("zerodim")], contains=("size 0",),
             setup=ensure("zerodim")))
    add(Case("onnx: scalar input", ["bound", model("scalar"), "--spec", base, "--out", p("out/scalar")],
             setup=ensure("scalar")))

    # ---------------- spec files ----------------------------------------------------------
    def bound_spec(spec: Path, out: str) -> list:
        return ["bound", TINY, "--spec", spec, "--out", p(f"out/{out}"), "--jobs", "1"]

    def spec_case(label: str, contains=(), quick=False, raw: bytes | str | None = None, **over) -> None:
        slug = "spec_" + "".join(ch if ch.isalnum() else "_" for ch in label)[:60]
        path = p(f"specs/{slug}.json")
        if raw is not None:
            setup = (lambda: write(f"specs/{slug}.json", raw))
        else:
            setup = (lambda: spec_file(slug, **over))
        add(Case(f"spec: {label}", bound_spec(path, slug), contains=contains, quick=quick, setup=setup))

    add(Case("spec: control (valid base spec)", bound_spec(base, "control"), expect="ok", quick=True,
             setup=lambda: spec_file("base"),
             check=check_results(p("out/control"), cuts=cut_names(["input", "linear1", "relu1"]), points__n=4,
                                 complete=True, pairs_failed=0),
             what="exit 0; 3 cuts, 2 + 2 points, complete"))
    spec_case("not JSON", raw="{version: 1, data: mnist", contains=("not valid JSON",), quick=True)
    spec_case("binary bytes", raw=bytes(range(256)) * 4, quick=True)
    spec_case("empty file", raw=b"")
    spec_case("deeply nested (100000 levels)", raw="[" * 100_000 + "]" * 100_000, quick=True)
    spec_case("deeply nested object (40 levels, valid JSON)", raw=json.dumps(
        spec_doc(data=json.loads('{"embedded": ' + "{\"a\": " * 40 + "1" + "}" * 40 + "}"))))
    spec_case("top level is a list", raw="[1, 2, 3]")
    spec_case("top level is a number", raw="42")
    spec_case("NaN literal in eps", raw=json.dumps(BASE).replace("[0.0, 1.0, 2.0]", "[0.0, NaN]"), quick=True)
    spec_case("Infinity literal in eps", raw=json.dumps(BASE).replace("[0.0, 1.0, 2.0]", "[Infinity]"))
    spec_case("-Infinity literal in time_budget", raw=json.dumps(BASE)[:-1] + ', "time_budget": -Infinity}')
    spec_case("1e999 (overflows to inf) in eps", raw=json.dumps(BASE).replace("[0.0, 1.0, 2.0]", "[1e999]"))
    spec_case("1e999 in n_per_class", raw=json.dumps(BASE).replace('"n_per_class": 2', '"n_per_class": 1e999'))
    spec_case("invalid UTF-8 inside a string", raw=json.dumps(BASE).encode().replace(b'"mnist"', b'"mn\xffist"'))
    spec_case("version missing", version=DROP)
    spec_case("version 2", version=2)
    for key, bad in [("version", "1"), ("description", 5), ("data", "mnist"), ("split", 1), ("classes", "3,7"),
                     ("n_per_class", "2"), ("selection", "first"), ("scaling", 255), ("layout", 4),
                     ("normalize", [0.5]), ("norm", 2), ("domain", "0,1"), ("eps", 1.0), ("cuts", 5),
                     ("solver", 5), ("time_budget", "10")]:
        spec_case(f"wrong type for {key}: {bad!r}", contains=(key,), quick=key in ("classes", "eps"), **{key: bad})
    spec_case("unknown top-level key", contains=("bogus",), quick=True, bogus=1)
    spec_case("unknown key in data", data={"embedded": "mnist", "extra": 1})
    spec_case("unknown key in selection", selection={"method": "first", "extra": 1})
    spec_case("unknown key in normalize", normalize={"mean": 0.1, "std": 0.3, "extra": 1})
    spec_case("data: empty object", data={})
    spec_case("data: two sources", data={"embedded": "mnist", "npz": "x.npz"})
    spec_case("data: unknown embedded set", data={"embedded": "cifar10"})
    spec_case("data: empty npz path", data={"npz": ""})
    spec_case("required key missing: eps", eps=DROP)
    spec_case("required key missing: classes", classes=DROP)
    spec_case("classes: one class", classes=[3], contains=("classes",))
    spec_case("classes: three, one not in the data", classes=[3, 7, 11], contains=("11",))
    spec_case("classes: three, one twice", classes=[3, 7, 3], contains=("classes", "more than once"))
    spec_case("classes: the same twice", classes=[3, 3], contains=("classes",))
    spec_case("classes: negative", classes=[-1, 7])
    spec_case("classes: fractional", classes=[3.5, 7])
    spec_case("classes: booleans", classes=[True, False])
    spec_case("classes: not present in the data", classes=[3, 11], contains=("11",), quick=True)
    spec_case("n_per_class: 0", n_per_class=0)
    spec_case("n_per_class: -1", n_per_class=-1)
    spec_case("n_per_class: 2.5", n_per_class=2.5)
    spec_case("n_per_class: more than the data holds", n_per_class=501, contains=("501",), quick=True)
    spec_case("eps: empty list", eps=[])
    spec_case("eps: negative", eps=[-1.0], quick=True)
    spec_case("eps: null entry", eps=[None])
    spec_case("eps: string entry", eps=["1"])
    spec_case("norm: l3", norm="l3", contains=("l3",), quick=True)
    spec_case("norm: upper case L2", norm="L2")
    spec_case("domain: reversed", domain=[1.0, 0.0], contains=("domain",))
    spec_case("domain: one value", domain=[0.0])
    spec_case("domain: empty interval", domain=[0.5, 0.5])
    spec_case("domain: points outside it", domain=[0.2, 0.8], contains=("domain",))
    spec_case("normalize: std missing", normalize={"mean": 0.1})
    spec_case("normalize: std 0", normalize={"mean": 0.1, "std": 0})
    spec_case("normalize: std negative", normalize={"mean": 0.1, "std": [-0.3]})
    spec_case("normalize: empty std list", normalize={"mean": 0.1, "std": []})
    spec_case("normalize: 2 means, 3 stds", normalize={"mean": [0.1, 0.2], "std": [0.3, 0.3, 0.3]})
    spec_case("normalize: 3 channels for a 1-channel model", normalize={"mean": [0.1, 0.2, 0.3],
                                                                       "std": [0.3, 0.3, 0.3]})
    spec_case("layout: unknown", layout="NCWH")
    spec_case("layout: with embedded data", layout="NCHW", contains=("layout",))
    spec_case("selection: random without seed", selection={"method": "random"})
    spec_case("selection: negative seed", selection={"method": "random", "seed": -1})
    spec_case("selection: fractional seed", selection={"method": "random", "seed": 1.5})
    spec_case("selection: unknown method", selection={"method": "best"})
    spec_case("scaling: unknown", scaling="divide255")
    spec_case("split: unknown", split="validation")
    spec_case("split: test with embedded data", split="test", contains=("test",))
    spec_case("cuts: unknown word", cuts="none")
    spec_case("cuts: empty list", cuts=[])
    spec_case("cuts: unknown cut", cuts=["relu9"], contains=("relu9",), quick=True)
    spec_case("cuts: duplicate", cuts=["relu1", "relu1"])
    spec_case("cuts: empty name", cuts=[""])
    spec_case("solver: empty", solver="")
    spec_case("solver: unknown name", solver="nonexistent-profile", contains=("nonexistent-profile",))
    spec_case("solver: missing profile file", solver="/nonexistent/profile.json", contains=("not found",))
    spec_case("time_budget: 0", time_budget=0)
    spec_case("time_budget: negative", time_budget=-5)
    add(Case("spec: file not found", ["bound", TINY, "--spec", p("specs/nope.json"), "--out", p("out/nospec")],
             contains=("not found",), quick=True))
    add(Case("spec: a directory", ["bound", TINY, "--spec", p("specs"), "--out", p("out/specdir")],
             setup=lambda: p("specs").mkdir(exist_ok=True)))
    bom_out = p("out/bom")
    add(Case("spec: UTF-8 byte order mark is accepted", bound_spec(p("specs/bom.json"), "bom"), expect="ok",
             setup=lambda: write("specs/bom.json", "\ufeff" + json.dumps(BASE)),
             check=check_results(bom_out, points__n=4), what="exit 0 (a BOM is valid UTF-8 JSON)"))

    # ---------------- data files ------------------------------------------------------------
    X, y = mnist_subset(10)
    Xf = X.reshape(len(X), -1)

    def data_case(label: str, arrays: dict | None = None, contains=(), quick=False, raw: bytes | None = None,
                  expect="error", check=None, what="", **over) -> None:
        slug = "npz_" + "".join(ch if ch.isalnum() else "_" for ch in label)[:60]
        out = p(f"out/{slug}")

        def setup() -> None:
            if raw is not None:
                write(f"data/{slug}.npz", raw)
            elif arrays is not None:
                npz(slug, **arrays)
            spec_file(slug, data={"npz": f"../data/{slug}.npz"}, **over)

        add(Case(f"data: {label}", ["bound", TINY, "--spec", p(f"specs/{slug}.json"), "--out", out, "--jobs", "1"],
                 contains=contains, quick=quick, setup=setup, expect=expect,
                 check=check(out) if check else None, what=what))

    data_case("npz control (flat uint8)", {"X": Xf, "y": y}, expect="ok",
              check=lambda out: check_results(out, points__n=4, complete=True), what="exit 0, 2 + 2 points")
    data_case("npz control (4-D NCHW)", {"X": X[:, None], "y": y}, layout="NCHW", expect="ok",
              check=lambda out: check_results(out, points__n=4), what="exit 0")
    data_case("npz file not found", None, contains=("not found",), quick=True)
    data_case("npz is garbage bytes", raw=b"PK\x03\x04 definitely not a zip file" * 10, quick=True)
    data_case("npz is empty", raw=b"")
    add(Case("data: npz truncated", ["bound", TINY, "--spec", p("specs/npz_trunc.json"), "--out",
                                     p("out/npz_trunc")],
             setup=lambda: (npz("full_for_trunc", X=Xf, y=y),
                            write("data/npz_trunc.npz", p("data/full_for_trunc.npz").read_bytes()[:3000]),
                            spec_file("npz_trunc", data={"npz": "../data/npz_trunc.npz"}))))
    add(Case("data: npz path is a directory", ["bound", TINY, "--spec", p("specs/npz_dir.json"), "--out",
                                               p("out/npz_dir")],
             setup=lambda: (p("data/adir.npz").mkdir(parents=True, exist_ok=True),
                            spec_file("npz_dir", data={"npz": "../data/adir.npz"}))))
    data_case("npz without X", {"images": Xf, "y": y}, contains=("X",), quick=True)
    data_case("npz without y", {"X": Xf, "labels": y}, contains=("y",))
    data_case("X is 1-D", {"X": Xf[0], "y": y[:1]})
    data_case("X is 5-D", {"X": X[:, None, None], "y": y})
    data_case("X has no rows", {"X": Xf[:0], "y": y[:0]})
    data_case("y is 2-D", {"X": Xf, "y": y[:, None]})
    data_case("y shorter than X", {"X": Xf, "y": y[:-3]}, quick=True)
    data_case("X of strings", {"X": Xf.astype(str), "y": y})
    data_case("X of booleans", {"X": Xf > 100, "y": y})
    data_case("X complex", {"X": Xf.astype(np.complex64), "y": y})
    data_case("X object array (pickled)", {"X": np.array([None] * len(y), dtype=object), "y": y})
    data_case("y fractional", {"X": Xf, "y": y + 0.5})
    data_case("y of strings", {"X": Xf, "y": y.astype(str)})
    data_case("X with NaN", {"X": np.where(Xf == 0, np.nan, Xf.astype(np.float32)), "y": y}, contains=("NaN",),
              quick=True)
    data_case("X with inf", {"X": np.where(Xf == 0, np.inf, Xf.astype(np.float64)), "y": y})
    data_case("index of the wrong shape", {"X": Xf, "y": y, "index": np.arange(3)})
    data_case("index of floats", {"X": Xf, "y": y, "index": np.arange(len(y)) + 0.5})
    data_case("index negative (out of range)", {"X": Xf, "y": y, "index": -np.arange(1, len(y) + 1)})
    data_case("index beyond int64 (out of range)", {"X": Xf, "y": y,
                                                    "index": np.full(len(y), 2 ** 64 - 1, dtype=np.uint64)})
    data_case("10 features vs a 784-input model", {"X": Xf[:, :10], "y": y}, contains=("784",), quick=True)
    data_case("4-D X without a layout", {"X": X[:, None], "y": y}, contains=("layout",))
    data_case("layout given for 2-D X", {"X": Xf, "y": y}, layout="NCHW", contains=("layout",))
    data_case("4-D X of 3 channels for a 1-channel model", {"X": np.repeat(X[:, None], 3, axis=1), "y": y},
              layout="NCHW")
    data_case("class 7 missing from the data", {"X": Xf[y == 3], "y": y[y == 3]}, contains=("7",))
    data_case("n_per_class larger than the data", {"X": Xf, "y": y}, n_per_class=11, contains=("11",))
    data_case("values already in [0, 1] with divide_255", {"X": Xf / 255.0, "y": y}, contains=("divide_255",),
              quick=True)
    data_case("raw 0-255 values with scaling none", {"X": Xf.astype(np.float32), "y": y}, scaling="none")
    data_case("negative values with scaling none", {"X": Xf / 255.0 - 0.5, "y": y}, scaling="none")
    data_case("negative values with divide_255", {"X": Xf.astype(np.int16) - 128, "y": y})

    # ---------------- IDX files -------------------------------------------------------------
    Xi, yi = mnist_subset(10)

    def idx_case(label: str, images=None, labels=None, gz=False, contains=(), quick=False, expect="error",
                 check=None, split=None, timeout=120.0, setup_extra=None) -> None:
        slug = "idx_" + "".join(ch if ch.isalnum() else "_" for ch in label)[:60]
        out = p(f"out/{slug}")

        def setup() -> None:
            d = idx_dir(slug, images, labels, gz)
            if setup_extra:
                setup_extra(d)
            over = {"split": split} if split else {}
            spec_file(slug, data={"idx_dir": f"../idx/{slug}"}, **over)

        add(Case(f"idx: {label}", ["bound", TINY, "--spec", p(f"specs/{slug}.json"), "--out", out, "--jobs", "1"],
                 contains=contains, quick=quick, setup=setup, expect=expect, timeout=timeout,
                 check=check(out) if check else None))

    idx_case("control (plain IDX)", expect="ok", check=lambda out: check_results(out, points__n=4))
    idx_case("control (gzip IDX)", gz=True, expect="ok", check=lambda out: check_results(out, points__n=4))
    idx_case("images with a bad magic number", images=b"\x12\x34\x08\x03" + idx_bytes(Xi)[4:], contains=("magic",),
             quick=True)
    idx_case("images with an unknown type code", images=b"\x00\x00\x07\x03" + idx_bytes(Xi)[4:])
    idx_case("images truncated", images=idx_bytes(Xi)[:-1000], contains=("truncated",), quick=True)
    idx_case("images with trailing bytes", images=idx_bytes(Xi) + b"\x00" * 10)
    idx_case("images header overflowing (4 x 2^32-1 dims)",
             images=b"\x00\x00\x08\x03" + struct.pack(">3I", 2 ** 32 - 1, 2 ** 32 - 1, 2 ** 32 - 1))
    idx_case("images header with 0 dimensions", images=b"\x00\x00\x08\x00")
    idx_case("images header cut inside the dims", images=b"\x00\x00\x08\x03\x00\x00")
    idx_case("gzip images declaring 2^96 bytes", gz=True,
             images=gzip.compress(b"\x00\x00\x08\x03" + struct.pack(">3I", 2 ** 32 - 1, 2 ** 32 - 1, 2 ** 32 - 1)))
    idx_case("gzip file of garbage", gz=True, images=b"\x1f\x8b\x08\x00garbage-after-gzip-magic" * 5)
    idx_case("gzip truncated", gz=True, images=gzip.compress(idx_bytes(Xi))[:500])
    idx_case("labels fewer than images", labels=idx_bytes(yi[:-5]))
    idx_case("labels file 2-D", labels=idx_bytes(yi.reshape(-1, 2)))
    idx_case("labels file missing", labels=_MISSING, contains=("labels",))
    idx_case("images as int32 big-endian values", images=idx_bytes(Xi.astype(">i4"), 0x0C), expect="ok",
             check=lambda out: check_results(out, points__n=4))
    idx_case("images as float64 already in [0, 1] with divide_255", images=idx_bytes((Xi / 255.0).astype(">f8"),
                                                                                       0x0E),
             contains=("divide_255",))
    idx_case("split test without t10k files", split="test", contains=("t10k",))
    idx_case("images file is a FIFO", images=_MISSING, timeout=30,
             setup_extra=lambda d: (d / "train-images-idx3-ubyte").exists()
             or os.mkfifo(d / "train-images-idx3-ubyte"))
    add(Case("idx: directory not found", bound_spec(p("specs/idx_nodir.json"), "idx_nodir"), contains=("not found",),
             setup=lambda: spec_file("idx_nodir", data={"idx_dir": "../idx/does-not-exist"})))
    add(Case("idx: idx_dir is a regular file", bound_spec(p("specs/idx_isfile.json"), "idx_isfile"),
             setup=lambda: (write("idx/afile", b"x"), spec_file("idx_isfile", data={"idx_dir": "../idx/afile"}))))

    # ---------------- solver profiles -------------------------------------------------------
    def prof_case(label: str, doc=None, text=None, contains=(), quick=False, extra=(), expect="error",
                  check=None) -> None:
        slug = "prof_" + "".join(ch if ch.isalnum() else "_" for ch in label)[:60]
        out = p(f"out/{slug}")
        add(Case(f"profile: {label}", ["bound", TINY, "--spec", base, "--solver", p(f"profiles/{slug}.json"),
                                       "--out", out, "--jobs", "1", *extra],
                 contains=contains, quick=quick, expect=expect, check=check(out) if check else None,
                 setup=lambda: profile_file(slug, doc, text)))

    good = {"version": 1, "method": "descent", "backend": "activeset"}
    prof_case("control (valid file)", good, expect="ok",
              check=lambda out: check_results(out, solver__backend="activeset"))
    prof_case("not JSON", text="{method: descent", contains=("JSON",), quick=True)
    prof_case("binary bytes", text=bytes(range(256)))
    prof_case("empty file", text=b"")
    prof_case("a list", [good])
    prof_case("deeply nested", text="[" * 100_000 + "]" * 100_000)
    prof_case("NaN literal for time_limit", text=json.dumps(good)[:-1] + ', "time_limit": NaN}', contains=("NaN",))
    prof_case("Infinity literal for rel_gap", text=json.dumps(good)[:-1] + ', "rel_gap": Infinity}')
    prof_case("unknown backend", {**good, "backend": "nosuchsolver"}, contains=("nosuchsolver",), quick=True)
    prof_case("unknown method", {**good, "method": "sgd"}, contains=("method",))
    prof_case("backend missing", {"version": 1, "method": "descent"})
    prof_case("version 2", {**good, "version": 2})
    prof_case("unknown key", {**good, "colour": "blue"})
    prof_case("max_iterations 0", {**good, "max_iterations": 0})
    prof_case("time_limit -1", {**good, "time_limit": -1})
    prof_case("threads 0", {**good, "threads": 0})
    prof_case("options not an object", {**good, "options": [1, 2]})
    prof_case("unknown backend option", {**good, "options": {"kkt": "chol"}}, contains=("kkt",))
    prof_case("fallback to an unknown backend", {**good, "fallback": {"backend": "nosuchsolver"}},
              contains=("nosuchsolver",))
    prof_case("fallback with a bad option", {**good, "fallback": [{"backend": "cvxopt", "options": {"kkt": "bogus"}}]},
              contains=("kkt",))
    prof_case("lp_backend unknown (linf run)", {**good, "lp_backend": "nosuchsolver"}, extra=("--norm", "linf"),
              contains=("nosuchsolver",))
    prof_case("lp_backend unknown (l2 run, unused but invalid)", {**good, "lp_backend": "nosuchsolver"},
              contains=("nosuchsolver",))
    prof_case("exact method with cvxopt", {"version": 1, "method": "exact", "backend": "cvxopt"})
    prof_case("descent with scip (no duals)", {"version": 1, "method": "descent", "backend": "scip"})
    add(Case("profile: file not found", ["bound", TINY, "--spec", base, "--solver", p("profiles/none.json"),
                                         "--out", p("out/prof_nf")], contains=("not found",), quick=True))
    add(Case("profile: unknown name", ["bound", TINY, "--spec", base, "--solver", "descent-nonsense",
                                       "--out", p("out/prof_name")], contains=("descent-nonsense",)))
    add(Case("profile: descent-highs under l2", ["bound", TINY, "--spec", base, "--solver", "descent-highs",
                                                 "--out", p("out/prof_highs_l2")]))
    add(Case("profile: exact-mosek without MOSEK", ["bound", TINY, "--spec", base, "--solver", "exact-mosek",
                                                    "--out", p("out/prof_mosek")], contains=("mosek",), quick=True))

    # ---------------- -o / --solver-option --------------------------------------------------
    def opt_case(value: str, contains=(), quick=False, solver=None, extra=()) -> None:
        slug = "opt_" + "".join(ch if ch.isalnum() else "_" for ch in value)[:50]
        args = ["bound", TINY, "--spec", base, "--out", p(f"out/{slug}"), "--jobs", "1", "-o", value, *extra]
        if solver:
            args += ["--solver", solver]
        add(Case(f"-o {value}" + (f" (--solver {solver})" if solver else "") + (f" {' '.join(extra)}" if extra else ""),
                 args, contains=contains, quick=quick))

    opt_case("max_iterations=abc", contains=("max_iterations",), quick=True)
    opt_case("max_iterations=1e999", contains=("max_iterations",), quick=True)
    opt_case("max_iterations=0", contains=("max_iterations",), quick=True)
    opt_case("max_iterations=-3")
    opt_case("max_iterations=2.5")
    opt_case("max_iterations=NaN")
    opt_case("max_iterations=true")
    opt_case("time_limit=-1", contains=("time_limit",), quick=True)
    opt_case("time_limit=0")
    opt_case("time_limit=abc")
    opt_case("time_limit=1e999")
    opt_case("time_limit=NaN", contains=("time_limit",))
    opt_case("time_limit=Infinity")
    opt_case("threads=0", contains=("threads",), quick=True)
    opt_case("threads=1.5")
    opt_case("threads=NaN")
    opt_case("rel_gap=-1")
    opt_case("rel_gap=NaN", contains=("rel_gap",))
    opt_case("start=bogus")
    opt_case("risky_flips=maybe")
    opt_case("method=bogus")
    opt_case("method=exact")
    opt_case("lp_backend=bogus", extra=("--norm", "linf"))
    opt_case("lp_backend=activeset", extra=("--norm", "linf"))
    opt_case("kkt=bogus", contains=("kkt",), quick=True)
    opt_case("kkt=bogus", solver="descent-cvxopt", contains=("kkt",))
    opt_case("maxiters=0", solver="descent-cvxopt")
    opt_case("tol=-1")
    opt_case("bogus_option=1", contains=("bogus_option",))
    opt_case("max_iterations", contains=("KEY=VALUE",))
    opt_case("=5")
    add(Case("collide -o mip_gap=bogus (--solver exact-highs, linf)",
             ["collide", TINY, "--spec", base, "--cut", "relu1", "--pair", "0", "0", "--method", "exact", "--solver",
              "exact-highs", "--norm", "linf", "-o", "mip_gap=bogus", "-o", "time_limit=3"], timeout=60))
    add(Case("collide -o bogus_option=1 (--solver exact-scip)",
             ["collide", TINY, "--spec", base, "--cut", "relu1", "--pair", "0", "0", "--method", "exact", "--solver",
              "exact-scip", "-o", "bogus_option=1", "-o", "time_limit=3"], timeout=60))
    mi_out = p("out/opt_honoured")
    add(Case("-o max_iterations=7 is honoured", ["bound", TINY, "--spec", base, "--out", mi_out, "--jobs", "1",
                                                  "-o", "max_iterations=7", "-o", "risky_flips=true"],
             expect="ok", quick=True,
             check=check_results(mi_out, solver__max_iterations=7, solver__risky_flips=True),
             what="exit 0; results.json says max_iterations 7, risky_flips true"))

    tb_out, tbs_out, dom_out, fail_out, tl_out, one_out = (p(f"out/{x}") for x in (
        "tb_honoured", "tbspec_honoured", "domain_honoured", "failed_counted", "tl_honoured", "one_cut"))
    incomplete = dict(complete=False, cuts=lambda cuts: None if all(c["pairs_done"] < c["pairs_total"] for c in cuts)
                      else "every pair was computed despite the time budget")
    add(Case("--time-budget 0.001 is honoured", ["bound", TINY, "--spec", base, "--out", tb_out, "--jobs", "1",
                                                  "--n", "5", "--cuts", "relu1,relu2", "--time-budget", "0.001"],
             expect="ok", check=lambda r: check_results(tb_out, **incomplete)(r)
             or (None if "incomplete" in r.stdout else "stdout does not say the run is incomplete"),
             what="exit 0; results.json complete false, pairs_done < pairs_total; stdout says incomplete"))
    add(Case("spec time_budget 0.001 is honoured", ["bound", TINY, "--spec", p("specs/tb.json"), "--out", tbs_out,
                                                    "--jobs", "1"], expect="ok",
             setup=lambda: spec_file("tb", n_per_class=5, cuts=["relu1", "relu2"], time_budget=0.001),
             check=check_results(tbs_out, **incomplete), what="exit 0; results.json complete false"))
    add(Case("spec domain [0, 1] is honoured", ["bound", TINY, "--spec", p("specs/dom.json"), "--out", dom_out,
                                                "--jobs", "1"], expect="ok",
             setup=lambda: spec_file("dom", domain=[0.0, 1.0], cuts=["input", "linear1"]),
             check=check_results(dom_out, threat_model__domain=[0.0, 1.0]),
             what="exit 0; results.json threat_model.domain [0, 1]"))
    add(Case("failed solves are counted (descent-cvxopt -o maxiters=1)",
             ["bound", TINY, "--spec", base, "--out", fail_out, "--jobs", "1", "--cuts", "relu1,relu2", "--solver",
              "descent-cvxopt", "-o", "maxiters=1"], expect="ok", quick=True,
             check=lambda r: check_results(fail_out, pairs_failed=lambda n: None if n and n > 0 else
                                           "no failed pair: a 1-iteration cvxopt solve was not counted as failed")(r)
             or (None if "failed" in r.stdout.splitlines()[-1] + r.stdout.splitlines()[-2]
                 else "the run's last lines do not mention the failures"),
             what="exit 0; results.json pairs_failed > 0; the last lines say so"))
    add(Case("-o time_limit=1e-9 is honoured or refused (activeset)",
             ["bound", TINY, "--spec", base, "--out", tl_out, "--jobs", "1", "--cuts", "relu1,relu2", "-o",
              "time_limit=1e-9"], expect="ok",
             check=check_results(tl_out, pairs_failed=lambda n: None if n else
                                 "every LP solved although each had 1e-9 s: the time limit was ignored"),
             what="an error, or exit 0 with the solves over the limit counted as failed"))
    add(Case("--cuts relu2 reports only relu2", ["bound", TINY, "--spec", base, "--out", one_out, "--jobs", "1",
                                                  "--cuts", "relu2"], expect="ok",
             check=check_results(one_out, cuts=cut_names(["relu2"])), what="exit 0; results.json has relu2 only"))

    # ---------------- CLI options -------------------------------------------------------------
    def cli_case(label: str, extra, contains=(), quick=False, command="bound", model_=TINY, expect="error",
                 check=None, what="") -> None:
        slug = "cli_" + "".join(ch if ch.isalnum() else "_" for ch in label)[:50]
        out = p(f"out/{slug}")
        args = [command, model_, "--spec", base]
        if command in ("bound", "distances"):
            args += ["--out", out]
        add(Case(f"{command} {label}", args + list(extra), contains=contains, quick=quick, expect=expect,
                 check=check(out) if check else None, what=what))

    cli_case("--jobs 0", ["--jobs", "0"], contains=("--jobs",), quick=True)
    cli_case("--jobs -2", ["--jobs", "-2"], contains=("--jobs",))
    cli_case("--jobs abc", ["--jobs", "abc"], contains=("--jobs",), quick=True)
    cli_case("--n 0", ["--n", "0"], quick=True)
    cli_case("--n -1", ["--n", "-1"])
    cli_case("--n 100000", ["--n", "100000"], contains=("100000",))
    cli_case("--n abc", ["--n", "abc"])
    cli_case("--eps a,b", ["--eps", "a,b"], contains=("--eps",), quick=True)
    cli_case("--eps -1", ["--eps", "-1"])
    cli_case("--eps nan", ["--eps", "nan"])
    cli_case("--eps inf", ["--eps", "0,inf"])
    cli_case("--eps ''", ["--eps", ""])
    cli_case("--classes 3", ["--classes", "3"], contains=("classes",), quick=True)
    cli_case("--classes 3,3", ["--classes", "3,3"], contains=("classes",), quick=True)
    cli_case("--classes 3,7,9 (K classes)", ["--classes", "3,7,9"], expect="ok",
             check=lambda out: check_results(out, points__n=6, points__pairs=12, complete=True, pairs_failed=0),
             what="exit 0; 3 classes, 6 points, 12 pairs, complete")
    cli_case("--classes all --select-pairs", ["--classes", "all", "--select-pairs"], contains=("two classes",))
    cli_case("--classes a,b", ["--classes", "a,b"])
    cli_case("--classes 3,12", ["--classes", "3,12"], contains=("12",))
    cli_case("--classes -1,7", ["--classes", "-1,7"])
    cli_case("--classes 2.5,7", ["--classes", "2.5,7"])
    cli_case("--norm l3", ["--norm", "l3"], contains=("l3",), quick=True)
    cli_case("--cuts nonsense", ["--cuts", "nonsense"], contains=("nonsense",), quick=True)
    cli_case("--cuts ','", ["--cuts", ","])
    cli_case("--cuts relu1,relu1", ["--cuts", "relu1,relu1"])
    cli_case("--executor nonsense", ["--executor", "nonsense"], contains=("nonsense",), quick=True)
    cli_case("--address without the ray executor", ["--address", "127.0.0.1:6379"], contains=("--address",),
             quick=True)
    cli_case("--order random", ["--order", "random"], contains=("random",), quick=True)
    cli_case("--time-budget -5", ["--time-budget", "-5"], quick=True)
    cli_case("--time-budget 0", ["--time-budget", "0"])
    cli_case("--time-budget nan", ["--time-budget", "nan"])
    cli_case("--time-budget inf", ["--time-budget", "inf"])
    cli_case("--time-budget abc", ["--time-budget", "abc"])
    cli_case("unknown option --bogus", ["--bogus"])
    add(Case("bound without --spec", ["bound", TINY, "--out", p("out/nospec_opt")]))
    add(Case("bound without a model", ["bound", "--spec", base]))
    add(Case("unknown command", ["frobnicate"]))
    add(Case("collide without --cut", ["collide", TINY, "--spec", base, "--pair", "0", "0"]))
    add(Case("collide --pair with one number", ["collide", TINY, "--spec", base, "--cut", "relu1", "--pair", "0"]))
    cli_case("--n 2 --eps 0,0.25 --norm linf --classes 1,8 are honoured",
             ["--n", "2", "--eps", "0,0.25", "--norm", "linf", "--classes", "1,8", "--jobs", "1"], expect="ok",
             quick=True, check=lambda out: check_results(out, points__classes=[1, 8], points__n=4,
                                                          threat_model__norm="linf",
                                                          spec__eps=[0.0, 0.25]),
             what="exit 0; results.json: classes 1, 8; n 4; linf; eps [0, 0.25]")
    cli_case("distances --jobs 0", ["--jobs", "0"], command="distances", contains=("--jobs",))
    cli_case("distances --order random", ["--order", "random"], command="distances")
    collide = ["collide", TINY, "--spec", base]
    add(Case("collide --pair 5 0 (out of range for n=2)", collide + ["--cut", "relu1", "--pair", "5", "0"],
             contains=("out of range",), quick=True))
    add(Case("collide --pair -1 0", collide + ["--cut", "relu1", "--pair", "-1", "0"], contains=("out of range",)))
    add(Case("collide --pair 0 2 (second class out of range)", collide + ["--cut", "relu1", "--pair", "0", "2"],
             contains=("out of range",)))
    add(Case("collide --cut nonsense", collide + ["--cut", "nonsense", "--pair", "0", "0"], contains=("nonsense",),
             quick=True))
    add(Case("collide --method bogus", collide + ["--cut", "relu1", "--pair", "0", "0", "--method", "bogus"]))
    add(Case("collide --norm l3", collide + ["--cut", "relu1", "--pair", "0", "0", "--norm", "l3"]))
    add(Case("collide --classes 3,3", collide + ["--cut", "relu1", "--pair", "0", "0", "--classes", "3,3"]))
    add(Case("collide -o max_iterations=0", collide + ["--cut", "relu1", "--pair", "0", "0", "-o",
                                                       "max_iterations=0"]))
    add(Case("collide --cut relu2 on the Sigmoid model (unavailable)",
             ["collide", model("sigmoid"), "--spec", base, "--cut", "relu2", "--pair", "0", "0"],
             contains=("relu2", "Sigmoid"), setup=ensure("sigmoid")))
    add(Case("collide --json is valid JSON with the pair", collide + ["--cut", "relu1", "--pair", "1", "0", "--json"],
             expect="ok", check=lambda r: None if json.loads(r.stdout)["pair"] == [1, 0] else "wrong pair in JSON"))
    compare_ = ["compare", TINY, SMALLER, "--spec", base]
    add(Case("compare: 1 label for 2 models", compare_ + ["--cut", "relu1", "--label", "a", "--out",
                                                          p("out/cmp1")], contains=("label",), quick=True))
    add(Case("compare: duplicate labels", compare_ + ["--cut", "relu1", "--label", "a", "--label", "a", "--out",
                                                     p("out/cmp2")], contains=("label",)))
    add(Case("compare: cut missing in a model", ["compare", TINY, model("sigmoid"), "--spec", base, "--cut", "relu2",
                                                 "--out", p("out/cmp3")], contains=("relu2",),
             setup=ensure("sigmoid")))
    add(Case("compare: --eps a,b", compare_ + ["--cut", "relu1", "--eps", "a,b", "--out", p("out/cmp4")]))
    add(Case("compare: a garbage model among good ones", ["compare", TINY, p("garbage.onnx"), "--spec", base,
                                                          "--cut", "relu1", "--out", p("out/cmp5")],
             setup=None))
    gap_ = ["gap", TINY, "--spec", base]
    add(Case("gap --pairs 0", gap_ + ["--cut", "relu1", "--pairs", "0", "--out", p("out/gap0")], quick=True))
    add(Case("gap --cut nonsense", gap_ + ["--cut", "nonsense", "--pairs", "1", "--out", p("out/gap1")],
             contains=("nonsense",)))
    add(Case("gap --time-limit -1", gap_ + ["--cut", "relu1", "--pairs", "1", "--time-limit", "-1", "--out",
                                            p("out/gap2")], contains=("time_limit",)))
    add(Case("gap --solver descent-activeset (not exact)", gap_ + ["--cut", "relu1", "--pairs", "1", "--solver",
                                                                   "descent-activeset", "--out", p("out/gap3")]))
    add(Case("gap --solver cvxopt (no MIQCP)", gap_ + ["--cut", "relu1", "--pairs", "1", "--solver", "cvxopt",
                                                       "--out", p("out/gap4")]))
    add(Case("gap --descent exact-scip", gap_ + ["--cut", "relu1", "--pairs", "1", "--descent", "exact-scip",
                                                 "--out", p("out/gap5")], contains=("--descent",)))
    add(Case("gap --pairs 1000 with n=2 (4 pairs)", gap_ + ["--cut", "relu1", "--pairs", "1000", "--out",
                                                            p("out/gap6")], contains=("--pairs",)))
    add(Case("gap -o threads=0", gap_ + ["--cut", "relu1", "--pairs", "1", "-o", "threads=0", "--out",
                                         p("out/gap7")], contains=("threads",)))
    add(Case("solvers --bogus", ["solvers", "--bogus"]))
    add(Case("solvers --json lists every built-in backend", ["solvers", "--json"], expect="ok", quick=True,
             check=lambda r: None if {"activeset", "cvxopt", "highs", "scip", "gurobi", "mosek", "clarabel"}
             <= {b["name"] for b in json.loads(r.stdout)["backends"]} else "backends missing"))
    add(Case("inspect --json on a garbage file", ["inspect", p("garbage.onnx"), "--json"],
             setup=None))

    # ---------------- outputs ---------------------------------------------------------------
    def out_case(label: str, out: Path, setup=None, contains=(), quick=False, command="bound", spec_=None,
                 model_=TINY, timeout=120.0) -> None:
        add(Case(f"out: {label}", [command, model_, "--spec", spec_ or base, "--out", out, "--jobs", "1"],
                 contains=contains, quick=quick, setup=setup, timeout=timeout))

    out_case("--out is a regular file", p("out/isfile"), setup=lambda: write("out/isfile", b"x"), quick=True)
    out_case("--out under a regular file", p("out/isfile2/sub"), setup=lambda: write("out/isfile2", b"x"),
             quick=True)
    out_case("distances --out under a regular file", p("out/isfile3/sub"), setup=lambda: write("out/isfile3", b"x"),
             command="distances")

    def make_store(out: Path, spec_=None, model_=TINY) -> None:
        """A finished store made by the same command the case then runs (same fingerprint)."""
        if (out / "results.sqlite").exists():
            return
        r = fx(["bound", model_, "--spec", spec_ or base, "--out", out, "--jobs", "1"], 120)
        if r.rc != 0:
            raise RuntimeError(f"could not make a store in {out}: {r.stderr.strip()[:200]}")

    def garble(out: Path, mode: str, spec_: Path) -> None:
        make_store(out, spec_)
        db = out / "results.sqlite"
        for extra in ("results.sqlite-wal", "results.sqlite-shm"):
            (out / extra).unlink(missing_ok=True)
        data = bytearray(db.read_bytes())
        rng = np.random.default_rng(5)
        if mode == "middle":
            mid = len(data) // 2
            data[mid:mid + 4096] = rng.integers(0, 256, min(4096, len(data) - mid), dtype=np.uint8).tobytes()
        elif mode == "header":
            data[:100] = rng.integers(0, 256, 100, dtype=np.uint8).tobytes()
        elif mode == "truncate":
            data = data[:len(data) // 3]
        elif mode == "all":
            data = bytearray(rng.integers(0, 256, len(data), dtype=np.uint8).tobytes())
        elif mode == "pages":
            for k in range(1, len(data) // 4096):
                data[k * 4096 + 50:k * 4096 + 200] = rng.integers(0, 256, 150, dtype=np.uint8).tobytes()
        db.write_bytes(bytes(data))

    # a store with more pages (n 10, relu cuts) so that garbling lands in the tables
    store_spec = p("specs/store.json")
    for mode in ("middle", "header", "truncate", "all", "pages"):
        out = p(f"out/garbled_{mode}")
        out_case(f"results.sqlite garbled ({mode})", out, spec_=store_spec, quick=mode == "middle",
                 setup=lambda out=out, mode=mode: (spec_file("store", n_per_class=10, cuts=["input", "relu1", "relu2"]),
                                                   garble(out, mode, store_spec)))
    out_case("results.sqlite is a directory", p("out/db_dir"),
             setup=lambda: (p("out/db_dir/results.sqlite").mkdir(parents=True, exist_ok=True)))
    out_case("results.sqlite of another program (other tables)", p("out/db_foreign"),
             setup=lambda: _foreign_db(p("out/db_foreign")))
    out_case(".fxverify.lock is a directory", p("out/lock_dir"),
             setup=lambda: p("out/lock_dir/.fxverify.lock").mkdir(parents=True, exist_ok=True))
    out_case("store of another model in the same --out", p("out/other_model"), model_=SMALLER,
             setup=lambda: make_store(p("out/other_model")), contains=("different",), quick=True)
    out_case("store of other data (classes) in the same --out", p("out/other_data"),
             spec_=p("specs/other_classes.json"),
             setup=lambda: (make_store(p("out/other_data")), spec_file("other_classes", classes=[1, 8])),
             contains=("different",))
    out_case("results.json is a directory", p("out/json_dir"),
             setup=lambda: p("out/json_dir/results.json").mkdir(parents=True, exist_ok=True),
             contains=("results.json",), quick=True)
    out_case("loss01.png is a directory", p("out/png_dir"),
             setup=lambda: p("out/png_dir/loss01.png").mkdir(parents=True, exist_ok=True), contains=("loss01.png",))
    out_case("distances.npz is a directory", p("out/npz_out_dir"), command="distances",
             setup=lambda: p("out/npz_out_dir/distances.npz").mkdir(parents=True, exist_ok=True),
             contains=("distances.npz",), quick=True)

    def bad_matrix(out: Path, mode: str) -> None:
        make_store(out)
        with sqlite3.connect(out / "results.sqlite") as con:
            rows = con.execute("SELECT cut, file FROM matrices").fetchall()
            for cut, f in rows:
                path = out / f
                if mode == "garbage":
                    path.write_bytes(b"\x93NUMPY garbage that is not an array" * 3)
                elif mode == "shape":
                    np.save(path, np.zeros((3, 5)))
                elif mode == "truncated":
                    path.write_bytes(path.read_bytes()[:40])
                    continue  # sha256 no longer matches: fxverify must recompute it
                import hashlib

                con.execute("UPDATE matrices SET sha256 = ? WHERE cut = ?",
                            (hashlib.sha256(path.read_bytes()).hexdigest(), cut))

    out_case("closed-form matrix garbled (sha256 updated)", p("out/mat_garbage"),
             setup=lambda: bad_matrix(p("out/mat_garbage"), "garbage"))
    out_case("closed-form matrix of the wrong shape (sha256 updated)", p("out/mat_shape"),
             setup=lambda: bad_matrix(p("out/mat_shape"), "shape"))
    mt_out = p("out/mat_trunc")
    add(Case("out: closed-form matrix truncated (sha256 mismatch) is recomputed",
             ["bound", TINY, "--spec", base, "--out", mt_out, "--jobs", "1"], expect="ok",
             setup=lambda: (bad_matrix(mt_out, "truncated"), fx(["bound", TINY, "--spec", base, "--out",
                                                                 p("out/mat_ref"), "--jobs", "1"], 120)),
             check=lambda r: None if [x["edges"] for x in results(mt_out)["results"]]
             == [x["edges"] for x in results(p("out/mat_ref"))["results"]] else "bounds differ from a fresh run",
             what="exit 0; the same bounds as a fresh run"))
    add(Case("compare --out is a regular file", ["compare", TINY, "--spec", base, "--cut", "relu1", "--out",
                                                 p("out/cmp_isfile")], setup=lambda: write("out/cmp_isfile", b"x")))
    add(Case("gap --out under a regular file", ["gap", TINY, "--spec", base, "--cut", "relu1", "--pairs", "1",
                                                "--out", p("out/gap_isfile/sub")],
             setup=lambda: write("out/gap_isfile", b"x"), timeout=180))
    if os.path.exists("/dev/full"):
        for label, args in (("inspect", ["inspect", TINY]), ("inspect --json", ["inspect", TINY, "--json"]),
                            ("bound", ["bound", TINY, "--spec", base, "--out", p("out/devfull"), "--jobs", "1"]),
                            ("solvers --json", ["solvers", "--json"]), ("--version", ["--version"])):
            add(Case(f"out: standard output is /dev/full ({label})", runner=run_stdout_full(args),
                     contains=("standard output",), quick=label == "bound"))
    add(Case("out: store locked by a running fxverify", runner=run_locked, contains=("in use",), serial=True,
             quick=True, timeout=180, setup=lambda: spec_file("base")))

    # ---------------- method / solver combinations ------------------------------------------
    c1 = collide + ["--cut", "relu1", "--pair", "0", "0"]
    add(Case("collide --method exact --solver cvxopt", c1 + ["--method", "exact", "--solver", "cvxopt"],
             contains=("cvxopt",), quick=True))
    add(Case("collide --method exact --solver exact-highs under l2", c1 + ["--method", "exact", "--solver",
                                                                            "exact-highs"]))
    add(Case("collide --method exact --solver mosek (no MOSEK)", c1 + ["--method", "exact", "--solver", "mosek"],
             contains=("mosek",), quick=True))
    add(Case("collide --method exact --solver exact-mosek", c1 + ["--method", "exact", "--solver", "exact-mosek"],
             contains=("mosek",)))
    add(Case("collide --method faithful --solver exact-scip", c1 + ["--method", "faithful", "--solver",
                                                                    "exact-scip"]))
    add(Case("collide --method descent --solver exact-scip", c1 + ["--method", "descent", "--solver",
                                                                   "exact-scip"]))
    add(Case("collide --method exact -o bogus_option=1", c1 + ["--method", "exact", "-o", "bogus_option=1"]))
    add(Case("collide --method exact -o time_limit=-1", c1 + ["--method", "exact", "-o", "time_limit=-1"],
             contains=("time_limit",)))
    add(Case("collide --check-solver nonsense", c1 + ["--check-solver", "nonsense"], contains=("nonsense",),
             quick=True))
    add(Case("collide --check-solver highs under l2 (no cone LP)", c1 + ["--check-solver", "highs"]))
    add(Case("collide --check-solver mosek (not installed)", c1 + ["--check-solver", "mosek"], contains=("mosek",)))
    add(Case("collide --method exact --solver gurobi on the 784-300-200 model at relu1 (size-limited licence)",
             ["collide", BIG, "--spec", base, "--cut", "relu1", "--pair", "0", "0", "--method", "exact", "--solver",
              "gurobi"], contains=("gurobi", "licen", "200"), quick=True, timeout=240))
    add(Case("collide --method exact --solver gurobi on the tiny model is solved", c1 + ["--method", "exact",
                                                                                          "--solver", "gurobi"],
             expect="ok", check=lambda r: None if "exact: optimal" in r.stdout else "no proven optimum reported",
             what="exit 0; 'exact: optimal' (the 784-10 model fits the size-limited licence)"))
    add(Case("collide --method closed_form at a ReLU cut says not-applicable", c1 + ["--method", "closed_form"],
             expect="ok", check=lambda r: None if "not-applicable" in r.stdout and "no verified collision" in r.stdout
             else "the ReLU cut is not reported as not-applicable",
             what="exit 0; the table says not-applicable and 'no verified collision'"))
    add(Case("bound --solver scip (backend without duals)", ["bound", TINY, "--spec", base, "--solver", "scip",
                                                             "--out", p("out/scip_descent")]))
    add(Case("bound --solver exact-scip --norm l3", ["bound", TINY, "--spec", base, "--solver", "exact-scip",
                                                      "--norm", "l3", "--out", p("out/scip_l3")]))

    # ---------------- process faults --------------------------------------------------------
    add(Case("SIGTERM of a running bound --jobs 2", runner=run_signal(signal.SIGTERM, "sigterm"), code=143,
             contains=("SIGTERM",), check=_store_check, serial=True, quick=True, timeout=180,
             what="exit 143, one line, store whole, no orphan workers, no results.json"))
    add(Case("SIGINT of a running bound --jobs 2", runner=run_signal(signal.SIGINT, "sigint"), code=130,
             contains=("interrupted",), check=_store_check, serial=True, timeout=180))
    add(Case("SIGTERM of a running bound --jobs 1", runner=run_signal(signal.SIGTERM, "sigterm1", jobs=1), code=143,
             contains=("SIGTERM",), check=_store_check, serial=True, timeout=180))
    add(Case("kill -9 of a worker of a running bound --jobs 2", runner=run_kill_worker, contains=("worker",),
             check=_store_check, serial=True, quick=True, timeout=240))
    add(Case("kill -9 of a running bound, then the same command resumes", runner=run_kill9_and_resume, expect="ok",
             check=_resume_check, serial=True, timeout=400,
             what="exit 0; the resumed run's bounds equal an uninterrupted run's"))
    return [c for c in cases if c is not None]


# ------------------------------------------------------------------------------------------
# Hostile and careless input (issues 23 and 24): terminal injection, external data, sparse
# initializers, sizes and trip counts, spec and data edge cases, the Python API, resource
# limits, the environment, and the store as a way out of the run's directory
# ------------------------------------------------------------------------------------------
import re as _re  # noqa: E402

#: what must never reach a terminal raw: C0 controls but tab/newline/CR, DEL, C1 controls,
#: bidirectional overrides and isolates
_RAW_CONTROL = _re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def no_raw_controls(res: Result) -> str | None:
    """The output holds no escape sequence, control character or bidirectional override."""
    for name, text in (("stdout", res.stdout), ("stderr", res.stderr)):
        m = _RAW_CONTROL.search(text)
        if m:
            return f"raw {m.group()!r} on {name}: {text[max(0, m.start() - 30):m.start() + 30]!r}"
    return None


def _prlimit(*limits: str) -> list[str] | None:
    tool = shutil.which("prlimit")
    return None if tool is None else [tool, *limits, "--"]


def run_with(args, *, prefix=(), env=None, stdin=None, stdout="pipe", stderr="pipe", close=(), cwd=None,
             expect_no_stderr=False) -> Callable[[Case], Result]:
    """The CLI with a changed environment: a command prefix (prlimit), extra environment
    variables, standard streams redirected (a path, "pipe", "broken": a pipe whose reader is
    already gone) or closed (``close``: descriptor numbers)."""

    def runner(case: Case) -> Result:
        t0 = time.perf_counter()
        files = []

        def stream(spec):
            if spec == "pipe":
                return subprocess.PIPE
            if spec == "broken":
                r, w = os.pipe()
                os.close(r)
                files.append(w)
                return w
            if spec is None:
                return None
            f = open(spec, "wb")
            files.append(f)
            return f

        full_env = dict(os.environ, **(env or {}))
        preexec = (lambda: [os.close(fd) for fd in close]) if close else None
        proc = subprocess.Popen(list(prefix) + CLI + [str(a) for a in args], stdin=stdin or subprocess.DEVNULL,
                                stdout=stream(stdout), stderr=stream(stderr), cwd=cwd or WORK, env=full_env,
                                start_new_session=True, preexec_fn=preexec)
        for f in files:
            os.close(f) if isinstance(f, int) else f.close()
        res = _finish(proc, t0, case.timeout)
        return res

    return runner


def exit_code_only(res: Result) -> str | None:
    return None


def api(body: str) -> Callable[[Case], Result]:
    """A Python script using the documented API: an FxverifyError is one ``error:`` line and
    exit 2; any other exception is a traceback, a return a (silent) result."""
    script = ("import sys, numpy as np, fxverify\n"
              f"TINY = {str(TINY)!r}\nSPEC = {str(SPEC)!r}\n"
              "def main():\n" + "".join(f"    {line}\n" for line in body.strip().splitlines()) +
              "try:\n    main()\nexcept fxverify.FxverifyError as err:\n"
              "    print(f'error: {err}', file=sys.stderr)\n    sys.exit(2)\n")

    def runner(case: Case) -> Result:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                cwd=WORK, start_new_session=True)
        return _finish(proc, t0, case.timeout)

    return runner


def _evil_model(name: str, *, producer="fault_sweep", node_names=("m", "r"), input_name="x", extra=None) -> Path:
    TP, H, NH = _onnx()
    nodes = [H.make_node("MatMul", [input_name, "W1"], ["h"], name=node_names[0]),
             H.make_node("Relu", ["h"], ["r"], name=node_names[1]), H.make_node("MatMul", ["r", "W2"], ["y"])]
    if extra is not None:
        nodes = nodes[:2] + [H.make_node("Sigmoid", ["r"], ["s"], name=extra), H.make_node("MatMul", ["s", "W2"],
                                                                                           ["y"])]
    g = H.make_graph(nodes, "g", [vi(input_name, ["N", 784])], [vi("y", ["N", 2])],
                     [NH.from_array(w(784, 8), "W1"), NH.from_array(w(8, 2), "W2")])
    m = H.make_model(g, opset_imports=[H.make_opsetid("", 13)], producer_name=producer, producer_version="1")
    m.ir_version = 8
    return write(name, m.SerializeToString())


ESC_TITLE = "\x1b]0;owned\x07"
ESC_CLEAR = "\x1b[2J\x1b[H"
RTL = "\u202e"


def _external(name: str, location: str = "weights.bin", *, edit=None, data_name: str | None = None) -> Path:
    """The tiny model saved with its weights in an external file in ``ext/NAME/`` (``edit``
    may then rewrite the model's external-data fields)."""
    import onnx

    d = p(f"ext/{name}")
    d.mkdir(parents=True, exist_ok=True)
    m = onnx.load(str(TINY))
    onnx.save_model(m, str(d / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_name or "weights.bin", size_threshold=0)
    if edit is not None or location != (data_name or "weights.bin"):
        m = onnx.load(str(d / "m.onnx"), load_external_data=False)
        for t in m.graph.initializer:
            for entry in t.external_data:
                if entry.key == "location":
                    entry.value = location
            if edit is not None:
                edit(t)
        (d / "m.onnx").write_bytes(m.SerializeToString())
    return d / "m.onnx"


def _sparse_model(name: str, *, indices=None, dims=(784, 8)) -> Path:
    TP, H, NH = _onnx()
    W = w(784, 8)
    W[np.abs(W) < 0.1] = 0
    flat = np.flatnonzero(W.ravel())
    idx = flat if indices is None else indices(flat)
    st = H.make_sparse_tensor(NH.from_array(W.ravel()[flat], "W1"), NH.from_array(np.asarray(idx, np.int64), "W1_i"),
                              list(dims))
    g = H.make_graph([H.make_node("MatMul", ["x", "W1"], ["h"]), H.make_node("Relu", ["h"], ["r"]),
                      H.make_node("MatMul", ["r", "W2"], ["y"])], "g", [vi("x", ["N", 784])], [vi("y", ["N", 2])],
                     [NH.from_array(w(8, 2), "W2")], sparse_initializer=[st])
    m = H.make_model(g, opset_imports=[H.make_opsetid("", 13)])
    m.ir_version = 8
    return write(name, m.SerializeToString())


def _const_then_add(name: str, const_nodes, const_out: str, opset: int = 13) -> Path:
    """x + (a constant computed by ``const_nodes``) -> MatMul -> Relu: the constant is folded
    at load."""
    TP, H, _ = _onnx()
    nodes = list(const_nodes) + [H.make_node("Add", ["x", const_out], ["a"]), H.make_node("MatMul", ["a", "W1"], ["h"]),
                                 H.make_node("Relu", ["h"], ["y"])]
    return write(name, model_bytes(nodes, [vi("x", ["N", 784])], [vi("y", ["N", 8])], {"W1": w(784, 8)}, opset=opset))


def _loop_model(name: str, trip: int | None) -> Path:
    TP, H, NH = _onnx()
    body = H.make_graph([H.make_node("Identity", ["c_in"], ["c_out"]), H.make_node("Identity", ["v_in"], ["v_out"])],
                        "body", [H.make_tensor_value_info("i", TP.INT64, []), H.make_tensor_value_info("c_in", TP.BOOL, []),
                                 vi("v_in", [784])],
                        [H.make_tensor_value_info("c_out", TP.BOOL, []), vi("v_out", [784])])
    inits = {"c": np.array(True), "b0": np.zeros(784, np.float32), "W1": w(784, 8)}
    if trip is not None:
        inits["M"] = np.array(trip, np.int64)
    nodes = [H.make_node("Loop", ["M" if trip is not None else "", "c", "b0"], ["bL"], body=body),
             H.make_node("Add", ["x", "bL"], ["a"]), H.make_node("MatMul", ["a", "W1"], ["h"]),
             H.make_node("Relu", ["h"], ["y"])]
    return write(name, model_bytes(nodes, [vi("x", ["N", 784])], [vi("y", ["N", 8])], inits))


def _ort_refuses(name: str) -> Path:
    """Valid ONNX that onnxruntime cannot run on its CPU provider (Relu on bfloat16), which
    makes onnxruntime log before raising."""
    TP, H, _ = _onnx()
    nodes = [H.make_node("MatMul", ["x", "W1"], ["h"]), H.make_node("Cast", ["h"], ["hb"], to=TP.BFLOAT16),
             H.make_node("Relu", ["hb"], ["rb"]), H.make_node("Cast", ["rb"], ["y"], to=TP.FLOAT)]
    return write(name, model_bytes(nodes, [vi("x", ["N", 784])], [vi("y", ["N", 8])], {"W1": w(784, 8)}, opset=14))


def hostile_cases() -> list[Case]:
    cases: list[Case] = []
    add = cases.append
    base = p("specs/base.json")
    TP, H, NH = _onnx()

    def once(fn):
        done = []

        def setup():
            if not done:
                done.append(fn())
        return setup

    # ---------------- terminal injection ----------------------------------------------------
    evil = p("m_evil.onnx")
    make_evil = once(lambda: _evil_model("m_evil.onnx", producer=ESC_TITLE + "prod" + RTL,
                                         node_names=(ESC_CLEAR + "lin", RTL + "relu\x9b31m"),
                                         input_name="x" + ESC_TITLE))
    add(Case("tty: inspect of a model with escapes in producer, node and input names", ["inspect", evil],
             expect="ok", setup=make_evil, check=no_raw_controls, quick=True,
             what="exit 0; no raw escape, control or RTL character on stdout or stderr"))
    add(Case("tty: inspect --json of the same model", ["inspect", evil, "--json"], expect="ok", setup=make_evil,
             check=no_raw_controls))
    add(Case("tty: bound on the same model", ["bound", evil, "--spec", base, "--out", p("out/tty_bound"), "--jobs",
                                              "1", "--cuts", "relu1"], expect="ok", setup=make_evil,
             check=no_raw_controls))
    evil_sig = p("m_evil_sigmoid.onnx")
    make_evil_sig = once(lambda: _evil_model("m_evil_sigmoid.onnx", extra=ESC_TITLE + "squash" + RTL))
    add(Case("tty: inspect lists an unsupported node whose name holds escapes", ["inspect", evil_sig],
             expect="ok", setup=make_evil_sig, check=no_raw_controls))
    add(Case("tty: error naming an unavailable cut after a node with escapes",
             ["bound", evil_sig, "--spec", base, "--cuts", "linear2", "--out", p("out/tty_sig")],
             setup=make_evil_sig, check=no_raw_controls, contains=("linear2",)))
    esc_path = p(f"dir{ESC_CLEAR}{RTL}/m{ESC_TITLE}.onnx")
    add(Case("tty: model path with escapes (file not found)", ["inspect", p(f"nodir{ESC_CLEAR}{RTL}/m{ESC_TITLE}.onnx")],
             check=no_raw_controls, contains=("not found",), quick=True))
    add(Case("tty: model path with escapes (a real model)", ["inspect", esc_path], expect="ok",
             check=no_raw_controls,
             setup=lambda: (esc_path.parent.mkdir(parents=True, exist_ok=True), shutil.copy(TINY, esc_path))))
    esc_spec = p(f"specs/spec{ESC_CLEAR}.json")
    add(Case("tty: spec path with escapes (not JSON)", ["bound", TINY, "--spec", esc_spec, "--out", p("out/tty_spec")],
             setup=lambda: write(f"specs/spec{ESC_CLEAR}.json", "{nope"), check=no_raw_controls))
    add(Case("tty: npz data path with escapes in the run's output",
             ["bound", TINY, "--spec", p("specs/tty_npz.json"), "--out", p("out/tty_npz"), "--jobs", "1"],
             expect="ok", check=no_raw_controls,
             setup=lambda: (npz(f"d{ESC_TITLE}", X=mnist_subset(10)[0].reshape(20, -1), y=mnist_subset(10)[1]),
                            spec_file("tty_npz", data={"npz": f"../data/d{ESC_TITLE}.npz"}))))
    add(Case("tty: --cuts with an escape sequence", ["bound", TINY, "--spec", base, "--cuts", ESC_CLEAR + "relu1",
                                                     "--out", p("out/tty_cuts")], check=no_raw_controls))
    add(Case("tty: compare --label with escapes", ["compare", TINY, "--spec", base, "--cut", "relu1", "--label",
                                                   ESC_TITLE, "--out", p("out/tty_cmp")], expect="ok",
             check=no_raw_controls, timeout=180))
    add(Case("tty: spec description with escapes does not reach the terminal",
             ["bound", TINY, "--spec", p("specs/tty_desc.json"), "--out", p("out/tty_desc"), "--jobs", "1"],
             expect="ok", check=no_raw_controls,
             setup=lambda: spec_file("tty_desc", description=ESC_TITLE + ESC_CLEAR + RTL)))

    # ---------------- external data ----------------------------------------------------------
    def ext_ok(res: Result) -> str | None:
        try:
            doc = json.loads(res.stdout)
        except ValueError:
            return "stdout is not JSON"
        return None if doc["agreement"]["ok"] and doc["cuts"][-1] == "linear3" else "does not agree with onnxruntime"

    add(Case("extdata: inspect from another working directory agrees with onnxruntime",
             runner=run_with(["inspect", p("ext/ok/m.onnx"), "--json"], cwd=p("specs")), expect="ok", quick=True,
             setup=once(lambda: _external("ok")), check=ext_ok,
             what="exit 0; the external weights are read beside the model; agreement ok"))
    add(Case("extdata: bound from another working directory",
             runner=run_with(["bound", p("ext/ok/m.onnx"), "--spec", base, "--out", p("out/ext_bound"), "--jobs", "1"],
                             cwd=p("specs")), expect="ok", setup=once(lambda: _external("ok")),
             check=check_results(p("out/ext_bound"), complete=True)))
    add(Case("extdata: relative model path, run from the model's parent",
             runner=run_with(["inspect", "ok/m.onnx"], cwd=p("ext")), expect="ok", setup=once(lambda: _external("ok"))))

    def changed_weights() -> None:
        """A finished run, then the same model with other external weights in the same --out."""
        src = _external("swap")
        out = p("out/ext_swap")
        if not (out / "results.sqlite").exists():
            r = fx(["bound", src, "--spec", base, "--out", out, "--jobs", "1"], 120)
            if r.rc != 0:
                raise RuntimeError(f"first run failed: {r.stderr.strip()[:200]}")
        import onnx

        m = onnx.load(str(TINY))
        for t in m.graph.initializer:
            a = NH.to_array(t).copy()
            a *= 1.5
            t.CopyFrom(NH.from_array(a, t.name))
        tmp = p("ext/swap_tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        onnx.save_model(m, str(tmp / "m.onnx"), save_as_external_data=True, location="weights.bin", size_threshold=0)
        shutil.copy(tmp / "weights.bin", src.parent / "weights.bin")  # the .onnx file itself is unchanged

    add(Case("extdata: other weights in the external file are another model (store fingerprint)",
             ["bound", p("ext/swap/m.onnx"), "--spec", base, "--out", p("out/ext_swap"), "--jobs", "1"],
             setup=changed_weights, contains=("different",), quick=True,
             what="the store of the old weights is refused, never reused"))
    outside = p("outside/secret.data")

    def make_outside():
        if not outside.exists():
            write("outside/secret.data", b"\x00" * 40000)

    for label, loc, contains in (("'..' out of the model's directory", "../../outside/secret.data", ("..",)),
                                 ("an absolute path", str(p("outside/secret.data")), ("absolute",)),
                                 ("/dev/zero", "/dev/zero", ()), ("a missing file", "nope.bin", ("no such file",)),
                                 ("an empty location", "", ()), ("a directory", "sub", ("regular file",))):
        slug = "ext_" + "".join(ch if ch.isalnum() else "_" for ch in label)[:30]
        add(Case(f"extdata: location is {label}", ["inspect", p(f"ext/{slug}/m.onnx")], contains=contains,
                 guard=(outside,), quick=label.startswith("'..'"),
                 setup=lambda slug=slug, loc=loc: (make_outside(), p(f"ext/{slug}/sub").mkdir(parents=True, exist_ok=True),
                                                   _external(slug, loc))))

    def symlinked(slug: str, target_inside: bool):
        def setup():
            make_outside()
            m = _external(slug, data_name="real.bin")
            link = m.parent / "weights.bin"
            if not link.is_symlink():
                link.symlink_to(m.parent / "real.bin" if target_inside else outside)
            import onnx

            mm = onnx.load(str(m), load_external_data=False)
            for t in mm.graph.initializer:
                for e in t.external_data:
                    if e.key == "location":
                        e.value = "weights.bin"
            m.write_bytes(mm.SerializeToString())
        return setup

    add(Case("extdata: location is a symlink to a file outside", ["inspect", p("ext/ext_symout/m.onnx")],
             contains=("symbolic link",), guard=(outside,), setup=symlinked("ext_symout", False)))
    add(Case("extdata: location is a symlink inside the directory", ["inspect", p("ext/ext_symin/m.onnx")],
             contains=("symbolic link",), setup=symlinked("ext_symin", True)))

    def set_field(key, value):
        def edit(t):
            for e in t.external_data:
                if e.key == key:
                    e.value = value
                    return
            e = t.external_data.add()
            e.key, e.value = key, value
        return edit

    for label, edit in (("offset beyond the file", set_field("offset", "999999999")),
                        ("negative offset", set_field("offset", "-5")),
                        ("length beyond the file", set_field("length", "999999999")),
                        ("non-numeric length", set_field("length", "lots")),
                        ("length shorter than the tensor", set_field("length", "4"))):
        slug = "ext_" + "".join(ch if ch.isalnum() else "_" for ch in label)[:30]
        add(Case(f"extdata: {label}", ["inspect", p(f"ext/{slug}/m.onnx")],
                 setup=lambda slug=slug, edit=edit: _external(slug, edit=edit)))
    add(Case("extdata: external file truncated", ["inspect", p("ext/ext_trunc/m.onnx")], contains=("bytes",),
             setup=lambda: (lambda m: (m.parent / "weights.bin").write_bytes(
                 (m.parent / "weights.bin").read_bytes()[:1000]))(_external("ext_trunc"))))

    # ---------------- sparse initializers -----------------------------------------------------
    add(Case("sparse: a sparse_initializer loads and agrees with onnxruntime", ["inspect", p("m_sparse.onnx"), "--json"],
             expect="ok", quick=True, setup=once(lambda: _sparse_model("m_sparse.onnx")),
             check=lambda r: None if json.loads(r.stdout)["agreement"]["ok"] else "does not agree",
             what="exit 0 (valid ONNX), agreement ok"))
    add(Case("sparse: bound with a sparse initializer", ["bound", p("m_sparse.onnx"), "--spec", base, "--out",
                                                          p("out/sparse"), "--jobs", "1"], expect="ok",
             setup=once(lambda: _sparse_model("m_sparse.onnx")),
             check=check_results(p("out/sparse"), complete=True)))
    add(Case("sparse: index outside the shape", ["inspect", p("m_sparse_oob.onnx")],
             setup=lambda: _sparse_model("m_sparse_oob.onnx", indices=lambda f: f + 784 * 8)))
    add(Case("sparse: indices of the wrong length", ["inspect", p("m_sparse_len.onnx")],
             setup=lambda: _sparse_model("m_sparse_len.onnx", indices=lambda f: f[:-3])))
    add(Case("sparse: dense shape of 10^12 values", ["inspect", p("m_sparse_huge.onnx")], timeout=60,
             setup=lambda: _sparse_model("m_sparse_huge.onnx", dims=(10**6, 10**6))))

    # ---------------- sizes and trip counts before allocating or folding ----------------------
    add(Case("size: Loop with trip count 10^12 folded at load", ["inspect", p("m_loop.onnx")], timeout=60,
             contains=("trip count",), quick=True, setup=lambda: _loop_model("m_loop.onnx", 10**12)))
    add(Case("size: Loop without a trip count", ["inspect", p("m_loop_none.onnx")], timeout=60,
             setup=lambda: _loop_model("m_loop_none.onnx", None)))
    add(Case("size: Loop with trip count 3 folds", ["inspect", p("m_loop3.onnx")], expect="ok", timeout=60,
             setup=lambda: _loop_model("m_loop3.onnx", 3)))
    big = np.array([10**6, 10**6], np.int64)
    add(Case("size: ConstantOfShape of 10^12 values", ["inspect", p("m_cos.onnx")], timeout=60,
             setup=lambda: _const_then_add("m_cos.onnx", [H.make_node("Constant", [], ["s"], value=NH.from_array(big)),
                                                          H.make_node("ConstantOfShape", ["s"], ["k"])], "k")))
    add(Case("size: Expand to 10^12 values", ["inspect", p("m_expand.onnx")], timeout=60,
             setup=lambda: _const_then_add("m_expand.onnx", [
                 H.make_node("Constant", [], ["v"], value=NH.from_array(np.ones((1, 1), np.float32))),
                 H.make_node("Constant", [], ["s"], value=NH.from_array(big)),
                 H.make_node("Expand", ["v", "s"], ["k"])], "k")))
    add(Case("size: Tile by 10^9", ["inspect", p("m_tile.onnx")], timeout=60,
             setup=lambda: _const_then_add("m_tile.onnx", [
                 H.make_node("Constant", [], ["v"], value=NH.from_array(np.ones((1, 784), np.float32))),
                 H.make_node("Constant", [], ["r"], value=NH.from_array(np.array([10**9, 1], np.int64))),
                 H.make_node("Tile", ["v", "r"], ["k"])], "k")))
    add(Case("size: Range of 10^12 values", ["inspect", p("m_range.onnx")], timeout=60,
             setup=lambda: _const_then_add("m_range.onnx", [
                 H.make_node("Constant", [], ["a"], value=NH.from_array(np.array(0.0, np.float32))),
                 H.make_node("Constant", [], ["b"], value=NH.from_array(np.array(1e12, np.float32))),
                 H.make_node("Constant", [], ["d"], value=NH.from_array(np.array(1.0, np.float32))),
                 H.make_node("Range", ["a", "b", "d"], ["k"])], "k")))
    add(Case("size: input of 10^8 values", ["inspect", p("m_in1e8.onnx")], timeout=60, contains=("100,000,000",),
             quick=True,
             setup=lambda: write("m_in1e8.onnx", model_bytes([H.make_node("Relu", ["x"], ["y"])],
                                                             [vi("x", [1, 10**8])], [vi("y", [1, 10**8])], {}))))
    add(Case("size: Pad of an activation by 10^9", ["inspect", p("m_pad.onnx")], timeout=60,
             setup=lambda: write("m_pad.onnx", model_bytes(
                 [H.make_node("Pad", ["x", "pads"], ["xp"]), H.make_node("Relu", ["xp"], ["y"])],
                 [vi("x", [1, 784])], [vi("y", None)], {"pads": np.array([0, 0, 0, 10**9], np.int64)}))))
    add(Case("size: broadcast of the input against a (10^5, 1) constant", ["inspect", p("m_bcast.onnx")],
             timeout=60, setup=lambda: write("m_bcast.onnx", model_bytes(
                 [H.make_node("Add", ["x", "c"], ["a"]), H.make_node("Relu", ["a"], ["y"])],
                 [vi("x", [1, 784])], [vi("y", None)], {"c": np.zeros((10**5, 1), np.float32)}))))
    add(Case("size: MaxPool with a 10^5 x 10^5 window", ["inspect", p("m_pool.onnx")], timeout=60,
             setup=lambda: write("m_pool.onnx", model_bytes(
                 [H.make_node("MaxPool", ["x"], ["y"], kernel_shape=[10**5, 10**5], pads=[10**5] * 4)],
                 [vi("x", [1, 1, 28, 28])], [vi("y", None)], {}))))

    # ---------------- spec and data edge cases -------------------------------------------------
    def raw_spec(slug: str, text: str) -> Callable[[], Path]:
        return lambda: write(f"specs/{slug}.json", text)

    def spec_run(slug: str, extra=()) -> list:
        return ["bound", TINY, "--spec", p(f"specs/{slug}.json"), "--out", p(f"out/{slug}"), "--jobs", "1", *extra]

    dup = json.dumps(BASE)[:-1] + ', "eps": [5.0]}'
    add(Case("spec+: duplicate top-level key (eps twice)", spec_run("dup_eps"), setup=raw_spec("dup_eps", dup),
             contains=("eps", "twice"), quick=True))
    add(Case("spec+: duplicate key inside selection", spec_run("dup_sel"),
             setup=raw_spec("dup_sel", json.dumps(BASE)[:-1] + ', "selection": {"method": "random", "seed": 1, '
                            '"seed": 2}}'), contains=("seed",)))
    add(Case("spec+: -0.0 in the grid is the budget 0", spec_run("negzero"), expect="ok",
             setup=lambda: write("specs/negzero.json", json.dumps(BASE).replace("[0.0, 1.0, 2.0]", "[-0.0, 1.0]")),
             check=check_results(p("out/negzero"), spec__eps=lambda e: None if e == [0.0, 1.0] and
                                 "-0" not in json.dumps(e) else f"grid {e}")))
    add(Case("spec+: --eps -0,1 is the budget 0", ["bound", TINY, "--spec", base, "--out", p("out/negzero_cli"),
                                                  "--jobs", "1", "--eps", "-0,1"], expect="ok",
             check=check_results(p("out/negzero_cli"), spec__eps=lambda e: None if "-0" not in json.dumps(e)
                                 else f"grid {e}")))
    for label, seed in (("1e20", "1e20"), ("2^64", str(2**64)), ("1e300", "1e300")):
        slug = "seed_" + label.replace("^", "_")
        add(Case(f"spec+: selection seed {label}", spec_run(slug), contains=("seed",), quick=label == "1e20",
                 setup=raw_spec(slug, json.dumps(spec_doc(selection={"method": "random", "seed": 1})).replace(
                     '"seed": 1', f'"seed": {seed}'))))
    add(Case("spec+: selection seed 1e3 written as a float runs", spec_run("seed_float"), expect="ok",
             setup=raw_spec("seed_float", json.dumps(spec_doc(selection={"method": "random", "seed": 1})).replace(
                 '"seed": 1', '"seed": 1e3')), check=check_results(p("out/seed_float"), points__n=4)))
    for tb in ("1e300", "1e10", "3e9"):
        add(Case(f"spec+: time_budget {tb}", spec_run(f"tb_{tb}"), contains=("time_budget",), quick=tb == "1e300",
                 setup=raw_spec(f"tb_{tb}", json.dumps(BASE)[:-1] + f', "time_budget": {tb}}}')))
    for tb in ("1e10", "1e300", "9.3e9"):
        add(Case(f"cli+: --time-budget {tb}", ["bound", TINY, "--spec", base, "--out", p(f"out/cli_tb_{tb}"),
                                               "--time-budget", tb], contains=("time budget",), quick=tb == "1e10"))
    long_name = "x" * 5000
    add(Case("path: a 5,000-character model path", ["inspect", p(long_name + ".onnx")], quick=True))
    add(Case("path: a 5,000-character spec path", ["bound", TINY, "--spec", p(long_name + ".json"), "--out",
                                                   p("out/longspec")]))
    add(Case("path: a 5,000-character --out", ["bound", TINY, "--spec", base, "--out", p("out/" + long_name)]))
    add(Case("path: a 5,000-character npz path in the spec", spec_run("longnpz"),
             setup=lambda: spec_file("longnpz", data={"npz": "../" + long_name + ".npz"})))
    add(Case("path: a 5,000-character idx_dir in the spec", spec_run("longidx"),
             setup=lambda: spec_file("longidx", data={"idx_dir": "../" + long_name})))
    add(Case("path: 300 nested directories of 250 characters", ["inspect", p("/".join(["d" * 250] * 300) + "/m.onnx")]))
    for label, norm in (("std 1e-300", {"mean": 0.1, "std": 1e-300}), ("mean 1e308", {"mean": 1e308, "std": 0.3}),
                        ("mean -1e308", {"mean": -1e308, "std": 0.3}), ("std 1e308", {"mean": 0.0, "std": 1e308}),
                        ("std 1e-12 per channel", {"mean": [0.1], "std": [1e-12]})):
        slug = "norm_" + "".join(ch if ch.isalnum() else "_" for ch in label)
        exp = "ok" if label == "std 1e308" else "error"
        add(Case(f"spec+: normalize {label}", spec_run(slug), setup=lambda slug=slug, norm=norm: spec_file(
            slug, normalize=norm), expect=exp, contains=("normalize",) if exp == "error" else (),
            quick=label == "std 1e-300",
            check=check_results(p(f"out/{slug}"), complete=True) if exp == "ok" else None))
    Xi, yi = mnist_subset(10)

    def idx_labels(slug: str, labels: np.ndarray, code: int):
        def setup():
            d = idx_dir(slug, labels=idx_bytes(labels, code))
            spec_file(slug, data={"idx_dir": f"../idx/{slug}"})
            return d
        return setup

    add(Case("data+: IDX float labels 3.7 / 7.2 are refused, not truncated", spec_run("idx_frac"),
             setup=idx_labels("idx_frac", np.where(yi == 3, 3.7, 7.2).astype(">f8"), 0x0E), contains=("3.7",),
             quick=True))
    add(Case("data+: IDX float labels 3.0 / 7.0 are whole numbers", spec_run("idx_whole"), expect="ok",
             setup=idx_labels("idx_whole", yi.astype(">f4"), 0x0D), check=check_results(p("out/idx_whole"), points__n=4)))
    add(Case("data+: IDX labels of 1e20", spec_run("idx_huge"),
             setup=idx_labels("idx_huge", np.where(yi == 3, 1e20, 7.0).astype(">f8"), 0x0E), check=no_raw_controls))
    add(Case("data+: IDX labels with NaN", spec_run("idx_nan"),
             setup=idx_labels("idx_nan", np.where(yi == 3, np.nan, 7.0).astype(">f8"), 0x0E)))
    add(Case("data+: IDX images of NaN", spec_run("idx_nanimg"),
             setup=lambda: (idx_dir("idx_nanimg", images=idx_bytes(np.full(Xi.shape, np.nan, ">f4"), 0x0D)),
                            spec_file("idx_nanimg", data={"idx_dir": "../idx/idx_nanimg"}))))
    for label, y in (("1e20", np.where(yi == 3, 1e20, 7.0)), ("-1e20", np.where(yi == 3, -1e20, 7.0)),
                     ("NaN", np.where(yi == 3, np.nan, 7.0)), ("3.5", np.where(yi == 3, 3.5, 7.0)),
                     ("booleans", yi == 3), ("uint64 2^64-1", np.where(yi == 3, 2**64 - 1, 7).astype(np.uint64))):
        slug = "npzlab_" + "".join(ch if ch.isalnum() else "_" for ch in label)
        add(Case(f"data+: npz labels {label}", spec_run(slug), check=no_raw_controls,
                 setup=lambda slug=slug, y=y: (npz(slug, X=Xi.reshape(len(Xi), -1), y=y),
                                               spec_file(slug, data={"npz": f"../data/{slug}.npz"}))))

    # ---------------- the Python API ----------------------------------------------------------
    prelude = ("net = fxverify.load_model(TINY)\npts = fxverify.load_spec(SPEC).load_points()\n"
               "u, v = pts.X_a[0], pts.X_b[0]\n")

    def api_case(label: str, body: str, expect="error", contains=(), quick=False, check=None, needs_net=True):
        add(Case(f"api: {label}", runner=api((prelude if needs_net else "") + body), expect=expect,
                 contains=contains, quick=quick, check=check, timeout=120))

    api_case("collide(method='bogus')", "fxverify.collide(net, 'relu2', u, v, method='bogus')",
             contains=("bogus",), quick=True)
    api_case("collide with u as a list of strings", "fxverify.collide(net, 'relu2', [str(x) for x in u], v)",
             contains=("u",), quick=True)
    api_case("collide with a complex u", "fxverify.collide(net, 'relu2', u + 1j, v)", contains=("complex",))
    api_case("collide with v of booleans", "fxverify.collide(net, 'relu2', u, v > 0.5)")
    api_case("collide with network=None", "fxverify.collide(None, 'relu2', u, v)", contains=("Network",),
             quick=True)
    api_case("collide with a path instead of a Network", "fxverify.collide(TINY, 'relu2', u, v)",
             contains=("load_model",))
    api_case("collide with a 3-value domain", "fxverify.collide(net, 'relu2', u, v, domain=(0, 1, 2))",
             contains=("domain",))
    api_case("collide with domain=(1, 0)", "fxverify.collide(net, 'relu2', u, v, domain=(1, 0))")
    api_case("collide with a cut given as a number", "fxverify.collide(net, 3, u, v)")
    api_case("collide with norm=2", "fxverify.collide(net, 'relu2', u, v, norm=2)")
    api_case("collide with solver=5", "fxverify.collide(net, 'relu2', u, v, solver=5)")
    api_case("collide with a ragged u", "fxverify.collide(net, 'relu2', [[1, 2], [3]], v)")
    api_case("Collider(None, engine)", "fxverify.Collider(None, fxverify.resolve_engine())")
    api_case("Collider(net, 'descent-activeset') (a name, not an Engine)",
             "fxverify.Collider(net, 'descent-activeset')")
    api_case("Collider.collide_cuts with a grid given as a string",
             "fxverify.Collider(net, fxverify.resolve_engine()).collide_cuts(u, v, grid='12')")
    api_case("lower_bounds with a negative budget", "fxverify.lower_bounds(np.array([[-1.0, 2.0]]), [1.0])",
             contains=("negative",), quick=True, needs_net=False)
    api_case("lower_bounds with -inf", "fxverify.lower_bounds(np.array([[-np.inf, 2.0]]), [1.0])",
             needs_net=False)
    api_case("lower_bounds with the grid as a string", "fxverify.lower_bounds(np.array([[0.5, 2.0]]), '0.5')",
             contains=("grid",), quick=True, needs_net=False)
    api_case("lower_bounds with a complex matrix", "fxverify.lower_bounds(np.array([[0.5 + 1j]]), [1.0])",
             needs_net=False)
    api_case("lower_bounds with strings", "fxverify.lower_bounds([['a', 'b']], [1.0])", needs_net=False)
    api_case("lower_bounds with a grid of None", "fxverify.lower_bounds(np.array([[0.5]]), [None])",
             needs_net=False)
    api_case("lower_bounds with a number as the grid", "fxverify.lower_bounds(np.array([[0.5]]), 1.0)",
             needs_net=False)
    api_case("lower_bounds control", "print(fxverify.lower_bounds(np.array([[0.5, np.inf]]), [0.0, 1.0])[1].edges)",
             expect="ok", needs_net=False, check=lambda r: None if r.stdout.strip() == "1" else r.stdout)
    for label, kw in (("jobs=0", "jobs=0"), ("jobs=-1", "jobs=-1"), ("jobs=1.5", "jobs=1.5"),
                      ("jobs=True", "jobs=True"), ("solver_options as a string", "solver_options='max_iterations=3'"),
                      ("eps as a string", "eps='0.5'"), ("classes as a string", "classes='37'"),
                      ("cuts as a string", "cuts='relu1'"), ("n=2.5", "n=2.5"), ("n=0", "n=0"),
                      ("time_budget=1e300", "time_budget=1e300"), ("time_budget='10'", "time_budget='10'"),
                      ("eps with -inf", "eps=[float('-inf')]"), ("out=5", "out=5"), ("norm=['l2']", "norm=['l2']"),
                      ("exhaustive='yes'", "exhaustive='yes'"), ("executor=None", "executor=None")):
        n_kw = "" if kw.startswith("n=") else "n=2, "
        out_kw = "" if kw.startswith("out=") else "out='out/api_bound', "
        api_case(f"bound({label})", f"fxverify.bound(TINY, SPEC, {out_kw}{n_kw}{kw})",
                 quick=label in ("jobs=0", "solver_options as a string"), needs_net=False)
    api_case("bound(None, SPEC)", "fxverify.bound(None, SPEC, jobs=1)", needs_net=False)
    api_case("bound(TINY, None)", "fxverify.bound(TINY, None, jobs=1)", needs_net=False)
    api_case("bound control (n=2, jobs=1)", "a = fxverify.bound(TINY, SPEC, n=2, jobs=1, cuts=['relu1'], "
             "out='out/api_ok', write=False)\nprint(a.complete)", expect="ok", needs_net=False,
             check=lambda r: None if r.stdout.strip() == "True" else r.stdout)
    api_case("resolve_engine(method='bogus')", "fxverify.resolve_engine(method='bogus')", needs_net=False)
    api_case("resolve_engine(domain=(0, 1, 2))", "fxverify.resolve_engine(domain=(0, 1, 2))", needs_net=False)
    api_case("resolve_engine(norm=None, solver=3.5)", "fxverify.resolve_engine(solver=3.5)", needs_net=False)
    api_case("load_model(None)", "fxverify.load_model(None)", needs_net=False)
    api_case("load_model(b'bytes')", "fxverify.load_model(b'\\x08\\x07')", needs_net=False)
    api_case("load_model('')", "fxverify.load_model('')", needs_net=False)
    api_case("load_model of a Network", "fxverify.load_model(fxverify.load_model(TINY))", needs_net=False)
    api_case("load_spec(None)", "fxverify.load_spec(None)", needs_net=False)
    api_case("load_spec({'version': 1})", "fxverify.load_spec({'version': 1})", needs_net=False)
    api_case("collide control", "print(fxverify.collide(net, 'relu2', u, v).status.value)", expect="ok",
             check=lambda r: None if r.stdout.strip() == "found" else r.stdout)

    # ---------------- resources: memory and open-file limits -----------------------------------
    tiny_run = ["bound", TINY, "--spec", base, "--n", "2", "--cuts", "relu1,relu2"]
    if _prlimit() is not None:
        for mb in (300, 400, 500, 550, 700, 1000, 1200, 2000):
            for jobs in ((1, 2) if mb in (500, 1200) else (1,)):
                out = p(f"out/as_{mb}_{jobs}")
                add(Case(f"limit: prlimit --as {mb} MB, bound --jobs {jobs}",
                         runner=run_with(tiny_run + ["--out", out, "--jobs", jobs],
                                         prefix=_prlimit(f"--as={mb * 10**6}")),
                         expect="ok_or_error", timeout=30, quick=mb in (500, 1200) and jobs == 1,
                         check=lambda r, out=out: None if r.rc != 0 else check_results(out, complete=True)(r),
                         what="one error line within 30 s, or a complete run"))
        add(Case("limit: SIGTERM of a bound under prlimit --as 1.2 GB", runner=run_sigterm_limited(1_200_000_000),
                 code=143, contains=("SIGTERM",), timeout=60, serial=True, expect="ok_or_error",
                 what="exit 143 (or 0 when the run ended first) within the timeout"))
        for n_files, jobs in ((16, 2), (16, 1), (40, 2), (70, 2)):
            out = p(f"out/nofile_{n_files}_{jobs}")
            add(Case(f"limit: prlimit --nofile={n_files}, bound --jobs {jobs}",
                     runner=run_with(tiny_run + ["--out", out, "--jobs", jobs], prefix=_prlimit(f"--nofile={n_files}")),
                     expect="ok_or_error", timeout=120, quick=n_files == 16 and jobs == 2,
                     check=lambda r, out=out: None if r.rc != 0 else check_results(out, complete=True)(r)))
        add(Case("limit: prlimit --nproc=1 (no threads or processes)",
                 runner=run_with(tiny_run + ["--out", p("out/nproc"), "--jobs", "2"], prefix=_prlimit("--nproc=1")),
                 expect="ok_or_error", timeout=60))

    # ---------------- environment and output plumbing -----------------------------------------
    add(Case("env: stdout closed (>&-), inspect", runner=run_with(["inspect", TINY], stdout=None, close=(1,)),
             contains=("standard output",), quick=True))
    add(Case("env: stdout closed (>&-), bound", runner=run_with(tiny_run + ["--out", p("out/closed1")], stdout=None,
                                                                 close=(1,)), contains=("standard output",)))
    add(Case("env: stderr closed (2>&-), bad model keeps exit 2",
             runner=run_with(["inspect", p("garbage.onnx")], stderr=None, close=(2,)), expect="code_only",
             what="exit 2 (no stderr to read)"))
    add(Case("env: stderr closed (2>&-), inspect succeeds", runner=run_with(["inspect", TINY], stderr=None,
                                                                            close=(2,)), expect="ok"))
    add(Case("env: stdin closed (<&-), bound", runner=run_with(tiny_run + ["--out", p("out/closed0"), "--jobs", "1"],
                                                               close=(0,)), expect="ok",
             check=check_results(p("out/closed0"), complete=True)))
    if os.path.exists("/dev/full"):
        add(Case("env: stderr on /dev/full keeps exit 2", runner=run_with(["inspect", p("garbage.onnx")],
                                                                          stderr="/dev/full"),
                 expect="code_only", quick=True, what="exit 2, not 1"))
        add(Case("env: stderr on /dev/full, bound --eps a,b", runner=run_with(tiny_run + ["--eps", "a,b"],
                                                                             stderr="/dev/full"), expect="code_only"))
    add(Case("env: stdout a broken pipe (inspect | head)", runner=run_with(["inspect", TINY], stdout="broken"),
             contains=("standard output",), quick=True))
    add(Case("env: stdout a broken pipe (inspect --json | head)", runner=run_with(["inspect", TINY, "--json"],
                                                                                  stdout="broken"),
             contains=("standard output",)))
    add(Case("env: stdout a broken pipe (solvers)", runner=run_with(["solvers"], stdout="broken"),
             contains=("standard output",)))
    add(Case("env: stdout a broken pipe (--help)", runner=run_with(["--help"], stdout="broken"),
             contains=("standard output",)))
    add(Case("env: real pipe into head -c 20", runner=run_head(["inspect", TINY]), expect="ok_or_error",
             contains=("standard output",), what="exit 0 when everything was written first, else one line, exit 2"))
    uni = p("modèle_ünï.onnx")
    add(Case("env: PYTHONIOENCODING=ascii with a non-ASCII model path", runner=run_with(
        ["inspect", uni], env={"PYTHONIOENCODING": "ascii"}), expect="ok", setup=lambda: shutil.copy(TINY, uni),
        quick=True))
    add(Case("env: PYTHONIOENCODING=ascii, non-ASCII path not found", runner=run_with(
        ["inspect", p("nöpe.onnx")], env={"PYTHONIOENCODING": "ascii"}), contains=("not found",)))
    add(Case("env: LANG=C and PYTHONIOENCODING=ascii, bound with a non-ASCII --out", runner=run_with(
        tiny_run + ["--out", p("out/ünï"), "--jobs", "1"], env={"PYTHONIOENCODING": "ascii", "LANG": "C",
                                                              "LC_ALL": "C"}), expect="ok"))
    add(Case("env: onnxruntime cannot run the model: no third-party log line before the error",
             ["inspect", p("m_ort_refuses.onnx")], setup=lambda: _ort_refuses("m_ort_refuses.onnx"),
             check=no_raw_controls, quick=True))
    add(Case("env: numpy warnings are not printed (labels 1e20 in npz)", spec_run("npzlab_1e20"),
             check=lambda r: "Warning" in r.stderr and "RuntimeWarning printed" or None))
    add(Case("env: a working directory that is not writable, inspect", runner=run_with(["inspect", TINY],
                                                                                      cwd=Path("/proc")),
             expect="ok"))

    # ---------------- the store as a way out of the run's directory --------------------------
    secret = p("outside/victim.txt")

    def victim():
        if not secret.exists():
            write("outside/victim.txt", "do not touch\n")

    def store_case(label: str, prepare, command: str = "bound", guard=(secret,), model_=TINY, check=None):
        slug = "st_" + "".join(ch if ch.isalnum() else "_" for ch in label)[:40]
        out = p(f"out/{slug}")
        add(Case(f"store: {label}", [command, model_, "--spec", base, "--out", out, "--jobs", "1"], guard=guard,
                 setup=lambda: (victim(), out.mkdir(parents=True, exist_ok=True), prepare(out)),
                 expect="ok_or_error", check=check(out) if check else None,
                 what="refused with one line, or a correct run that leaves every file outside --out as it was"))

    def link(name):
        def prepare(out):
            target = out / name
            if not target.is_symlink():
                target.symlink_to(secret)
        return prepare

    store_case(".fxverify.lock is a symlink to a file outside", link(".fxverify.lock"))
    store_case("results.sqlite is a symlink to a file outside", link("results.sqlite"))
    store_case("results.json is a symlink to a file outside", link("results.json"))
    store_case("distances.npz is a symlink to a file outside", link("distances.npz"), command="distances")
    store_case("results.sqlite is a dangling symlink", lambda out: (out / "results.sqlite").is_symlink() or
               (out / "results.sqlite").symlink_to(p("outside/created.sqlite")), guard=(p("outside/created.sqlite"),))

    def fresh(model_):
        """A check that a run's bounds equal those of a fresh run of the same model in a new --out."""
        def make(out):
            def check(res: Result) -> str | None:
                ref = p(f"out/fresh_{model_.stem}")
                if not (ref / "results.json").exists():
                    r = fx(["bound", model_, "--spec", base, "--out", ref, "--jobs", "1"], 120)
                    if r.rc != 0:
                        return f"the fresh reference run failed: {r.stderr.strip()[:160]}"
                got = [(x["cut"], x["eps"], x["edges"]) for x in results(out)["results"]]
                want = [(x["cut"], x["eps"], x["edges"]) for x in results(ref)["results"]]
                return None if got == want else "bounds differ from a fresh run (a tampered row was used)"
            return check
        return make

    def tamper(sql: str):
        def prepare(out):
            if not (out / "done").exists():
                r = fx(["bound", TINY, "--spec", base, "--out", out, "--jobs", "1"], 120)
                if r.rc != 0:
                    raise RuntimeError(f"could not make a store: {r.stderr.strip()[:200]}")
                with sqlite3.connect(out / "results.sqlite") as con:
                    con.executescript(sql)
                (out / "done").write_text("")
        return prepare

    def matrix_outside(out):
        tamper("")(out)
        import hashlib

        if not p("outside/m.npy").exists():
            p("outside").mkdir(exist_ok=True)
            np.save(p("outside/m.npy"), np.zeros((2, 2)))
        digest = hashlib.sha256(p("outside/m.npy").read_bytes()).hexdigest()
        with sqlite3.connect(out / "results.sqlite") as con:
            con.execute("UPDATE matrices SET file = ?, sha256 = ?", ("../../outside/m.npy", digest))

    for label, sql in (("a pair row with eps -1 'found'", "UPDATE pairs SET eps = -1 WHERE cut = 'relu1';"),
                       ("a pair row with an unknown status", "UPDATE pairs SET status = 'bogus';"),
                       ("a pair row with an index out of range", "UPDATE pairs SET i = 99 WHERE rowid = 1;"),
                       ("a pair row with a text eps", "UPDATE pairs SET eps = 'abc' WHERE rowid = 1;")):
        store_case(label, tamper(sql), check=fresh(TINY))
    store_case("the meta rows deleted, then another model's run", tamper("DELETE FROM meta;"), model_=SMALLER,
               check=fresh(SMALLER))
    store_case("a matrix row naming ../ outside the store (sha256 matching)", matrix_outside, check=fresh(TINY))
    return cases


def run_head(args) -> Callable[[Case], Result]:
    """``fxverify ARGS | head -c 20`` through a shell; stdout is what head printed."""

    def runner(case: Case) -> Result:
        t0 = time.perf_counter()
        cmd = " ".join(shlex.quote(str(a)) for a in CLI + list(args))
        proc = subprocess.Popen(["bash", "-c", f"{cmd} | head -c 20 >/dev/null; exit ${{PIPESTATUS[0]}}"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=WORK, start_new_session=True)
        return _finish(proc, t0, case.timeout)

    return runner


def run_sigterm_limited(limit: int) -> Callable[[Case], Result]:
    """A long bound under an address-space limit, SIGTERM after 3 s: it must end."""

    def runner(case: Case) -> Result:
        args, out = _long_run_args("sigterm_limited", 2)
        t0 = time.perf_counter()
        proc = subprocess.Popen(_prlimit(f"--as={limit}") + CLI + [str(a) for a in args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, cwd=WORK, start_new_session=True)
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
        return _finish(proc, t0, case.timeout - 3)

    return runner


GARBAGE = b"\x00\xffgarbage-not-protobuf" * 40


def common_setup() -> None:
    """Files several cases share (written once, before any case runs)."""
    spec_file("base")
    write("garbage.onnx", GARBAGE)


def _foreign_db(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    db = out / "results.sqlite"
    if db.exists():
        return
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE pairs (name TEXT)")
        con.execute("CREATE TABLE meta (a INTEGER)")
        con.execute("INSERT INTO pairs VALUES ('x')")


# ------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    global WORK
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="run the quick subset (~60 cases)")
    ap.add_argument("--jobs", type=int, default=2, help="cases run at the same time (default 2)")
    ap.add_argument("--only", default=None, help="run only the cases whose name contains this text (several: "
                                                 "separated by '|')")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("-v", "--verbose", action="store_true", help="show stderr of failing cases")
    ns = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="fxverify-fault-sweep-"))
    WORK = tmp
    t0 = time.perf_counter()
    try:
        common_setup()
        cases = build_cases() + hostile_cases()
        unknown = {n for n in QUICK - {c.name for c in cases}
                   if not n.startswith("limit:") and "/dev/full" not in n}  # those need prlimit, /dev/full
        assert not unknown, f"QUICK names unknown cases: {unknown}"
        for c in cases:
            c.quick = c.name in QUICK
        names = [c.name for c in cases]
        dup = {n for n in names if names.count(n) > 1}
        assert not dup, f"duplicate case names: {dup}"
        if ns.quick:
            cases = [c for c in cases if c.quick]
        if ns.only:
            wanted = [w.lower() for w in ns.only.split("|") if w]
            cases = [c for c in cases if any(w in c.name.lower() for w in wanted)]
        print(f"fault sweep: {len(cases)} cases, CLI {' '.join(CLI)}, temp {tmp}", flush=True)
        lock = threading.Lock()
        outcome: dict[str, tuple[str, str, float]] = {}

        def one(case: Case) -> None:
            verdict, detail, secs = run_case(case)
            if verdict in BAD and case.name in KNOWN_FAILURES:
                verdict, detail = "known failure", f"{detail} ({KNOWN_FAILURES[case.name]})"
            elif case.name in KNOWN_FAILURES:
                detail = f"{detail} (listed in KNOWN_FAILURES but passes now: remove it there)"
            outcome[case.name] = (verdict, detail, secs)
            with lock:
                print(f"{verdict:>13}  {secs:5.1f}s  {case.name}" + (f"  -- {detail}" if detail else ""), flush=True)

        parallel = [c for c in cases if not c.serial]
        with ThreadPoolExecutor(max(1, ns.jobs)) as pool:
            list(pool.map(one, parallel))
        for c in cases:
            if c.serial:
                one(c)
        totals = {v: 0 for v in (*VERDICTS, "known failure")}
        for verdict, _, _ in outcome.values():
            totals[verdict] += 1
        print(f"\n{len(cases)} cases in {time.perf_counter() - t0:.0f} s: "
              + ", ".join(f"{totals[v]} {v}" for v in (*VERDICTS, "known failure")))
        failing = [n for n, (v, _, _) in outcome.items() if v in BAD]
        if failing:
            print("failing cases:\n  " + "\n  ".join(failing))
        return 1 if failing else 0
    finally:
        if ns.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
