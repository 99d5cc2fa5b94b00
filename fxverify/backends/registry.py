"""Which backends exist: the built-ins, as (module, class) pairs imported only when asked for."""

from __future__ import annotations

import importlib

from ..errors import SolverError
from .base import Backend

#: name -> "module:Class". Importing a backend module never imports its solver.
BUILTIN: dict[str, str] = {
    "cvxopt": "fxverify.backends.cvxopt_backend:CvxoptBackend",
    "activeset": "fxverify.backends.activeset:ActiveSetBackend",
}


def backend_classes() -> dict[str, type[Backend]]:
    out = {}
    for name, target in BUILTIN.items():
        module, cls = target.split(":")
        out[name] = getattr(importlib.import_module(module), cls)
    return out


def get_backend(name: str) -> Backend:
    classes = backend_classes()
    if name not in classes:
        raise SolverError(f"unknown solver backend {name!r}; available: {', '.join(sorted(classes))}")
    return classes[name]()
