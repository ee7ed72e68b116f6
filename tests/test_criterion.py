"""Planner criteria: validation, predicted spectra, and plans checked in float64 independently."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from muonscope.errors import ConfigError
from muonscope.laws.criterion import Criterion, calibrated, quantile_function
from muonscope.laws.io import load_laws
from muonscope.laws.planner import make_plan
from muonscope.orth.analysis import RESOLUTION_FLOORS
from muonscope.orth.schedules import get_schedule

ROOT = Path(__file__).resolve().parents[1]
LAWS = ROOT / "results" / "laws.json"
TEST_CRITERION = Criterion(kind="statistic", statistic="distortion", delta=0.01, absolute=0.06, overshoot_cap=1.25)


@pytest.mark.parametrize("bad", [
    {"kind": "magic"}, {"kind": "statistic", "statistic": "loss"}, {"delta": -0.01}, {"delta": float("nan")},
    {"absolute": float("nan")}, {"absolute": 0}, {"overshoot_cap": 0.9}, {"quantile": 0}, {"rho": 2.0},
    {"colour": "red"}, {"reference": ["jordan"]}, {"reference": ["jordan", 0]}, {"delta": "small"},
])
def test_malformed_criteria_raise_config_error(bad):
    with pytest.raises(ConfigError):
        Criterion.from_dict({"kind": "statistic", **bad} if "kind" not in bad else bad)


def test_criterion_round_trips_through_json():
    d = json.loads(json.dumps(TEST_CRITERION.to_dict()))
    assert Criterion.from_dict(d) == TEST_CRITERION
    assert Criterion.from_dict(Criterion().to_dict()) == Criterion()  # infinite bounds as null


def test_shipped_criterion_is_the_measured_one():
    measured = json.loads((ROOT / "results" / "calibration" / "criterion.json").read_text())
    assert calibrated() == Criterion.from_dict(measured)
    assert calibrated().kind == "statistic"


def test_quantile_function_interpolates_and_extrapolates_the_tail():
    u = np.array([0.1, 0.3, 0.5, 0.9, 0.95, 1.0])
    s = quantile_function([0.1, 0.5, 0.9], [0.2, 0.02, 0.002], u)
    np.testing.assert_allclose(s[[0, 2, 3]], [0.2, 0.02, 0.002])
    assert s[1] == pytest.approx(math.sqrt(0.2 * 0.02))  # log-linear between levels
    assert s[4] == pytest.approx(0.002 * 10 ** (-0.05 / 0.4))  # last slope continued
    assert np.all(np.diff(s) <= 0)
    # predictions that are not monotone in q are made so (a smaller q cannot have a smaller s)
    s2 = quantile_function([0.1, 0.5], [0.01, 0.02], np.array([0.1, 0.5]))
    assert s2[1] <= s2[0]


def compose(coefficients, safety, steps, s):
    """The NS scalar map written from the plan file's numbers alone (no muonscope code)."""
    x = np.asarray(s, dtype=np.float64) / safety
    coeffs = [tuple(c) for c in coefficients]
    for i in range(steps):
        a, b, c = coeffs[min(i, len(coeffs) - 1)]
        if i < len(coeffs) - 1:
            a, b, c = a / safety, b / safety**3, c / safety**5
        x = a * x + b * x**3 + c * x**5
    return x


def _entries(plan_json):
    yield from plan_json["depths"]
    yield from plan_json["layer_types"].values()


