from __future__ import annotations

import os

# One BLAS thread, as the CLI and its workers run (README, "Executors"): the descent's LPs are
# small dense problems on which threaded BLAS only contends (on a loaded machine by a factor of
# ten and more), and one thread everywhere gives the CLI's bit-identical rounding. Set before
# numpy loads; threadpoolctl for a BLAS a plugin may have loaded already.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

_BLAS_LIMIT = threadpool_limits(limits=1)

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
SPECS = ROOT / "specs"
#: Third-party ONNX files (../shared/real-onnx beside the checkout); override with FXVERIFY_REAL_ONNX.
REAL_ONNX = Path(os.environ.get("FXVERIFY_REAL_ONNX", ROOT.parent / "shared" / "real-onnx"))
#: Full IDX files from scripts/fetch_data.sh (optional); override with FXVERIFY_DATA.
FULL_DATA = Path(os.environ.get("FXVERIFY_DATA", ROOT / "data"))


@pytest.fixture
def shipped_model() -> Path:
    return MODELS / "fcnn_mnist_3v7_benign.onnx"


@pytest.fixture
def tiny_model() -> Path:
    return MODELS / "fcnn_tiny_mnist_3v7_benign.onnx"
