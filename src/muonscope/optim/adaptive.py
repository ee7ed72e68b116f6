"""Spectrum-driven orthogonalization policies (:class:`~muonscope.optim.policy.OrthPolicy`):
per-matrix choices made from the spectra seen during training.

:class:`~muonscope.optim.Muon` asks each policy, for every matrix and step, which orthogonalizer to
use: ``select(name, step, orth, group) -> Orthogonalizer`` (``orth`` is what the group, plan or an
earlier policy gives). Choices only depend on spectra seen on earlier steps, so the cost of each
call (and the accounting in ``optimizer.stats``) is known before the step runs.

* :class:`AdaptiveSteps` (``Muon(…, ns_steps="adaptive", target_q=0.5, rho=0.1, max_steps=…)``):
  on sampled steps it reads the matrix's normalized spectrum and keeps, per matrix, the fewest
  steps k of its schedule whose failure threshold τ_ρ(k) (every s ≥ τ maps to ≥ ρ) lies below the
  monitored s_q, with hysteresis in log-space: it steps up as soon as τ_ρ(k) > s_q, and down only to
  a k' with τ_ρ(k')·margin ≤ s_q. So the choice changes only when s_q moves by more than a factor
  ``margin`` across a threshold.
* :class:`HybridControl` (installed for :class:`~muonscope.orth.hybrid.HybridNS` orthogonalizers):
  uses the corrected call on the steps its policy names (step 1, every ``every`` steps, or while
  the failed share of the bulk NS map, from the float64 spectrum of the matrix's last corrected
  call, exceeds ``bound``) and plain NS (``orth.bulk``) on the others.

Decisions come from spectra seen by the rank that orthogonalized each matrix, so these policies
are single-process: Muon refuses them under ``torch.distributed``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from muonscope import validate as V
from muonscope.conventions import FAILURE_RHO, quantile_rank, sampled
from muonscope.errors import ConfigError
from muonscope.optim.policy import ADAPTIVE, OrthPolicy
from muonscope.orth.analysis import threshold
from muonscope.orth.hybrid import HybridNS
from muonscope.orth.orthogonalizers import NewtonSchulz, Orthogonalizer
from muonscope.orth.schedules import Schedule


@lru_cache(maxsize=4096)
def _tau(schedule: Schedule, steps: int, rho: float) -> float:
    return threshold(schedule, steps, rho)


def spectral_quantile(s: torch.Tensor, q: float) -> float:
    """s_q: the value at descending rank ⌈q·r⌉ (1-based) of a normalized spectrum (any order)."""
    s = torch.sort(s.detach().to("cpu", torch.float64).reshape(-1), descending=True).values
    r = s.numel()
    if r == 0:
        return float("nan")
    return float(s[quantile_rank(r, q) - 1])


def _event_spectrum(event) -> torch.Tensor:
    if event.spectrum is not None:
        return event.spectrum
    X = event.matrix.detach().reshape(event.matrix.shape[0], -1).to(torch.float64)
    sv = torch.linalg.svdvals(X)
    return sv / sv.norm().clamp(min=torch.finfo(torch.float64).tiny)


def check_adaptive_options(target_q, rho, max_steps, min_steps: int = 1) -> None:
    """target_q ∈ (0, 1], rho ∈ (0, 1) (NS maps into about [0, 1.2]: ρ ≥ 1 can never be met),
    max_steps None or an int in [min_steps, MAX_NS_STEPS]; all finite. Raises ConfigError."""
    for name, v in (("target_q", target_q), ("rho", rho)):
        if isinstance(v, (str, bytes)):
            raise ConfigError(f"{name} must be a number, got {v!r}")
    V.real("target_q", target_q, low=0.0, high=1.0, low_open=True)
    V.fraction("rho", rho)
    if max_steps is not None:
        if isinstance(max_steps, bool) or not isinstance(max_steps, int):
            raise ConfigError(f"max_steps must be None or an int >= min_steps ({min_steps}), got {max_steps!r}")
        V.integer("max_steps", max_steps, low=min_steps, high=V.MAX_NS_STEPS)


@dataclass
class Decision:
    """The last choice for one matrix: sampled ``step``, measured ``s_q``, chosen ``steps``."""

    step: int
    s_q: float
    steps: int
    switches: int = 0


class AdaptiveSteps(OrthPolicy):
    """Per-matrix NS step count from the monitored s_q (see the module docstring).

    Args:
        target_q: quantile level q whose value s_q NS must lift (s_q at descending rank ⌈q·r⌉).
        rho: failure level: τ_ρ(k) is the smallest s from which every larger s maps to ≥ ρ.
        max_steps: most steps allowed (None: twice the schedule's default); used, too, when even
            that many steps do not lift s_q.
        min_steps: fewest steps allowed.
        every: re-evaluate on step 1 and every ``every``-th step (the steps it asks spectra for).
        margin: hysteresis factor (> 1): step down to k' only when τ_ρ(k')·margin ≤ s_q.
    """

    distributed_safe = False

    def __init__(self, target_q: float = 0.5, rho: float = FAILURE_RHO, max_steps: int | None = None, *,
                 min_steps: int = 1, every: int = 10, margin: float = 1.5) -> None:
        for name, v in (("min_steps", min_steps), ("every", every)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive int, got {v!r}")
        V.ns_steps("min_steps", min_steps)
        V.steps("every", every)
        check_adaptive_options(target_q, rho, max_steps, min_steps)
        if isinstance(margin, (str, bytes)):
            raise ConfigError(f"margin must be a number, got {margin!r}")
        V.real("margin (hysteresis factor; 1 disables it)", margin, low=1.0)
        self.target_q, self.rho = float(target_q), float(rho)
        self.max_steps, self.min_steps = max_steps, min_steps
        self.every, self.margin = every, float(margin)
        self.decisions: dict[str, Decision] = {}
        self._managed: set[str] = set()
        self._instances: dict[tuple, NewtonSchulz] = {}

    # --- the choice ------------------------------------------------------------------------------
    def bounds(self, schedule: Schedule) -> tuple[int, int]:
        hi = self.max_steps if self.max_steps is not None else 2 * schedule.default_steps
        return self.min_steps, max(hi, self.min_steps)

    def fewest_steps(self, schedule: Schedule, s_q: float, margin: float = 1.0) -> int:
        """Fewest k in [min_steps, max_steps] with τ_ρ(k)·margin ≤ s_q (max_steps if none)."""
        lo, hi = self.bounds(schedule)
        for k in range(lo, hi + 1):
            if _tau(schedule, k, self.rho) * margin <= s_q:
                return k
        return hi

    def choose(self, schedule: Schedule, current: int, s_q: float) -> int:
        """New step count given the current one and the measured s_q (hysteresis rule)."""
        lo, hi = self.bounds(schedule)
        current = min(max(current, lo), hi)
        if not math.isfinite(s_q) or _tau(schedule, current, self.rho) > s_q:
            return max(current, self.fewest_steps(schedule, s_q))  # fails to lift s_q: step up now
        return min(current, self.fewest_steps(schedule, s_q, self.margin))

    def steps_for(self, name: str) -> int | None:
        d = self.decisions.get(name)
        return None if d is None else d.steps

    # --- policy protocol -------------------------------------------------------------------
    def sampled(self, step: int) -> bool:
        return sampled(step, self.every)

    def select(self, name: str, step: int, orth: Orthogonalizer, group: dict) -> Orthogonalizer:
        if group.get("ns_steps") != ADAPTIVE or type(orth) is not NewtonSchulz:
            return orth
        self._managed.add(name)
        k = self.steps_for(name)
        if k is None or k == orth.steps:
            return orth
        key = (orth.schedule, k, orth.dtype, orth.eps)
        inst = self._instances.get(key)
        if inst is None:
            inst = self._instances[key] = NewtonSchulz(orth.schedule, k, dtype=orth.dtype, eps=orth.eps)
        return inst

    def wants_spectrum(self, step: int) -> bool:
        return self.sampled(step)

    def on_orthogonalize(self, event) -> None:
        if event.name not in self._managed or not self.sampled(event.step):
            return
        orth = event.orthogonalizer
        if type(orth) is not NewtonSchulz:
            return
        s_q = spectral_quantile(_event_spectrum(event), self.target_q)
        new = self.choose(orth.schedule, orth.steps, s_q)
        old = self.decisions.get(event.name)
        switches = (old.switches if old else 0) + (old is not None and new != old.steps)
        self.decisions[event.name] = Decision(int(event.step), s_q, new, int(switches))

    def state_dict(self) -> dict:
        return {"decisions": {n: [d.step, d.s_q, d.steps, d.switches] for n, d in self.decisions.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.decisions = {n: Decision(int(a), float(b), int(c), int(d))
                          for n, (a, b, c, d) in state.get("decisions", {}).items()}


class HybridControl(OrthPolicy):
    """Applies each :class:`HybridNS`'s correction policy per matrix (see the module docstring)."""

    def __init__(self, bounded: bool = False) -> None:
        self.failed_share: dict[str, float] = {}  # bulk-map failed share at the last corrected call
        self.corrected_steps: dict[str, int] = {}
        self._uses_bound = bool(bounded)  # a failed-share bound makes decisions rank-dependent

    @property
    def distributed_safe(self) -> bool:
        return not self._uses_bound  # only a pure step clock is rank-independent

    def select(self, name: str, step: int, orth: Orthogonalizer, group: dict) -> Orthogonalizer:
        if not isinstance(orth, HybridNS):
            return orth
        self._uses_bound = self._uses_bound or orth.bound is not None
        return orth if orth.corrects(step, self.failed_share.get(name)) else orth.bulk

    def wants_spectrum(self, step: int) -> bool:
        return False  # corrected calls return their float64 spectrum anyway

    def on_orthogonalize(self, event) -> None:
        orth = event.orthogonalizer
        if isinstance(orth, HybridNS) and event.spectrum is not None:
            if orth.bound is not None:
                self.failed_share[event.name] = orth.bulk_failed_share(event.spectrum.cpu().numpy())
            self.corrected_steps[event.name] = self.corrected_steps.get(event.name, 0) + 1

    def state_dict(self) -> dict:
        return {"failed_share": dict(self.failed_share), "corrected_steps": dict(self.corrected_steps)}

    def load_state_dict(self, state: dict) -> None:
        self.failed_share = {k: float(v) for k, v in state.get("failed_share", {}).items()}
        self.corrected_steps = {k: int(v) for k, v in state.get("corrected_steps", {}).items()}


__all__ = ["ADAPTIVE", "AdaptiveSteps", "Decision", "HybridControl", "check_adaptive_options", "spectral_quantile"]
