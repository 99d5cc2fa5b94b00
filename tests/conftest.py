from __future__ import annotations

import os
from pathlib import Path

import pytest

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
