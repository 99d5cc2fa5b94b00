"""Configuration, resolved once: spec + solver profile + command-line options + defaults become
plain objects, and everything below works on those (no name lookups, no defaults of its own).

* :func:`resolve_engine`: a solver profile (name, file or object), the norm, the input domain,
  a method override and a check backend -> an :class:`Engine`: the backend instances for the
  descent's LPs (chosen by the norm: l2 cone LPs or polyhedral LPs), the fallback, the exact
  method's MIP backend and its descent, all checked (capabilities, availability, options);
* :func:`apply_overrides`: the spec with the CLI's ``--n``, ``--eps``, ``--cuts``,
  ``--classes``, ``--norm`` (re-validated against the spec schema);
* :func:`prepare_network`: the network as the spec sees it (``normalize`` folded in as an input
  map applied before the model, so budgets stay in pixel space);
* :func:`resolve_run`: all of the above for one run of the main job (what ``fxverify bound``
  and :func:`fxverify.bound` use).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from . import linops
from .backends.base import Availability, Backend, Capability, SolverOptions
from .backends.registry import get_backend
from .errors import FxverifyError, SolverError, SpecError
from .ir import InputMap, Linear, Network
from .norms import Domain, Norm, get_norm
from .profiles import DEFAULT_PROFILE, SolverProfile, load_profile

#: the exact method's profile when none is named
DEFAULT_EXACT_PROFILE = "exact-scip"
#: orders in which a run computes its pairs (:func:`fxverify.pipeline.promise_order`, or row by
#: row); the order changes what a time budget covers, never a result
ORDERS = ("promise", "file")


@dataclass(frozen=True, eq=False)
class Engine:
    """A resolved collision method: what a :class:`~fxverify.collision.Collider` needs."""

    profile: SolverProfile
    method: str
    norm: Norm
    domain: Domain | None = None
    lp: Backend | None = None  # the descent's (and polyhedral affine cuts') LP backend
    lp_options: SolverOptions = field(default_factory=SolverOptions)
    fallbacks: tuple[tuple[Backend, SolverOptions], ...] = ()
    exact: Backend | None = None
    exact_options: SolverOptions = field(default_factory=SolverOptions)
    descent: Engine | None = None  # the exact method's descent (its budget bounds the model)
    check: Backend | None = None

    @property
    def max_iterations(self) -> int:
        return self.profile.max_iterations

    @property
    def start(self) -> str:
        return self.profile.start

    @property
    def risky_flips(self) -> bool:
        return self.profile.risky_flips

    @property
    def multistart(self):
        """The descent's extra starts (a :class:`~fxverify.profiles.Multistart`), or None."""
        return self.profile.multistart

    @property
    def name(self) -> str:
        return self.profile.name

    def describe(self) -> dict[str, Any]:
        """What determines the results (for store fingerprints and results.json)."""
        return {"profile": self.profile.to_dict(), "method": self.method, "norm": self.norm.name,
                "domain": None if self.domain is None else [self.domain.lo, self.domain.hi],
                "lp_backend": None if self.lp is None else self.lp.name}


def _usable(b: Backend, capability: Capability) -> Backend:
    b.require(capability)
    return b


def _lp_for(profile: SolverProfile, norm: Norm) -> tuple[Backend, SolverOptions]:
    """The backend (and its options) for the descent's LPs under ``norm``."""
    need = Capability.LP if norm.polyhedral else Capability.CONE_LP
    main = get_backend(profile.backend)
    if main.solves(norm.name):
        _usable(main, need)
        main.check_options(profile.options)
        return main, profile.options
    if norm.polyhedral:
        lp = get_backend(profile.lp_backend)
        if not lp.solves(norm.name):
            raise SolverError(f"profile {profile.name!r}: lp_backend {profile.lp_backend!r} cannot solve LPs")
        _usable(lp, need)
        lp.check_portable(profile.options)
        if profile.options.rel_gap is not None:
            raise SolverError(f"profile {profile.name!r}: rel_gap is a MIP option; the descent's {norm.label} LPs "
                              f"are solved to optimality")
        return lp, SolverOptions(time_limit=profile.options.time_limit, threads=profile.options.threads)
    raise SolverError(f"profile {profile.name!r}: backend {profile.backend!r} cannot solve the l2 cone LPs of the "
                      f"descent ({', '.join(c.value for c in main.capabilities)}); use {DEFAULT_PROFILE}")


