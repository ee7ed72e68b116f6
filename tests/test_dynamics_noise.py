"""Noise geometry: AR(1) momentum factor and polar-factor noise against their closed forms."""

import math

import numpy as np
import pytest
import torch

from muonscope.errors import ConfigError
from muonscope.experiments.dynamics import noise as N
from muonscope.orth import polar_exact


def test_predicted_factor_closed_forms():
    assert N.predicted_noise_factor(0.9) == pytest.approx(0.1 / 1.9)
    assert N.predicted_noise_factor(0.0, 0.7) == pytest.approx(1.0)  # no averaging: the noise itself
    # direct series: (1−β)² Σ_{k,l} β^{k+l} ρ^{|k−l|}
    b, r = 0.8, 0.5
    k = np.arange(400)
    series = (1 - b) ** 2 * np.sum(np.power(b, k[:, None] + k[None, :]) * np.power(r, np.abs(k[:, None] - k[None, :])))
    assert N.predicted_noise_factor(b, r) == pytest.approx(series, rel=1e-10)
    with pytest.raises(ConfigError):
        N.predicted_noise_factor(1.0)
    with pytest.raises(ConfigError):
        N.predicted_noise_factor(0.5, 1.0)


@pytest.mark.parametrize("beta,rho", [(0.9, 0.0), (0.95, 0.0), (0.9, 0.5)])
def test_simulated_factor_within_sampling_error(beta, rho):
    sim = N.simulate_noise_factor(beta, rho, chains=20000, seed=1)
    assert abs(sim["z"]) < 4.5  # z = (measured − predicted)/stderr
    # the naive (1−β)² is excluded by a wide margin
    assert abs(sim["measured"] - sim["naive"]) > 20 * sim["stderr"]


def test_flat_spectrum_sensitivity_closed_form():
    for r in (2, 4, 8, 16):
        assert N.polar_sensitivity(np.full(r, 0.7)) == pytest.approx(r * (r - 1) / (4 * 0.49), rel=1e-12)
        assert N.critical_batch_size(np.full(r, 0.7), 1.3) == pytest.approx(2 * 1.69 * (r - 1) / (4 * 0.49), rel=1e-12)
    with pytest.raises(ConfigError):
        N.polar_sensitivity([1.0, 0.0])


def test_polar_derivative_formula_by_finite_differences(rng):
    # d polar(G)[E] = U Ω Vᵀ, Ωᵢⱼ = (Ẽᵢⱼ − Ẽⱼᵢ)/(σᵢ + σⱼ): the basis of S(μ)
    r = 5
    s = torch.tensor([2.0, 1.5, 1.0, 0.6, 0.3], dtype=torch.float64)
    U, _ = torch.linalg.qr(torch.randn(r, r, generator=rng, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(r, r, generator=rng, dtype=torch.float64))
    G = (U * s) @ V.T
    E = torch.randn(r, r, generator=rng, dtype=torch.float64)
    h = 1e-6
    fd = (polar_exact(G + h * E) - polar_exact(G - h * E)) / (2 * h)
    Et = U.T @ E @ V
    Om = (Et - Et.T) / (s[:, None] + s[None, :])
    torch.testing.assert_close(fd, U @ Om @ V.T, rtol=1e-6, atol=1e-8)


def test_large_batch_noise_matches_critical_batch_size():
    sim = N.simulate_polar_noise(np.ones(8), 1.0, [350, 3500], trials=400, seed=2)
    assert sim["B_crit"] == pytest.approx(3.5)
    for row in sim["rows"]:  # first-order regime: B·NSR(B) → B_crit
        assert row["B_times_nsr"] == pytest.approx(3.5, rel=0.08)
        assert abs(row["nsr"] - row["predicted_nsr"]) < 5 * row["nsr_stderr"] + 0.02 * row["predicted_nsr"]
    sweep = N.simulate_polar_noise(np.ones(8), 1.0, [1, 2, 4, 8, 16], trials=100, seed=3)
    assert 1 < sweep["measured_crossing"] < 16 and not math.isnan(sweep["measured_crossing"])
