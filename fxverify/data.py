"""Data: IDX files, ``.npz`` files and the embedded default sets, and the selection of classes.

Three sources, all giving images in file order with integer labels:

* an IDX directory in the MNIST / Fashion-MNIST layout (``train-images-idx3-ubyte`` and
  ``train-labels-idx1-ubyte``, ``t10k-*`` for the test split; plain or ``.gz``);
* an ``.npz`` file with arrays ``X`` (n x d, n x h x w, or n x C x H x W / n x H x W x C with
  the layout stated), ``y`` (n) and optionally ``index`` (n, each image's position in its
  original file);
* an embedded set shipped inside the package: the first 500 training images of every MNIST
  digit 0-9 (``mnist``) and of Fashion-MNIST classes 3 (dress) and 7 (sneaker)
  (``fashion-mnist``). See ``fxverify/datasets/PROVENANCE.md``.

:func:`select_points` then takes ``n`` images of each of two or more classes (the first ``n`` in file
order, or a seeded random sample without replacement) and scales pixels to [0, 1]. Points stay
flat vectors in the data's own order (C order of ``image_shape``); :func:`fxverify.spec.check_compatible`
reorders them to the model's input layout.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from .errors import DataError

#: Embedded sets: name -> (file in fxverify/datasets, description).
EMBEDDED = {
    "mnist": ("mnist_train_first500.npz", "MNIST training set, first 500 images of every digit 0-9"),
    "fashion-mnist": ("fashion_mnist_train_3_7_first500.npz",
                      "Fashion-MNIST training set, first 500 images of classes 3 (dress) and 7 (sneaker)"),
}

_IDX_DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
#: most uncompressed data a gzipped IDX file may declare (its size cannot be checked before
#: decompressing; the full MNIST training images are 47 MB)
_IDX_MAX_BYTES = 1 << 34
_SPLIT_PREFIX = {"train": "train", "test": "t10k"}
#: layouts of 4-D image arrays (n first): channels first or last
LAYOUTS = ("NCHW", "NHWC")


@dataclass(frozen=True)
class Dataset:
    """Images of one split in file order. ``X`` is (n, d) raw values (C order of
    ``image_shape``), ``index`` the position of each image in the original file (the embedded
    sets keep the positions of the full file). ``layout`` is ``"NCHW"`` or ``"NHWC"`` for
    images with a channel axis (``image_shape`` is then (C, H, W) or (H, W, C)), else None."""

    X: np.ndarray = field(repr=False)
    y: np.ndarray = field(repr=False)
    image_shape: tuple[int, ...]
    origin: str
    index: np.ndarray = field(repr=False)
    layout: str | None = None

    @property
    def classes(self) -> tuple[int, ...]:
        return tuple(int(c) for c in np.unique(self.y))


@dataclass(frozen=True)
class Points:
    """The points the analysis runs on, float64, scaled, flat (n, d).

    Two classes: ``X_a`` (class ``classes[0]``) and ``X_b`` (``classes[1]``); pair (i, j) is
    (X_a[i], X_b[j]). K classes (``labels`` set): every point, grouped by class in the order
    of ``classes``, is in both ``X_a`` and ``X_b`` (the same array), ``labels[i]`` is the
    position in ``classes`` of point i's class, and the pairs are the (i, j) with
    labels[i] < labels[j] (:meth:`pair_mask`), so pair indices are global point indices.
    ``image_shape`` and ``layout`` say how a flat point is an image (C order of
    ``image_shape``; ``layout`` as in :class:`Dataset`)."""

    classes: tuple[int, ...]
    X_a: np.ndarray = field(repr=False)
    X_b: np.ndarray = field(repr=False)
    index_a: np.ndarray = field(repr=False)
    index_b: np.ndarray = field(repr=False)
    origin: str = ""
    image_shape: tuple[int, ...] = ()
    layout: str | None = None
    labels: np.ndarray | None = field(default=None, repr=False)

    @property
    def dim(self) -> int:
        return self.X_a.shape[1]

    @property
    def n(self) -> int:
        return len(self.X_a) if self.multiclass else len(self.X_a) + len(self.X_b)

    @property
    def multiclass(self) -> bool:
        """Points of K classes in one array (pairs by global index), even when K = 2."""
        return self.labels is not None

    def pair_mask(self) -> np.ndarray:
        """n_a x n_b: which (i, j) are pairs (every one for two classes; labels[i] < labels[j])."""
        if self.labels is None:
            return np.ones((len(self.X_a), len(self.X_b)), dtype=bool)
        return self.labels[:, None] < self.labels[None, :]

    def class_members(self) -> list[np.ndarray]:
        """The global indices of each class's points, in the order of ``classes``."""
        if self.labels is None:
            raise ValueError("class_members is for K-class points")
        return [np.flatnonzero(self.labels == k) for k in range(len(self.classes))]

    def as_multiclass(self) -> Points:
        """The same points in the K-class form (for two classes: X_a's points, then X_b's)."""
        if self.multiclass:
            return self
        X = np.concatenate([self.X_a, self.X_b])
        labels = np.repeat(np.arange(2), [len(self.X_a), len(self.X_b)])
        index = np.concatenate([self.index_a, self.index_b])
        return Points(self.classes, X, X, index, index, self.origin, self.image_shape, self.layout, labels)


