"""NS planner: predicted spectra at a target size → the cheapest NS configuration per layer.

For each fitted (layer_type, rel_depth) the law of the chosen quantile q (default s_0.5) predicts
s_q at the target size M with a two-sided prediction interval (level 0.95 by default); its lower
end ℓ is the pessimistic value. A configuration (schedule, k steps) *lifts* ℓ when its failure
threshold satisfies τ_ρ(k) ≤ ℓ, i.e. every s ∈ [ℓ, 1] maps to at least ρ under the exact scalar
map. Candidates, per family, with the fewest such k (k ≤ ``max_steps``):

    jordan × k,   polar-express × k,   designed(ℓ) × k

(``families`` may name any other schedule too) where designed(ℓ) is the minimax composition for [ℓ', 1], ℓ' = ℓ rounded down to 2 significant
digits (:func:`~muonscope.laws.design.design_schedule`). Cost is the number of matrix products,
3k; ties go to the earlier family in ``families`` (the simpler schedule). Given the target's matrix
shape per layer type (``shapes``), the implementation of the chosen map is a second choice by
FLOPs: Gram NS (the same map at 4m²n + O(k·m³), :func:`~muonscope.orth.analysis.gram_ns_cost`,
with the safe restarts of ``ns_dtype``) where it costs at most ``gram_max_ratio`` of standard NS's
k(4m²n + 2m³), standard NS elsewhere. Per layer type the plan
uses the most pessimistic depth. Parameter names map to the choice of their layer type at the
fitted depth(s) bracketing their rel_depth (the more demanding one); names of unfitted types or
unknown depth get the layer type's or the global most demanding choice (``default``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np
import pandas as pd

from muonscope.conventions import FAILURE_RHO, PLAN_FORMAT, TARGET_SIZES
from muonscope.errors import ConfigError
from muonscope.laws.criterion import (
    LIFT_MEDIAN,
    Criterion,
    config_map,
    overshoot,
    quantile_function,
    statistic,
)
from muonscope.laws.design import design_name, design_schedule, round_down_2sig
from muonscope.laws.fit import Laws, convergence_key, same_depth
from muonscope.laws.powerlaw import Prediction
from muonscope.orth.analysis import (
    WIDER_DTYPES,
    gram_default_restarts,
    gram_ns_cost,
    gram_pays,
    ns_dtype_for,
    ns_flops,
    ns_matmuls,
    resolution_floor,
    threshold,
)
from muonscope.orth.schedules import BUILTIN_NAMES, Schedule, get_schedule

FAMILIES = ("jordan", "polar-express", "designed")
_BLOCK_SUFFIX = re.compile(r"\s*\[block \d+\]\s*$")
_MIN_ELL = 1e-11  # thresholds are resolved on [1e-12, 1]


@lru_cache(maxsize=4096)
def _tau(schedule: Schedule, steps: int, rho: float) -> float:
    return threshold(schedule, steps, rho)


@lru_cache(maxsize=512)
def _designed(ell: float, safety: float) -> Schedule:
    return design_schedule(ell, safety=safety, name=design_name(ell))


@dataclass(frozen=True)
class Option:
    """The fewest steps of one schedule family that lift ℓ (``steps`` None: not within max_steps)."""

    family: str
    schedule: Schedule | None  # None for the exact polar factor (SVD)
    steps: int | None
    tau: float  # τ_ρ at ``steps`` (NaN if none)

    @property
    def matmuls(self) -> int | None:
        return None if self.steps is None else ns_matmuls(self.steps)


@dataclass(frozen=True)
class LayerChoice:
    """The planned NS configuration for one layer type (and depth; NaN = all depths, worst case)."""

    layer_type: str
    rel_depth: float
    worst_depth: float  # the fitted depth whose prediction set ℓ
    alpha: float
    prediction: Prediction
    ell: float
    schedule: Schedule | None  # None: exact polar factor (no NS configuration lifts ℓ)
    steps: int
    tau: float
    options: tuple[Option, ...]
    stat: float = float("nan")  # statistic criterion: predicted statistic of the choice ...
    bound: float = float("nan")  # ... and the bound it had to meet
    orthogonalizer: str = "ns"  # implementation: "ns" (standard), "gram", "auto" (by shape at run time)
    shape: tuple[int, int] | None = None  # the target's (rows, cols) of this layer type, if given
    ns_flops: int | None = None  # FLOPs of one call of the chosen implementation on ``shape``
    gram_matmuls: int | None = None  # products of one Gram-NS call (when Gram is chosen)
    restarts: tuple[int, ...] | None = None  # the Gram-NS restarts its cost assumed (when Gram is chosen)
    ns_dtype: str | None = None  # a wider NS dtype this layer needs than the run's (None: the run's)

    @property
    def exact(self) -> bool:
        return self.schedule is None

    @property
    def matmuls(self) -> int | None:
        """NS matrix products per call (None for the exact polar factor, which uses an SVD)."""
        if self.exact:
            return None
        return self.gram_matmuls if self.orthogonalizer == "gram" else ns_matmuls(self.steps)

    @property
    def cost(self) -> float:
        """Ordering key: matrix products, exact polar counted as the most expensive."""
        return math.inf if self.exact else float(ns_matmuls(self.steps))

    @property
    def label(self) -> str:
        if self.exact:
            return "exact polar (SVD)"
        extras = [x for x in (None if self.orthogonalizer == "ns" else self.orthogonalizer, self.ns_dtype) if x]
        return f"{self.schedule.name} x{self.steps}" + (f" ({', '.join(extras)})" if extras else "")

    def config(self) -> dict:
        if self.exact:
            return {"orthogonalizer": "exact", "layer_type": self.layer_type}
        out = {"schedule": self.schedule.name, "steps": self.steps, "layer_type": self.layer_type}
        if self.orthogonalizer != "ns":
            out["orthogonalizer"] = self.orthogonalizer
        if self.restarts is not None:
            out["restarts"] = list(self.restarts)
        if self.ns_dtype is not None:
            out["ns_dtype"] = self.ns_dtype
        return out


def plan_options(ell: float, rho: float = FAILURE_RHO, *, families: Sequence[str] = FAMILIES,
                 max_steps: int = 16, safety: float = 1.01) -> tuple[Option, ...]:
    """Fewest steps per family with τ_ρ(k) ≤ ℓ (none below 1e-11, where thresholds are not resolved)."""
    if not (ell <= 1) or math.isnan(ell):
        raise ConfigError(f"the predicted lower bound s = {ell:.3g} is not in (0, 1]")
    if ell < _MIN_ELL:
        return tuple(Option(fam, None if fam == "designed" else get_schedule(fam), None, float("nan"))
                     for fam in families)
    out = []
    for fam in families:
        if fam == "designed":
            sched = _designed(min(round_down_2sig(ell), 0.99), float(safety))
        else:
            sched = get_schedule(fam)
        found = None
        for k in range(1, max_steps + 1):
            t = _tau(sched, k, float(rho))
            if t <= ell:
                found = (k, t)
                break
        out.append(Option(fam, sched, found[0] if found else None, found[1] if found else float("nan")))
    return tuple(out)


def choose(ell: float, rho: float = FAILURE_RHO, *, families: Sequence[str] = FAMILIES, max_steps: int = 16,
           safety: float = 1.01) -> tuple[Option, tuple[Option, ...]]:
    """The cheapest option (fewest matrix products; ties: family order) and all options.

    When no family lifts ℓ within ``max_steps`` (or ℓ < 1e-11), the choice is the exact polar
    factor (``Option("exact", None, 0, 0.0)``): every direction then reaches 1.
    """
    opts = plan_options(ell, rho, families=families, max_steps=max_steps, safety=safety)
    feasible = [o for o in opts if o.steps is not None]
    if not feasible:
        return EXACT, opts
    return min(feasible, key=lambda o: o.matmuls), opts


EXACT = Option("exact", None, 0, 0.0)


@dataclass
class Plan:
    """A per-layer NS plan for one target size; :meth:`to_dict` is the plan JSON."""

    target_params: float
    quantile: float
    rho: float
    level: float
    by_depth: list[LayerChoice]
    by_type: dict[str, LayerChoice]
    params: dict[str, LayerChoice] = field(default_factory=dict)
    default: LayerChoice | None = None
    criterion: Criterion = LIFT_MEDIAN
    #: exponents the plan extrapolates that have not converged over training time ("layer_type|depth|q");
    #: None when the laws carry no convergence verdicts
    unconverged: list[str] | None = None
    ns_dtype: str = "bfloat16"  # the NS dtype of the run planned for (layers may need a wider one)

    def schedules(self) -> dict[str, Schedule]:
        """Non-built-in schedules the plan refers to (designed ones), by name."""
        used = [c.schedule for c in [*self.by_depth, *self.by_type.values(), *self.params.values(),
                                     *([self.default] if self.default else [])]]
        return {s.name: s for s in used if s is not None and s.name not in BUILTIN_NAMES}

    def table(self) -> pd.DataFrame:
        """Recipe table: one row per (layer_type, depth) and per layer type (depth NaN = all)."""
        rows = []
        for c in [*self.by_depth, *self.by_type.values()]:
            opt = {o.family: o.steps for o in c.options}
            rows.append({
                "layer_type": c.layer_type, "rel_depth": c.rel_depth, "alpha": c.alpha,
                "s_pred": c.prediction.center, "s_low": c.prediction.low, "s_high": c.prediction.high,
                "schedule": "exact" if c.exact else c.schedule.name, "steps": c.steps, "matmuls": c.matmuls, "tau": c.tau,
                "stat": c.stat, "bound": c.bound, "orthogonalizer": "exact" if c.exact else c.orthogonalizer,
                "ns_flops": c.ns_flops, "ns_dtype": None if c.exact else (c.ns_dtype or self.ns_dtype),
                **{f"steps_{f}": opt.get(f) for f in opt},
            })
        out = pd.DataFrame(rows)
        for col in [c for c in out.columns if c.startswith("steps_")]:
            out[col] = out[col].astype("Int64")
        return out

    def to_dict(self) -> dict:
        """The plan JSON (``muonscope.plan/1``) consumed by ``muonscope.Muon(..., plan=...)``."""
        def num(x):
            return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else float(x)

        def summary(c: LayerChoice) -> dict:
            return {**c.config(), "rel_depth": num(c.rel_depth), "worst_depth": num(c.worst_depth),
                    "alpha": num(c.alpha), "s_pred": c.prediction.center, "s_low": c.prediction.low,
                    "s_high": c.prediction.high, "tau": c.tau, "matmuls": c.matmuls, "ns_flops": c.ns_flops,
                    "stat": num(c.stat), "bound": num(c.bound)}

        d = {
            "format": PLAN_FORMAT, "target_params": float(self.target_params), "quantile": self.quantile,
            "rho": self.rho, "level": self.level, "ns_dtype": self.ns_dtype, "criterion": self.criterion.to_dict(),
            "criterion_text": self.criterion.describe(),
            "schedules": {n: s.to_dict() for n, s in sorted(self.schedules().items())},
            "params": {n: c.config() for n, c in sorted(self.params.items())},
            "layer_types": {t: summary(c) for t, c in sorted(self.by_type.items())},
            "depths": [summary(c) for c in self.by_depth],
            "exponents_converged": None if self.unconverged is None else not self.unconverged,
            "unconverged_exponents": self.unconverged,
        }
        if self.default is not None:
            d["default"] = {k: v for k, v in self.default.config().items() if k != "layer_type"}
        return d


def base_name(name: str) -> str:
    """Parameter name without a row-block suffix (``w [block 2]`` → ``w``)."""
    return _BLOCK_SUFFIX.sub("", str(name))


def names_from_records(df: pd.DataFrame) -> dict[str, tuple[str, float]]:
    """{param name: (layer_type, rel_depth)} from one model's spectral records."""
    need = {"param", "layer_type", "rel_depth"}
    if not need <= set(df.columns):
        raise ConfigError(f"spectral records need columns {sorted(need)} to name parameters")
    if "model_params" in df.columns and df["model_params"].nunique() > 1:
        raise ConfigError("--names-from must point at one run (one model); got records of several sizes")
    out: dict[str, tuple[str, float]] = {}
    for name, lt, rd in df[["param", "layer_type", "rel_depth"]].drop_duplicates().itertuples(index=False):
        out[base_name(name)] = (str(lt), float(rd) if pd.notna(rd) else float("nan"))
    return out


