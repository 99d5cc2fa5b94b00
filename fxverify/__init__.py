"""fxverify: lower bounds on the robust loss of any classifier trained on a fixed feature extractor.

The documented API: :func:`load_model` (ONNX -> graph IR), :func:`collide` (one pair at one cut),
:class:`Collider` (many pairs, with an :class:`Engine` from :func:`resolve_engine`),
:func:`lower_bounds` (0-1 and cross-entropy bounds from per-pair budgets; for K classes
:func:`lower_bounds_multiclass`) and :func:`bound` (the main job, as ``fxverify bound``).

The names are imported on first use (PEP 562), so that ``import fxverify.cli`` loads neither
numpy nor onnxruntime before the command line has checked the process's resource limits.
"""

from ._version import __version__  # noqa: E402,F401

from .errors import FxverifyError  # noqa: E402  (standard library only)

#: public name -> the submodule that defines it
_LAZY = {"Network": "ir", "load_model": "onnx_import", "lower_bounds": "bounds",
         "lower_bounds_multiclass": "bounds", "Collider": "collision", "Collision": "collision",
         "CollisionStatus": "collision", "collide": "collision", "Engine": "config", "resolve_engine": "config",
         "Analysis": "analysis", "bound": "analysis", "Spec": "spec", "load_spec": "spec"}

__all__ = ["FxverifyError", "Network", "load_model", "lower_bounds", "lower_bounds_multiclass", "Collider", "Collision",
           "CollisionStatus", "collide", "Engine", "resolve_engine", "Analysis", "bound", "Spec", "load_spec",
           "__version__"]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fxverify' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
