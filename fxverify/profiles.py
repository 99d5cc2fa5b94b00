"""Solver profiles: which collision method, which backend, which options.

A profile is a JSON file (schema ``fxverify/schemas/profile-v1.json``). Built-in profiles live in
the repository's ``solvers/`` folder, shipped as the data package ``fxverify._profiles``. A
``--solver``/``solver=`` value is resolved in this order: a path to a profile file, a built-in
profile name, a backend name (the backend with default options).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from .backends.base import SolverOptions
from .errors import SolverError

#: the profile used when none is named: by the library, the CLI and a spec without ``"solver"``
#: (the spec schema's default names it too; a test keeps them equal)
DEFAULT_PROFILE = "descent-activeset"
#: the LP backend a descent profile uses under l-inf / l1 when its own backend solves only
#: cone LPs (activeset) and the profile names no ``lp_backend``
DEFAULT_LP_BACKEND = "ipm"
METHODS = ("closed_form", "descent", "faithful", "exact", "apgd")
STARTS = ("midpoint", "shallower")


@dataclass(frozen=True)
class Multistart:
    """Descent: extra starts for every ReLU cut, all descended, the best verified collision kept
    (profile ``multistart``; absent: one start, a later one only when it finds nothing).

    ``segment``: that many points x = u + t (v - u) at t = k / (segment + 1), k = 1..segment
    (both points start at x: the features collide there, so the patterns admit a collision);
    ``random``: that many points at the midpoint plus a random move in the perturbation space
    (its length a uniform 5-50% of the midpoint budget), seeded by ``seed`` and the pair's and
    cut's bytes, so a pair's result never depends on the order pairs run in; ``apgd``: the
    Auto-PGD attack's points (:func:`fxverify.collision.apgd.apgd_points`) as one more start."""

    segment: int = 0
    random: int = 0
    apgd: bool = False
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"segment": self.segment, "random": self.random, "apgd": self.apgd, "seed": self.seed}


@dataclass(frozen=True)
class SolverProfile:
    name: str
    method: str
    backend: str
    options: SolverOptions = field(default_factory=SolverOptions)
    max_iterations: int = 50
    description: str = ""
    source: str = ""
    #: descent: a second backend (with its options) for cone LPs the first does not solve
    fallbacks: tuple[tuple[str, SolverOptions], ...] = ()
    #: descent: start each ReLU cut at the midpoint's patterns or at the shallower cut's collision
    start: str = "midpoint"
    #: descent: when no safe flip is left, try the dual-suggested flips that leave the current
    #: point infeasible (one more cone LP per descent)
    risky_flips: bool = False
    #: descent under l-inf / l1: the LP backend when ``backend`` solves only cone LPs
    lp_backend: str = DEFAULT_LP_BACKEND
    #: descent: extra starts, every one descended (None: the single start above)
    multistart: Multistart | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "method": self.method, "backend": self.backend,
                "time_limit": self.options.time_limit, "rel_gap": self.options.rel_gap,
                "threads": self.options.threads, "options": dict(self.options.native),
                "max_iterations": self.max_iterations, "start": self.start,
                "risky_flips": self.risky_flips, "lp_backend": self.lp_backend, "source": self.source,
                **({"multistart": self.multistart.to_dict()} if self.multistart else {}),
                **({"fallback": [{"backend": b, "options": dict(o.native)} for b, o in self.fallbacks]}
                   if self.fallbacks else {})}

    def to_document(self) -> dict[str, Any]:
        """The profile as a profile file (valid against the schema)."""
        doc: dict[str, Any] = {"version": 1, "method": self.method, "backend": self.backend,
                               "max_iterations": self.max_iterations, "start": self.start,
                               "risky_flips": self.risky_flips, "lp_backend": self.lp_backend,
                               "options": dict(self.options.native)}
        if self.description:
            doc["description"] = self.description
        for k in ("time_limit", "rel_gap", "threads"):
            if getattr(self.options, k) is not None:
                doc[k] = getattr(self.options, k)
        if self.multistart:
            doc["multistart"] = self.multistart.to_dict()
        if self.fallbacks:
            doc["fallback"] = [{"backend": b, "options": dict(o.native)} for b, o in self.fallbacks]
        return doc

    def with_overrides(self, overrides: dict[str, Any]) -> SolverProfile:
        """Apply ``key=value`` overrides: the profile's own keys (time_limit, rel_gap, threads,
        max_iterations, method, start, risky_flips, lp_backend), checked against the profile
        schema, or backend options (checked by the backend when the profile is resolved)."""
        doc = self.to_document()
        for k, v in overrides.items():
            if k in _PORTABLE:
                doc[k] = v
            else:
                doc["options"][k] = v
        return replace(_parse(doc, self.name, f"{self.source} with overrides {_show(overrides)}"),
                       source=self.source)


_PORTABLE = ("time_limit", "rel_gap", "threads", "max_iterations", "method", "start", "risky_flips", "lp_backend")