def make_plan(laws: Laws, target_params: float, *, quantile: float = 0.5, rho: float = FAILURE_RHO,
              level: float = 0.95, names: Mapping[str, tuple[str, float]] | None = None,
              families: Sequence[str] = FAMILIES, max_steps: int = 16, safety: float = 1.01,
              criterion: Criterion | None = None, shapes: Mapping[str, tuple[int, int]] | None = None,
              ns_dtype: str = "bfloat16", gram_max_ratio: float = 0.85) -> Plan:
    """Plan NS per layer for a model of ``target_params`` parameters (see the module docstring).

    ``criterion`` None is the lift-quantile rule with ``quantile`` and ``rho``; a ``statistic``
    criterion (:mod:`muonscope.laws.criterion`) bounds the predicted statistic of every choice.
    ``shapes`` ({layer_type: (rows, cols)} at the target size) lets each choice pick Gram or
    standard NS by FLOPs (:func:`with_implementation`, restarts of ``ns_dtype``). ``ns_dtype`` is
    the run's NS dtype, whose resolution floor (:func:`~muonscope.orth.analysis.resolution_floor`:
    bf16 3e-5, fp32 1e-8, fp64 1e-9) bounds what NS can lift: a statistic criterion is evaluated
    with every predicted s below the floor left unlifted, and a layer that meets its bound only in
    a wider dtype gets that dtype in its plan entry (the exact polar factor if none does); under
    lift-quantile, ℓ itself must lie above the floor.
    """
    resolution_floor(ns_dtype)  # an unknown dtype raises ConfigError here
    if criterion is None:
        criterion = Criterion(quantile=float(quantile), rho=float(rho))
    quantile, rho = criterion.quantile, criterion.rho
    try:
        m = float(target_params)
    except (TypeError, ValueError):
        raise ConfigError(f"target size must be a number of parameters, got {target_params!r}") from None
    if not (m > 0 and math.isfinite(m)):
        raise ConfigError(f"target size must be a positive number of parameters, got {target_params!r}")
    if not (0 < rho < 1):
        raise ConfigError(f"rho must lie in (0, 1), got {rho}")
    if not (0 < level < 1):
        raise ConfigError(f"level must lie in (0, 1), got {level}")
    if not isinstance(max_steps, int) or max_steps < 1:
        raise ConfigError(f"max_steps must be a positive int, got {max_steps!r}")
    if not families:
        raise ConfigError("families must name at least one schedule (or 'designed')")
    for fam in families:
        if fam != "designed":
            get_schedule(fam)  # unknown names raise ScheduleError listing the known ones
    if criterion.kind == "statistic" and laws.fits:  # one anchor fit per group: the largest fitted q
        quantile = max(f.q for f in laws.fits)
    fits = laws.select(q=quantile)
    if not fits:
        raise ConfigError(f"the laws have no fits for q={quantile:g}; fitted q levels: "
                          f"{', '.join(f'{q:g}' for q in sorted({f.q for f in laws.fits}))}")

    run_and_wider = [ns_dtype, *(d for d in WIDER_DTYPES if resolution_floor(d) < resolution_floor(ns_dtype))]

    def pick(f) -> LayerChoice:
        pred = f.predict(m, level)
        ell = min(pred.low, 1.0)
        if criterion.kind == "lift-quantile":
            best, opts = choose(ell, rho, families=families, max_steps=max_steps, safety=safety)
            return LayerChoice(f.layer_type, f.rel_depth, f.rel_depth, f.alpha, pred, ell, best.schedule,
                               best.steps, best.tau, opts)
        group = [g for g in laws.fits if g.layer_type == f.layer_type and same_depth(g.rel_depth, f.rel_depth)]
        spectrum = quantile_function([g.q for g in group], [min(g.predict(m, level).low, 1.0) for g in group])
        for dtype in run_and_wider:  # NS cannot lift s below its dtype's floor: widen until the bound holds
            best, opts, value, bound = choose_by_statistic(spectrum, criterion, families=families,
                                                           max_steps=max_steps, safety=safety, ell=ell,
                                                           floor=resolution_floor(dtype))
            if best is not EXACT:
                break
        wider = None if best is EXACT or dtype == ns_dtype else dtype
        return LayerChoice(f.layer_type, f.rel_depth, f.rel_depth, f.alpha, pred, ell, best.schedule, best.steps,
                           best.tau, opts, value, bound, ns_dtype=wider)

    def demand(c: LayerChoice):  # the most demanding choice sorts first
        return (c.ell, -c.cost) if criterion.kind == "lift-quantile" else (-c.cost, c.ell)

    def implemented(c: LayerChoice) -> LayerChoice:
        shape = (shapes or {}).get(c.layer_type)
        return c if shape is None else with_implementation(c, shape, c.ns_dtype or ns_dtype, gram_max_ratio)

    def resolved(c: LayerChoice) -> LayerChoice:  # lift-quantile: ℓ itself must lie above the dtype's floor
        if c.exact or criterion.kind != "lift-quantile":
            return c
        need = ns_dtype_for(c.ell, ns_dtype)
        if need is None:  # below every dtype's floor: only the exact polar factor lifts it
            return replace(c, schedule=None, steps=0, tau=0.0, stat=c.stat if math.isnan(c.stat) else 0.0)
        return c if need == ns_dtype else replace(c, ns_dtype=need)

    def unshaped(c: LayerChoice) -> LayerChoice:  # shape unknown: "auto" decides per matrix at run time
        if not shapes or c.exact:
            return c
        return replace(c, orthogonalizer="auto", shape=None, ns_flops=None, gram_matmuls=None, restarts=None)

    by_depth = [implemented(resolved(pick(f)))
                for f in sorted(fits, key=lambda f: (f.layer_type, math.isnan(f.rel_depth), f.rel_depth))]
    by_type: dict[str, LayerChoice] = {}
    for lt in sorted({c.layer_type for c in by_depth}):
        worst = min((c for c in by_depth if c.layer_type == lt), key=demand)
        by_type[lt] = replace(worst, rel_depth=float("nan"))
    default = min(by_type.values(), key=lambda c: (-c.cost, c.ell))
    params: dict[str, LayerChoice] = {}
    for name, (lt, depth) in (names or {}).items():
        c = _choice_for(by_depth, by_type, default, str(lt), depth, demand)
        params[base_name(name)] = implemented(c) if str(lt) in (shapes or {}) else unshaped(c)
    default = unshaped(default)
    unconverged = None
    if laws.convergence:
        used = [g for f in fits for g in laws.fits if g.layer_type == f.layer_type and same_depth(g.rel_depth, f.rel_depth)
                and (criterion.kind == "statistic" or g.q == f.q)]
        unconverged = sorted({convergence_key(g.layer_type, g.rel_depth, g.q) for g in used
                              if laws.converged(g.layer_type, g.rel_depth, g.q) is False})
    return Plan(m, float(quantile), float(rho), float(level), by_depth, by_type, params, default, criterion,
                unconverged, ns_dtype)


