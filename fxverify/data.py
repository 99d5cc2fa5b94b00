"""Data: IDX files, ``.npz`` files and the embedded default sets, and the two-class selection.

Three sources, all giving images in file order with integer labels:

* an IDX directory in the MNIST / Fashion-MNIST layout (``train-images-idx3-ubyte`` and
  ``train-labels-idx1-ubyte``, ``t10k-*`` for the test split; plain or ``.gz``);
* an ``.npz`` file with arrays ``X`` (n x d or n x h x w) and ``y`` (n);
* an embedded set shipped inside the package: the first 500 training images of MNIST digits
  3 and 7 (``mnist``) and of Fashion-MNIST classes 3 (dress) and 7 (sneaker)
  (``fashion-mnist``). See ``fxverify/datasets/PROVENANCE.md``.

:func:`select_points` then takes ``n`` images of each of two classes (the first ``n`` in file
order, or a seeded random sample without replacement) and scales pixels to [0, 1].
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from .errors import DataError

#: Embedded sets: name -> (file in fxverify/datasets, description).
EMBEDDED = {
    "mnist": ("mnist_train_3_7_first500.npz", "MNIST training set, first 500 images of digits 3 and 7"),
    "fashion-mnist": ("fashion_mnist_train_3_7_first500.npz",
                      "Fashion-MNIST training set, first 500 images of classes 3 (dress) and 7 (sneaker)"),
}

_IDX_DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_SPLIT_PREFIX = {"train": "train", "test": "t10k"}


@dataclass(frozen=True)
class Dataset:
    """Images of one split in file order. ``X`` is (n, d) raw values, ``index`` the position of
    each image in the original file (the embedded sets keep the positions of the full file)."""

    X: np.ndarray = field(repr=False)
    y: np.ndarray = field(repr=False)
    image_shape: tuple[int, ...]
    origin: str
    index: np.ndarray = field(repr=False)

    @property
    def classes(self) -> tuple[int, ...]:
        return tuple(int(c) for c in np.unique(self.y))


@dataclass(frozen=True)
class Points:
    """The two classes of points the analysis runs on, float64, scaled, flat (n, d)."""

    classes: tuple[int, int]
    X_a: np.ndarray = field(repr=False)
    X_b: np.ndarray = field(repr=False)
    index_a: np.ndarray = field(repr=False)
    index_b: np.ndarray = field(repr=False)
    origin: str = ""

    @property
    def dim(self) -> int:
        return self.X_a.shape[1]

    @property
    def n(self) -> int:
        return len(self.X_a) + len(self.X_b)


# ---- IDX -----------------------------------------------------------------------------------
def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (plain or gzip) into an array of its declared shape."""
    p = Path(path)
    try:
        raw = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
    except FileNotFoundError:
        raise DataError(f"IDX file not found: {p}") from None
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise DataError(f"cannot read IDX file {p}: {err}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{p} is not an IDX file (bad magic number)")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{p} is not an IDX file (bad header)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(f"{p} is truncated or corrupt: {len(raw)} bytes, the header {list(dims)} needs {expected}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def _find_idx(directory: Path, split: str, kind: str, rank: int) -> Path:
    prefix = _SPLIT_PREFIX[split]
    for sep in ("-", "."):
        for ext in ("", ".gz"):
            p = directory / f"{prefix}-{kind}{sep}idx{rank}-ubyte{ext}"
            if p.exists():
                return p
    raise DataError(f"no {split} {kind} file in {directory} (expected {prefix}-{kind}-idx{rank}-ubyte or .gz)")


def load_idx_dir(directory: str | Path, split: str = "train") -> Dataset:
    d = Path(directory)
    if not d.is_dir():
        raise DataError(f"IDX directory not found: {d}")
    ip, lp = _find_idx(d, split, "images", 3), _find_idx(d, split, "labels", 1)
    X, y = read_idx(ip), read_idx(lp)
    if y.ndim != 1:
        raise DataError(f"{lp} holds an array of shape {y.shape}, expected labels (n,)")
    if len(X) != len(y):
        raise DataError(f"{ip} has {len(X)} images but {lp} has {len(y)} labels")
    return Dataset(X=X.reshape(len(X), -1), y=y.astype(np.int64), image_shape=tuple(X.shape[1:]),
                   origin=f"IDX {ip}", index=np.arange(len(X)))


# ---- npz -----------------------------------------------------------------------------------
def load_npz(path: str | Path) -> Dataset:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"npz file not found: {p}")
    try:
        with np.load(p, allow_pickle=False) as f:
            missing = [k for k in ("X", "y") if k not in f.files]
            if missing:
                raise DataError(f"{p} lacks array(s) {', '.join(missing)} (it has: {', '.join(f.files) or 'none'})")
            X, y = f["X"], f["y"]
            index = f["index"] if "index" in f.files else np.arange(len(X))
    except DataError:
        raise
    except Exception as err:  # zipfile / numpy raise many types for corrupt files
        raise DataError(f"cannot read npz file {p}: {err}") from None
    if X.ndim not in (2, 3) or X.shape[0] == 0:
        raise DataError(f"{p}: X has shape {X.shape}, expected (n, d) or (n, h, w) with n > 0")
    if y.shape != (X.shape[0],):
        raise DataError(f"{p}: y has shape {y.shape}, expected ({X.shape[0]},) to match X")
    if X.dtype.kind not in "uif":
        raise DataError(f"{p}: X has dtype {X.dtype}, expected numbers")
    if y.dtype.kind not in "ui" and not (y.dtype.kind == "f" and np.all(y == np.round(y))):
        raise DataError(f"{p}: y has dtype {y.dtype}, expected integer class labels")
    if X.dtype.kind == "f" and not np.all(np.isfinite(X)):
        raise DataError(f"{p}: X contains NaN or infinite values")
    return Dataset(X=X.reshape(len(X), -1), y=y.astype(np.int64), image_shape=tuple(X.shape[1:]),
                   origin=f"npz {p}", index=np.asarray(index, dtype=np.int64))


