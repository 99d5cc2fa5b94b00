"""Analysis specs: a JSON file validated against the versioned schema shipped with the package.

``load_spec(path)`` parses and validates a spec (unknown keys are errors) and returns an
immutable :class:`Spec`. ``Spec.load_points()`` reads the data it names; ``Spec.resolve_cuts``
and :func:`check_compatible` check it against a model (and put the points in the model's input
layout).
"""

from __future__ import annotations

import json
import math
import os
import stat
from dataclasses import dataclass, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from .data import LAYOUTS, Dataset, Points, load_embedded, load_idx_dir, load_npz, select_points
from .errors import ArgumentError, SpecError
from .ir import Network

SCHEMA_VERSION = 1
#: the spec's (and ``--classes``') value for every class label present in the data
ALL_CLASSES = "all"
DEFAULT_SOLVER = "descent-activeset"
#: the adversary norms a spec can name (``Spec.norm``)
NORMS = ("l2", "linf", "l1")
#: deepest nesting of arrays and objects a spec may have (the schema needs 3)
MAX_DEPTH = 32
#: the longest time budget, in seconds (about 31 years; longer ones overflow the clocks that
#: enforce it): leave the budget out for none
MAX_TIME_BUDGET = 1e9
#: the largest spec file read (a spec is a few hundred bytes)
MAX_SPEC_BYTES = 1 << 20
#: a selection seed is a 64-bit integer
MAX_SEED = 2**63 - 1
#: ``normalize`` must keep every input in [0, 1] within this of 0 after (x - mean) / std:
#: beyond it, onnxruntime's float32 input overflows or keeps no digit of the point itself
MAX_NORMALIZED = 1e6


@lru_cache(maxsize=None)
def schema(version: int = SCHEMA_VERSION) -> dict:
    """The JSON schema of spec ``version`` (shipped as package data)."""
    text = (resources.files("fxverify.schemas") / f"spec-v{version}.json").read_text()
    return json.loads(text)


@dataclass(frozen=True)
class DataSource:
    kind: str  # "embedded" | "idx_dir" | "npz"
    value: str  # embedded name, or resolved path

    def load(self, split: str, layout: str | None = None) -> Dataset:
        """``layout``: of 4-D npz arrays ("NCHW" / "NHWC"), from the spec."""
        if self.kind == "embedded":
            return load_embedded(self.value, split)
        if self.kind == "idx_dir":
            return load_idx_dir(self.value, split)
        return load_npz(self.value, layout)


@dataclass(frozen=True)
class Spec:
    data: DataSource
    #: the class labels ([a, b]: the two-class problem; more: the K-class one), or "all"
    #: (every label present in the data, resolved when the points are loaded)
    classes: tuple[int, ...] | str
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
    #: layout of 4-D npz data: "NCHW" or "NHWC" (None: 2-D or 3-D data)
    layout: str | None = None
    #: per-channel (or single) input normalisation (mean, std) the model expects, or None
    normalize: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    #: the input domain [lo, hi] of the threat model, or None
    domain: tuple[float, float] | None = None

    def load_points(self) -> Points:
        """Read the data and select the classes (raises DataError with one line)."""
        ds = self.data.load(self.split, self.layout)
        return select_points(ds, self.resolve_classes(ds), self.n_per_class, method=self.selection, seed=self.seed,
                             scaling=self.scaling)

    def resolve_classes(self, ds: Dataset) -> tuple[int, ...]:
        """The spec's classes; "all": every label present in ``ds``, ascending (at least two)."""
        if self.classes != ALL_CLASSES:
            return tuple(self.classes)
        present = ds.classes
        if len(present) < 2:
            raise SpecError(f"{self.path or 'spec'}: classes \"all\": {ds.origin} holds only class "
                            f"{', '.join(map(str, present)) or '(none)'}; at least two classes are needed")
        return present

    def resolve_cuts(self, net: Network) -> tuple[str, ...]:
        """The cuts to analyse, in network order; unknown names are an error."""
        if self.cuts is None:
            return net.cuts
        unknown = [c for c in self.cuts if c not in net.cuts]
        gone = {u.cut: u.reason for u in net.unavailable}
        if any(c in gone for c in unknown):
            names = [c for c in unknown if c in gone]
            raise SpecError(f"spec {self.path or ''} names cut(s) {', '.join(names)} that fxverify cannot compute "
                            f"for this model: {gone[names[0]]}; available cuts: {', '.join(net.cuts)}")
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
        d["classes"] = ALL_CLASSES if self.classes == ALL_CLASSES else list(self.classes)
        d["n_per_class"] = self.n_per_class
        d["selection"] = {"method": "first"} if self.selection == "first" else {"method": "random", "seed": self.seed}
        d["scaling"] = self.scaling
        if self.layout is not None:
            d["layout"] = self.layout
        if self.normalize is not None:
            d["normalize"] = {"mean": list(self.normalize[0]), "std": list(self.normalize[1])}
        d["norm"] = self.norm
        if self.domain is not None:
            d["domain"] = list(self.domain)
        d["eps"] = list(self.eps)
        d["cuts"] = "all" if self.cuts is None else list(self.cuts)
        d["solver"] = self.solver
        if self.time_budget is not None:
            d["time_budget"] = self.time_budget
        return d