#: class labels are integers of at most this magnitude (float labels are exact up to 2^53)
MAX_LABEL = 2**53


def _kind(p: Path, what: str) -> str:
    """"missing", "file", "dir" or "other" (FIFO, device, socket); a path the system cannot
    look up (a name too long, a loop of links) is a DataError naming the problem."""
    import stat

    try:
        mode = p.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return "missing"
    except OSError as err:
        shown = str(p) if len(str(p)) <= 200 else str(p)[:200] + "..."
        raise DataError(f"cannot open {what} {shown}: {err.strerror or err}") from None
    return "file" if stat.S_ISREG(mode) else "dir" if stat.S_ISDIR(mode) else "other"


def labels(y: np.ndarray, where: str) -> np.ndarray:
    """Class labels as int64: integer arrays, or float arrays holding whole numbers; never a
    silent truncation (3.7 is not 3) or an overflow (1e20)."""
    if y.dtype.kind not in "uif":
        raise DataError(f"{where}: labels have dtype {y.dtype}, expected integer class labels")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)):
            raise DataError(f"{where}: labels contain NaN or infinite values")
        frac = y != np.round(y)
        if np.any(frac):
            raise DataError(f"{where}: labels must be whole numbers, found {y[frac][0]:g} ({int(frac.sum())} "
                            f"fractional labels); class labels are integers")
    if y.size and (float(y.min()) < -MAX_LABEL or float(y.max()) > MAX_LABEL):
        raise DataError(f"{where}: labels range from {y.min():g} to {y.max():g}; class labels are integers of at "
                        f"most 2^53 in magnitude")
    return y.astype(np.int64)