def resolve_engine(solver: str | SolverProfile | None = None, norm: str | Norm | None = None,
                   domain: Domain | tuple[float, float] | None = None, method: str | None = None,
                   check_solver: str | None = None) -> Engine:
    """Resolve a solver profile for a norm and input domain into an :class:`Engine`.

    ``solver``: a profile name or file, a backend name, a :class:`SolverProfile`, or None (the
    default profile; ``exact-scip`` when ``method="exact"``). Raises SolverError (one line) for
    unknown names, backends that cannot solve the norm's problems, unavailable solvers and bad
    options."""
    from . import _checks
    from .profiles import METHODS

    solver = _checks.solver(solver)
    if not isinstance(norm, Norm):
        _checks.text(norm, "norm")
    _checks.text(method, "method", METHODS)
    _checks.text(check_solver, "check_solver")
    domain = _checks.domain(domain)
    norm = get_norm(norm)
    if domain is not None and not isinstance(domain, Domain):
        lo, hi = (float(x) for x in domain)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise SpecError(f"domain [{lo}, {hi}] must be two finite numbers with lo < hi")
        domain = Domain(lo, hi)
    if isinstance(solver, SolverProfile):
        profile = solver
        if method is not None and method != profile.method:
            if "exact" in (method, profile.method):
                raise SolverError(f"solver profile {profile.name!r} is for the {profile.method} method, not {method}")
            profile = replace(profile, method=method)
    else:
        if solver is None and method == "exact":
            solver = DEFAULT_EXACT_PROFILE
        profile = load_profile(solver, method)
    check = None
    if check_solver is not None:
        check = get_backend(check_solver)
        caps = check.capabilities
        need = Capability.LP if norm.polyhedral else Capability.CONE_LP
        cap = need if need in caps else (Capability.CONE_LP_PRIMAL if Capability.CONE_LP_PRIMAL in caps else None)
        if cap is None:
            raise SolverError(f"backend {check_solver!r} cannot solve the descent's {norm.label} problems, so it "
                              f"cannot check them")
        check.require(cap)
    if profile.method == "exact":
        b = get_backend(profile.backend)
        need = Capability.MILP if norm.polyhedral else Capability.MIQCP
        if need not in b.capabilities:
            raise SolverError(f"backend {b.name!r} cannot solve the exact method's {need.value} under "
                              f"{norm.label} budgets")
        a = b.availability()
        if not a:
            raise SolverError(f"backend {b.name!r} is not usable: {b.availability_detail()}")
        b.check_options(profile.options)
        descent = resolve_engine(DEFAULT_PROFILE, norm, domain)
        return Engine(profile, "exact", norm, domain, lp=descent.lp, lp_options=descent.lp_options,
                      fallbacks=descent.fallbacks, exact=b, exact_options=profile.options, descent=descent,
                      check=check)
    lp, lp_options = _lp_for(profile, norm)
    fallbacks = []
    for name, options in profile.fallbacks:
        fb = get_backend(name)
        fb.check_options(options)
        if fb.solves(norm.name) and fb.name != lp.name and fb.availability():
            fallbacks.append((fb, options))
    return Engine(profile, profile.method, norm, domain, lp=lp, lp_options=lp_options, fallbacks=tuple(fallbacks),
                  check=check)


# ----------------------------------------------------------------------------------------
# The spec, the network and the run
# ----------------------------------------------------------------------------------------
#: the spec fields the command line may override, and the CLI flags that do
SPEC_OVERRIDES = ("n_per_class", "eps", "cuts", "classes", "norm")


def apply_overrides(spec, **overrides):
    """The spec with some fields replaced (None: keep), re-validated against the spec schema."""
    from .spec import ALL_CLASSES, parse_spec

    changes = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(changes) - set(SPEC_OVERRIDES)
    if unknown:
        raise SpecError(f"cannot override spec field(s) {', '.join(sorted(unknown))}")
    if not changes:
        return spec
    doc = spec.to_dict()
    for k, v in changes.items():
        if k == "cuts":
            v = "all" if v in ("all", ["all"], ("all",)) else list(v)
        elif k == "classes" and v == ALL_CLASSES:
            pass
        elif k in ("eps", "classes"):
            v = list(v)
        doc[k] = v
    where = f"{spec.path or 'spec'} (with command-line overrides)"
    return replace(parse_spec(doc, Path(spec.path).parent if spec.path else ".", where), path=spec.path)


