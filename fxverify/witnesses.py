"""Witnesses: every found collision's points, exported next to results.json and re-checked.

``witnesses.npz`` (format 1, written by ``fxverify bound`` and ``fxverify distances``; numpy's
npz, every array plain, no pickles) holds, for k collisions over m cuts and d input values:

==================  ===========================  ==================================================
``format``          int, ()                      1
``model_sha256``    str, ()                      sha256 of the ONNX file the run analysed
``model_path``      str, ()                      that file, as the run was given it
``norm``            str, ()                      ``l2``, ``linf`` or ``l1``
``domain``          float64, (2,) or (0,)        the box the points stay in (empty: unbounded)
``grid``            float64, (g,)                the budgets of the run's bounds (may be empty)
``feed_scale``,     float64, (d,)                the model is fed ``feed_scale * x + feed_offset``
``feed_offset``                                  (the spec's ``normalize``; ones and zeros without)
``input_name``      str, ()                      the ONNX input
``input_shape``     int64, (r,)                  the ONNX input shape of one point (batch 1)
``X_a``, ``X_b``    float64, (n_a, d), (n_b, d)  the two classes' points (flat, C order); K classes:
                                                 both are all N points (see ``labels``)
``cuts``            str, (m,)                    cut names
``tensors``         str, (m,)                    the ONNX tensor holding each cut's features
``cut``             int32, (k,)                  the witness's cut (index into ``cuts``)
``i``, ``j``        int32, (k,)                  the pair: X_a[i], X_b[j]
``eps``             float64, (k,)                the budget the run stored
``delta_u``,        float64, (k, d)              the collision is (X_a[i] + delta_u,
``delta_v``                                      X_b[j] + delta_v), exactly, in float64
``classes``         int64, (K,)                  the class labels (two: X_a's, X_b's; optional:
                                                 absent in files of earlier versions)
``labels``          int64, (N,)                  K classes only: the class label of each point;
                                                 X_a and X_b are then both all N points and (i, j)
                                                 global indices of two points of different classes
==================  ===========================  ==================================================

A third party checks a witness with onnxruntime alone: feed both points (mapped by the feed)
to the model with the cut's tensor added as an output, and require the two feature vectors to
agree to 1e-4 of the pair's own separation there (the features of X_a[i] and X_b[j]), both
points to lie in the domain, and ``max(||delta_u||, ||delta_v||)`` in the norm to equal
``eps`` (README: "Checking witnesses"). Collisions are of the float64 map; in onnxruntime's
float32 the features agree to about 1e-6 relative, not exactly.

``fxverify check OUT [--model M]`` (:func:`check`) re-verifies every witness that is an edge at
some budget of the grid (eps <= its largest value) in the float64 IR and in onnxruntime, with
the budget recomputed from the points, against the run's model or ``M``.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import FxverifyError

FILE = "witnesses.npz"
FORMAT = 1
#: a stored budget and the one recomputed from the points agree to this (relative)
EPS_TOLERANCE = 1e-9
#: witnesses verified per batch
BATCH = 1024


class WitnessError(FxverifyError):
    """A witness file is missing, unreadable or not in the documented format."""


def export(out_dir: Path, net, points, norm: str, domain, grid, store) -> tuple[Path, int]:
    """Write ``out_dir/witnesses.npz`` from ``store`` (an open :class:`~fxverify.store.ResultStore`)
    for the run's cuts; returns (path, number of witnesses)."""
    from .report import atomic_write

    cuts = [c for c in net.cuts]
    shape, dim = (len(points.X_a), len(points.X_b)), net.input_dim
    rows = []  # (cut index, i, j, eps, du, dv)
    for k, cut in enumerate(cuts):
        eps = _stored_eps(store, cut, shape)
        if eps is None:
            continue
        for i, j, du, dv in store.witnesses(cut, dim, shape):
            if math.isfinite(eps[i, j]):
                rows.append((k, i, j, eps[i, j], du, dv))
    scale, offset = (np.ones(dim), np.zeros(dim)) if net.input_map is None else \
        (np.broadcast_to(net.input_map.scale, dim), np.broadcast_to(net.input_map.offset, dim))
    arrays = dict(
        format=np.array(FORMAT), model_sha256=np.array(net.source.sha256),
        model_path=np.array(str(net.source.path)), norm=np.array(norm),
        domain=np.array([] if domain is None else list(domain), dtype=np.float64),
        grid=np.array([] if grid is None else sorted(grid), dtype=np.float64),
        feed_scale=np.asarray(scale, dtype=np.float64), feed_offset=np.asarray(offset, dtype=np.float64),
        input_name=np.array(net.source.input_name),
        input_shape=np.array([d if isinstance(d, int) else 1 for d in net.source.onnx_input_shape], dtype=np.int64),
        X_a=points.X_a, X_b=points.X_b, cuts=np.array(cuts), tensors=np.array([net.onnx_tensor(c) for c in cuts]),
        cut=np.array([r[0] for r in rows], dtype=np.int32), i=np.array([r[1] for r in rows], dtype=np.int32),
        j=np.array([r[2] for r in rows], dtype=np.int32), eps=np.array([r[3] for r in rows], dtype=np.float64),
        delta_u=np.array([r[4] for r in rows], dtype=np.float64).reshape(len(rows), dim),
        delta_v=np.array([r[5] for r in rows], dtype=np.float64).reshape(len(rows), dim),
        classes=np.array(points.classes, dtype=np.int64),
        **({"labels": np.asarray(points.classes, dtype=np.int64)[points.labels]} if points.multiclass else {}))
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    path = Path(out_dir) / FILE
    atomic_write(path, lambda f: f.write(buf.getvalue()))
    return path, len(rows)


