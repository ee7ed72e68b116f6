"""Power-law fits recover known exponents within their intervals; laws JSON round-trips."""

import json
import math

import numpy as np
import pytest
from scipy import stats

from muonscope.errors import ConfigError, FitError
from muonscope.laws import fit_laws, fit_power_law, load_laws, shared_exponent_test
from muonscope.laws.synthetic import synthetic_records

STEPS = np.arange(10, 601, 10)


def test_exact_power_law():
    M = np.array([1e6, 1e7, 1e8, 1e9])
    f = fit_power_law(M, 0.7 * M ** -0.37)
    assert f.alpha == pytest.approx(0.37, abs=1e-12) and f.c == pytest.approx(0.7, rel=1e-10)
    assert f.r2 == pytest.approx(1.0) and np.abs(f.residuals).max() < 1e-12
    assert f.alpha_huber == pytest.approx(0.37, abs=1e-10)
    p = f.predict(7e10)
    assert p.center == pytest.approx(0.7 * 7e10 ** -0.37, rel=1e-10) and p.low == pytest.approx(p.center)


def test_against_scipy_linregress_and_t_prediction_interval():
    rng = np.random.default_rng(3)
    M = np.repeat([1e6, 3e6, 1e7, 3e7, 1e8], 2)
    s = 0.4 * M ** -0.25 * np.exp(rng.normal(0, 0.05, M.size))
    f = fit_power_law(M, s)
    ref = stats.linregress(np.log(M), np.log(s))
    assert f.alpha == pytest.approx(-ref.slope, rel=1e-12)
    assert f.log_c == pytest.approx(ref.intercept, rel=1e-12)
    assert f.alpha_se == pytest.approx(ref.stderr, rel=1e-10) and f.r2 == pytest.approx(ref.rvalue**2, rel=1e-12)
    # prediction interval from the textbook formula, computed independently
    x, y = np.log(M), np.log(s)
    n = x.size
    resid = y - (ref.intercept + ref.slope * x)
    sig = np.sqrt(resid @ resid / (n - 2))
    x0 = np.log(7e10)
    half = stats.t.ppf(0.975, n - 2) * sig * np.sqrt(1 + 1 / n + (x0 - x.mean()) ** 2 / ((x - x.mean()) ** 2).sum())
    p = f.predict(7e10, level=0.95)
    yhat = ref.intercept + ref.slope * x0
    assert math.log(p.low) == pytest.approx(yhat - half, rel=1e-10)
    assert math.log(p.high) == pytest.approx(yhat + half, rel=1e-10)


def test_intervals_cover_the_true_exponent():
    """Coverage over 60 noisy fits (5 sizes × 2 seeds, 5% log-noise): measured ≈ 0.93 (t) and
    0.97 (bootstrap) over 200 fits; 60 fits at nominal 0.95 fall below 0.8 with probability < 1e-4."""
    rng = np.random.default_rng(11)
    t_cov = b_cov = p_cov = 0
    for r in range(60):
        M = np.repeat(np.geomspace(1e6, 1e9, 5), 2)
        s = 0.5 * M ** -0.3 * np.exp(rng.normal(0, 0.05, M.size))
        f = fit_power_law(M, s, n_boot=400, seed=r)
        t_cov += f.alpha_ci_t[0] <= 0.3 <= f.alpha_ci_t[1]
        b_cov += f.alpha_ci[0] <= 0.3 <= f.alpha_ci[1]
        p = f.predict(1e11)
        p_cov += p.low <= 0.5 * 1e11 ** -0.3 * math.exp(rng.normal(0, 0.05)) <= p.high
        assert abs(f.alpha - 0.3) < 0.1
    assert t_cov / 60 >= 0.8 and b_cov / 60 >= 0.8 and p_cov / 60 >= 0.8


def test_huber_resists_an_outlier():
    M = np.geomspace(1e6, 1e9, 7)
    s = 0.5 * M ** -0.3 * np.exp(np.random.default_rng(0).normal(0, 0.01, M.size))
    s[-1] *= 8.0
    f = fit_power_law(M, s)
    assert abs(f.alpha_huber - 0.3) < 0.02 < abs(f.alpha - 0.3)


@pytest.mark.parametrize(
    "sizes,values,match",
    [
        ([1e6, 1e6, 1e7], [0.1, 0.1, 0.05], "at least 3 model sizes, got 2"),
        ([1e6, 1e7, 1e8], [0.1, float("nan"), 0.05], "NaN"),
        ([1e6, 1e7, 1e8], [0.1, 0.0, 0.05], "positive"),
        ([1e6, -1e7, 1e8], [0.1, 0.1, 0.05], "positive"),
    ],
)
def test_fit_errors_say_what_is_missing(sizes, values, match):
    with pytest.raises(FitError, match=match):
        fit_power_law(sizes, values)


