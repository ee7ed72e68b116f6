"""Minimax design of odd-quintic NS compositions for singular values in [ℓ, 1] (Polar Express style).

One step: the odd quintic p(x) = a·x + b·x³ + c·x⁵ that minimizes max_{x∈[l,u]} |1 − p(x)|. By
Chebyshev's alternation theorem (3 free coefficients) the optimal error E equioscillates at 4 points
l < x₁ < x₂ < u, where x₁, x₂ are the positive roots of p'(x) = a + 3b·x² + 5c·x⁴:

    p(l) = 1 − E,  p(x₁) = 1 + E,  p(x₂) = 1 − E,  p(u) = 1 + E.

``optimal_quintic`` solves this by Remez exchange (a 4×4 linear solve for (a, b, c, E), then move
x₁, x₂ to the critical points, repeat) and falls back to a linear program on a dense grid if the
exchange leaves the alternation set. The composition is greedy: start from [l, u] = [ℓ, 1]; at each
step design p on [max(l, κ·u), u] (the *cushion* κ keeps the first steps from chasing a vanishing
ℓ with huge coefficients), rescale p so that p(l) + p(u) = 2 (centred on 1 over the whole [l, u]),
then continue on [p(l), 2 − p(l)]. Once l/u > 1 − 5·10⁻⁶ the optimal step is the fixed-point quintic
(15/8, −10/8, 3/8)/(u, u³, u⁵); the composition ends with (15/8, −5/4, 3/8), which the schedule
repeats. The safety factor is not part of the design: :class:`Schedule` applies it (inputs divided
by f, every tuple but the last by f, f³, f⁵).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from muonscope.errors import ConfigError
from muonscope.orth.schedules import Schedule, get_schedule, list_schedules

CUSHION = 0.02407327424182761  # Polar Express default cushion κ
FIXED_POINT: tuple[float, float, float] = (15 / 8, -10 / 8, 3 / 8)  # p(1) = 1, p'(1) = p''(1) = 0
_CONVERGED = 1 - 5e-6


def _poly(coeffs, x):
    a, b, c = coeffs
    x = np.asarray(x, dtype=np.float64)
    x2 = x * x
    return x * (a + x2 * (b + c * x2))


def _critical_points(a: float, b: float, c: float) -> tuple[float, float] | None:
    """Positive roots x₁ < x₂ of p'(x) = a + 3b x² + 5c x⁴, or None if there are not two."""
    if c == 0.0:
        return None
    disc = 9 * b * b - 20 * a * c
    if disc <= 0:
        return None
    r = np.sqrt(disc)
    z = np.sort(np.array([(-3 * b - r) / (10 * c), (-3 * b + r) / (10 * c)]))
    if z[0] <= 0:
        return None
    return float(np.sqrt(z[0])), float(np.sqrt(z[1]))


def _minimax_lp(l: float, u: float) -> tuple[float, float, float]:
    """Minimax odd quintic on a dense grid of [l, u] as a linear program (fallback)."""
    from scipy.optimize import linprog

    x = np.unique(np.concatenate([np.linspace(l, u, 4001), np.geomspace(l, u, 4001)]))
    V = np.stack([x, x**3, x**5], axis=1)
    ones = np.ones((x.size, 1))
    # variables (a, b, c, E): minimize E s.t.  V·p − 1 ≤ E,  1 − V·p ≤ E
    A = np.vstack([np.hstack([V, -ones]), np.hstack([-V, -ones])])
    rhs = np.concatenate([np.ones(x.size), -np.ones(x.size)])
    res = linprog([0, 0, 0, 1], A_ub=A, b_ub=rhs, bounds=[(None, None)] * 4, method="highs")
    if not res.success:  # pragma: no cover - HiGHS solves this tiny LP reliably
        raise ConfigError(f"minimax design failed on [{l:g}, {u:g}]: {res.message}")
    return tuple(float(v) for v in res.x[:3])


def optimal_quintic(l: float, u: float, *, tol: float = 1e-15, max_iter: int = 200) -> tuple[float, float, float]:
    """(a, b, c) of the odd quintic minimizing max_{x∈[l,u]} |1 − p(x)| (0 < l ≤ u)."""
    if not (0 < l <= u and math.isfinite(u)):
        raise ConfigError(f"the design interval needs 0 < l <= u < inf, got [{l}, {u}]")
    if l / u >= _CONVERGED:
        return FIXED_POINT[0] / u, FIXED_POINT[1] / u**3, FIXED_POINT[2] / u**5
    x1, x2 = (3 * l + u) / 4, (l + 3 * u) / 4
    sign = np.array([1.0, -1.0, 1.0, -1.0])
    E_old = math.inf
    coeffs = None
    for _ in range(max_iter):
        pts = np.array([l, x1, x2, u])
        M = np.column_stack([pts, pts**3, pts**5, sign])
        a, b, c, E = np.linalg.solve(M, np.ones(4))
        coeffs = (float(a), float(b), float(c))
        crit = _critical_points(*coeffs)
        if crit is None or not (l < crit[0] < crit[1] < u):
            coeffs = None
            break
        x1, x2 = crit
        if abs(E - E_old) <= tol:
            break
        E_old = E
    # Verify optimality: on [l, u] the error must not exceed the levelled |E| (alternation holds).
    x = np.unique(np.concatenate([np.linspace(l, u, 2001), np.geomspace(l, u, 2001)]))
    if coeffs is not None:
        err = np.abs(1 - _poly(coeffs, x)).max()
        if err <= abs(E) * (1 + 1e-9) + 1e-15:
            return coeffs
    return _minimax_lp(l, u)