def _reject_constant(name: str):
    raise SpecError(f"spec contains {name}, which is not a valid number")


def _unique_keys(pairs: list) -> dict:
    """A JSON object, refused when a key appears twice (json keeps the last one silently)."""
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise SpecError(f"key {key!r} appears twice in one object; JSON would keep only the last one")
        out[key] = value
    return out


def check_time_budget(value, where: str) -> float | None:
    """A time budget: None, or a positive finite number of seconds up to :data:`MAX_TIME_BUDGET`."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(f"{where}: must be a number of seconds, not {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise SpecError(f"{where}: must be a finite number of seconds, got {value!r}")
    if not value > 0:
        raise SpecError(f"{where}: must be a positive number of seconds, got {value:g}")
    if value > MAX_TIME_BUDGET:
        raise SpecError(f"{where}: {value:g} s is more than the longest budget, {MAX_TIME_BUDGET:g} s (about 31 "
                        f"years); leave it out for no limit")
    return value


def _format_path(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _depth(doc: Any) -> int:
    """Nesting depth of parsed JSON (iterative: no recursion limit)."""
    deepest, stack = 0, [(doc, 1)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, (list, dict)):
            deepest = max(deepest, d)
            if d > MAX_DEPTH:
                break
            stack.extend((v, d + 1) for v in (node.values() if isinstance(node, dict) else node))
    return deepest


def validate(doc: Any, where: str = "spec") -> None:
    """Validate a parsed spec against its schema; raise SpecError naming the first problem."""
    import jsonschema

    if not isinstance(doc, dict):
        raise SpecError(f"{where}: a spec is a JSON object, got {type(doc).__name__}")
    if _depth(doc) > MAX_DEPTH:
        raise SpecError(f"{where}: nested more than {MAX_DEPTH} levels deep; a spec needs 3")
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
            matched = [b for b in branches.values() if not any(e.validator == "const" for e in b)] \
                or list(branches.values())
            # a branch that wants another type for the value itself is the wrong branch when
            # another branch takes the type and fails on something else (e.g. std 0: "must be
            # > 0", not "is not of type 'array'")
            depth = len(err.absolute_path)
            typed = [b for b in matched if not any(e.validator == "type" and len(e.absolute_path) == depth
                                                   for e in b)]
            pool = [e for b in (typed or matched) for e in b]
            # the deepest error is in the branch that got furthest into the document
            err = max(pool, key=lambda e: (len(e.absolute_path), jsonschema.exceptions.relevance(e)))
        raise SpecError(f"{where}: invalid at {_format_path(err.absolute_path)}: {err.message}")


def parse_spec(doc: dict, base_dir: Path | str = ".", where: str = "spec") -> Spec:
    """Build a Spec from parsed JSON (validated here). Relative paths resolve against base_dir."""
    if isinstance(doc, dict):
        _check_classes(doc.get("classes"), where)
    validate(doc, where)
    base = Path(base_dir)
    (kind, value), = doc["data"].items()
    if kind != "embedded":
        value = str((base / value) if not Path(value).is_absolute() else Path(value))
    classes = ALL_CLASSES if doc["classes"] == ALL_CLASSES else tuple(int(c) for c in doc["classes"])
    eps = [float(e) + 0.0 for e in doc["eps"]]  # + 0.0: -0.0 is the budget 0
    if any(not math.isfinite(e) for e in eps):
        raise SpecError(f"{where}: invalid at eps: every budget must be a finite number")
    sel = doc.get("selection", {"method": "first"})
    cuts = doc.get("cuts", "all")
    layout = doc.get("layout")
    if layout is not None and kind != "npz":
        raise SpecError(f"{where}: invalid at layout: a layout is only for npz data with 4-D X ({kind} data has "
                        f"its own)")
    time_budget = check_time_budget(doc.get("time_budget"), f"{where}: invalid at time_budget")
    seed = sel.get("seed")
    if seed is not None:
        if not float(seed).is_integer() or not 0 <= seed <= MAX_SEED:
            raise SpecError(f"{where}: invalid at selection.seed: a seed is an integer from 0 to 2^63 - 1, got "
                            f"{seed!r}")
        seed = int(seed)
    return Spec(data=DataSource(kind, value), classes=classes, n_per_class=int(doc["n_per_class"]),
                eps=tuple(sorted(set(eps))), split=doc.get("split", "train"), selection=sel["method"],
                seed=seed, scaling=doc.get("scaling", "divide_255"), norm=doc.get("norm", "l2"),
                cuts=None if cuts == "all" else tuple(cuts), solver=doc.get("solver", DEFAULT_SOLVER),
                time_budget=time_budget, description=doc.get("description", ""), path=where,
                layout=layout, normalize=_normalize(doc.get("normalize"), where),
                domain=_domain(doc.get("domain"), where))


def _check_classes(classes, where: str) -> None:
    """A list of class labels needs at least two, each once (the schema checks the types)."""
    if not isinstance(classes, list) or not all(isinstance(c, int) and not isinstance(c, bool) for c in classes):
        return
    if len(classes) < 2:
        raise SpecError(f"{where}: invalid at classes: at least two classes are needed, got {classes} (or \"all\" "
                        f"for every class in the data)")
    if len(classes) == 2 and classes[0] == classes[1]:
        raise SpecError(f"{where}: invalid at classes: the two classes must differ (both are {classes[0]})")
    twice = sorted({c for c in classes if classes.count(c) > 1})
    if twice:
        raise SpecError(f"{where}: invalid at classes: class {', '.join(map(str, twice))} is listed more than once "
                        f"in {classes}; each class once")


def _numbers(value, where: str, key: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in (value if isinstance(value, list) else [value]))
    if not all(math.isfinite(v) for v in values):
        raise SpecError(f"{where}: invalid at {key}: every value must be a finite number")
    return values


def _normalize(doc: dict | None, where: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std), one value each or one per channel; std > 0 (the schema checks the types)."""
    if doc is None:
        return None
    mean = _numbers(doc["mean"], where, "normalize.mean")
    std = _numbers(doc["std"], where, "normalize.std")
    if any(v <= 0 for v in std):
        raise SpecError(f"{where}: invalid at normalize.std: every value must be > 0")
    if len(mean) != len(std) and 1 not in (len(mean), len(std)):
        raise SpecError(f"{where}: invalid at normalize: {len(mean)} means but {len(std)} standard deviations "
                        f"(give one value or one per channel for each)")
    k = max(len(mean), len(std))
    reach = max(max(abs(m), abs(1.0 - m)) / s for m, s in zip(mean * k if len(mean) == 1 else mean,
                                                               std * k if len(std) == 1 else std))
    if not reach <= MAX_NORMALIZED:
        raise SpecError(f"{where}: invalid at normalize: (x - mean) / std takes inputs in [0, 1] to values up to "
                        f"{reach:.3g}; mean and std must keep them within {MAX_NORMALIZED:g} (mean and std are in "
                        f"the scaled [0, 1] pixel range)")
    return mean, std


