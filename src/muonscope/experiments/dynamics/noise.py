"""Noise geometry: momentum as a noise filter, and how gradient noise perturbs the polar factor.

**Momentum noise factor.** EMA momentum mₜ = β mₜ₋₁ + (1−β) ξₜ of unit-variance noise that is
itself AR(1), ξₜ = ρ ξₜ₋₁ + √(1−ρ²) εₜ, has stationary variance

    Var(m) = (1−β)(1+βρ) / ((1+β)(1−βρ)),

which for white noise (ρ = 0) is the factor (1−β)/(1+β) (not the naive (1−β)²). The sum form
B ← βB + G has the same noise-to-signal factor (both the noise variance and the squared signal
gain are rescaled by 1/(1−β)²).

**Polar-factor noise and the critical batch size (square G).** For G = UΣVᵀ (r×r, full rank) the
derivative of the polar factor is d polar(G)[E] = U Ω Vᵀ with Ωᵢⱼ = (Ẽᵢⱼ − Ẽⱼᵢ)/(σᵢ + σⱼ), Ẽ = UᵀEV.
For i.i.d. N(0, σ²/B) noise (batch B), E‖δ polar‖_F² ≈ 2σ² S(μ)/B with

    S(μ) = Σ_{i≠j} 1/(σᵢ + σⱼ)²,   S = r(r−1)/(4σ₀²) for a flat spectrum σᵢ = σ₀,

and the noise-to-signal ratio E‖δ polar‖_F²/‖polar(G)‖_F² (with ‖UVᵀ‖_F² = r) falls to 1 at
B_crit = 2σ² S(μ)/r. The simulations below measure both against exact float64 polar factors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from muonscope.errors import ConfigError
from muonscope.orth import polar_exact


def predicted_noise_factor(beta: float, rho: float = 0.0) -> float:
    """Stationary Var(m)/Var(ξ) of EMA momentum over AR(1) noise with coefficient ρ."""
    _check_beta_rho(beta, rho)
    return (1 - beta) * (1 + beta * rho) / ((1 + beta) * (1 - beta * rho))


def _check_beta_rho(beta: float, rho: float) -> None:
    if not (0.0 <= beta < 1.0):
        raise ConfigError(f"beta must lie in [0, 1), got {beta}")
    if not (-1.0 < rho < 1.0):
        raise ConfigError(f"rho must lie in (-1, 1), got {rho}")


def simulate_noise_factor(beta: float, rho: float = 0.0, *, chains: int = 20000, seed: int = 0,
                          burn_in: int | None = None) -> dict:
    """Var(m_T) over ``chains`` independent chains after a burn-in long enough to forget m₀ = 0.

    Chains are independent, so the sample variance of one time slice has relative standard
    error √(2/(chains − 1)) (Gaussian noise).
    """
    _check_beta_rho(beta, rho)
    if chains < 2:
        raise ConfigError("need at least 2 chains")
    g = torch.Generator().manual_seed(seed)
    if burn_in is None:  # β^T and (βρ)^T below 1e-12
        slow = max(beta, abs(rho), 1e-3)
        burn_in = int(math.ceil(math.log(1e-12) / math.log(slow))) + 10
    xi = torch.randn(chains, generator=g, dtype=torch.float64)  # stationary start of the noise
    m = torch.zeros(chains, dtype=torch.float64)
    c = math.sqrt(1 - rho * rho)
    for _ in range(burn_in):
        xi = rho * xi + c * torch.randn(chains, generator=g, dtype=torch.float64)
        m = beta * m + (1 - beta) * xi
    var = float(m.var())
    pred = predicted_noise_factor(beta, rho)
    se = pred * math.sqrt(2.0 / (chains - 1))
    return {"beta": beta, "rho": rho, "chains": chains, "steps": burn_in, "measured": var,
            "predicted": pred, "naive": (1 - beta) ** 2, "stderr": se, "z": (var - pred) / se}


def polar_sensitivity(s: Sequence[float]) -> float:
    """S(μ) = Σ_{i≠j} 1/(σᵢ + σⱼ)² (ordered pairs)."""
    s = np.asarray(s, dtype=np.float64)
    if s.ndim != 1 or s.size < 1 or np.any(s <= 0):
        raise ConfigError("S(mu) needs a positive 1-D spectrum")
    tot = s[:, None] + s[None, :]
    inv = 1.0 / tot**2
    return float(inv.sum() - np.trace(inv))


def critical_batch_size(s: Sequence[float], sigma: float) -> float:
    """B_crit = 2σ² S(μ)/r."""
    return 2 * sigma**2 * polar_sensitivity(s) / len(s)


def simulate_polar_noise(s: Sequence[float], sigma: float, batch_sizes: Sequence[int], *, trials: int = 200,
                         seed: int = 0) -> dict:
    """Measured E‖polar(G + E_B) − polar(G)‖_F²/r for a square G with spectrum ``s`` and Haar
    frames, E_B of i.i.d. N(0, σ²/B) entries; also B·NSR(B), which the first-order theory says
    tends to B_crit as B grows, and the batch size where the measured NSR crosses 1."""
    s = np.asarray(s, dtype=np.float64)
    r = s.size
    if trials < 2:
        raise ConfigError("need at least 2 trials")
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(r, r, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(r, r, generator=g, dtype=torch.float64))
    G = (U * torch.as_tensor(s)) @ V.T
    O = polar_exact(G)
    bcrit = critical_batch_size(s, sigma)
    rows = []
    for B in batch_sizes:
        if B <= 0:
            raise ConfigError("batch sizes must be positive")
        E = torch.randn(trials, r, r, generator=g, dtype=torch.float64) * (sigma / math.sqrt(B))
        d2 = (polar_exact(G + E) - O).pow(2).sum(dim=(-2, -1)) / r
        nsr, se = float(d2.mean()), float(d2.std() / math.sqrt(trials))
        rows.append({"batch": float(B), "nsr": nsr, "nsr_stderr": se, "predicted_nsr": bcrit / B,
                     "B_times_nsr": B * nsr, "B_times_nsr_stderr": B * se})
    nsr = np.array([row["nsr"] for row in rows])
    bs = np.array([row["batch"] for row in rows], dtype=np.float64)
    crossing = float("nan")
    order = np.argsort(bs)
    bs, nsr = bs[order], nsr[order]
    for i in range(len(bs) - 1):
        if nsr[i] >= 1.0 > nsr[i + 1]:  # log-log interpolation of the crossing
            t = math.log(nsr[i]) / (math.log(nsr[i]) - math.log(nsr[i + 1]))
            crossing = float(math.exp(math.log(bs[i]) + t * (math.log(bs[i + 1]) - math.log(bs[i]))))
            break
    return {"r": r, "sigma": sigma, "S_mu": polar_sensitivity(s), "B_crit": bcrit, "trials": trials,
            "spectrum": s.tolist(), "rows": rows, "measured_crossing": crossing}


SPECTRA = {
    "flat": lambda r: np.ones(r),
    "linear": lambda r: np.linspace(1.0, 1.0 / r, r),
    "power": lambda r: np.arange(1, r + 1, dtype=np.float64) ** -1.0,
}


def run_noise(*, betas: Sequence[float] = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99), rhos: Sequence[float] = (0.0, 0.5, -0.5),
              chains: int = 20000, ranks: Sequence[int] = (2, 4, 8, 16), sigma: float = 1.0,
              batch_sizes: Sequence[int] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096),
              trials: int = 1000, seed: int = 0) -> dict:
    """The momentum-factor table and the polar-noise / critical-batch simulations."""
    momentum = [simulate_noise_factor(b, rho, chains=chains, seed=seed + i)
                for i, (b, rho) in enumerate((b, rho) for rho in rhos for b in betas)]
    flat_formula = [{"r": r, "S_mu": polar_sensitivity(np.full(r, 0.7)), "closed_form": r * (r - 1) / (4 * 0.7**2)}
                    for r in ranks]
    polar = []
    for kind, make in SPECTRA.items():
        for r in ranks:
            if kind != "flat" and r < 4:
                continue
            sim = simulate_polar_noise(make(r), sigma, batch_sizes, trials=trials, seed=seed + 1000 * r)
            sim["spectrum_type"] = kind
            polar.append(sim)
    return {"momentum": momentum, "flat_S_formula": flat_formula, "polar": polar}


def experiment(*, chains: int = 20000, trials: int = 1000, seed: int = 0, summary_path=None, figure_dir=None) -> dict:
    """:func:`run_noise` with its JSON summary and figure."""
    from pathlib import Path

    from muonscope.experiments.dynamics import figures, record

    summary = run_noise(chains=chains, trials=trials, seed=seed)
    if figure_dir is not None:
        summary["figures"] = [str(figures.plot_noise(summary, Path(figure_dir) / "noise_geometry.png"))]
    if summary_path is not None:
        record.write_json(summary_path, summary)
    return summary
