"""fxverify: lower bounds on the robust loss of any classifier trained on a fixed feature extractor."""

from .errors import FxverifyError
from .ir import Network
from .onnx_import import load_model

__version__ = "0.1.0"

__all__ = ["FxverifyError", "Network", "load_model", "__version__"]
