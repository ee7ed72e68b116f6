"""Exact float64 analysis of NS schedules as scalar maps on normalized singular values.

NS keeps singular vectors and maps each normalized singular value s = σ/‖X‖_F ∈ (0, 1] through
p_k ∘ … ∘ p_1 (s / f), p_i(s) = a_i s + b_i s³ + c_i s⁵, f the schedule's safety factor.
Everything here is numpy (no torch), so the fitter and planner can use it too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq, minimize_scalar

from muonscope.conventions import FAILURE_RHO, NULL_LEVEL
from muonscope.errors import ConfigError
from muonscope.orth.schedules import Schedule, get_schedule

_GRID = np.logspace(-12.0, 0.0, 60001)


def composed_map(schedule: str | Schedule, steps: int, s) -> np.ndarray:
    """Output of ``steps`` NS steps for normalized singular values ``s`` (float64)."""
    sched = get_schedule(schedule)
    x = np.asarray(s, dtype=np.float64) / sched.safety
    for a, b, c in sched.step_coefficients(steps):
        x2 = x * x
        x = x * (a + x2 * (b + c * x2))
    return x


def _scalar(schedule: Schedule, steps: int):
    return lambda s: float(composed_map(schedule, steps, s))


def threshold(schedule: str | Schedule, steps: int, rho: float = FAILURE_RHO) -> float:
    """τ_ρ(k): the smallest s such that every s' ∈ [s, 1] maps to ≥ ρ.

    Returns ``inf`` when even s = 1 maps below ρ. Located on a dense log grid over [1e-12, 1]
    and refined by root finding on the last crossing (float64; relative accuracy ≈ 1e-12).
    """
    if not (0.0 < rho):
        raise ConfigError(f"rho must be positive, got {rho}")
    sched = get_schedule(schedule)
    y = composed_map(sched, steps, _GRID)
    below = np.nonzero(y < rho)[0]
    if below.size == 0:
        return float(_GRID[0])
    last = below[-1]
    if last == _GRID.size - 1:
        return float("inf")
    lo, hi = _GRID[last], _GRID[last + 1]
    f = _scalar(sched, steps)
    return float(brentq(lambda s: f(s) - rho, lo, hi, xtol=1e-300, rtol=1e-14))


@dataclass(frozen=True)
class Band:
    """Extremes of the composed map over [s_min, 1] and where they occur."""

    low: float
    high: float
    argmin: float
    argmax: float


def output_band(schedule: str | Schedule, steps: int, s_min: float) -> Band:
    """Min and max of the composed map over [s_min, 1] (grid search refined by bounded Brent)."""
    if not (0.0 < s_min <= 1.0):
        raise ConfigError(f"s_min must lie in (0, 1], got {s_min}")
    sched = get_schedule(schedule)
    grid = np.unique(np.concatenate([np.logspace(np.log10(s_min), 0.0, 20001), np.linspace(s_min, 1.0, 20001)]))
    y = composed_map(sched, steps, grid)
    f = _scalar(sched, steps)

    def refine(i: int, sign: float) -> tuple[float, float]:
        lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]
        best_s, best_y = grid[i], y[i]
        if hi > lo:
            r = minimize_scalar(lambda s: sign * f(s), bounds=(lo, hi), method="bounded",
                                options={"xatol": 1e-14 * max(hi, 1e-300)})
            if sign * r.fun < sign * best_y:
                best_s, best_y = float(r.x), sign * float(r.fun)
        return best_s, best_y

    smin, ymin = refine(int(np.argmin(y)), 1.0)
    smax, ymax = refine(int(np.argmax(y)), -1.0)
    return Band(low=ymin, high=ymax, argmin=smin, argmax=smax)


def steps_to_lift(schedule: str | Schedule, s: float, rho: float = FAILURE_RHO, max_steps: int = 64) -> int | None:
    """Fewest steps k with τ_ρ(k) ≤ s (every s' ∈ [s, 1] reaches ρ); ``None`` if > ``max_steps``."""
    if not (0.0 < s <= 1.0):
        raise ConfigError(f"s must lie in (0, 1], got {s}")
    for k in range(1, max_steps + 1):
        if threshold(schedule, k, rho) <= s:
            return k
    return None


def ns_flops(m: int, n: int, steps: int) -> int:
    """FLOPs of ``steps`` NS steps on an m×n input (after transposing so m ≤ n): k(4m²n + 2m³)."""
    m, n = (m, n) if m <= n else (n, m)
    return int(steps) * (4 * m * m * n + 2 * m**3)


def ns_matmuls(steps: int) -> int:
    """Matrix products in ``steps`` NS steps (X Xᵀ, A·A, (bA + cA²)·X per step)."""
    return 3 * int(steps)


def gram_ns_cost(m: int, n: int, steps: int, restarts: tuple[int, ...] = ()) -> tuple[int, int]:
    """(FLOPs, matrix products) of ``steps`` Gram-NS steps on an m×n input (m ≤ n after transposing).

    R = XXᵀ (2m²n); per step P = aI + bR + cR² (2m³), Q ← Q·P (2m³, none while Q = I), and unless
    it is the last step or a restart R ← P·R·P (4m³); a restart after a step costs X ← QX and
    R ← XXᵀ (4m²n) and resets Q = I; the output QX costs 2m²n. No restarts, k ≥ 2:
    4m²n + (8k − 6)m³ against standard NS's k(4m²n + 2m³).
    """
    m, n = (m, n) if m <= n else (n, m)
    k = int(steps)
    if k < 1:
        return 0, 0
    cube, side = 2 * m**3, 2 * m * m * n
    flops, mm, identity = side, 1, True  # R = X Xᵀ
    for i in range(1, k + 1):
        flops, mm = flops + cube, mm + 1  # R²
        if not identity:
            flops, mm = flops + cube, mm + 1  # Q·P
        identity = False
        if i == k:
            break
        if i in restarts:
            flops, mm, identity = flops + 2 * side, mm + 2, True
        else:
            flops, mm = flops + 2 * cube, mm + 2
    return flops + side, mm + 1


# Restart positions per dtype: (first restarts, then every ``every`` steps from ``start``).
GRAM_RESTART_RULES = {"bfloat16": ((2, 3), 5, 2), "float16": ((), 2, 3), "float32": ((), 4, 4)}


def gram_default_restarts(dtype: str, steps: int) -> tuple[int, ...]:
    """Safe Gram-NS restart positions for ``steps`` steps in ``dtype`` (a torch dtype name).

    bf16 (8-bit mantissa): after steps 2 and 3, then every 2 steps (2, 3 for 5 steps; 2, 3, 5, 7
    for 8): standard-bf16 accuracy for Jordan, Polar Express and dion5 schedules alike, where
    restarting after step 1 instead lets dion5's outputs reach 2.2 (5 steps) or overflow (8 steps);
    fp16 (11-bit): every 3 steps from step 2 (2 for 5 steps, the published recipe: about
    standard-bf16 accuracy); fp32: every 4 steps from step 4 (4 for 5–8 steps); fp64 and others:
    none. A restart after the last step would do nothing and is never listed.
    """
    rule = GRAM_RESTART_RULES.get(str(dtype).removeprefix("torch."))
    if rule is None:
        return ()
    fixed, start, every = rule
    k = int(steps)
    return tuple(sorted(j for j in {*fixed, *range(start, k, every)} if j < k))


# Smallest normalized singular value s = σ/‖X‖_F that NS in each dtype still lifts to ρ = 0.1, on an
# fp32 input (a momentum buffer of fp32 parameters; benchmarks/bench_resolution.py): Jordan with the
# steps the exact map needs (or those lifting s/3, for a margin) on 256×1024 and 512×2048 inputs
# with 8 probe directions at s. bf16 lifts every probe down to 3.2e-5, not all at 1e-5 (a 64×256
# input: 1.1e-4); fp16 down to 3.2e-6; fp32 down to 3e-9 … 1e-8, not all at 1e-9; fp64 down to
# 3e-10 … 1e-9 (the fp32 input's own rounding), not all at 1e-10. Below the floor rounding buries
# the direction: more steps cannot lift it.
RESOLUTION_FLOORS = {"bfloat16": 3e-5, "float16": 3e-6, "float32": 1e-8, "float64": 1e-9}  # inputs >= 256 wide
WIDER_DTYPES = ("float32", "float64")  # what a plan may ask for beyond the run's dtype


def resolution_floor(dtype: str) -> float:
    """Smallest normalized singular value NS in ``dtype`` (a torch dtype name) can lift."""
    try:
        return RESOLUTION_FLOORS[str(dtype).removeprefix("torch.")]
    except KeyError:
        raise ConfigError(f"no resolution floor for dtype {dtype!r}; known: {', '.join(RESOLUTION_FLOORS)}") from None


def ns_dtype_for(s: float, dtype: str) -> str | None:
    """``dtype`` if NS in it resolves s, else the narrowest of fp32, fp64 that does (None: none does)."""
    dtype = str(dtype).removeprefix("torch.")
    if s >= resolution_floor(dtype):
        return dtype
    return next((d for d in WIDER_DTYPES if RESOLUTION_FLOORS[d] < RESOLUTION_FLOORS[dtype] and s >= RESOLUTION_FLOORS[d]),
                None)


def gram_pays(m: int, n: int, steps: int, restarts: tuple[int, ...] = (), max_ratio: float = 0.85) -> bool:
    """Whether Gram NS costs at most ``max_ratio`` of standard NS's FLOPs on an m×n matrix."""
    return gram_ns_cost(m, n, steps, restarts)[0] <= max_ratio * ns_flops(m, n, steps)


@dataclass(frozen=True)
class ErrorRow:
    s_lo: float
    s_hi: float
    out_min: float
    out_max: float
    worst_error: float  # max over the range of |1 - p(s)|


def error_table(schedule: str | Schedule, steps: int, decades: tuple[int, int] = (-6, 0),
                points_per_decade: int = 4000) -> list[ErrorRow]:
    """Per-decade min/max output and worst |1 − p(s)| for s ∈ [10^lo, 10^hi]."""
    lo, hi = decades
    rows = []
    for e in range(lo, hi):
        s = np.logspace(e, e + 1, points_per_decade)
        y = composed_map(schedule, steps, s)
        rows.append(ErrorRow(float(s[0]), float(s[-1]), float(y.min()), float(y.max()),
                             float(np.abs(1.0 - y).max())))
    return rows


def fidelity(schedule: str | Schedule, steps: int, s, rho: float = FAILURE_RHO) -> tuple[float, float]:
    """(min_i p(s_i), share of s_i whose output is below ρ) for a spectrum ``s``."""
    s = np.asarray(s, dtype=np.float64)
    if s.size == 0:
        return float("nan"), float("nan")
    y = composed_map(schedule, steps, s)
    return float(y.min()), float(np.mean(y < rho))


def fidelity_stats(s: np.ndarray, out: np.ndarray, rho: float = FAILURE_RHO) -> dict:
    """How far the map s ↦ p(s) leaves one spectrum from the polar factor (all 1).

    distortion D = mean_i (1 − p(s_i))² = ‖O − UVᵀ‖²_F / r for the exact scalar map; the failed
    shares at ρ and at 0.5; the extreme outputs (overshoot: max p > 1). ``null_dirs`` counts the
    numerically null directions (s < NULL_LEVEL) and ``distortion_nonnull`` leaves them out.
    """
    dev = (1.0 - out) ** 2
    live = s >= NULL_LEVEL
    return {
        "ns_out_min": float(out.min()), "ns_out_max": float(out.max()),
        "frac_failed": float(np.mean(out < rho)), "frac_failed_50": float(np.mean(out < 0.5)), "rho": float(rho),
        "distortion": float(dev.mean()), "null_dirs": int((~live).sum()),
        "distortion_nonnull": float(dev[live].mean()) if live.any() else float("nan"),
    }