def with_implementation(choice: LayerChoice, shape: tuple[int, int], ns_dtype: str = "bfloat16",
                        max_ratio: float = 0.85) -> LayerChoice:
    """``choice`` with its implementation chosen for an m×n matrix: Gram NS (restarts: the safe
    default of ``ns_dtype``, recorded in the plan so the run uses the restarts that were costed)
    if its FLOPs are at most ``max_ratio`` of standard NS's, else standard. The exact polar factor
    is left as it is."""
    try:
        m, n = (int(shape[0]), int(shape[1]))
    except (TypeError, ValueError, IndexError):
        raise ConfigError(f"a matrix shape must be (rows, cols), got {shape!r}") from None
    if m < 1 or n < 1:
        raise ConfigError(f"a matrix shape must be positive, got {shape!r}")
    if choice.exact:
        return replace(choice, shape=(m, n))
    restarts = gram_default_restarts(ns_dtype, choice.steps)
    if gram_pays(m, n, choice.steps, restarts, max_ratio):
        flops, mm = gram_ns_cost(m, n, choice.steps, restarts)
        return replace(choice, orthogonalizer="gram", shape=(m, n), ns_flops=flops, gram_matmuls=mm,
                       restarts=restarts)
    return replace(choice, orthogonalizer="ns", shape=(m, n), ns_flops=ns_flops(m, n, choice.steps),
                   gram_matmuls=None, restarts=None)


