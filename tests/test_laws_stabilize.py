"""Burn-in detection and stabilized values on trajectories with a known transient and plateau."""

import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from muonscope.errors import FitError
from muonscope.laws.stabilize import StabilizeSettings, detect_stabilization, stabilize
from muonscope.laws.synthetic import synthetic_records

STEPS = np.arange(10, 1001, 10)


def relaxing(rng, level=0.01, amp=2.0, tau=60.0, noise=0.05):
    return level * (1 + amp * np.exp(-STEPS / tau)) * np.exp(rng.normal(0, noise, STEPS.size))


def test_laws_never_imports_torch():
    code = ("import sys, muonscope.laws, muonscope.laws.synthetic, muonscope.laws.planner, muonscope.laws.io; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)[:5]")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_burn_in_end_and_plateau_with_interval():
    rng = np.random.default_rng(0)
    # The transient 2·e^(−t/60) falls below the 10% band at t* = 60·ln 20 ≈ 180.
    t_star = 60 * math.log(20)
    burn, covered = [], 0
    for _ in range(60):
        st = detect_stabilization(STEPS, relaxing(rng), rng=rng)
        assert st.stable and st.reason == ""
        burn.append(st.burn_in_step)
        covered += st.ci_low <= 0.01 <= st.ci_high
        assert st.value == pytest.approx(0.01, rel=0.05)
    # the rolling median crosses the band within a window (10 samples = 100 steps) of t*
    assert abs(np.median(burn) - t_star) <= 50 and min(burn) >= t_star - 100 and max(burn) <= t_star + 150
    # 95% block-bootstrap interval: measured coverage ≈ 0.92 (n ≈ 40 settled samples); 60 draws
    assert covered / 60 >= 0.8


def test_noise_free_plateau_is_exact():
    y = 0.02 * (1 + 3 * np.exp(-STEPS / 30.0))
    st = detect_stabilization(STEPS, y)
    assert st.stable
    # value is the geometric mean of the settled half: there e^(−t/30) < 1e-5
    assert st.value == pytest.approx(0.02, rel=1e-4)
    assert st.ci_low <= st.value <= st.ci_high


@pytest.mark.parametrize("total_change", [3.0, 0.25])
def test_drifting_runs_are_flagged(total_change):
    rng = np.random.default_rng(1)
    y = 0.01 * total_change ** (STEPS / STEPS[-1]) * np.exp(rng.normal(0, 0.01, STEPS.size))
    st = detect_stabilization(STEPS, y, rng=rng)
    assert not st.stable
    assert "drifting" in st.reason or "never stabilizes" in st.reason
    assert math.isnan(st.value)


def test_too_few_and_non_positive_samples():
    st = detect_stabilization([1, 2, 3], [0.1, 0.1, 0.1])
    assert not st.stable and "only 3" in st.reason
    y = np.full(STEPS.size, 0.05)
    y[:5] = [0.0, -1.0, np.nan, np.inf, 0.0]
    st = detect_stabilization(STEPS, y)
    assert st.stable and st.n_dropped == 5 and st.value == pytest.approx(0.05)


def test_settings_validated():
    with pytest.raises(FitError, match="rel_tol"):
        StabilizeSettings(rel_tol=0)


def test_stabilize_table_rounds_depth_and_selects_source():
    df = synthetic_records([1e6, 4e6, 1.6e7], layer_types=("q",), n_blocks=3, qs=(0.5,), steps=STEPS)
    df.loc[df.run_id.str.startswith("synth-4e"), "rel_depth"] += 1e-6  # another model's depth grid
    mom = df.assign(source="momentum", s_q50=df.s_q50 * 100)
    out = stabilize(pd.concat([df, mom]), qs=[0.5])
    assert len(out) == 9 and out.stable.all()
    assert sorted(out.rel_depth.unique()) == [0.333, 0.667, 1.0]
    assert (out.value < 0.1).all()  # ns_input preferred over momentum
    out_m = stabilize(pd.concat([df, mom]), qs=[0.5], source="momentum")
    assert np.allclose(out_m.value.to_numpy() / out.value.to_numpy(), 100, rtol=0.05)
    with pytest.raises(FitError, match="source 'nope'"):
        stabilize(df, source="nope")


def test_stabilize_rejects_bad_tables():
    with pytest.raises(FitError, match="model_params"):
        stabilize(pd.DataFrame({"run_id": ["a"], "step": [1], "param": ["p"], "layer_type": ["q"],
                                "rel_depth": [1.0], "s_q50": [0.1]}))
    df = synthetic_records([1e6], layer_types=("q",), n_blocks=1, qs=(0.5,), steps=STEPS)
    with pytest.raises(FitError, match="s_q10"):
        stabilize(df, qs=[0.1])
    with pytest.raises(FitError, match="no spectral records"):
        stabilize(df.iloc[:0])
    nan_size = df.assign(model_params=np.where(df.step > 500, np.nan, df.model_params))
    with pytest.raises(FitError, match="model_params must be a positive"):
        stabilize(nan_size)
    bad = df.copy()
    bad.loc[bad.index[::2], "model_params"] = 7
    with pytest.raises(FitError, match="one run is one model size"):
        stabilize(bad)