# ---- IDX -----------------------------------------------------------------------------------
def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (plain or gzip) into an array of its declared shape.

    The header is checked against the file's size before the data is read, so a header that
    declares more data than the file holds (or absurd sizes) is an error, never an allocation."""
    p = Path(path)
    gz = p.suffix == ".gz"
    if _kind(p, "IDX file") not in ("file", "missing"):  # a directory, FIFO or device: opening a FIFO blocks
        raise DataError(f"{p} is not a regular file; an IDX file is expected")
    try:
        with (gzip.open(p, "rb") if gz else open(p, "rb")) as f:
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES:
                raise DataError(f"{p} is not an IDX file (bad magic number)")
            dtype, ndim = _IDX_DTYPES[head[2]], head[3]
            header = 4 + 4 * ndim
            raw_dims = f.read(4 * ndim)
            if ndim == 0 or len(raw_dims) < 4 * ndim:
                raise DataError(f"{p} is not an IDX file (bad header)")
            dims = struct.unpack(f">{ndim}I", raw_dims)
            if 0 in dims:
                raise DataError(f"{p} declares an empty array of shape {list(dims)}; an IDX file of images or labels "
                                f"holds at least one")
            need = math.prod(dims) * dtype.itemsize  # Python integers: no overflow
            if not gz:
                size = os.fstat(f.fileno()).st_size
                if size != header + need:
                    raise DataError(f"{p} is truncated or corrupt: {size} bytes, the header {list(dims)} needs "
                                    f"{header + need}")
            elif need > _IDX_MAX_BYTES:
                raise DataError(f"{p} is corrupt: the header {list(dims)} declares {need} bytes of data")
            # one more: trailing bytes mean a corrupt file. In chunks: a gzip header may declare
            # gigabytes the stream does not hold, and one read would allocate them all first
            chunks, got = [], 0
            while got < need + 1:
                chunk = f.read(min(need + 1 - got, 1 << 24))
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
            data = b"".join(chunks)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"IDX file not found: {p}") from None
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as err:  # zlib.error: a corrupt deflate stream
        raise DataError(f"cannot read IDX file {p}: {err}") from None
    if len(data) != need:
        size = header + len(data) if len(data) <= need else "more than " + str(header + need)
        raise DataError(f"{p} is truncated or corrupt: {size} bytes{' (uncompressed)' if gz else ''}, the header "
                        f"{list(dims)} needs {header + need}")
    return np.frombuffer(data, dtype=dtype).reshape(dims)


def _find_idx(directory: Path, split: str, kind: str, rank: int) -> Path:
    prefix = _SPLIT_PREFIX[split]
    for sep in ("-", "."):
        for ext in ("", ".gz"):
            p = directory / f"{prefix}-{kind}{sep}idx{rank}-ubyte{ext}"
            if _kind(p, "IDX file") != "missing":
                return p
    raise DataError(f"no {split} {kind} file in {directory} (expected {prefix}-{kind}-idx{rank}-ubyte or .gz)")


def load_idx_dir(directory: str | Path, split: str = "train") -> Dataset:
    d = Path(directory)
    kind = _kind(d, "IDX directory")
    if kind == "missing":
        raise DataError(f"IDX directory not found: {d}")
    if kind != "dir":
        raise DataError(f"IDX directory {d} is not a directory (idx_dir names the folder holding the IDX files)")
    ip, lp = _find_idx(d, split, "images", 3), _find_idx(d, split, "labels", 1)
    X, y = read_idx(ip), read_idx(lp)
    if y.ndim != 1:
        raise DataError(f"{lp} holds an array of shape {y.shape}, expected labels (n,)")
    if len(X) != len(y):
        raise DataError(f"{ip} has {len(X)} images but {lp} has {len(y)} labels")
    if X.ndim < 2 or len(X) == 0 or X.size == 0:
        raise DataError(f"{ip} holds an array of shape {X.shape}, expected images (n, h, w) with n > 0")
    if X.dtype.kind == "f" and not np.all(np.isfinite(X)):
        raise DataError(f"{ip} contains NaN or infinite values")
    return Dataset(X=X.reshape(len(X), -1), y=labels(y, str(lp)), image_shape=tuple(X.shape[1:]),
                   origin=f"IDX {ip}", index=np.arange(len(X)))


# ---- npz -----------------------------------------------------------------------------------
def load_npz(path: str | Path, layout: str | None = None) -> Dataset:
    """Read ``X`` (n x d, n x h x w, or 4-D with ``layout`` "NCHW" / "NHWC"), ``y`` and the
    optional ``index`` (each image's position in its original file, default 0..n-1)."""
    p = Path(path)
    kind = _kind(p, "npz file")
    if kind == "missing":
        raise DataError(f"npz file not found: {p}")
    if kind != "file":
        raise DataError(f"npz path {p} is not a regular file (a directory, FIFO or device)")
    if layout is not None and layout not in LAYOUTS:
        raise DataError(f"unknown layout {layout!r} (use {' or '.join(map(repr, LAYOUTS))})")
    try:
        with np.load(p, allow_pickle=False) as f:
            missing = [k for k in ("X", "y") if k not in f.files]
            if missing:
                raise DataError(f"{p} lacks array(s) {', '.join(missing)} (it has: {', '.join(f.files) or 'none'})")
            X, y = f["X"], f["y"]
            index = f["index"] if "index" in f.files else None
    except DataError:
        raise
    except Exception as err:  # zipfile / numpy raise many types for corrupt files
        raise DataError(f"cannot read npz file {p}: {err}") from None
    if X.ndim not in (2, 3, 4) or X.shape[0] == 0:
        raise DataError(f"{p}: X has shape {X.shape}, expected (n, d), (n, h, w), (n, C, H, W) or (n, H, W, C) "
                        f"with n > 0")
    if X.ndim == 4 and layout is None:
        raise DataError(f"{p}: X has shape {X.shape} (4-D): state its layout in the spec, "
                        f"\"layout\": \"NCHW\" for (n, C, H, W) or \"NHWC\" for (n, H, W, C)")
    if X.ndim != 4 and layout is not None:
        raise DataError(f"{p}: the spec states layout {layout!r}, but X has shape {X.shape}; a layout is only for "
                        f"4-D X (remove \"layout\" from the spec)")
    if y.shape != (X.shape[0],):
        raise DataError(f"{p}: y has shape {y.shape}, expected ({X.shape[0]},) to match X")
    if X.dtype.kind not in "uif":
        raise DataError(f"{p}: X has dtype {X.dtype}, expected numbers")
    y = labels(y, f"{p}: y")
    if X.dtype.kind == "f" and not np.all(np.isfinite(X)):
        raise DataError(f"{p}: X contains NaN or infinite values")
    if index is None:
        index = np.arange(len(X))
    elif index.shape != (X.shape[0],):
        raise DataError(f"{p}: index has shape {index.shape}, expected ({X.shape[0]},) to match X "
                        f"(one position per image)")
    elif index.dtype.kind not in "ui":
        raise DataError(f"{p}: index has dtype {index.dtype}, expected integer positions")
    elif index.size and (index.min() < 0 or index.max() > np.iinfo(np.int64).max):
        raise DataError(f"{p}: index holds negative or too large positions (from {index.min()} to {index.max()})")
    return Dataset(X=X.reshape(len(X), -1), y=y, image_shape=tuple(int(s) for s in X.shape[1:]),
                   origin=f"npz {p}", index=np.asarray(index, dtype=np.int64), layout=layout)


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
                   index=ds.index, layout=ds.layout)


