"""One-step entropy gain: analytic first order against finite differences; when polar maximizes it."""

import numpy as np
import pytest

from muonscope.errors import ConfigError
from muonscope.experiments.dynamics import entropy as E
from muonscope.orth import polar_exact


def test_first_order_gain_matches_finite_differences():
    rng = np.random.default_rng(0)
    for order, theta in [("co", 0.0), ("anti", 0.0), ("random", 1.0)]:
        case = E.make_case(9, 6, rng, order=order, theta=theta)
        for gamma in (0.0, 0.5, 1.0):
            D = E.gamma_update(case.G, gamma)
            a, fd = E.first_order_gain(case.W, D), E.finite_gain(case.W, D, 1e-6)
            assert a == pytest.approx(fd, rel=1e-5, abs=1e-8)


def test_gain_profile_matches_direct_evaluation():
    rng = np.random.default_rng(1)
    case = E.make_case(7, 10, rng, order="random", theta=0.4)
    gammas = np.linspace(0, 1, 6)
    for norm in E.NORMS:
        direct = [E.first_order_gain(case.W, E.gamma_update(case.G, g, norm)) for g in gammas]
        np.testing.assert_allclose(E.gain_profile(case.W, case.G, gammas, norm), direct, rtol=1e-10, atol=1e-14)


def test_gamma_family_endpoints_and_norms(rng):
    import torch

    G = torch.randn(6, 4, generator=rng, dtype=torch.float64).numpy()
    np.testing.assert_allclose(E.gamma_update(G, 0.0), polar_exact(torch.as_tensor(G)).numpy(), atol=1e-12)
    D1 = E.gamma_update(G, 1.0)
    np.testing.assert_allclose(D1, G * (2.0 / np.linalg.norm(G)), atol=1e-12)  # √rank / ‖G‖_F
    for g in (0.0, 0.3, 1.0):
        assert np.linalg.norm(E.gamma_update(G, g)) == pytest.approx(2.0)
        assert np.linalg.norm(E.gamma_update(G, g, "spectral"), 2) == pytest.approx(1.0)
    with pytest.raises(ConfigError):
        E.gamma_update(G, 1.5)
    with pytest.raises(ConfigError):
        E.gamma_update(G, 0.5, "nuclear")


def test_polar_maximizes_under_alignment_and_not_without():
    out = E.run_entropy(rows=8, cols=6, instances=40, thetas=(0.1, 3.0), gammas=np.linspace(0, 1, 11), seed=3)
    reg = {r["regime"]: r for r in out["regimes"]}
    aligned = reg["aligned co-ordered"]
    assert aligned["misalignment_mean"] < 1e-10
    assert aligned["frobenius"]["polar_is_max"] == 1.0 and aligned["spectral"]["polar_is_max"] == 1.0
    # same frames but the gradient is largest on W's weakest directions: γ > 0 gains more
    assert reg["aligned anti-ordered"]["frobenius"]["polar_is_max"] < 0.2
    # frames nearly unrelated: polar is often not the maximizer and its gain can be negative
    far = reg["co-ordered, frames rotated 3"]
    assert far["misalignment_mean"] > 0.8
    assert far["frobenius"]["polar_is_max"] < 0.9 and far["frobenius"]["polar_gain_negative"] > 0.1


def test_counterexample_is_real():
    ce = E.counterexample(8, 6, order="co", theta=3.0, seed=0)
    assert ce["argmax_gamma"] > 0
    case = ce["case"]
    best = E.gamma_update(case.G, ce["argmax_gamma"])
    polar = E.gamma_update(case.G, 0.0)
    # an actual small step: the non-polar update raises the entropy more (finite differences)
    eta = 1e-4
    h0 = E.entropy(case.W)
    assert E.entropy(case.W - eta * best) - h0 > E.entropy(case.W - eta * polar) - h0
    with pytest.raises(ConfigError, match="no instance"):
        E.counterexample(8, 6, order="co", theta=0.0, max_tries=20)


def test_sensing_states_check_runs():
    from muonscope.experiments.dynamics.problems import SensingConfig
    from muonscope.experiments.dynamics.sensing import SensingRunConfig

    cfg = SensingRunConfig(problem=SensingConfig(rows=8, cols=6, measurements=12), seeds=(0, 1), steps=40,
                           lr=0.05, init="powerlaw", init_scale=0.1)
    out = E.sensing_states(cfg, every=10)
    assert [r["step"] for r in out["rows"]] == [0, 10, 20, 30, 40]
    for r in out["rows"]:
        assert 0 <= r["polar_is_max"] <= 1 and 0 <= r["misalignment_mean"] <= 1
