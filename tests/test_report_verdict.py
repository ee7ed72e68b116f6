"""The report's verdict: structural nulls are told apart from failures, predictions meet τ where
the known law says, plans are costed, and the report opens with the answer."""

import math

import numpy as np
import pandas as pd
import pytest

from muonscope.laws.criterion import Criterion
from muonscope.laws.fit import fit_laws
from muonscope.laws.synthetic import synthetic_records
from muonscope.orth.analysis import ns_flops, threshold
from muonscope.report.build import _fmt, build_report
from muonscope.report.verdict import build_verdict, nonnull_failed, structural_nulls
from muonscope.spectra.store import RunStore

TAU = threshold("jordan", 5, 0.1)
SIZES = [1e5, 4e5, 1.6e6]
ALPHA = {"q": 0.25, "mlp_down": 0.5}


def _records(null_col: bool = True) -> pd.DataFrame:
    df = synthetic_records(SIZES, layer_types=("q", "mlp_down"), n_blocks=2, steps=range(10, 401, 10),
                           alpha=lambda t, d: ALPHA[t], sigma_step=0.01, sigma_run=0.005, sigma_q=0.002)
    r = np.minimum(df["rows"], df["cols"])
    down = df["layer_type"] == "mlp_down"
    # mlp_down: one numerically null direction at every step (the LayerNorm all-ones direction), and
    # nothing else failing; q: two real failures per matrix, plus a null direction only at step 10
    df["null_dirs"] = np.where(down, 1, np.where(df["step"] == 10, 1, 0))
    df["s_min"] = np.where(df["null_dirs"] > 0, 3e-9, 2e-5)
    df["frac_failed"] = np.where(down, 1 / r, 2 / r)
    df["ns_schedule"], df["ns_steps"] = "jordan", 5
    if not null_col:
        df = df.drop(columns=["null_dirs"])
    return df


@pytest.fixture(scope="module")
def records():
    return _records()


@pytest.fixture(scope="module")
def laws(records):
    return fit_laws(records, n_boot=200)


def test_structural_nulls_are_the_persistent_ones(records):
    nulls = structural_nulls(records)
    by_type = nulls.groupby("layer_type")["n_null"].agg(["min", "max"])
    assert by_type.loc["mlp_down"].tolist() == [1, 1]  # present at every late step
    assert by_type.loc["q"].tolist() == [0, 0]  # only at step 10: transient, not structural
    assert (nulls.loc[nulls.layer_type == "mlp_down", "s_null"] == 3e-9).all()
    share = nonnull_failed(records, nulls)
    r = np.minimum(records["rows"], records["cols"])
    down = records["layer_type"] == "mlp_down"
    assert np.allclose(share[down], 0.0)
    assert np.allclose(share[~down], 2 / r[~down])


def test_old_stores_without_null_count_fall_back_to_s_min():
    old = _records(null_col=False)
    nulls = structural_nulls(old)
    assert nulls.loc[nulls.layer_type == "mlp_down", "n_null"].eq(1).all()
    assert structural_nulls(old.drop(columns=["s_min"])).empty  # nothing to detect from: no nulls claimed


def test_verdict_now_predictions_and_crossings(records, laws):
    v = build_verdict(records, laws, targets=(1e8, 1e12), criterion=None)
    assert (v.schedule, v.steps, v.recorded) == ("jordan", 5, True) and v.tau == pytest.approx(TAU)
    assert v.now_size == max(SIZES)
    now = v.type_now().set_index("layer_type")
    r_top = records.loc[records.model_params == max(SIZES), ["rows", "cols"]].min(axis=1).min()
    assert now.loc["mlp_down", "failed"] == 0.0
    assert now.loc["q", "per_matrix"] == pytest.approx(2.0) and now.loc["q", "failed"] == pytest.approx(2 / r_top)
    assert v.nulls["layer_type"].tolist() == ["mlp_down"] and "LayerNorm" in v.nulls["explanation"].iloc[0]
    # the known law: s_0.9 = 0.1·(1 − 0.81)·(M/1e6)^−α crosses τ at M* = 1e6·(0.019/τ)^(1/α)
    for lt, a in ALPHA.items():
        truth = 1e6 * (0.1 * 0.19 / TAU) ** (1 / a)
        got = v.crossings[v.crossings.layer_type == lt]["m_star"]
        # fitted α within ~0.01 (noise 1 % per step): M* within a factor 1.5 over these decades
        assert np.all(np.abs(np.log(got / truth)) < math.log(1.5)), (lt, got.tolist(), truth)
    # mlp_down crosses at ~8.5e9: fine at 1e8, fails at 1e12; q (M* ~ 7e13) is fine at both
    assert v.status("mlp_down", 1e8) == "ok" and v.status("mlp_down", 1e12) == "fails"
    assert v.status("q", 1e12) == "ok"
    assert v.failing_at(1e12) == ["mlp_down"]


