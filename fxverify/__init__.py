"""fxverify: lower bounds on the robust loss of any classifier trained on a fixed feature extractor.

The documented API: :func:`load_model` (ONNX -> graph IR), :func:`collide` (one pair at one cut),
:class:`Collider` (many pairs, with an :class:`Engine` from :func:`resolve_engine`),
:func:`lower_bounds` (0-1 and cross-entropy bounds from per-pair budgets) and :func:`bound`
(the main job, as ``fxverify bound``).
"""

from ._version import __version__  # noqa: E402,F401

from .errors import FxverifyError  # noqa: E402
from .ir import Network  # noqa: E402
from .onnx_import import load_model  # noqa: E402
from .bounds import lower_bounds  # noqa: E402
from .collision import Collider, Collision, CollisionStatus, collide  # noqa: E402
from .config import Engine, resolve_engine  # noqa: E402
from .analysis import Analysis, bound  # noqa: E402
from .spec import Spec, load_spec  # noqa: E402

__all__ = ["FxverifyError", "Network", "load_model", "lower_bounds", "Collider", "Collision", "CollisionStatus",
           "collide", "Engine", "resolve_engine", "Analysis", "bound", "Spec", "load_spec", "__version__"]