@dataclass(frozen=True)
class DesignStep:
    """One designed step: coefficients and the interval [l, u] it maps into [l', u']."""

    coefficients: tuple[float, float, float]
    l: float
    u: float
    l_out: float
    u_out: float


def design_steps(ell: float, *, cushion: float = CUSHION, max_steps: int = 32) -> list[DesignStep]:
    """Greedy minimax composition for [ℓ, 1], ending with the fixed-point quintic.

    Step t designs on [max(l_t, κ·u_t), u_t], recentres so p(l_t) + p(u_t) = 2, and sets
    l_{t+1} = p(l_t), u_{t+1} = 2 − l_{t+1}. Stops after the first fixed-point step (then
    (15/8, −5/4, 3/8) repeats) or after ``max_steps`` tuples.
    """
    if not (0 < ell < 1):
        raise ConfigError(f"design lower bound ell must lie in (0, 1), got {ell}")
    if not (0 <= cushion < 1):
        raise ConfigError(f"cushion must lie in [0, 1), got {cushion}")
    l, u = float(ell), 1.0
    out: list[DesignStep] = []
    while len(out) < max_steps:
        if l / u >= _CONVERGED:
            out.append(DesignStep(FIXED_POINT, l, u, l, u))
            break
        a, b, c = optimal_quintic(max(l, cushion * u), u)
        pl, pu = float(_poly((a, b, c), l)), float(_poly((a, b, c), u))
        k = 2.0 / (pl + pu)
        coeffs = (a * k, b * k, c * k)
        l_new = pl * k
        out.append(DesignStep(coeffs, l, u, l_new, 2.0 - l_new))
        l, u = l_new, 2.0 - l_new
    return out


def design_name(ell: float) -> str:
    """Canonical name of the schedule designed for ℓ: ``designed-1e-05``, ``designed-3.7e-05``."""
    return f"designed-{ell:.2g}"


def round_down_2sig(x: float) -> float:
    """x rounded down to 2 significant digits (designing for a smaller ℓ is conservative)."""
    if not (x > 0 and math.isfinite(x)):
        raise ConfigError(f"expected a positive finite number, got {x}")
    e = math.floor(math.log10(x)) - 1
    return float(f"{math.floor(x / 10.0**e * (1 + 1e-12)) * 10.0**e:.2g}")


def design_schedule(ell: float, *, safety: float = 1.01, cushion: float = CUSHION,
                    band_low: float = 0.8, name: str | None = None) -> Schedule:
    """A :class:`Schedule` designed for normalized singular values in [ℓ, 1].

    ``default_steps`` is the fewest steps whose design interval lower end l_k reaches ``band_low``
    (for ℓ = 1e-3: 5 steps, the published choice). With the safety factor f the schedule sees s/f
    and damped tuples, exactly as the built-in ``polar-express`` does.
    """
    steps = design_steps(ell, cushion=cushion)
    coeffs = tuple(st.coefficients for st in steps)
    if coeffs[-1] != FIXED_POINT:
        coeffs = coeffs + (FIXED_POINT,)
    default = next((i + 1 for i, st in enumerate(steps) if st.l_out >= band_low), len(coeffs))
    return Schedule(
        name or design_name(ell), coeffs, safety=float(safety), default_steps=int(default),
        description=f"minimax odd-quintic composition designed for s in [{ell:.3g}, 1] (cushion {cushion:.3g})",
    )


def resolve_schedule(spec: str | Schedule) -> Schedule:
    """A registered schedule, or ``designed-<ℓ>`` (e.g. ``designed-0.001``) designed on the fly."""
    if isinstance(spec, Schedule):
        return spec
    if isinstance(spec, str) and spec.startswith("designed-") and spec not in {s.name for s in list_schedules()}:
        try:
            ell = float(spec.removeprefix("designed-"))
        except ValueError:
            raise ConfigError(f"cannot read the design bound of schedule {spec!r}; write e.g. 'designed-0.001'") from None
        return design_schedule(ell, name=spec)
    return get_schedule(spec)
