from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from fxverify.data import EMBEDDED, load_embedded, load_idx_dir, load_npz, read_idx, select_points
from fxverify.errors import DataError

from conftest import FULL_DATA


def _idx_bytes(arr: np.ndarray) -> bytes:
    code = {np.uint8: 0x08, np.int32: 0x0C}[arr.dtype.type]
    a = arr.astype(arr.dtype.newbyteorder(">"))
    return bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + a.tobytes()


def _write_idx_dir(d, X, y, split="train", gz=False):
    pre = "train" if split == "train" else "t10k"
    for kind, arr, rank in (("images", X, 3), ("labels", y, 1)):
        raw = _idx_bytes(arr)
        p = d / f"{pre}-{kind}-idx{rank}-ubyte" if not gz else d / f"{pre}-{kind}-idx{rank}-ubyte.gz"
        p.write_bytes(gzip.compress(raw) if gz else raw)


@pytest.fixture
def idx_dir(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (40, 4, 5), dtype=np.uint8)
    y = np.tile(np.arange(4, dtype=np.uint8), 10)
    _write_idx_dir(tmp_path, X, y)
    _write_idx_dir(tmp_path, X[:8], y[:8], split="test", gz=True)
    return tmp_path, X, y


def test_idx_roundtrip_plain_and_gz(idx_dir):
    d, X, y = idx_dir
    ds = load_idx_dir(d, "train")
    assert ds.X.shape == (40, 20) and ds.image_shape == (4, 5)
    np.testing.assert_array_equal(ds.X.reshape(40, 4, 5), X)
    np.testing.assert_array_equal(ds.y, y)
    test = load_idx_dir(d, "test")
    np.testing.assert_array_equal(test.X.reshape(8, 4, 5), X[:8])


def test_idx_errors(idx_dir, tmp_path_factory):
    d, X, y = idx_dir
    p = d / "train-images-idx3-ubyte"
    raw = p.read_bytes()
    p.write_bytes(raw[:-7])
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_idx(p)
    p.write_bytes(b"\x01\x02" + raw[2:])
    with pytest.raises(DataError, match="bad magic number"):
        read_idx(p)
    p.write_bytes(raw)
    (d / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(y[:39]))
    with pytest.raises(DataError, match="40 images but .* 39 labels"):
        load_idx_dir(d)
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(DataError, match="no train images file"):
        load_idx_dir(empty)
    with pytest.raises(DataError, match="IDX directory not found"):
        load_idx_dir(empty / "nope")


def test_npz_shapes_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.uniform(0, 1, (12, 28, 28))
    y = np.repeat([0, 1, 2], 4)
    np.savez(tmp_path / "a.npz", X=X, y=y)
    ds = load_npz(tmp_path / "a.npz")
    assert ds.X.shape == (12, 784) and ds.image_shape == (28, 28)
    np.savez(tmp_path / "flat.npz", X=X.reshape(12, -1), y=y)
    assert load_npz(tmp_path / "flat.npz").X.shape == (12, 784)
    np.savez(tmp_path / "noy.npz", X=X)
    with pytest.raises(DataError, match=r"lacks array\(s\) y"):
        load_npz(tmp_path / "noy.npz")
    np.savez(tmp_path / "bady.npz", X=X, y=y[:5])
    with pytest.raises(DataError, match=r"y has shape \(5,\), expected \(12,\)"):
        load_npz(tmp_path / "bady.npz")
    Xn = X.copy()
    Xn[3, 4, 5] = np.nan
    np.savez(tmp_path / "nan.npz", X=Xn, y=y)
    with pytest.raises(DataError, match="NaN"):
        load_npz(tmp_path / "nan.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read npz"):
        load_npz(tmp_path / "junk.npz")
    with pytest.raises(DataError, match="npz file not found"):
        load_npz(tmp_path / "missing.npz")


@pytest.mark.parametrize("name", sorted(EMBEDDED))
def test_embedded_sets(name):
    ds = load_embedded(name)
    assert ds.classes == (3, 7)
    assert ds.X.shape == (1000, 784) and ds.X.dtype == np.uint8
    assert np.bincount(ds.y)[[3, 7]].tolist() == [500, 500]
    assert np.all(np.diff(ds.index) > 0), "file order kept"
    assert ds.X.max() == 255 and ds.X.min() == 0
    with pytest.raises(DataError, match="only the train split"):
        load_embedded(name, "test")


def test_embedded_mnist_equals_the_first_images_of_the_full_file():
    if not (FULL_DATA / "mnist").is_dir():
        pytest.skip(f"full MNIST IDX files not at {FULL_DATA / 'mnist'} (scripts/fetch_data.sh)")
    full = load_idx_dir(FULL_DATA / "mnist")
    emb = load_embedded("mnist")
    for c in (3, 7):
        np.testing.assert_array_equal(emb.X[emb.y == c], full.X[full.y == c][:500])
        np.testing.assert_array_equal(emb.index[emb.y == c], np.flatnonzero(full.y == c)[:500])


def test_select_first_random_and_scaling():
    ds = load_embedded("mnist")
    pts = select_points(ds, (3, 7), 10)
    assert pts.X_a.shape == (10, 784) and pts.dim == 784 and pts.n == 20
    assert pts.X_a.max() <= 1.0 and pts.X_a.min() >= 0.0
    np.testing.assert_array_equal(pts.X_a * 255, ds.X[ds.y == 3][:10])
    assert pts.index_b.tolist() == ds.index[ds.y == 7][:10].tolist()
    r1 = select_points(ds, (3, 7), 10, method="random", seed=3)
    r2 = select_points(ds, (3, 7), 10, method="random", seed=3)
    r3 = select_points(ds, (3, 7), 10, method="random", seed=4)
    np.testing.assert_array_equal(r1.index_a, r2.index_a)
    assert r1.index_a.tolist() != r3.index_a.tolist()
    assert len(set(r1.index_a.tolist())) == 10 and np.all(np.diff(r1.index_a) > 0)
    with pytest.raises(DataError, match=r"lie in \[0, 255\] after scaling 'none'"):
        select_points(ds, (3, 7), 10, scaling="none")


def test_select_errors():
    ds = load_embedded("fashion-mnist")
    with pytest.raises(DataError, match=r"class 5 is not present .* \(classes present: 3, 7\)"):
        select_points(ds, (3, 5), 10)
    with pytest.raises(DataError, match="n_per_class=501 but class 3 has only 500 images"):
        select_points(ds, (3, 7), 501)
    with pytest.raises(DataError, match="must differ"):
        select_points(ds, (3, 3), 10)