def test_plans_are_costed_against_the_configured_schedule(records, laws):
    from muonscope.laws.planner import base_name

    crit = Criterion(quantile=0.9, rho=0.1)  # lift s_0.9: more steps where s_0.9 falls
    v = build_verdict(records, laws, targets=(1e8, 1e12), criterion=crit)
    assert set(v.plans) == set(v.sizes) == {max(SIZES), 1e8, 1e12}
    top = records[(records.model_params == max(SIZES))]
    top = top[top.run_id == top.run_id.min()].drop_duplicates("param")
    for m, plan in v.plans.items():
        num = sum(ns_flops(r.rows, r.cols, plan.params[base_name(r.param)].steps) for r in top.itertuples())
        den = sum(ns_flops(r.rows, r.cols, 5) for r in top.itertuples())
        assert v.cost[m] == pytest.approx(num / den)
    assert v.cost[max(SIZES)] < v.cost[1e12]
    # the plan lifts what jordan x5 fails: at 1e12 mlp_down needs more steps than 5
    assert v.plans[1e12].by_type["mlp_down"].steps > 5


def test_number_format_is_uniform():
    assert [_fmt(x) for x in (pd.NA, None, float("nan"), 30904.2, 7979.0, 2.07e-4, 7e10, 1490016, 1.7534)] == \
        ["–", "–", "–", "30,904", "7,979", "2.07e-4", "7e10", "1,490,016", "1.753"]


def test_report_opens_with_the_verdict(records, tmp_path):
    for rid, g in records.groupby("run_id"):
        st = RunStore.create(tmp_path / "sweep" / rid, {"model_params": int(g.model_params.iloc[0]),
                                                        "config": {"optimizer": "muon"}, "status": "complete",
                                                        "param_count_rule": "non-embedding parameters"})
        st.append_spectra(g.to_dict("records"))
        st.close()
    calls = []
    md = build_report([tmp_path / "sweep"], tmp_path / "r.md", fmt="md", targets=(1e8, 1e12),
                      progress=lambda *a: calls.append(a)).read_text()
    heads = [line for line in md.splitlines() if line.startswith("## ")]
    assert heads[0].startswith("## Verdict")
    verdict = md.split("\n## ")[1]
    assert "Numerically null (structural)" in verdict and "mlp_down 1 per matrix" in verdict
    assert "Failing at target sizes" in verdict and "1e12: mlp_down" in verdict
    assert "<NA>" not in md and "e+" not in verdict and "non-embedding parameters (non-embedding" not in md
    done = [c[1] for c in calls]
    assert done == sorted(done) and calls[-1][1] == calls[-1][2]


def test_committed_report_opens_with_the_verdict():
    from pathlib import Path

    md = (Path(__file__).resolve().parents[1] / "results" / "report.md").read_text()
    first = md.split("\n## ")[1]
    assert first.startswith("Verdict")
    head = first.split("\n\n| layer |")[0]  # the bullets above the verdict table
    for lead in ("Failing now", "Numerically null (structural)", "Failing at target sizes", "What to do"):
        assert lead in head
    table = first.split("\n\n| layer |")[1].split("\n\n")[0]
    assert "mlp_down" in table and "NS FLOPs vs jordan×5" in table
