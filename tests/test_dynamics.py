"""Matrix-sensing dynamics: the sensing model, update rules, trajectories, paired statistics, stores."""

import math

import numpy as np
import pytest
import scipy.stats
import torch

from muonscope.errors import ConfigError, ScheduleError
from muonscope.experiments.dynamics.problems import SensingConfig, SensingProblem
from muonscope.experiments.dynamics.sensing import (
    SensingRunConfig,
    run_sensing,
    summarize,
    write_stores,
)
from muonscope.experiments.dynamics.stats import paired_effect
from muonscope.experiments.dynamics.steps import Stepper, UpdateRule, lr_at
from muonscope.orth.analysis import composed_map
from muonscope.spectra.store import RunStore

SMALL = SensingConfig(rows=8, cols=6, measurements=12, kappa=5.0)


# --- the sensing model -----------------------------------------------------------------------------

def test_problem_target_spectrum_and_measurements():
    pb = SensingProblem.generate(SMALL, [0, 1])
    sv = torch.linalg.svdvals(pb.W_star)
    np.testing.assert_allclose(sv.numpy(), np.tile(np.linspace(5.0, 1.0, 6), (2, 1)), rtol=1e-12)
    y = torch.einsum("snij,sij->sn", pb.A, pb.W_star)
    torch.testing.assert_close(pb.y, y, rtol=1e-12, atol=1e-12)
    # entries N(0, 1)/√p: the sample variance over all entries is close to 1/p
    big = SensingProblem.generate(SensingConfig(rows=40, cols=30, measurements=50), [0])
    assert float(big.A.var()) * 40 == pytest.approx(1.0, rel=0.02)


def test_problem_seeds_are_independent_of_the_batch():
    a = SensingProblem.generate(SMALL, [3])
    b = SensingProblem.generate(SMALL, [1, 3]).select(1)
    torch.testing.assert_close(a.A, b.A, rtol=0, atol=0)
    torch.testing.assert_close(a.W_star, b.W_star, rtol=0, atol=0)


def test_gradient_matches_autograd():
    pb = SensingProblem.generate(SMALL, [0, 1])
    W = torch.randn(2, 8, 6, dtype=torch.float64, requires_grad=True)
    pb.loss(W).sum().backward()
    torch.testing.assert_close(pb.gradient(W.detach()), W.grad, rtol=1e-12, atol=1e-12)


def test_projection_and_min_frobenius_interpolant():
    pb = SensingProblem.generate(SMALL, [0, 1, 2])
    W_mf = pb.min_frobenius()
    assert float(pb.relative_residual(W_mf).max()) < 1e-12
    R = pb.project(torch.randn(3, 8, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(7)))
    assert float(pb.relative_residual(R).max()) < 1e-12
    for other in (R, pb.W_star):  # the least-norm interpolant is no longer than any other
        assert torch.all(torch.linalg.matrix_norm(W_mf) <= torch.linalg.matrix_norm(other) * (1 + 1e-12))
    # and lies in the range of A* (so GD from 0 ends there): W_mf = A*(λ) for some λ
    Af = pb.A.reshape(3, 12, -1)
    lam = torch.linalg.lstsq(Af.mT, W_mf.reshape(3, -1, 1)).solution
    torch.testing.assert_close((Af.mT @ lam).reshape(3, 8, 6), W_mf, rtol=1e-9, atol=1e-10)


def test_config_errors():
    with pytest.raises(ConfigError, match="rank"):
        SensingConfig(rows=4, cols=3, measurements=5, rank=4)
    with pytest.raises(ConfigError, match="kappa"):
        SensingConfig(kappa=0.5)
    with pytest.raises(ConfigError, match="underdetermined"):
        SensingProblem.generate(SensingConfig(rows=2, cols=2, measurements=5), [0]).min_frobenius()
    with pytest.raises(ConfigError, match="init"):
        SensingRunConfig(init="ones")
    with pytest.raises(ConfigError, match="unknown update rule"):
        SensingRunConfig(rules=("adam",))


# --- update rules ----------------------------------------------------------------------------------

def test_muon_direction_is_the_polar_factor(rng):
    G = torch.randn(3, 7, 5, generator=rng, dtype=torch.float64)
    D = UpdateRule("muon").direction(G)
    U, _, Vh = np.linalg.svd(G.numpy(), full_matrices=False)
    np.testing.assert_allclose(D.numpy(), U @ Vh, atol=1e-12)