def choose_by_statistic(spectrum: np.ndarray, criterion: Criterion, *, families: Sequence[str] = FAMILIES,
                        max_steps: int = 16, safety: float = 1.01, ell: float = 1e-3, floor: float = 0.0):
    """Cheapest configuration whose statistic on ``spectrum`` stays within the criterion's bound and
    whose outputs stay below its overshoot cap; the exact polar factor when none does within
    ``max_steps``. ``floor``: the NS dtype's resolution floor; NS leaves every s below it unlifted
    (counted as output 0). Returns (option, options per family, its statistic, the bound)."""
    exact_spectrum = spectrum
    spectrum = np.where(np.asarray(spectrum) >= floor, spectrum, 0.0)
    ref_sched, ref_steps = criterion.reference
    ref = statistic(criterion.statistic, config_map(get_schedule(ref_sched), ref_steps, spectrum), criterion.rho)
    bound = min(ref + criterion.delta, criterion.absolute)
    opts, values = [], {}
    for fam in families:
        sched = _designed(min(round_down_2sig(max(ell, _MIN_ELL)), 0.99), float(safety)) if fam == "designed" \
            else get_schedule(fam)
        found = None
        for k in range(1, max_steps + 1):
            v = statistic(criterion.statistic, config_map(sched, k, spectrum), criterion.rho)
            if v <= bound and _overshoot(sched, k) <= criterion.overshoot_cap:
                found = (k, v)
                break
        opt = Option(fam, sched, found[0] if found else None,
                     _tau(sched, found[0], criterion.rho) if found else float("nan"))
        opts.append(opt)
        if found:
            values[fam] = found[1]
    feasible = [o for o in opts if o.steps is not None]
    if not feasible:
        return EXACT, tuple(opts), statistic(criterion.statistic, config_map(None, 0, exact_spectrum),
                                             criterion.rho), bound
    best = min(feasible, key=lambda o: o.matmuls)
    return best, tuple(opts), values[best.family], bound


