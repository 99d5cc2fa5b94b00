"""Analysis specs: a JSON file validated against the versioned schema shipped with the package.

``load_spec(path)`` parses and validates a spec (unknown keys are errors) and returns an
immutable :class:`Spec`. ``Spec.load_points()`` reads the data it names; ``Spec.resolve_cuts``
and :func:`check_compatible` check it against a model.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from .data import Dataset, Points, load_embedded, load_idx_dir, load_npz, select_points
from .errors import SpecError
from .ir import Network

SCHEMA_VERSION = 1
DEFAULT_SOLVER = "descent-cvxopt"


@lru_cache(maxsize=None)
def schema(version: int = SCHEMA_VERSION) -> dict:
    """The JSON schema of spec ``version`` (shipped as package data)."""
    text = (resources.files("fxverify.schemas") / f"spec-v{version}.json").read_text()
    return json.loads(text)


@dataclass(frozen=True)
class DataSource:
    kind: str  # "embedded" | "idx_dir" | "npz"
    value: str  # embedded name, or resolved path

    def load(self, split: str) -> Dataset:
        if self.kind == "embedded":
            return load_embedded(self.value, split)
        if self.kind == "idx_dir":
            return load_idx_dir(self.value, split)
        return load_npz(self.value)


@dataclass(frozen=True)
class Spec:
    data: DataSource
    classes: tuple[int, int]
    n_per_class: int
    eps: tuple[float, ...]
    split: str = "train"
    selection: str = "first"
    seed: int | None = None
    scaling: str = "divide_255"
    norm: str = "l2"
    cuts: tuple[str, ...] | None = None  # None: all cuts
    solver: str = DEFAULT_SOLVER
    time_budget: float | None = None
    description: str = ""
    path: str = ""

    def load_points(self) -> Points:
        """Read the data and select the two classes (raises DataError with one line)."""
        ds = self.data.load(self.split)
        return select_points(ds, self.classes, self.n_per_class, method=self.selection, seed=self.seed,
                             scaling=self.scaling)

    def resolve_cuts(self, net: Network) -> tuple[str, ...]:
        """The cuts to analyse, in network order; unknown names are an error."""
        if self.cuts is None:
            return net.cuts
        unknown = [c for c in self.cuts if c not in net.cuts]
        if unknown:
            raise SpecError(f"spec {self.path or ''} names cut(s) {', '.join(unknown)} that the model does not have; "
                            f"its cuts are: {', '.join(net.cuts)}")
        return tuple(c for c in net.cuts if c in self.cuts)

    def to_dict(self) -> dict[str, Any]:
        """The resolved spec, as JSON data valid against the schema."""
        d: dict[str, Any] = {"version": SCHEMA_VERSION}
        if self.description:
            d["description"] = self.description
        d["data"] = {self.data.kind: self.data.value}
        d["split"] = self.split
        d["classes"] = list(self.classes)
        d["n_per_class"] = self.n_per_class
        d["selection"] = {"method": "first"} if self.selection == "first" else {"method": "random", "seed": self.seed}
        d["scaling"] = self.scaling
        d["norm"] = self.norm
        d["eps"] = list(self.eps)
        d["cuts"] = "all" if self.cuts is None else list(self.cuts)
        d["solver"] = self.solver
        if self.time_budget is not None:
            d["time_budget"] = self.time_budget
        return d


def _reject_constant(name: str):
    raise SpecError(f"spec contains {name}, which is not a valid number")


def _format_path(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def validate(doc: Any, where: str = "spec") -> None:
    """Validate a parsed spec against its schema; raise SpecError naming the first problem."""
    import jsonschema

    if not isinstance(doc, dict):
        raise SpecError(f"{where}: a spec is a JSON object, got {type(doc).__name__}")
    version = doc.get("version")
    if version != SCHEMA_VERSION:
        raise SpecError(f"{where}: unsupported spec version {version!r}; this fxverify reads version {SCHEMA_VERSION} "
                        f"(add \"version\": {SCHEMA_VERSION})")
    validator = jsonschema.Draft202012Validator(schema(SCHEMA_VERSION))
    errors = sorted(validator.iter_errors(doc), key=lambda e: (list(e.absolute_path), e.message))
    if errors:
        err = max(errors, key=jsonschema.exceptions.relevance)
        # oneOf failures: report the most specific sub-error
        while err.context:
            # prefer the branch whose discriminator ("const") matched, e.g. selection.method
            branches: dict = {}
            for sub in err.context:
                branches.setdefault(sub.schema_path[0], []).append(sub)
            matched = [b for b in branches.values() if not any(e.validator == "const" for e in b)]
            pool = [e for b in (matched or branches.values()) for e in b]
            # the deepest error is in the branch that got furthest into the document
            err = max(pool, key=lambda e: (len(e.absolute_path), jsonschema.exceptions.relevance(e)))
        raise SpecError(f"{where}: invalid at {_format_path(err.absolute_path)}: {err.message}")


def parse_spec(doc: dict, base_dir: Path | str = ".", where: str = "spec") -> Spec:
    """Build a Spec from parsed JSON (validated here). Relative paths resolve against base_dir."""
    validate(doc, where)
    base = Path(base_dir)
    (kind, value), = doc["data"].items()
    if kind != "embedded":
        value = str((base / value) if not Path(value).is_absolute() else Path(value))
    classes = tuple(int(c) for c in doc["classes"])
    if classes[0] == classes[1]:
        raise SpecError(f"{where}: invalid at classes: the two classes must differ (both are {classes[0]})")
    eps = [float(e) for e in doc["eps"]]
    if any(not math.isfinite(e) for e in eps):
        raise SpecError(f"{where}: invalid at eps: every budget must be a finite number")
    sel = doc.get("selection", {"method": "first"})
    cuts = doc.get("cuts", "all")
    return Spec(data=DataSource(kind, value), classes=classes, n_per_class=int(doc["n_per_class"]),
                eps=tuple(sorted(set(eps))), split=doc.get("split", "train"), selection=sel["method"],
                seed=sel.get("seed"), scaling=doc.get("scaling", "divide_255"), norm=doc.get("norm", "l2"),
                cuts=None if cuts == "all" else tuple(cuts), solver=doc.get("solver", DEFAULT_SOLVER),
                time_budget=doc.get("time_budget"), description=doc.get("description", ""), path=where)


def load_spec(path: str | Path) -> Spec:
    """Read and validate a spec file."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"spec file not found: {p}")
    try:
        doc = json.loads(p.read_text(), parse_constant=_reject_constant)
    except json.JSONDecodeError as err:
        raise SpecError(f"{p} is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    except UnicodeDecodeError:
        raise SpecError(f"{p} is not a text file") from None
    except SpecError as err:
        raise SpecError(f"{p}: {err}") from None
    return parse_spec(doc, p.parent, str(p))


def check_compatible(points: Points, net: Network, spec: Spec | None = None) -> None:
    """The data's points must fit the model's input."""
    if points.dim != net.input_dim:
        where = f"{spec.path}: " if spec is not None and spec.path else ""
        raise SpecError(f"{where}the data has {points.dim} values per image but the model's input "
                        f"{net.input_shape} has {net.input_dim}")
