"""Calibration instruments: the top-q oracle, fidelity statistics, paired analysis, calibrated runs."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from muonscope.errors import ConfigError
from muonscope.experiments import calibration as C
from muonscope.orth import composed_map, newton_schulz, polar_exact
from muonscope.orth.analysis import fidelity_stats
from muonscope.orth.oracle import TopQExact, top_q_map


def _matrix(m=24, n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, m, generator=g, dtype=torch.float64))
    sigma = torch.logspace(0, -4, m, dtype=torch.float64)
    return (U * sigma) @ V.T, sigma / sigma.norm()


@pytest.mark.parametrize("q,rho", [(0.5, 0.1), (0.25, 0.0), (0.9, 0.7)])
def test_top_q_singular_values_follow_the_map(q, rho):
    X, s = _matrix()
    O, seen = TopQExact(q, rho)(X, want_spectrum=True)
    got = torch.linalg.svdvals(O).numpy()
    want = np.sort(top_q_map(s.numpy(), q, rho))[::-1]
    np.testing.assert_allclose(got, want, atol=1e-10)
    np.testing.assert_allclose(seen.numpy(), s.numpy(), rtol=1e-10)
    k = math.ceil(q * 24)
    assert np.all(want[:k] == 1.0) and np.all(want[k:] <= rho + 1e-15)


def test_top_q_keeps_singular_vectors_and_q1_is_exact():
    X, _ = _matrix(seed=1)
    torch.testing.assert_close(TopQExact(1.0)(X)[0], polar_exact(X), rtol=0, atol=1e-12)
    O = TopQExact(0.5, 0.0)(X)[0]  # projector onto the top half of the exact polar factor
    U, _, Vh = torch.linalg.svd(X, full_matrices=False)
    torch.testing.assert_close(O, U[:, :12] @ Vh[:12], rtol=0, atol=1e-12)


def test_top_q_map_in_any_order_and_batched():
    s = np.array([[0.1, 0.9, 0.3, 0.2], [0.5, 0.5, 0.0, 0.7]])
    out = top_q_map(s, 0.5, 0.5)
    np.testing.assert_allclose(out[0], [0.5 * 0.1 / 0.3, 1, 1, 0.5 * 0.2 / 0.3])
    np.testing.assert_allclose(out[1], [1, 0.5, 0, 1])  # of tied values the first ranks higher; zero stays zero


@pytest.mark.parametrize("q,rho", [(0.0, 0.1), (1.5, 0.1), (0.5, -0.1), (0.5, 1.5)])
def test_top_q_rejects_bad_levels(q, rho):
    with pytest.raises(ConfigError):
        TopQExact(q, rho)


def test_distortion_equals_matrix_error_of_float64_ns():
    """D = mean (1 − p(s))² equals ‖NS(X) − UVᵀ‖²_F / r for the float64 NS matrix iteration."""
    X, s = _matrix()
    O = newton_schulz(X, "jordan", 3, dtype=torch.float64)
    direct = float(torch.linalg.matrix_norm(O - polar_exact(X)) ** 2 / 24)
    stats = fidelity_stats(s.numpy(), composed_map("jordan", 3, s.numpy()))
    assert stats["distortion"] == pytest.approx(direct, rel=1e-9)
    out = composed_map("jordan", 3, s.numpy())
    assert stats["ns_out_max"] == pytest.approx(out.max())
    assert stats["frac_failed_50"] == pytest.approx(np.mean(out < 0.5))
    assert stats["frac_failed"] == pytest.approx(np.mean(out < 0.1))


def test_distortion_nonnull_leaves_null_directions_out():
    s = np.array([0.8, 0.6, 1e-9])
    out = np.array([1.0, 0.5, 0.0])
    st = fidelity_stats(s, out)
    assert st["null_dirs"] == 1
    assert st["distortion"] == pytest.approx((0.25 + 1.0) / 3)
    assert st["distortion_nonnull"] == pytest.approx(0.25 / 2)


def test_parse_method_forms():
    assert C.parse_method("exact", "d64").options == {"orthogonalizer": "exact"}
    m = C.parse_method("top0.9-rho0.3", "d64")
    assert (m.family, m.options["oracle_q"], m.options["oracle_rho"]) == ("oracle", 0.9, 0.3)
    assert C.parse_method("jordan-5", "d64").family == "reference"
    m = C.parse_method("designed-1e-05-7", "d64")
    assert m.options == {"schedule": "designed-1e-05", "ns_steps": 7}
    for bad in ("top1-rho0", "nonsense", "jordan", "plan:/nonexistent/{preset}.json"):
        with pytest.raises(ConfigError):
            C.parse_method(bad, "d64")
    assert len(set(C.grid_methods())) == len(C.grid_methods())
    for name in C.grid_methods(full=True):
        C.parse_method(name, "d64")


def test_steps_to_reach_interpolates_in_log_steps():
    curve = {"100": 3.0, "200": 2.0, "400": 1.0}
    assert C.steps_to_reach(curve, 2.0) == pytest.approx(200)
    assert C.steps_to_reach(curve, 1.5) == pytest.approx(math.sqrt(200 * 400))
    assert C.steps_to_reach(curve, 0.5) == math.inf
    assert C.steps_to_reach(curve, 5.0) == 100


def test_crossing_of_a_monotone_fit():
    xs, fit = C.monotone_fit([0.0, 0.1, 0.2, 0.3], [0.0, 0.03, 0.01, 0.08])  # pooled: 0.02, 0.02
    np.testing.assert_allclose(fit, [0.0, 0.02, 0.02, 0.08])
    assert C.crossing(xs, fit, 0.05) == pytest.approx(0.25)
    assert C.crossing(xs, fit, 1.0) == math.inf


def _synthetic(slope=2.0):
    """Rows whose paired Δ loss against exact is slope·D exactly plus seed noise ±0.002."""
    rows = []
    methods = {"exact": ("reference", 0.0), "jordan-5": ("reference", 0.004), "jordan-4": ("ns", 0.02),
               "jordan-3": ("ns", 0.2), "top0.9-rho0": ("oracle", 0.05), "top0.5-rho0": ("oracle", 0.5)}
    for seed, base, noise in ((0, 2.0, 0.002), (1, 2.1, -0.002), (2, 1.9, 0.0)):
        for name, (fam, d) in methods.items():
            loss = base + slope * d + (noise if name != "exact" else 0.0)
            curve = {"100": loss + 1.0, "600": loss}
            rows.append({"method": name, "family": fam, "preset": "d64", "seed": seed, "steps": 600,
                         "model_params": 1, "final_val_loss": loss, "val_curve": json.dumps(curve),
                         "ns_flops_per_step": 15.0 * (int(name[-1]) if name.startswith("jordan") else 1),
                         "ns_matmuls_per_step": 1.0, "distortion": d, "distortion_nonnull": d,
                         "frac_failed": d / 4, "frac_failed_nonnull": d / 4, "frac_failed_50": d / 2,
                         "ns_out_max": 1.0, "ns_out_max_peak": 1.0, "wall_seconds": 1.0, "threads": 1})
    return pd.DataFrame(rows)


def test_calibrate_sets_bounds_where_the_curve_crosses_the_noise():
    df = _synthetic()
    cal = C.calibrate(df, "d64")
    se = 0.002 / math.sqrt(3)  # sd of (+0.002, −0.002, 0) is 0.002
    assert cal.noise == pytest.approx(2 * se)
    assert cal.statistic == "distortion"  # frac_failed is proportional here: ties keep the first
    assert cal.absolute == pytest.approx(cal.noise / 2.0, rel=0.05)
    t = cal.vs_exact.set_index("method")
    assert t.loc["jordan-3", "dloss"] == pytest.approx(0.4)
    assert t.loc["jordan-4", "flops_ratio"] == pytest.approx(4.0)
    assert cal.overshoot_cap == pytest.approx(1.21)
    crit = cal.criterion("test")
    assert crit["kind"] == "statistic" and crit["delta"] >= 0


def test_calibrate_needs_references():
    df = _synthetic()
    with pytest.raises(ConfigError, match="references"):
        C.calibrate(df[df.method != "exact"], "d64")


def test_run_calibration_end_to_end_and_resume(tmp_path):
    base = dict(batch_size=8, corpus_bytes=300_000, eval_every=8, monitor_every=4, checkpoint_every=8)
    methods = ["exact", "top0.5-rho0", "jordan-3"]
    ran = C.run_calibration(tmp_path, methods, ["tiny"], [0], steps=16, burn_in=4, log=lambda *_: None, **base)
    assert ran == 3
    df = pd.read_csv(tmp_path / C.CSV_NAME)
    assert list(df.method) == methods
    t = df.set_index("method")
    assert t.loc["exact", "distortion"] == 0.0 and t.loc["exact", "frac_failed"] == 0.0
    assert t.loc["top0.5-rho0", "frac_failed"] == pytest.approx(0.5)
    assert t.loc["jordan-3", "ns_matmuls_per_step"] > 0
    assert 0 < t.loc["jordan-3", "distortion"] < 1
    # a second call finds every row done and trains nothing
    assert C.run_calibration(tmp_path, methods, ["tiny"], [0], steps=16, burn_in=4, log=lambda *_: None,
                             **base) == 0
    with pytest.raises(ConfigError, match="burn-in"):
        C.run_calibration(tmp_path, methods, ["tiny"], [0], steps=4, burn_in=4, **base)


def test_optimizer_stats_carry_fidelity_on_sampled_steps():
    import muonscope
    from muonscope.spectra.monitor import SpectralMonitor

    p = torch.nn.Parameter(torch.randn(16, 32))
    opt = muonscope.Muon([("w", p)], lr=0.01, schedule="jordan", ns_steps=3)
    mon = SpectralMonitor(opt, every=2, spectrum="gram")
    for _ in range(2):
        p.grad = torch.randn(16, 32)
        opt.step()
    e = opt.stats["layers"]["w"]
    rec = mon.records[-1]
    assert e["fidelity_step"] == 2
    for k in ("distortion", "frac_failed", "frac_failed_50", "ns_out_max"):
        assert e[k] == pytest.approx(rec[k], rel=1e-12)
    assert 0 < e["distortion"] < 1


def test_closed_loop_verification_trains_refits_and_compares(tmp_path):
    from muonscope.experiments.closed_loop import plan_configs, verify_plan
    from muonscope.laws.criterion import Criterion
    from muonscope.laws.io import load_laws

    crit = Criterion(kind="statistic", statistic="distortion", delta=0.01, absolute=0.08, overshoot_cap=1.25)
    laws = load_laws(Path(__file__).resolve().parents[1] / "results" / "laws.json")
    opts = dict(batch_size=8, corpus_bytes=300_000, eval_every=20, monitor_every=5, checkpoint_every=20, burn_in=10)
    v = verify_plan(laws, crit, tmp_path, presets=("tiny", "d48", "d64"), steps=40, train_options=opts,
                    log=lambda *_: None)
    assert list(v.paired.preset) == ["tiny", "d48", "d64"]
    assert (v.paired.flops_ratio <= 1.0).all() and v.paired.n.eq(1).all()
    assert v.refit.fits and set(v.changed) == {"tiny", "d48", "d64"}
    assert v.fixed_point == (not any(v.changed.values()))
    for p in ("tiny", "d48", "d64"):
        before = plan_configs(tmp_path / "plans" / f"plan-{p}.json")
        after = plan_configs(tmp_path / "replans" / f"plan-{p}.json")
        assert {n for n in before if before[n] != after[n]} == set(v.changed[p])
    with pytest.raises(ConfigError, match="3 or more"):
        verify_plan(laws, crit, tmp_path, presets=("tiny", "d48"))
