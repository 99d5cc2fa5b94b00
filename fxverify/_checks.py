"""Argument checks at the boundary of the documented Python API.

The documented functions (:func:`fxverify.collide`, :class:`fxverify.Collider`,
:func:`fxverify.lower_bounds`, :func:`fxverify.bound`, :func:`fxverify.resolve_engine`,
:func:`fxverify.load_model`, :func:`fxverify.load_spec`) check their arguments here first, so that
a wrong type or value is an :class:`~fxverify.errors.ArgumentError` naming the argument, never a
``TypeError`` from deep inside, and never accepted silently (a string iterated character by
character, a complex array cast to its real part, a method name that is not one).
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping

import numpy as np

from .errors import ArgumentError


def _type(value) -> str:
    return type(value).__name__


def network(value, name: str = "network"):
    """A loaded :class:`~fxverify.ir.Network` (not a path, not None)."""
    from .ir import Network

    if isinstance(value, Network):
        return value
    if isinstance(value, (str, os.PathLike)):
        raise ArgumentError(f"{name} must be a loaded Network, not the path {str(value)!r}: load it first with "
                            f"fxverify.load_model(path)")
    raise ArgumentError(f"{name} must be a loaded Network (fxverify.load_model(path)), not {_type(value)}")


def path_or_network(value, name: str = "model"):
    from .ir import Network

    if isinstance(value, Network) or (isinstance(value, (str, os.PathLike)) and not isinstance(value, bytes)):
        return value
    raise ArgumentError(f"{name} must be an ONNX file path or a loaded Network, not {_type(value)}")


def optional_path(value, name: str):
    if value is None or (isinstance(value, (str, os.PathLike)) and not isinstance(value, bytes)):
        return value
    raise ArgumentError(f"{name} must be a path (str or os.PathLike) or None, not {_type(value)}")


def text(value, name: str, choices=None, optional: bool = True):
    """A string (or None when ``optional``), one of ``choices`` when given."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ArgumentError(f"{name} must be a string{' or None' if optional else ''}, not {_type(value)}")
    if choices is not None and value not in choices:
        raise ArgumentError(f"{name} {value!r} is not one of {', '.join(map(repr, choices))}")
    return value


def solver(value, name: str = "solver"):
    """A profile name, profile file, backend name or SolverProfile (or None)."""
    from .profiles import SolverProfile

    if value is None or isinstance(value, (str, SolverProfile)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise ArgumentError(f"{name} must be a profile name or file, a backend name or a SolverProfile, not "
                        f"{_type(value)}")


def real_number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentError(f"{name} must be a real number, not {_type(value)} {value!r}")
    return float(value) + 0.0  # -0.0 is 0


def count(value, name: str, minimum: int = 1, optional: bool = True) -> int | None:
    """An integer >= ``minimum`` (or None when ``optional``); floats, bools and strings are refused."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentError(f"{name} must be an integer >= {minimum}, not {_type(value)} {value!r}")
    if value < minimum:
        raise ArgumentError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def sequence(value, name: str, what: str):
    """A list or tuple (or array) -- never a string, which would be read character by character."""
    if isinstance(value, (str, bytes)):
        raise ArgumentError(f"{name} must be a list of {what}, not the string {value!r}")
    if isinstance(value, np.ndarray):
        return list(value.ravel())
    if isinstance(value, Mapping) or not hasattr(value, "__iter__"):
        raise ArgumentError(f"{name} must be a list of {what}, not {_type(value)}")
    return list(value)


def number_list(value, name: str) -> list[float]:
    items = sequence(value, name, "numbers")
    return [real_number(v, f"{name}[{k}]") for k, v in enumerate(items)]


def budget_grid(value, name: str = "grid") -> list[float]:
    """Budgets: finite numbers >= 0."""
    out = number_list(value, name)
    for k, g in enumerate(out):
        if not (math.isfinite(g) and g >= 0):
            raise ArgumentError(f"{name}[{k}] = {g!r} is not a finite non-negative budget")
    return out


def int_list(value, name: str) -> list[int]:
    items = sequence(value, name, "integers")
    out = []
    for k, v in enumerate(items):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise ArgumentError(f"{name}[{k}] must be an integer, not {_type(v)} {v!r}")
        out.append(int(v))
    return out


def domain(value, name: str = "domain"):
    """None, a Domain, or (lo, hi): two finite numbers with lo < hi."""
    from .norms import Domain

    if value is None or isinstance(value, Domain):
        return value
    items = number_list(value, name)
    if len(items) != 2:
        raise ArgumentError(f"{name} must be (lo, hi), two numbers, not {len(items)} values")
    lo, hi = items
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ArgumentError(f"{name} ({lo:g}, {hi:g}) must be two finite numbers with lo < hi")
    return (lo, hi)


def real_array(value, name: str) -> np.ndarray:
    """An array of real numbers (integers or floats): strings, complex numbers, objects and
    booleans are refused, not converted."""
    try:
        arr = np.asarray(value)
    except Exception as err:  # ragged nesting and other shapes numpy cannot make an array of
        raise ArgumentError(f"{name} cannot be read as an array of numbers: {err}") from None
    if arr.dtype.kind not in "iuf":
        kind = {"c": "complex numbers", "U": "strings", "S": "bytes", "O": "Python objects", "b": "booleans"}.get(
            arr.dtype.kind, f"dtype {arr.dtype}")
        raise ArgumentError(f"{name} must hold real numbers, not {kind} (dtype {arr.dtype})")
    return arr


def options(value, name: str = "solver_options"):
    if value is None or isinstance(value, Mapping):
        if value is not None and not all(isinstance(k, str) for k in value):
            raise ArgumentError(f"{name} keys must be option names (strings)")
        return value
    raise ArgumentError(f"{name} must be a dict of option names to values, not {_type(value)} {value!r}")


def flag(value, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ArgumentError(f"{name} must be True or False, not {_type(value)} {value!r}")
    return bool(value)