@pytest.mark.parametrize("schedule,steps", [("jordan", 5), ("polar-express", 5), ("classical", 3)])
def test_muon_ns_direction_follows_the_scalar_map(rng, schedule, steps):
    G = torch.randn(6, 9, generator=rng, dtype=torch.float64)
    rule = UpdateRule.parse(f"muon-ns:{schedule}:{steps}")
    assert rule.ns_label == (schedule, steps) and rule.label == f"muon-ns[{schedule},{steps}]"
    D = rule.direction(G)
    s = torch.linalg.svdvals(G).numpy()
    expected = np.sort(composed_map(schedule, steps, s / np.linalg.norm(s)))[::-1]
    np.testing.assert_allclose(torch.linalg.svdvals(D).numpy(), expected, rtol=1e-9, atol=1e-12)


def test_norm_matched_gd_and_random_orthogonal_control(rng):
    G = torch.randn(2, 8, 5, generator=rng, dtype=torch.float64)
    D = UpdateRule("nmgd").direction(G)
    np.testing.assert_allclose(torch.linalg.matrix_norm(D).numpy(), math.sqrt(5), rtol=1e-12)
    cos = (D * G).sum((-2, -1)) / (torch.linalg.matrix_norm(D) * torch.linalg.matrix_norm(G))
    np.testing.assert_allclose(cos.numpy(), 1.0, rtol=1e-12)
    for shape in [(2, 8, 5), (2, 5, 8)]:
        G = torch.randn(*shape, generator=rng, dtype=torch.float64)
        Q = UpdateRule("random-orth").direction(G, torch.Generator().manual_seed(0))
        np.testing.assert_allclose(torch.linalg.svdvals(Q).numpy(), 1.0, atol=1e-12)
        assert torch.all((Q * G).sum((-2, -1)) >= 0)
        Q2 = UpdateRule("random-orth").direction(G, torch.Generator().manual_seed(0))
        torch.testing.assert_close(Q, Q2, rtol=0, atol=0)
    assert UpdateRule("gd").direction(G) is G


def test_rule_parsing_errors():
    with pytest.raises(ConfigError, match="unknown update rule"):
        UpdateRule.parse("sgd")
    with pytest.raises(ScheduleError):
        UpdateRule.parse("muon-ns:nope")
    with pytest.raises(ConfigError, match="not an int"):
        UpdateRule.parse("muon-ns:jordan:x")
    with pytest.raises(ConfigError, match="only muon-ns"):
        UpdateRule.parse("muon:jordan")


def test_lr_schedules_and_momentum():
    assert lr_at(0, 100, 0.1, "cosine") == pytest.approx(0.1)
    assert lr_at(50, 100, 0.1, "cosine") == pytest.approx(0.05)
    assert lr_at(75, 100, 0.1, "linear") == pytest.approx(0.025)
    assert lr_at(99, 100, 0.1, "constant") == 0.1
    with pytest.raises(ConfigError):
        lr_at(0, 10, 0.1, "warmup")
    G1, G2 = torch.ones(2, 2, dtype=torch.float64), 2 * torch.eye(2, dtype=torch.float64)
    st = Stepper(UpdateRule("gd"), momentum=0.5)
    st.input(G1)
    torch.testing.assert_close(st.input(G2), 0.5 * G1 + G2)
    nes = Stepper(UpdateRule("gd"), momentum=0.5, nesterov=True)
    nes.input(G1)
    torch.testing.assert_close(nes.input(G2), G2 + 0.5 * (0.5 * G1 + G2))
    with pytest.raises(ConfigError):
        Stepper(UpdateRule("gd"), momentum=1.0)


# --- trajectories ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_run():
    cfg = SensingRunConfig(problem=SMALL, rules=("muon", "gd", "nmgd", "random-orth"), seeds=tuple(range(6)),
                           steps=300, lr=0.05, init="powerlaw", init_scale=0.1, record_every=10)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # batched tiny SVDs: one thread is fastest
    try:
        return run_sensing(cfg)
    finally:
        torch.set_num_threads(threads)


def test_muon_flattens_more_than_gd(small_run):
    mu, gd = small_run.trajectories["muon"], small_run.trajectories["gd"]
    assert float(mu.traces["rel_residual"][:, -1].max()) < 1e-4  # both (nearly) interpolate
    assert float(gd.traces["rel_residual"][:, -1].max()) < 1e-4
    # from a concentrated initial spectrum, Muon's normalized entropy and stable rank rise ...
    assert np.all(mu.traces["entropy"][:, -1] > mu.traces["entropy"][:, 0] + 0.2)
    # ... and end above GD's on every seed (paired)
    assert np.all(mu.traces["entropy"][:, -1] > gd.traces["entropy"][:, -1] + 0.01)
    assert np.all(mu.traces["stable_rank"][:, -1] > gd.traces["stable_rank"][:, -1] + 0.5)
    # normalized spectra are unit vectors
    np.testing.assert_allclose(np.linalg.norm(mu.spectra[:, -1], axis=-1), 1.0, rtol=1e-12)


