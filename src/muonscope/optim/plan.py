"""Per-parameter orthogonalization plans (format ``muonscope.plan/1``).

A plan maps exact parameter names to an NS configuration (schedule, steps)::

    {"format": "muonscope.plan/1",
     "schedules": {"designed-1e-05": {"name": ..., "coefficients": [[a, b, c], ...], ...}},
     "params": {"blocks.3.attn.q.weight": {"schedule": "jordan", "steps": 6, "layer_type": "q"}},
     "default": {"schedule": "jordan", "steps": 5}}

``schedule`` is a key of ``schedules`` (a :meth:`Schedule.to_dict`) or a registered schedule name;
``steps`` defaults to the schedule's ``default_steps``. An entry may also name an
``orthogonalizer`` kind: "ns" (standard NS, the default), "gram" (Gram NS: the same map, fewer
FLOPs on wide matrices), "auto" (Gram where the aspect ratio pays, standard elsewhere), "exact",
"hybrid" or any registered kind; "gram" and "auto" entries may fix Gram NS's ``restarts`` (step
numbers after which it restarts from the current iterate, e.g. ``[2, 3]``; default: the safe
positions of the compute dtype). ``ns_dtype`` ("bfloat16", "float16", "float32", "float64")
overrides the optimizer's NS compute dtype for that parameter: the planner sets it where the chosen
map must lift directions below the resolution of the run's dtype. Extra keys are ignored; anything
malformed raises :class:`~muonscope.errors.ConfigError`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from muonscope import validate as V
from muonscope._jsonfile import read_json
from muonscope.conventions import PLAN_FORMAT
from muonscope.errors import ConfigError, MuonscopeError
from muonscope.orth.analysis import RESOLUTION_FLOORS
from muonscope.orth.orthogonalizers import make_orthogonalizer
from muonscope.orth.schedules import Schedule, get_schedule

PLAN_DTYPES = tuple(RESOLUTION_FLOORS)  # the NS dtypes a plan entry may name


@dataclass(frozen=True)
class ParamPlan:
    """The orthogonalization chosen for one parameter."""

    schedule: Schedule
    steps: int
    orthogonalizer: str = "ns"
    layer_type: str | None = None
    restarts: tuple[int, ...] | None = None  # Gram NS restart positions (None: the dtype's default)
    ns_dtype: str | None = None  # NS compute dtype for this parameter (None: the optimizer's)


class Plan:
    """A parsed plan: ``plan.for_param(name)`` gives the entry, else the default, else None."""

    def __init__(self, params: Mapping[str, ParamPlan], default: ParamPlan | None = None,
                 raw: Mapping | None = None) -> None:
        self.params = dict(params)
        self.default = default
        self.raw = dict(raw or {})

    def for_param(self, name: str) -> ParamPlan | None:
        return self.params.get(name, self.default)

    def __repr__(self) -> str:
        return f"Plan({len(self.params)} params, default={self.default})"


def _entry(where: str, entry, schedules: Mapping[str, Schedule]) -> ParamPlan:
    if not isinstance(entry, Mapping):
        raise ConfigError(f"plan {where}: expected an object like {{'schedule': 'jordan', 'steps': 5}}, got {entry!r}")
    name = entry.get("schedule", "jordan")
    try:
        if isinstance(name, Mapping):
            sched = Schedule.from_dict(dict(name))
        elif isinstance(name, str) and name in schedules:
            sched = schedules[name]
        elif isinstance(name, str):
            sched = get_schedule(name)
        else:
            raise ConfigError(f"plan {where}: 'schedule' must be a name, got {name!r}")
    except MuonscopeError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"plan {where}: {exc}; define it under the plan's 'schedules'") from exc
    except (TypeError, ValueError, ArithmeticError) as exc:
        raise ConfigError(f"plan {where}: malformed schedule {name!r}: {exc}") from exc
    steps = entry.get("steps", sched.default_steps)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"plan {where}: 'steps' must be a positive integer, got {steps!r}")
    V.ns_steps(f"plan {where}: 'steps'", steps)  # bounded, so that no plan can make a step hang
    kind = entry.get("orthogonalizer", "ns")
    if not isinstance(kind, str):
        raise ConfigError(f"plan {where}: 'orthogonalizer' must be a string, got {kind!r}")
    restarts = entry.get("restarts")
    if restarts is not None and not isinstance(restarts, (list, tuple)):
        raise ConfigError(f"plan {where}: 'restarts' must be a list of step numbers, got {restarts!r}")
    try:
        orth = make_orthogonalizer(kind, schedule=sched, steps=steps,
                                   restarts=None if restarts is None else tuple(restarts))
    except ConfigError as exc:
        raise ConfigError(f"plan {where}: {exc}") from None
    if restarts is not None:
        restarts = (orth.gram if kind == "auto" else orth).restarts
    dtype = entry.get("ns_dtype")
    if dtype is not None:
        if dtype not in PLAN_DTYPES:
            raise ConfigError(f"plan {where}: 'ns_dtype' must be one of {', '.join(PLAN_DTYPES)}, got {dtype!r}")
    layer_type = entry.get("layer_type")
    return ParamPlan(sched, steps, kind, layer_type if isinstance(layer_type, str) else None, restarts, dtype)


def load_plan(plan) -> Plan:
    """Parse a plan from a dict, a JSON file path, or return a :class:`Plan` unchanged."""
    if isinstance(plan, Plan):
        return plan
    if isinstance(plan, (str, os.PathLike)):
        path = Path(plan)
        plan = read_json(path, ConfigError,
                         missing=f"plan file {str(path)!r} not found; pass a plan dict or an existing JSON path")
    if not isinstance(plan, Mapping):
        raise ConfigError(f"a plan must be a dict or a JSON file path, got {type(plan).__name__}")
    fmt = plan.get("format", PLAN_FORMAT)
    if fmt != PLAN_FORMAT:
        raise ConfigError(f"unsupported plan format {fmt!r}; expected {PLAN_FORMAT!r}")

    raw_schedules = plan.get("schedules")
    raw_schedules = {} if raw_schedules is None else raw_schedules
    if not isinstance(raw_schedules, Mapping):
        raise ConfigError("plan 'schedules' must map names to schedule objects")
    schedules: dict[str, Schedule] = {}
    for key, d in raw_schedules.items():
        if not isinstance(d, Mapping):
            raise ConfigError(f"plan schedule {key!r} must be an object with 'coefficients'")
        try:
            schedules[key] = Schedule.from_dict({"name": key, **d})
        except (MuonscopeError, TypeError, ValueError, ArithmeticError) as exc:
            raise ConfigError(f"plan schedule {key!r}: {exc}") from exc

    params = plan.get("params")
    params = {} if params is None else params
    if not isinstance(params, Mapping):
        raise ConfigError("plan 'params' must map parameter names to configs")
    entries = {}
    for name, entry in params.items():
        if not isinstance(name, str):
            raise ConfigError(f"plan parameter names must be strings, got {name!r}")
        entries[name] = _entry(f"param {name!r}", entry, schedules)
    default = plan.get("default")
    default = _entry("default", default, schedules) if default is not None else None
    return Plan(entries, default, plan)