def _show(overrides: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in overrides.items())


def builtin_profiles() -> dict[str, Any]:
    """name -> resource of every profile shipped with the package. Imported from a source tree
    (``fxverify/`` beside ``pyproject.toml`` and ``solvers/``), its own ``solvers/`` folder: the
    data package of an install from another checkout would otherwise shadow it."""
    tree = Path(__file__).resolve().parent.parent
    source = tree / "solvers"
    root = source if (tree / "pyproject.toml").is_file() and source.is_dir() else resources.files("fxverify._profiles")
    return {p.name[:-5]: p for p in root.iterdir() if p.name.endswith(".json")}


def _parse(doc: Any, name: str, source: str) -> SolverProfile:
    import jsonschema

    from .spec import _format_path

    schema = json.loads((resources.files("fxverify.schemas") / "profile-v1.json").read_text())
    try:
        errors = list(jsonschema.Draft202012Validator(schema).iter_errors(doc))
    except RecursionError:
        raise SolverError(f"solver profile {source} is nested too deeply") from None
    if errors:
        e = max(errors, key=jsonschema.exceptions.relevance)
        raise SolverError(f"solver profile {source}: invalid at {_format_path(e.absolute_path)}: {e.message}")
    for key in ("time_limit", "rel_gap"):  # the schema's ranges let NaN through (every comparison is false)
        value = doc.get(key)
        if isinstance(value, float) and not math.isfinite(value):
            raise SolverError(f"solver profile {source}: invalid at {key}: {value!r} is not a finite number")
    from .backends.registry import discover

    known = discover()[0]  # (a broken plugin is warned about where it is used, not here)
    lp_backend = doc.get("lp_backend", DEFAULT_LP_BACKEND)
    if lp_backend not in known:  # checked whatever the norm: an l2 run never uses it, but it is wrong
        raise SolverError(f"solver profile {source}: invalid at lp_backend: unknown solver backend {lp_backend!r}; "
                          f"available: {', '.join(sorted(known))}")
    opts = SolverOptions(time_limit=doc.get("time_limit"), rel_gap=doc.get("rel_gap"), threads=doc.get("threads"),
                         native=dict(doc.get("options", {})))
    ms = doc.get("multistart")
    fb = doc.get("fallback") or []
    fb = [fb] if isinstance(fb, dict) else fb
    return SolverProfile(name=name, method=doc["method"], backend=doc["backend"], options=opts,
                         max_iterations=int(doc.get("max_iterations", 50)), description=doc.get("description", ""),
                         start=doc.get("start", "midpoint"), risky_flips=bool(doc.get("risky_flips", False)),
                         lp_backend=doc.get("lp_backend", DEFAULT_LP_BACKEND), source=source,
                         multistart=None if ms is None else Multistart(**ms),
                         fallbacks=tuple((f["backend"], SolverOptions(native=dict(f.get("options", {})))) for f in fb))


def _read(raw: bytes, source: str) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SolverError(f"solver profile {source} is not a text file (not UTF-8)") from None
    def reject(name: str):
        raise SolverError(f"solver profile {source} contains {name}, which is not a valid number")

    try:
        return json.loads(text, parse_constant=reject)
    except json.JSONDecodeError as err:
        raise SolverError(f"solver profile {source} is not valid JSON: {err.msg} at line {err.lineno}") from None
    except RecursionError:
        raise SolverError(f"solver profile {source} is nested too deeply to be a profile") from None


def load_profile(solver: str | None, method: str | None = None) -> SolverProfile:
    """Resolve a profile name, profile file or backend name (None: the default profile).

    ``method``, when given, overrides the profile's method; it must not contradict a profile
    that names the exact method for a descent request or the other way round.
    """
    from .backends.registry import backend_classes

    solver = solver or DEFAULT_PROFILE
    path = Path(solver)
    builtins = builtin_profiles()
    if solver.endswith(".json") or path.is_file():
        if not path.is_file():
            raise SolverError(f"solver profile file not found: {path}")
        try:
            raw = path.read_bytes()
        except OSError as err:
            raise SolverError(f"cannot read solver profile {path}: {err.strerror}") from None
        prof = _parse(_read(raw, str(path)), path.stem, str(path))
    elif solver in builtins:
        prof = _parse(_read(builtins[solver].read_bytes(), solver), solver, f"built-in profile {solver}")
    elif solver in backend_classes():
        prof = SolverProfile(name=solver, method=method or "descent", backend=solver, source=f"backend {solver}")
    else:
        raise SolverError(f"unknown solver {solver!r}: not a profile file, a built-in profile "
                          f"({', '.join(sorted(builtins))}) or a backend ({', '.join(sorted(backend_classes()))})")
    if method is not None and method != prof.method:
        if "exact" in (method, prof.method):
            raise SolverError(f"solver profile {prof.name!r} is for the {prof.method} method, not {method}")
        prof = replace(prof, method=method)
    return prof
