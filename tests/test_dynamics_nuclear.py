"""Nuclear-norm gap: the cvxpy minimum is certified and lies below every interpolant Muon or GD find."""

import sys

import numpy as np
import pytest
import torch

from muonscope.errors import ConfigError
from muonscope.experiments.dynamics import nuclear
from muonscope.experiments.dynamics.problems import SensingConfig, SensingProblem
from muonscope.experiments.dynamics.steps import UpdateRule

needs_cvxpy = pytest.mark.skipif(not nuclear.have_cvxpy(), reason="cvxpy (optional extra 'cvxpy') is not installed")


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@needs_cvxpy
def test_single_measurement_closed_form(rng):
    # min ‖W‖_* s.t. ⟨A, W⟩ = y is |y|/‖A‖₂ (the operator norm is the nuclear norm's dual)
    A = torch.randn(1, 5, 4, generator=rng, dtype=torch.float64).numpy()
    y = np.array([2.5])
    m = nuclear.min_nuclear_norm(A, y)
    expected = 2.5 / np.linalg.norm(A[0], 2)
    assert m.value == pytest.approx(expected, rel=1e-6)
    assert m.upper == pytest.approx(expected, rel=1e-6) and m.lower == pytest.approx(expected, rel=1e-6)


@needs_cvxpy
def test_minimum_is_below_every_interpolant_found():
    cfg = SensingConfig(rows=6, cols=10, measurements=6, kappa=5.0)
    pb = SensingProblem.generate(cfg, [0, 1, 2])
    muon = nuclear.converge(pb, UpdateRule("muon"), steps=1500, lr=0.05)
    ns = nuclear.converge(pb, UpdateRule.parse("muon-ns:jordan:5"), steps=1500, lr=0.05)
    assert float(muon["rel_residual"].max()) < 1e-5
    g = torch.Generator().manual_seed(7)
    randoms = pb.project(torch.randn(3, 6, 10, generator=g, dtype=torch.float64))
    candidates = {"muon": muon["W"], "muon-ns": ns["W"], "min-frobenius": pb.min_frobenius(),
                  "target": pb.W_star, "random": randoms}
    for name, W in candidates.items():
        assert float(pb.relative_residual(W).max()) < 1e-9, name  # all are interpolants
    nucs = {k: nuclear.nuclear_norm(W) for k, W in candidates.items()}
    for i in range(3):
        m = nuclear.min_nuclear_norm(pb.A[i].numpy(), pb.y[i].numpy())
        assert m.lower <= m.upper * (1 + 1e-7) and (m.upper - m.lower) / m.upper < 1e-5  # certified
        for name, v in nucs.items():
            assert m.upper <= v[i] * (1 + 1e-7), (name, i)
        # Muon's interpolant is not the nuclear-norm minimum
        assert nucs["muon"][i] > 1.1 * m.upper


@needs_cvxpy
def test_run_setting_reports_ratios():
    out = nuclear.run_setting(nuclear.SETTINGS["small"], rules=("muon",), steps=800, seeds=[0, 1], record_every=100)
    assert [r["seed"] for r in out["rows"]] == [0, 1]
    for r in out["rows"]:
        assert r["muon_ratio"] == pytest.approx(r["muon_nuclear"] / r["min_nuclear"])
        assert r["min_frobenius_ratio"] > 1 and r["muon_ratio"] > 1
    s = out["summary"]["muon"]
    assert s["at_minimum"] == 0 and s["ratio_min"] <= s["ratio_mean"] <= s["ratio_max"]
    tr = out["traces"]["muon"]
    assert tr["nuclear"].shape == (2, 9) and tr["steps"][-1] == 800 and tr["nuclear"][:, 0].max() == 0.0


def test_missing_cvxpy_gives_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "cvxpy", None)  # import cvxpy now raises ImportError
    assert not nuclear.have_cvxpy()
    with pytest.raises(ConfigError, match=r"pip install 'muonscope\[cvxpy\]'"):
        nuclear.min_nuclear_norm(np.ones((1, 2, 2)), np.ones(1))  # valid input, no solver
    with pytest.raises(ConfigError, match="cvxpy"):
        nuclear.experiment(["small"])


def test_bad_input():
    with pytest.raises(ConfigError, match="underdetermined"):
        nuclear.min_nuclear_norm(np.ones((5, 2, 2)), np.ones(5))
    with pytest.raises(ConfigError, match="shape"):
        nuclear.min_nuclear_norm(np.ones((2, 2)), np.ones(2))