@pytest.mark.parametrize("criterion", [TEST_CRITERION, "calibrated"], ids=["test", "calibrated"])
def test_plan_for_7e10_meets_its_criterion_in_float64(criterion, tmp_path):
    crit = calibrated() if criterion == "calibrated" else criterion
    laws = load_laws(LAWS)
    d = json.loads(json.dumps(make_plan(laws, 7e10, criterion=crit).to_dict()))
    assert d["criterion"] == crit.to_dict()
    domain = np.logspace(-12, 0, 20001)
    u = np.linspace(0, 1, 2001)[1:]
    for e in _entries(d):
        if e.get("orthogonalizer") == "exact":
            continue
        name = e["schedule"]
        raw = d["schedules"].get(name) or get_schedule(name).to_dict()
        coeffs, safety = raw["coefficients"], raw.get("safety", 1.0)
        assert compose(coeffs, safety, e["steps"], domain).max() <= crit.overshoot_cap + 1e-12
        # the predicted spectrum, rebuilt from the laws' predictions at this layer type and depth
        fits = [f for f in laws.fits if f.layer_type == e["layer_type"]
                and (math.isclose(f.rel_depth, e["worst_depth"]) if e["worst_depth"] is not None
                     else math.isnan(f.rel_depth))]
        qs = np.array([f.q for f in fits])
        lows = np.array([min(f.predict(7e10, d["level"]).low, 1.0) for f in fits])[np.argsort(qs)]
        qs = np.sort(qs)
        lows = np.minimum.accumulate(lows)
        logs = np.interp(u, qs, np.log(lows))
        slope = (np.log(lows[-1]) - np.log(lows[-2])) / (qs[-1] - qs[-2])
        logs[u > qs[-1]] = np.log(lows[-1]) + slope * (u[u > qs[-1]] - qs[-1])
        s = np.exp(logs)
        # NS in the layer's dtype leaves every s below that dtype's resolution floor unlifted
        floor = RESOLUTION_FLOORS[e.get("ns_dtype") or d["ns_dtype"]]
        s = np.where(s >= floor, s, 0.0)
        D = np.mean((1 - compose(coeffs, safety, e["steps"], s)) ** 2)
        j5 = get_schedule("jordan").to_dict()
        D_ref = np.mean((1 - compose(j5["coefficients"], 1.0, 5, s)) ** 2)
        stat = D if crit.statistic == "distortion" else None
        if stat is None:  # failed share at rho
            stat = np.mean(compose(coeffs, safety, e["steps"], s) < crit.rho)
            D_ref = np.mean(compose(j5["coefficients"], 1.0, 5, s) < crit.rho)
        bound = min(D_ref + crit.delta, crit.absolute)
        assert stat <= bound + 1e-9, (e["layer_type"], e["worst_depth"], name, stat, bound)
        assert e["stat"] == pytest.approx(stat, rel=1e-6, abs=1e-12)


def test_plan_files_embed_every_schedule_they_name_and_load_in_a_fresh_process(tmp_path):
    laws = load_laws(LAWS)
    d = make_plan(laws, 7e10, names={"blocks.0.attn.q.weight": ("q", 0.25)}).to_dict()
    named = {e["schedule"] for e in [*d["depths"], *d["layer_types"].values(), *d["params"].values()]
             if "schedule" in e}
    builtin = {"jordan", "polar-express", "dion5", "classical", "hybrid10"}
    assert named - builtin <= set(d["schedules"])
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(d))
    code = ("import torch, muonscope; p = torch.nn.Parameter(torch.randn(8, 16)); "
            f"opt = muonscope.Muon([('blocks.0.attn.q.weight', p)], plan={str(path)!r}); "
            "p.grad = torch.randn(8, 16); opt.step(); "
            "print(opt.stats['layers']['blocks.0.attn.q.weight']['last_orthogonalizer'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    e = d["params"]["blocks.0.attn.q.weight"]
    assert out == f"{e['schedule']}x{e['steps']}" if "schedule" in e else out.startswith("exact")


def test_lift_quantile_is_the_default_rule_by_name():
    laws = load_laws(LAWS)
    a = make_plan(laws, 7e10).to_dict()
    b = make_plan(laws, 7e10, criterion=Criterion(quantile=0.5, rho=0.1)).to_dict()
    assert a == b and a["criterion"]["kind"] == "lift-quantile"
