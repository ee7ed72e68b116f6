"""Exponents over training time: α(t) windows, drift verdicts, the drift-tolerance policy of the
fits, and the planner's note on unconverged exponents."""

import numpy as np
import pytest

from muonscope.errors import FitError
from muonscope.laws.convergence import alpha_over_time, convergence_table, verdicts, window_values
from muonscope.laws.fit import fit_laws
from muonscope.laws.planner import make_plan
from muonscope.laws.synthetic import synthetic_records
from muonscope.spectra.metrics import quantile_column

SIZES = (1e5, 3e5, 1e6, 3e6)
M0 = 1e6


def _drifting(gamma: float, **kw):
    """Records whose exponent grows linearly in time: α(t) = 0.3 + γ·t/1000."""
    df = synthetic_records(SIZES, alpha=0.3, seeds=3, layer_types=("q", "mlp_down"), qs=(0.1, 0.5),
                           burn_in_amp=0.0, sigma_step=0.02, **kw)
    factor = (df["model_params"] / M0) ** (-gamma * df["step"] / 1000.0)
    for q in (0.1, 0.5):
        df[quantile_column(q)] *= factor
    return df


def test_window_values_are_geometric_means_of_the_window():
    df = _drifting(0.0)
    wv = window_values(df, [500], width=100)
    one = wv[(wv.run_id == "synth-1e+05-s0") & (wv.layer_type == "q") & (wv.rel_depth == 0.25) & (wv.q == 0.5)]
    raw = df[(df.run_id == "synth-1e+05-s0") & (df.param == "blocks.0.q.weight") & (df.step > 400) & (df.step <= 500)]
    assert len(one) == 1 and int(one.n_samples.iloc[0]) == 10
    assert one.log_value.iloc[0] == pytest.approx(np.log(raw["s_q50"]).mean(), rel=1e-12)


@pytest.mark.parametrize("gamma", [0.0, 0.2])
def test_drift_recovered_and_verdict(gamma):
    at = alpha_over_time(_drifting(gamma), width=200, every=100, n_boot=200)
    assert {"alpha_seed0", "alpha_seed1", "alpha_seed2"} <= set(at.columns)
    conv = convergence_table(at, tolerance=0.05)
    assert len(conv) == 2 * 4 * 2  # layer types × depths × q
    # the window ending at 1000 spans steps 810..1000: mean step 905
    assert conv.alpha.to_numpy() == pytest.approx(0.3 + gamma * 0.905, abs=0.03)
    assert conv.drift_per_1k.to_numpy() == pytest.approx(gamma, abs=0.03)
    assert (conv.drift_lo <= conv.drift_hi).all() and conv.n_seeds.eq(3).all()
    assert conv.converged.all() if gamma == 0.0 else not conv.converged.any()
    v = verdicts(conv)
    assert len(v) == len(conv) and all(x["converged"] == (gamma == 0.0) for x in v.values())


def test_convergence_errors():
    df = _drifting(0.0)
    with pytest.raises(FitError, match="window width"):
        window_values(df, [500], width=0)
    with pytest.raises(FitError, match="no spectral samples"):
        window_values(df, [5000], width=100)
    with pytest.raises(FitError, match="3 or more sizes"):
        alpha_over_time(df[df.model_params < 1e6], n_boot=100)
    at = alpha_over_time(df, n_boot=100)
    with pytest.raises(FitError, match="tolerance"):
        convergence_table(at, tolerance=0)


def test_drift_tolerance_keeps_slowly_drifting_largest_models():
    """The burn-in rule flags the largest model (still settling); within the tolerance it is kept."""
    df = synthetic_records(SIZES, alpha=0.3, layer_types=("q",), qs=(0.5,), burn_in_amp=0.0, sigma_step=0.01)
    big = df.model_params == int(3e6)
    df.loc[big, "s_q50"] *= np.exp(-0.15 * df.loc[big, "step"] / 1000)  # 15 % per 1000 steps
    strict = fit_laws(df, drift_tolerance=None, n_boot=200)
    loose = fit_laws(df, n_boot=200)
    ex = strict.excluded()
    assert len(ex) and set(ex.model_params) == {int(3e6)} and ex["use"].str.startswith("excluded").all()
    assert loose.excluded().empty
    kept = loose.stabilization[loose.stabilization.model_params == int(3e6)]
    flagged = kept[~kept.stable.astype(bool)]
    assert len(flagged) == len(ex) and flagged["use"].str.startswith("kept at tail value").all()
    assert kept.tail_drift.to_numpy() == pytest.approx(-0.15, abs=0.03)
    assert all(f.n_sizes == 4 for f in loose.fits)
    with pytest.raises(FitError, match="drift_tolerance"):
        fit_laws(df, drift_tolerance=-1.0)


def test_plan_lists_unconverged_exponents_it_extrapolates(tmp_path):
    df = _drifting(0.2)
    laws = fit_laws(df, n_boot=200)
    assert make_plan(laws, 7e10).to_dict()["exponents_converged"] is None  # not assessed
    laws.convergence = verdicts(convergence_table(alpha_over_time(df, n_boot=100)))
    laws.save(tmp_path / "laws.json")
    again = type(laws).load(tmp_path / "laws.json")
    d = make_plan(again, 7e10).to_dict()
    assert d["exponents_converged"] is False
    assert "mlp_down|1|0.5" in d["unconverged_exponents"]
    assert again.converged("q", 0.25, 0.5) is False and again.converged("q", 0.25, 0.3) is None


def test_compare_exponents_of_two_families():
    from muonscope.laws.compare import compare_exponents

    a = fit_laws(synthetic_records(SIZES, alpha=0.25, layer_types=("q",), qs=(0.5,), burn_in_amp=0.0), n_boot=200)
    b = fit_laws(synthetic_records(SIZES, alpha=0.40, layer_types=("q",), qs=(0.5,), burn_in_amp=0.0, seed=3),
                 n_boot=200)
    t = compare_exponents(a, b, ("w", "d"))
    assert len(t) == 4 and set(t.rel_depth) == {0.25, 0.5, 0.75, 1.0}
    assert t.delta.to_numpy() == pytest.approx(0.15, abs=0.03)
    assert t.excess_w.to_numpy() == pytest.approx(0.0, abs=0.03)  # widths ∝ √M: α_flat = 0.25
    assert not t.intervals_overlap.any()