@lru_cache(maxsize=4096)
def _overshoot(schedule: Schedule, steps: int) -> float:
    return overshoot(schedule, steps)


def _choice_for(by_depth: list[LayerChoice], by_type: dict[str, LayerChoice], default: LayerChoice,
                lt: str, depth, demand) -> LayerChoice:
    if lt not in by_type:
        return replace(default, layer_type=lt, rel_depth=float("nan"))
    depth = float("nan") if depth is None else float(depth)
    known = [c for c in by_depth if c.layer_type == lt and not math.isnan(c.rel_depth)]
    if math.isnan(depth) or not known:
        return by_type[lt]
    d = round(depth, 3)
    below = [c for c in known if c.rel_depth <= d]
    above = [c for c in known if c.rel_depth >= d]
    bracket = ([max(below, key=lambda c: c.rel_depth)] if below else []) + \
              ([min(above, key=lambda c: c.rel_depth)] if above else [])
    return min(bracket, key=demand)


TARGETS = TARGET_SIZES


def recipe_table(laws: Laws, targets: Sequence[float] = TARGETS, *, by_depth: bool = False, **kwargs) -> pd.DataFrame:
    """Recipe tables of :func:`make_plan` for several target sizes, stacked with a ``target_params``
    column; per layer type only (worst depth) unless ``by_depth``. ``kwargs`` go to ``make_plan``."""
    frames = []
    for m in targets:
        t = make_plan(laws, m, **kwargs).table()
        if not by_depth:
            t = t[t["rel_depth"].isna()]
        frames.append(t.assign(target_params=float(m)))
    out = pd.concat(frames, ignore_index=True)
    return out[["target_params", *[c for c in out.columns if c != "target_params"]]]