def _domain(doc: list | None, where: str) -> tuple[float, float] | None:
    if doc is None:
        return None
    lo, hi = _numbers(doc, where, "domain")
    if not lo < hi:
        raise SpecError(f"{where}: invalid at domain: [lo, hi] needs lo < hi, got [{lo:g}, {hi:g}]")
    return lo, hi


def load_spec(path: str | Path) -> Spec:
    """Read and validate a spec file."""
    if not isinstance(path, (str, os.PathLike)) or isinstance(path, bytes):
        raise ArgumentError(f"load_spec takes the path of a spec file (str or os.PathLike), not {type(path).__name__}")
    p = Path(path)
    if not str(path).strip():
        raise SpecError("spec path is empty")
    try:
        st = p.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise SpecError(f"spec file not found: {p}") from None
    except OSError as err:  # a name too long, a loop of links
        shown = str(p) if len(str(p)) <= 200 else str(p)[:200] + "..."
        raise SpecError(f"cannot open spec file {shown}: {err.strerror or err}") from None
    if stat.S_ISDIR(st.st_mode):
        raise SpecError(f"spec file not found: {p} is a directory")
    if not stat.S_ISREG(st.st_mode):  # a FIFO or device: reading it could block
        raise SpecError(f"spec path is not a regular file: {p}")
    if st.st_size > MAX_SPEC_BYTES:
        raise SpecError(f"{p} has {st.st_size:,} bytes; a spec is a small JSON file (at most {MAX_SPEC_BYTES:,})")
    try:
        text = p.read_bytes().decode("utf-8-sig")
        doc = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except OSError as err:
        raise SpecError(f"cannot read spec file {p}: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise SpecError(f"{p} is not a text file (not UTF-8); a spec is a JSON file") from None
    except json.JSONDecodeError as err:
        raise SpecError(f"{p} is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    except RecursionError:
        raise SpecError(f"{p} is nested too deeply to be a spec (a spec needs 3 levels)") from None
    except SpecError as err:
        raise SpecError(f"{p}: {err}") from None
    return parse_spec(doc, p.parent, str(p))


def _model_order(shape: tuple[int, ...], layout: str, model: tuple[int, ...]) -> tuple[int, ...] | None:
    """The axis permutation that takes images of ``shape`` in ``layout`` to the model's input
    shape ``model`` (identity first), or None when neither layout fits."""
    if shape == model:
        return (0, 1, 2)
    other = (1, 2, 0) if layout == "NCHW" else (2, 0, 1)  # to the other layout
    if tuple(shape[k] for k in other) == model:
        return other
    return None


def check_compatible(points: Points, net: Network, spec: Spec | None = None) -> Points:
    """Check that the points fit the model's input and return them in the model's input order.

    Flat and (n, h, w) data keep their order (the values per image must match the model's).
    Images with a channel axis (4-D data, ``points.layout`` "NCHW" or "NHWC") are transposed
    to the model's layout when their shape in that layout is the model's input shape (a model
    whose input is flat takes them in the data's own order); any other shape is an error
    naming both."""
    where = f"{spec.path}: " if spec is not None and spec.path else ""
    model = tuple(int(s) for s in net.input_shape)
    if points.layout is None:
        if points.dim != net.input_dim:
            raise SpecError(f"{where}the data has {points.dim} values per image but the model's input "
                            f"{model} has {net.input_dim}")
        return points
    if points.layout not in LAYOUTS or len(points.image_shape) != 3:
        raise SpecError(f"{where}the data's layout {points.layout!r} needs 3-D images, got {points.image_shape}")
    shape = points.image_shape
    squeezed = tuple(s for s in model if s != 1)
    perm = _model_order(shape, points.layout, model) if len(model) == 3 else None
    if perm is None and len(squeezed) <= 1 and points.dim == net.input_dim:
        perm = (0, 1, 2)  # a flat model input: the data's own order
    if perm is None:
        other = "NHWC" if points.layout == "NCHW" else "NCHW"
        t = (1, 2, 0) if points.layout == "NCHW" else (2, 0, 1)
        raise SpecError(f"{where}the data's images have shape {shape} ({points.layout}; "
                        f"{tuple(shape[k] for k in t)} in {other}) but the model's input is {model}")
    if perm == (0, 1, 2):
        return points

    def reorder(X: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(X.reshape((len(X),) + shape).transpose((0,) + tuple(k + 1 for k in perm))
                                    ).reshape(len(X), -1)

    X_a = reorder(points.X_a)
    return replace(points, X_a=X_a, X_b=X_a if points.multiclass else reorder(points.X_b),
                   image_shape=tuple(shape[k] for k in perm), layout="NHWC" if points.layout == "NCHW" else "NCHW")