# ---- embedded ------------------------------------------------------------------------------
def load_embedded(name: str, split: str = "train") -> Dataset:
    if name not in EMBEDDED:
        raise DataError(f"unknown embedded data set {name!r}; available: {', '.join(EMBEDDED)}")
    if split != "train":
        raise DataError(f"the embedded {name} set holds only the train split (asked for {split!r}); "
                        f"use an IDX directory for the test split")
    filename, description = EMBEDDED[name]
    with resources.as_file(resources.files("fxverify.datasets") / filename) as p:
        ds = load_npz(p)
    return Dataset(X=ds.X, y=ds.y, image_shape=ds.image_shape, origin=f"embedded {name}: {description}",
                   index=ds.index)


# ---- selection -----------------------------------------------------------------------------
def select_points(ds: Dataset, classes: tuple[int, int], n_per_class: int, *, method: str = "first",
                  seed: int | None = None, scaling: str = "divide_255") -> Points:
    """Take ``n_per_class`` images of each class and scale them to [0, 1].

    ``method="first"``: the first n in file order (the convention of published numbers).
    ``method="random"``: a uniform sample without replacement, by ``seed``, kept in file order.
    ``scaling="divide_255"`` divides raw pixels by 255; ``"none"`` takes values as they are.
    Either way every value must end up in [0, 1].
    """
    if classes[0] == classes[1]:
        raise DataError(f"the two classes must differ (both are {classes[0]})")
    present = ds.classes
    picked, positions = [], []
    for c in classes:
        where = np.flatnonzero(ds.y == c)
        if len(where) == 0:
            raise DataError(f"class {c} is not present in {ds.origin} (classes present: "
                            f"{', '.join(map(str, present))})")
        if n_per_class > len(where):
            raise DataError(f"n_per_class={n_per_class} but class {c} has only {len(where)} images in {ds.origin}")
        if method == "first":
            take = where[:n_per_class]
        elif method == "random":
            rng = np.random.default_rng(seed)
            take = np.sort(rng.choice(where, size=n_per_class, replace=False))
        else:
            raise DataError(f"unknown selection method {method!r} (use 'first' or 'random')")
        X = ds.X[take].astype(np.float64)
        if scaling == "divide_255":
            X = X / 255.0
        elif scaling != "none":
            raise DataError(f"unknown scaling {scaling!r} (use 'divide_255' or 'none')")
        if X.size and (X.min() < 0.0 or X.max() > 1.0):
            raise DataError(f"class {c} pixels lie in [{X.min():g}, {X.max():g}] after scaling {scaling!r}, "
                            f"not in [0, 1]; choose the scaling that maps this data to [0, 1]")
        picked.append(X)
        positions.append(ds.index[take])
    return Points(classes=(int(classes[0]), int(classes[1])), X_a=picked[0], X_b=picked[1],
                  index_a=positions[0], index_b=positions[1], origin=ds.origin)