def _stored_eps(store, cut: str, shape) -> np.ndarray | None:
    """The budgets stored at ``cut`` (closed form or per pair); None when the cut has none."""
    m = store.matrix(cut, shape)
    if m is not None:
        return m[0]
    rows = store.pair_rows(cut, shape)
    if not rows:
        return None
    eps = np.full(shape, np.inf)
    for r in rows:
        if r.found:
            eps[r.i, r.j] = r.eps
    return eps


# ---- checking ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckReport:
    model: str
    model_sha256: str
    run_sha256: str
    stored: int  # witnesses in the file
    checked: int  # of those, edges at some grid budget
    failed: int  # verification failed (features, onnxruntime, domain)
    mismatched: int  # budget recomputed from the points differs from the stored one
    seconds: float
    examples: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.mismatched == 0


_FIELDS = ("format", "model_sha256", "model_path", "norm", "domain", "grid", "feed_scale", "feed_offset", "X_a", "X_b", "cuts",
           "tensors", "cut", "i", "j", "eps", "delta_u", "delta_v")


def load(path: Path) -> dict:
    """The arrays of a witness file, checked against the documented format."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise WitnessError(f"no witness file {path} (runs with --witnesses none export none)") from None
    except (OSError, ValueError, EOFError) as err:
        raise WitnessError(f"{path} is not a readable witness file: {err}") from None
    except Exception as err:  # zipfile raises BadZipFile and others
        raise WitnessError(f"{path} is not a readable witness file: {type(err).__name__}: {err}") from None
    missing = [k for k in _FIELDS if k not in data]
    if missing or int(data["format"]) != FORMAT:
        raise WitnessError(f"{path} is not a format-{FORMAT} witness file"
                           + (f" (missing {', '.join(missing)})" if missing else ""))
    k, d = data["eps"].shape[0], data["X_a"].shape[1]
    shapes_ok = all(data[f].shape[0] == k for f in ("cut", "i", "j")) and data["delta_u"].shape == (k, d) \
        and data["delta_v"].shape == (k, d) and data["X_b"].shape[1:] == (d,)
    idx_ok = k == 0 or (0 <= data["cut"].min() and data["cut"].max() < len(data["cuts"])
                        and 0 <= data["i"].min() and data["i"].max() < len(data["X_a"])
                        and 0 <= data["j"].min() and data["j"].max() < len(data["X_b"]))
    if not (shapes_ok and idx_ok):
        raise WitnessError(f"{path}: array shapes or indices do not fit together")
    if "labels" in data and not (data["labels"].shape == (len(data["X_a"]),) and data["X_b"].shape == data["X_a"].shape
                                 and data["labels"].dtype.kind in "iu"):
        raise WitnessError(f"{path}: a K-class file needs labels (one integer per point) and X_a, X_b both all "
                           f"points")
    return data


def check(out_dir: Path, model: Path | None = None) -> CheckReport:
    """Re-verify every witness of ``out_dir/witnesses.npz`` that is an edge at some budget of
    its grid (every witness when the grid is empty), against ``model`` (default: the run's
    model file, as the run was given it)."""
    from .collision.verify import Verifier
    from .norms import Domain, get_norm
    from .onnx_import import load_model

    t0 = time.perf_counter()
    data = load(Path(out_dir) / FILE)
    path = model if model is not None else str(data["model_path"])
    net = load_model(path)
    feed = (data["feed_scale"], data["feed_offset"])
    if not (np.all(feed[0] == 1) and np.all(feed[1] == 0)):
        net = _fed(net, *feed)
    dom = data["domain"]
    verifier = Verifier(net, get_norm(str(data["norm"])), Domain(float(dom[0]), float(dom[1])) if dom.size else None)
    limit = float(data["grid"].max()) if data["grid"].size else math.inf
    edges = np.flatnonzero(data["eps"] <= limit)
    failed = mismatched = 0
    examples: list[str] = []
    for k, cut in enumerate(str(c) for c in data["cuts"]):
        sel = edges[data["cut"][edges] == k]
        if sel.size and cut not in net.cuts:
            failed += sel.size
            examples.append(f"{cut}: {sel.size} witnesses, but the model has no cut {cut!r}")
            continue
        for b in range(0, sel.size, BATCH):
            f, m = _check_batch(verifier, data, cut, sel[b:b + BATCH], examples)
            failed, mismatched = failed + f, mismatched + m
    return CheckReport(str(path), net.source.sha256, str(data["model_sha256"]), int(data["eps"].size),
                       int(edges.size), failed, mismatched, time.perf_counter() - t0, tuple(examples[:5]))


def _fed(net, scale, offset):
    """``net`` fed ``scale * x + offset`` (the run's normalisation), as the run analysed it."""
    from .config import fold_input_map

    return fold_input_map(net, np.asarray(scale, dtype=np.float64), np.asarray(offset, dtype=np.float64),
                          "the feed of the witness file")


def _check_batch(verifier, data, cut: str, sel: np.ndarray, examples: list) -> tuple[int, int]:
    U, V = data["X_a"][data["i"][sel]], data["X_b"][data["j"][sel]]
    Ua, Va = U + data["delta_u"][sel], V + data["delta_v"][sel]
    with _quiet_numpy():
        v = verifier.check_many(cut, U, V, Ua, Va)
    ok = v.ok & _cross_class(data, sel)
    stored = data["eps"][sel]
    bad_eps = ~(np.abs(v.eps - stored) <= EPS_TOLERANCE * np.maximum(stored, 1e-300))
    for n in np.flatnonzero(~ok | bad_eps)[:5 - min(5, len(examples))]:
        what = v.message(n) if not v.ok[n] else "the two points have the same class label" if not ok[n] else \
            f"eps from the points {v.eps[n]:.12g} != stored {stored[n]:.12g}"
        examples.append(f"{cut} pair ({data['i'][sel][n]}, {data['j'][sel][n]}): {what}")
    return int((~ok).sum()), int(bad_eps.sum())


def _cross_class(data: dict, sel: np.ndarray) -> np.ndarray:
    """Whether each witness joins points of different classes (K-class files: by ``labels``;
    a two-class file's pairs are a point of each class by construction)."""
    if "labels" not in data:
        return np.ones(sel.size, dtype=bool)
    return data["labels"][data["i"][sel]] != data["labels"][data["j"][sel]]


@contextlib.contextmanager
def _quiet_numpy():
    with np.errstate(all="ignore"):
        yield


def size_per_pair(path: Path, n: int) -> float:
    """Bytes of the witness file per stored witness (0 without any)."""
    return os.path.getsize(path) / n if n else 0.0