def prepare_network(net: Network, normalize: tuple | None) -> Network:
    """The network a spec with ``normalize`` = (mean, std) analyses: the model is fed
    (x - mean) / std (an input map, folded into the linear maps that read the input); budgets
    and domains stay in x's space. None: the network itself."""
    norm = normalize
    if not norm:
        return net
    mean, std = (np.asarray(x, dtype=np.float64) for x in norm)
    shape = net.input_shape
    if mean.size == 1 and std.size == 1:
        m, s = np.full(shape, mean[0]), np.full(shape, std[0])
    else:
        axes = [k for k, n in enumerate(shape) if n == mean.size]
        if mean.size != std.size or not axes:
            raise SpecError(f"normalize has {mean.size} means and {std.size} stds, but the model's input "
                            f"{tuple(shape)} has no axis of that size (one value per channel, or one in all)")
        if len(axes) > 1:
            # channels first or last: prefer the axis ONNX models use (NCHW: the first)
            axes = [axes[0]]
        view = [1] * len(shape)
        view[axes[0]] = mean.size
        m, s = np.broadcast_to(mean.reshape(view), shape), np.broadcast_to(std.reshape(view), shape)
    return fold_input_map(net, 1.0 / s.ravel(), -(m / s).ravel(),
                          f"normalize mean {mean.tolist()} std {std.tolist()}")


def fold_input_map(net: Network, scale: np.ndarray, offset: np.ndarray, desc: str) -> Network:
    """The network fed ``scale * x + offset`` (per input value), folded into the linear maps
    that read the input (and kept as the network's input map, for onnxruntime)."""
    nodes = []
    for n in net.nodes:
        if isinstance(n, Linear) and "input" in n.inputs:
            k = n.inputs.index("input")
            w = n.weights[k]
            W = (w @ sp.diags(scale)).tocsr() if linops.is_sparse(w) else w * scale[None, :]
            weights = n.weights[:k] + (W,) + n.weights[k + 1:]
            nodes.append(replace(n, weights=weights, bias=n.bias + w @ offset))
        elif "input" in n.inputs:
            raise SpecError(f"normalize: {n.name} ({n.kind}) reads the model's input directly; fxverify folds the "
                            f"normalisation into the linear maps that read the input")
        else:
            nodes.append(n)
    return replace(net, nodes=tuple(nodes), input_map=InputMap(scale, offset, desc))


@dataclass(frozen=True)
class RunConfig:
    """One run of the main job, resolved."""

    spec: Any  # fxverify.spec.Spec (with overrides applied)
    engine: Engine
    time_budget: float | None = None
    order: str = "promise"
    #: every descent to its local optimum (the reference); by default a descent stops when its
    #: next steps cannot cross a budget of the spec's grid
    exhaustive: bool = False
    #: skip pairs that by the measured descent/closed-form ratios cannot change a bound (off by
    #: default; never with ``exhaustive``)
    select_pairs: bool = False

    @property
    def norm(self) -> Norm:
        return self.engine.norm

    @property
    def grid(self) -> tuple[float, ...] | None:
        """The budgets descents may stop at (None when exhaustive)."""
        return None if self.exhaustive else tuple(self.spec.eps)


def resolve_run(spec, *, solver: str | SolverProfile | None = None, solver_options: dict | None = None,
                time_budget: float | None = None, order: str = "promise", exhaustive: bool = False,
                select_pairs: bool = False, **overrides) -> RunConfig:
    """The spec (a Spec or a path) with overrides, its solver profile (``solver`` or the spec's)
    with ``solver_options``, its norm and domain, and the time budget (``time_budget`` or the
    spec's) -> a :class:`RunConfig`."""
    from .spec import Spec, load_spec

    if not isinstance(spec, Spec):
        spec = load_spec(spec)
    spec = apply_overrides(spec, **overrides)
    profile = solver if isinstance(solver, SolverProfile) else load_profile(solver or spec.solver)
    if solver_options:
        profile = profile.with_overrides(solver_options)
    engine = resolve_engine(profile, spec.norm, getattr(spec, "domain", None))
    if time_budget is None:
        time_budget = spec.time_budget
    from .spec import check_time_budget

    time_budget = check_time_budget(time_budget, "time budget")
    if order not in ORDERS:
        raise FxverifyError(f"unknown pair order {order!r}; orders: {', '.join(ORDERS)}")
    if select_pairs and exhaustive:
        raise FxverifyError("--select-pairs skips pairs by the grid; --exhaustive computes every pair to its local "
                            "optimum: choose one")
    return RunConfig(spec, engine, time_budget, order, bool(exhaustive), bool(select_pairs))


__all__ = ["Availability", "Engine", "RunConfig", "apply_overrides", "prepare_network", "resolve_engine",
           "resolve_run", "DEFAULT_PROFILE"]
