"""Orthogonalization policies: which orthogonalizer each matrix gets on each step.

The choice is made in two stages, in this order, before a step's orthogonalization:

1. **Configuration** (:func:`configured`): the parameter's plan entry if a plan names it, else its
   group's options (``orthogonalizer``, ``schedule``/``ns_coefficients``, ``ns_steps``, ``ns_dtype``).
2. **Policies** (:class:`OrthPolicy`), in order of installation: each may replace the
   orthogonalizer it is handed (``select(name, step, orth, group)``). Policies see what was
   orthogonalized (``on_orthogonalize(event)``) and may ask for spectra on the steps they sample
   (``wants_spectrum(step)``), so their choices depend only on earlier steps and the cost of every
   call is known before it runs. Built in: :class:`~muonscope.optim.adaptive.AdaptiveSteps` (fewest
   NS steps that lift the monitored s_q; installed by ``ns_steps="adaptive"``) and
   :class:`~muonscope.optim.adaptive.HybridControl` (when a :class:`~muonscope.orth.hybrid.HybridNS`
   corrects; installed for hybrid orthogonalizers).

A policy's state is saved in the optimizer's state dict under its ``key`` (by default its class
name), so two policies of one optimizer need distinct keys. Observers that never change a choice
(the spectral monitor) are orth hooks instead (:mod:`muonscope.optim.hooks`).
"""

from __future__ import annotations

import torch

from muonscope.errors import ConfigError
from muonscope.orth.orthogonalizers import Orthogonalizer, make_orthogonalizer
from muonscope.orth.schedules import JORDAN, Schedule, get_schedule

ADAPTIVE = "adaptive"


class OrthPolicy:
    """Base class of orthogonalization policies (every method has a neutral default)."""

    distributed_safe = True  # False when choices depend on spectra seen by one rank only

    @property
    def key(self) -> str:
        """Name of this policy's entry in the optimizer's state dict."""
        return getattr(self, "_key", None) or type(self).__name__

    @key.setter
    def key(self, value: str) -> None:
        self._key = str(value)

    def select(self, name: str, step: int, orth: Orthogonalizer, group: dict) -> Orthogonalizer:
        """The orthogonalizer for matrix ``name`` on ``step`` (``orth``: what came before)."""
        return orth

    def wants_spectrum(self, step: int) -> bool:
        return False

    def on_orthogonalize(self, event) -> None:
        """Observe one orthogonalized matrix (read-only)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""


def check_policy(policy) -> None:
    if not all(callable(getattr(policy, m, None)) for m in ("select", "wants_spectrum", "on_orthogonalize")):
        raise ConfigError("a policy needs select(name, step, orth, group), wants_spectrum(step) and "
                          "on_orthogonalize(event) methods (subclass muonscope.optim.policy.OrthPolicy)")


def policy_key(policy) -> str:
    return getattr(policy, "key", None) or type(policy).__name__


def configured(name: str, group: dict, plan, cache: dict) -> tuple[Orthogonalizer, tuple]:
    """The configured orthogonalizer (and its cache key) of parameter ``name`` in ``group``:
    the plan's entry if the plan names it, else the group's options. Instances are cached in
    ``cache`` so batching can group matrices by key."""
    dtype, eps = group["ns_dtype"], float(group["eps"])
    entry = plan.for_param(name) if plan is not None else None
    restarts = None
    if entry is not None:
        kind, sched, steps, restarts = entry.orthogonalizer, entry.schedule, entry.steps, entry.restarts
        dtype = entry.ns_dtype or dtype
    else:
        kind = group["orthogonalizer"]
        if isinstance(kind, Orthogonalizer):
            return kind, ("instance", id(kind))
        sched = group["schedule"]
        if sched is None:
            coeffs = tuple(group["ns_coefficients"])
            sched = get_schedule("jordan") if coeffs == JORDAN else Schedule("custom", (coeffs,))
        elif isinstance(sched, dict):
            sched = Schedule.from_dict(sched)
        else:
            sched = get_schedule(sched)
        steps = group["ns_steps"] if group["ns_steps"] not in (None, ADAPTIVE) else sched.default_steps
    key = (kind, dtype) if kind == "exact" else (kind, sched, steps, dtype, eps, restarts)
    orth = cache.get(key)
    if orth is None:
        orth = cache[key] = make_orthogonalizer(kind, schedule=sched, steps=steps, eps=eps, restarts=restarts,
                                                dtype=getattr(torch, dtype) if dtype else None)
    return orth, key