def test_shared_exponent_test():
    rng = np.random.default_rng(5)
    M = np.repeat(np.geomspace(1e6, 1e9, 5), 2)
    common = rng.normal(0, 0.05, M.size)  # run-level fluctuation shared by the quantiles of a matrix
    same = {q: (1 - 0.9 * q) * M ** -0.3 * np.exp(common + rng.normal(0, 0.01, M.size)) for q in (0.1, 0.5, 0.9)}
    t = shared_exponent_test(M, same)
    assert t.shared and t.p_value > 0.05 and t.spread < 0.02
    diff = {q: (1 - 0.9 * q) * M ** -(0.3 + 0.2 * (q - 0.5)) * np.exp(common + rng.normal(0, 0.01, M.size))
            for q in (0.1, 0.5, 0.9)}
    t = shared_exponent_test(M, diff)
    assert not t.shared and t.p_value < 1e-4
    assert t.slopes[0] == pytest.approx(-0.08, abs=0.01) and t.slopes[2] == pytest.approx(0.08, abs=0.01)


def _alpha(lt, d):
    return 0.25 if d < 1 else {"q": 0.46, "k": 0.38, "v": 0.58, "o": 0.66, "mlp_up": 0.96, "mlp_down": 0.52}[lt]


@pytest.fixture(scope="module")
def laws():
    df = synthetic_records([2e6, 8e6, 3.2e7, 1.28e8, 5.12e8], alpha=_alpha, seeds=2, steps=STEPS, seed=7)
    return fit_laws(df, n_boot=500)


def test_fit_laws_recovers_exponents(laws):
    assert len(laws.fits) == 6 * 4 * 5 and not laws.skipped
    assert laws.stabilization.stable.all()
    inside_t = inside_b = 0
    for f in laws.fits:
        a = _alpha(f.layer_type, f.rel_depth)
        assert abs(f.alpha - a) < 0.03, (f.layer_type, f.rel_depth, f.q, f.alpha)
        assert f.r2 > 0.98 and f.n_sizes == 5 and f.n_points == 10
        assert f.alpha_flat == pytest.approx(0.25, abs=0.01)  # widths grow like √M
        inside_t += f.alpha_ci_t[0] <= a <= f.alpha_ci_t[1]
        inside_b += f.alpha_ci[0] <= a <= f.alpha_ci[1]
    # 120 fits, but the 5 q of one matrix share their noise: about 24 independent draws
    assert inside_t / len(laws.fits) >= 0.75 and inside_b / len(laws.fits) >= 0.75
    tab = laws.alpha_by_q()
    assert tab.shape == (24, 5)
    assert all(t.shared for t in laws.shared) or sum(t.shared for t in laws.shared) >= 20


def test_flagged_runs_are_not_fitted():
    df = synthetic_records([1e6, 4e6, 1.6e7, 6.4e7], layer_types=("q",), n_blocks=2, steps=STEPS, seed=2)
    drifting = df.run_id == "synth-4e+06-s0"
    for col in [c for c in df.columns if c.startswith("s_q")]:
        df.loc[drifting, col] *= 3.0 ** (df.loc[drifting, "step"] / 600)
    laws = fit_laws(df, n_boot=200)
    flagged = laws.stabilization[~laws.stabilization.stable]
    assert set(flagged.run_id) == {"synth-4e+06-s0"} and flagged.reason.str.len().gt(0).all()
    assert all("synth-4e+06-s0" not in f.run_ids and f.n_sizes == 3 for f in laws.fits)
    # with only 3 sizes left, dropping one more leaves groups that cannot be fitted: reported, not fitted
    df2 = df[df.run_id != "synth-1.6e+07-s0"]
    with pytest.raises(FitError, match="3 or more model sizes|could be fitted"):
        fit_laws(df2, n_boot=200)


def test_fit_laws_needs_three_sizes():
    df = synthetic_records([1e6, 4e6], layer_types=("q",), n_blocks=1, steps=STEPS)
    with pytest.raises(FitError, match="3 or more model sizes.*2"):
        fit_laws(df)


def test_laws_json_round_trip(laws, tmp_path):
    path = tmp_path / "laws.json"
    laws.save(path)
    d = json.loads(path.read_text())
    assert d["format"] == "muonscope.laws/1" and len(d["fits"]) == len(laws.fits)
    back = load_laws(path)
    assert back.fits == laws.fits and back.quantiles == laws.quantiles
    assert [t.p_value for t in back.shared] == [t.p_value for t in laws.shared]
    f0, g0 = laws.fits[7], back.fits[7]
    assert f0.predict(7e10) == g0.predict(7e10)
    assert back.stabilization.shape == laws.stabilization.shape
    assert np.allclose(back.stabilization.value, laws.stabilization.value, equal_nan=True)
    assert back.exponent_table().equals(laws.exponent_table())
    (tmp_path / "bad.json").write_text(json.dumps({"format": "something/else"}))
    with pytest.raises(ConfigError, match="not a laws file"):
        load_laws(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="does not exist"):
        load_laws(tmp_path / "missing.json")
