"""Planner criteria: when does an NS configuration orthogonalize a predicted spectrum well enough?

Two criteria, both data (``Criterion.to_dict`` goes into every plan file):

- ``lift-quantile`` (the original rule): every s ≥ ℓ maps to ≥ ρ, with ℓ the pessimistic
  prediction of s_q (τ_ρ(k) ≤ ℓ).
- ``statistic`` (calibrated on training loss, see results/calibration/CALIBRATION.md): the
  predicted statistic of the configuration (distortion D = mean (1 − p(s))², or the failed share at
  ρ) over the predicted spectrum must not exceed min(stat(reference) + δ, absolute), where the
  reference is Jordan × 5; and no output may exceed ``overshoot_cap`` anywhere on [1e-12, 1].

The predicted spectrum is the quantile function s(u), u ∈ (0, 1], log-linear between the predicted
s_q at the fitted levels, flat above the top level and continued with the last segment's slope
below the bottom one (``extrapolate``): the tail beyond the largest fitted q is an extrapolation,
and the criterion says so.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import resources

import numpy as np

from muonscope.conventions import FAILURE_RHO
from muonscope.errors import ConfigError
from muonscope.orth.analysis import composed_map
from muonscope.orth.schedules import Schedule

KINDS = ("lift-quantile", "statistic")
STATISTICS = ("distortion", "frac_failed")
_GRID = np.linspace(0.0, 1.0, 2001)[1:]  # quantile levels u at which the spectrum is evaluated
_DOMAIN = np.logspace(-12, 0, 4001)  # where the overshoot cap is checked


@dataclass(frozen=True)
class Criterion:
    """A planner criterion (see the module docstring); ``source`` says where its numbers come from."""

    kind: str = "lift-quantile"
    quantile: float = 0.5  # lift-quantile: the quantile that must be lifted
    rho: float = FAILURE_RHO  # failure level (lift-quantile target; frac_failed threshold)
    statistic: str = "distortion"
    delta: float = 0.0  # tolerated increase of the statistic over the reference's
    absolute: float = math.inf  # the statistic never above this (the reference included)
    reference: tuple[str, int] = ("jordan", 5)
    overshoot_cap: float = math.inf
    source: str = ""

    def __post_init__(self) -> None:
        validate_criterion(self)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["reference"] = list(self.reference)
        for k in ("absolute", "overshoot_cap"):
            if math.isinf(d[k]):
                d[k] = None
        return d

    @classmethod
    def from_dict(cls, d) -> Criterion:
        if not isinstance(d, dict):
            raise ConfigError(f"a criterion must be an object, got {type(d).__name__}")
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown criterion fields: {', '.join(sorted(unknown))}")
        d = dict(d)
        for k in ("absolute", "overshoot_cap"):
            if k in d and d[k] is None:
                d[k] = math.inf
        if "reference" in d:
            ref = d["reference"]
            if not (isinstance(ref, (list, tuple)) and len(ref) == 2 and isinstance(ref[0], str)
                    and isinstance(ref[1], int) and not isinstance(ref[1], bool)):
                raise ConfigError(f"criterion reference must be [schedule, steps], got {ref!r}")
            d["reference"] = (ref[0], ref[1])
        for k in ("quantile", "rho", "delta", "absolute", "overshoot_cap"):
            if k in d and (isinstance(d[k], bool) or not isinstance(d[k], (int, float))):
                raise ConfigError(f"criterion {k} must be a number, got {d[k]!r}")
        return cls(**d)

    def describe(self) -> str:
        if self.kind == "lift-quantile":
            return f"lift-quantile: tau_{self.rho:g} <= pessimistic s_{self.quantile:g}"
        ref = f"{self.reference[0]} x{self.reference[1]}"
        bound = f"min({self.statistic}({ref}) + {self.delta:.3g}, {self.absolute:.3g})"
        return f"statistic: predicted {self.statistic} <= {bound}; max output <= {self.overshoot_cap:g}"


def validate_criterion(c: Criterion) -> None:
    if c.kind not in KINDS:
        raise ConfigError(f"unknown criterion kind {c.kind!r}; known: {', '.join(KINDS)}")
    if c.statistic not in STATISTICS:
        raise ConfigError(f"unknown criterion statistic {c.statistic!r}; known: {', '.join(STATISTICS)}")
    for name, lo, hi in (("quantile", 0.0, 1.0), ("rho", 0.0, 1.0)):
        v = getattr(c, name)
        if not (lo < v <= hi):
            raise ConfigError(f"criterion {name} must lie in ({lo:g}, {hi:g}], got {v}")
    if not (c.delta >= 0 and math.isfinite(c.delta)):
        raise ConfigError(f"criterion delta must be finite and >= 0, got {c.delta}")
    if not (c.absolute > 0) or math.isnan(c.absolute):
        raise ConfigError(f"criterion absolute bound must be > 0 (null for none), got {c.absolute}")
    if not (c.overshoot_cap >= 1) or math.isnan(c.overshoot_cap):
        raise ConfigError(f"criterion overshoot_cap must be >= 1 (null for none), got {c.overshoot_cap}")
    if not (isinstance(c.reference[1], int) and c.reference[1] >= 1):
        raise ConfigError(f"criterion reference steps must be a positive int, got {c.reference[1]!r}")


LIFT_MEDIAN = Criterion()  # the original rule: lift s_0.5 to 0.1


@lru_cache(maxsize=1)
def calibrated() -> Criterion:
    """The criterion measured by the calibration experiment (shipped as package data)."""
    text = resources.files("muonscope.laws").joinpath("calibrated_criterion.json").read_text()
    return Criterion.from_dict(json.loads(text))


def quantile_function(levels, values, u=_GRID) -> np.ndarray:
    """s(u) from predicted s_q at ``levels`` (log-linear; see the module docstring), non-increasing."""
    q = np.asarray(levels, dtype=np.float64)
    v = np.minimum.accumulate(np.clip(np.asarray(values, dtype=np.float64)[np.argsort(q)], 1e-300, 1.0))
    q = np.sort(q)
    if q.size == 0 or not np.all(np.isfinite(v)):
        raise ConfigError("a predicted spectrum needs at least one finite quantile")
    logv = np.log(v)
    out = np.interp(u, q, logv)  # flat outside [q_min, q_max]
    if q.size >= 2:
        slope = (logv[-1] - logv[-2]) / (q[-1] - q[-2])
        tail = u > q[-1]
        out[tail] = logv[-1] + slope * (u[tail] - q[-1])
    return np.exp(out)


def config_map(schedule: Schedule | None, steps: int, s: np.ndarray) -> np.ndarray:
    """Output of one configuration on normalized singular values (None: the exact polar factor)."""
    if schedule is None:
        return (np.asarray(s) > 0).astype(np.float64)
    return composed_map(schedule, steps, s)


def statistic(name: str, out: np.ndarray, rho: float = FAILURE_RHO) -> float:
    if name == "distortion":
        return float(np.mean((1.0 - out) ** 2))
    return float(np.mean(out < rho))


def overshoot(schedule: Schedule | None, steps: int) -> float:
    """max p(s) over s ∈ [1e-12, 1] (1 for the exact polar factor)."""
    return float(config_map(schedule, steps, _DOMAIN).max())