def test_norm_matched_gd_does_not_reproduce_muon(small_run):
    mu, gd, nm = (small_run.trajectories[k].final_W for k in ("muon", "gd", "nmgd"))
    rel = lambda a, b: np.linalg.norm(a - b, axis=(-2, -1)) / np.linalg.norm(b, axis=(-2, -1))  # noqa: E731
    # same direction as GD at every step, only rescaled: it ends where GD ends (W₀ + range A*) ...
    assert float(rel(nm, gd).max()) < 1e-4
    # ... which is not where Muon ends
    assert float(rel(nm, mu).min()) > 0.1


def test_summary_paired_effects_and_stores(small_run, tmp_path):
    s = summarize(small_run)
    assert s["reference"] == "muon"
    eff = {(e["b"], e["metric"]): e for e in s["paired"]}
    e = eff[("gd", "final_entropy")]
    assert e["n"] == 6 and e["mean_diff"] > 0 and e["frac_a_greater"] == 1.0 and e["ci95_low"] > 0
    assert e["wilcoxon_p"] == pytest.approx(2 / 2**6)  # exact two-sided test, all 6 signs positive
    assert s["rules"]["random-orth"]["final_rel_residual_mean"] > 1e-3  # the control does not fit
    paths = write_stores(small_run, tmp_path)
    assert len(paths) == 4 * 6
    st = RunStore.open(tmp_path / "muon-seed0")
    assert st.meta["model_params"] == 48 and st.meta["seed"] == 0
    sp = st.spectra()
    need = {"run_id", "step", "param", "layer_type", "block", "rel_depth", "rows", "cols", "model_params",
            "frob_norm", "s_max", "s_min", "s_q10", "s_q50", "s_q90", "stable_rank", "spectral_entropy",
            "ns_schedule", "ns_steps", "ns_out_min", "frac_failed", "rho", "source", "process_rank", "spectrum"}
    assert need <= set(sp.columns)
    assert set(sp.source) == {"weight", "ns_input"}
    w = sp[sp.source == "weight"].sort_values("step")
    np.testing.assert_allclose(w.spectral_entropy.to_numpy(), small_run.trajectories["muon"].traces["entropy"][0],
                               rtol=1e-12)
    m = st.metrics()
    assert {"train_loss", "lr", "rel_residual", "sin_theta", "misalignment"} <= set(m.name)


# --- paired statistics -----------------------------------------------------------------------------

def test_paired_effect_against_closed_forms():
    b = np.array([0.0, 1.0, 5.0])
    e = paired_effect(b + np.array([1.0, 2.0, 3.0]), b, metric="x", label_a="A", label_b="B")
    assert e.mean_diff == pytest.approx(2.0) and e.sd_diff == pytest.approx(1.0) and e.d_z == pytest.approx(2.0)
    half = scipy.stats.t.ppf(0.975, 2) / math.sqrt(3)
    assert (e.ci95_low, e.ci95_high) == pytest.approx((2 - half, 2 + half))
    assert e.wilcoxon_p == pytest.approx(0.25) and e.frac_a_greater == 1.0
    z = paired_effect([1.0, 2.0, np.nan], [1.0, 2.0, 0.0])
    assert z.n == 2 and z.mean_diff == 0 and math.isnan(z.wilcoxon_p)
    with pytest.raises(ConfigError):
        paired_effect([1.0], [1.0, 2.0])


def test_spectral_rows_carry_ns_fidelity():
    from muonscope.experiments.dynamics.record import spectral_row
    from muonscope.orth.analysis import threshold

    tau = threshold("jordan", 5, 0.1)  # smallest s that 5 Jordan steps lift to ≥ 0.1
    sigma = np.array([1.0, 0.3, 0.5 * tau, 2.0 * tau])
    sigma = sigma / np.linalg.norm(sigma)
    row = spectral_row(7, 3.0 * sigma, source="ns_input", rows=4, cols=9, ns_label=("jordan", 5))
    assert row["frac_failed"] == 0.25 and row["rho"] == 0.1 and row["ns_out_min"] < 0.1
    assert row["frob_norm"] == pytest.approx(3.0) and row["spectrum"][0] == pytest.approx(sigma[0])
    exact = spectral_row(7, sigma, source="ns_input", rows=4, cols=9, ns_label=("exact", 0))
    assert exact["ns_out_min"] == 1.0 and exact["frac_failed"] == 0.0
    weight = spectral_row(7, sigma, source="weight", rows=4, cols=9, ns_label=("exact", 0))
    assert math.isnan(weight["ns_out_min"])
    assert spectral_row(7, np.zeros(3), source="weight", rows=3, cols=3, ns_label=("none", 0)) is None