# ---- selection -----------------------------------------------------------------------------
def select_points(ds: Dataset, classes: tuple[int, ...], n_per_class: int, *, method: str = "first",
                  seed: int | None = None, scaling: str = "divide_255") -> Points:
    """Take ``n_per_class`` images of each class and scale them to [0, 1]: two classes give
    two-class :class:`Points`, more give the K-class form (grouped in the order of ``classes``).

    ``method="first"``: the first n in file order (the convention of published numbers).
    ``method="random"``: a uniform sample without replacement, by ``seed``, kept in file order.
    ``scaling="divide_255"`` divides raw pixels by 255; ``"none"`` takes values as they are.
    Either way every value must end up in [0, 1]; and data already in [0, 1] (its largest
    value at most 1) is refused with ``divide_255``: dividing it again would squeeze every
    image into [0, 1/255].
    """
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise DataError(f"the classes must differ, at least two of them, got {list(classes)}")
    if scaling not in ("divide_255", "none"):
        raise DataError(f"unknown scaling {scaling!r} (use 'divide_255' or 'none')")
    if method not in ("first", "random"):
        raise DataError(f"unknown selection method {method!r} (use 'first' or 'random')")
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
        else:
            rng = np.random.default_rng(seed)
            take = np.sort(rng.choice(where, size=n_per_class, replace=False))
        picked.append(ds.X[take].astype(np.float64))
        positions.append(ds.index[take])
    if scaling == "divide_255":
        top = max(float(X.max(initial=0.0)) for X in picked)
        if 0.0 < top <= 1.0:
            raise DataError(f"the selected images of {ds.origin} already lie in [0, {top:g}] but the spec asks for "
                            f'"scaling": "divide_255", which would squeeze them into [0, {top / 255:.2g}]; use '
                            f'"scaling": "none" for data already in [0, 1]')
        picked = [X / 255.0 for X in picked]
    for c, X in zip(classes, picked):
        if X.size and (X.min() < 0.0 or X.max() > 1.0):
            raise DataError(f"class {c} pixels lie in [{X.min():g}, {X.max():g}] after scaling {scaling!r}, "
                            f"not in [0, 1]; choose the scaling that maps this data to [0, 1]")
    if len(classes) > 2:
        X, index = np.concatenate(picked), np.concatenate(positions)
        labels = np.repeat(np.arange(len(classes)), [len(x) for x in picked])
        return Points(tuple(int(c) for c in classes), X, X, index, index, ds.origin, ds.image_shape, ds.layout,
                      labels)
    return Points(classes=(int(classes[0]), int(classes[1])), X_a=picked[0], X_b=picked[1],
                  index_a=positions[0], index_b=positions[1], origin=ds.origin, image_shape=ds.image_shape,
                  layout=ds.layout)
