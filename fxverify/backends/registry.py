"""Which backends exist: built-ins and plugins, found through the entry-point group
``fxverify.solvers`` (``name = "module:Class"``), imported only when asked for.

The built-ins are declared in fxverify's own ``pyproject.toml`` under that group too; the table
below is the same list, used when fxverify runs from a source tree without installed metadata.
A plugin that cannot be imported, or whose class is not a :class:`Backend` named like its entry
point, is reported as a warning and left out; it never stops the others from loading.
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass
from importlib import metadata

from ..errors import SolverError
from .base import Backend

GROUP = "fxverify.solvers"

#: name -> "module:Class" of the backends that ship with fxverify.
BUILTIN: dict[str, str] = {
    "cvxopt": "fxverify.backends.cvxopt_backend:CvxoptBackend",
    "activeset": "fxverify.backends.activeset:ActiveSetBackend",
    "clarabel": "fxverify.backends.clarabel_backend:ClarabelBackend",
    "scip": "fxverify.backends.pyomo_backends:ScipBackend",
    "gurobi": "fxverify.backends.pyomo_backends:GurobiBackend",
    "mosek": "fxverify.backends.pyomo_backends:MosekBackend",
    "highs": "fxverify.backends.highs_backend:HighsBackend",
    "ipm": "fxverify.backends.ipm:IpmBackend",
}


class PluginWarning(UserWarning):
    """A solver plugin could not be loaded."""


@dataclass(frozen=True)
class BrokenPlugin:
    name: str
    target: str
    reason: str


def _entry_points() -> dict[str, str]:
    found = {}
    for ep in metadata.entry_points(group=GROUP):
        found.setdefault(ep.name, ep.value)
    return found


def _load(name: str, target: str) -> type[Backend]:
    module, _, attr = target.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, Backend)):
        raise TypeError(f"{target} is not a fxverify Backend class")
    if obj.name != name:
        raise TypeError(f"{target} declares name {obj.name!r}, not {name!r}")
    return obj


def discover() -> tuple[dict[str, type[Backend]], list[BrokenPlugin]]:
    """Every backend class by name, and the plugins that failed to load (with the reason)."""
    targets = dict(BUILTIN)
    targets.update({k: v for k, v in _entry_points().items() if k not in BUILTIN})
    classes, broken = {}, []
    for name, target in sorted(targets.items()):
        try:
            classes[name] = _load(name, target)
        except Exception as err:  # a plugin may fail in any way; report it, keep the rest
            broken.append(BrokenPlugin(name, target, f"{type(err).__name__}: {err}"))
    return classes, broken


def backend_classes() -> dict[str, type[Backend]]:
    """Backend classes by name; a broken plugin is a warning, not an error."""
    classes, broken = discover()
    for b in broken:
        warnings.warn(f"solver plugin {b.name!r} ({b.target}) could not be loaded: {b.reason}", PluginWarning,
                      stacklevel=2)
    return classes


def get_backend(name: str) -> Backend:
    classes = backend_classes()
    if name not in classes:
        raise SolverError(f"unknown solver backend {name!r}; available: {', '.join(sorted(classes))}")
    return classes[name]()
