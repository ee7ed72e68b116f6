"""NS planner: choices verified with the exact scalar map; plan JSON consumed by the optimizer."""

import json
import math

import numpy as np
import pytest
from scipy import stats

from muonscope.errors import ConfigError, ScheduleError
from muonscope.laws import fit_laws, make_plan, names_from_records, recipe_table
from muonscope.laws.planner import choose
from muonscope.laws.synthetic import synthetic_records
from muonscope.orth.analysis import composed_map

STEPS = np.arange(10, 601, 10)
TARGETS = (1.2e8, 7e9, 7e10, 1e12)


def _alpha(lt, d):
    return 0.25 if d < 1 else {"q": 0.46, "k": 0.38, "v": 0.58, "o": 0.66, "mlp_up": 0.96, "mlp_down": 0.52}[lt]


@pytest.fixture(scope="module")
def records():
    return synthetic_records([2e6, 8e6, 3.2e7, 1.28e8], alpha=_alpha, steps=STEPS, qs=(0.25, 0.5, 0.9),
                             sigma_step=0.05, sigma_run=0.05, seed=3)


@pytest.fixture(scope="module")
def laws(records):
    return fit_laws(records, n_boot=300)


def min_on(schedule, steps, lo):
    """min of the composed map over [lo, 1] on a dense grid (log and linear)."""
    s = np.unique(np.concatenate([np.geomspace(lo, 1.0, 40001), np.linspace(lo, 1.0, 40001)]))
    return float(composed_map(schedule, steps, s).min())


@pytest.mark.parametrize("target", TARGETS)
def test_choices_lift_the_pessimistic_quantile_and_one_step_less_does_not(laws, target):
    rho = 0.1
    plan = make_plan(laws, target, quantile=0.5, rho=rho)
    assert len(plan.by_depth) == 24 and set(plan.by_type) == {"q", "k", "v", "o", "mlp_up", "mlp_down"}
    table = plan.table()
    assert len(table) == 30 and (table.matmuls == 3 * table.steps).all() and (table.s_low < table.s_pred).all()
    for c in [*plan.by_depth, *plan.by_type.values()]:
        lo = c.prediction.low
        assert c.ell == lo and lo < c.prediction.center < c.prediction.high
        assert min_on(c.schedule, c.steps, lo) >= rho
        assert composed_map(c.schedule, c.steps, lo) >= rho
        # one fewer step of the chosen schedule fails somewhere in [lo, 1]
        assert min_on(c.schedule, c.steps - 1, lo) < rho
        # and no candidate family is cheaper: each fails with fewer steps
        for o in c.options:
            if o.steps is not None:
                assert o.steps >= c.steps
                assert min_on(o.schedule, o.steps, lo) >= rho > min_on(o.schedule, o.steps - 1, lo)
        assert c.matmuls == 3 * c.steps
        if c.schedule.name.startswith("designed-"):
            assert float(c.schedule.name.split("-", 1)[1]) <= lo


def test_prediction_interval_is_the_textbook_one(laws):
    f = laws.get("mlp_up", 1.0, 0.5)
    x, y = np.log(f.sizes), np.log(f.values)
    ref = stats.linregress(x, y)
    n = x.size
    sig = np.sqrt(((y - ref.intercept - ref.slope * x) ** 2).sum() / (n - 2))
    x0 = math.log(7e10)
    half = stats.t.ppf(0.975, n - 2) * sig * math.sqrt(1 + 1 / n + (x0 - x.mean()) ** 2 / ((x - x.mean()) ** 2).sum())
    c = next(c for c in make_plan(laws, 7e10).by_depth if c.layer_type == "mlp_up" and c.rel_depth == 1.0)
    assert math.log(c.prediction.low) == pytest.approx(ref.intercept + ref.slope * x0 - half, rel=1e-9)


def test_steep_late_layers_need_more_and_bigger_models_need_more(laws):
    plans = [make_plan(laws, t) for t in TARGETS]
    for lt in ("q", "mlp_up"):
        steps = [p.by_type[lt].steps for p in plans]
        assert steps == sorted(steps) and steps[-1] > steps[0]
    p = plans[2]
    early = next(c for c in p.by_depth if c.layer_type == "mlp_up" and c.rel_depth == 0.25)
    late = next(c for c in p.by_depth if c.layer_type == "mlp_up" and c.rel_depth == 1.0)
    assert late.steps > early.steps and p.by_type["mlp_up"].worst_depth == 1.0


def test_recipe_table(laws):
    t = recipe_table(laws, TARGETS)
    assert len(t) == 6 * len(TARGETS) and list(t.columns[:2]) == ["target_params", "layer_type"]
    for m in TARGETS:
        sub = t[t.target_params == m].set_index("layer_type")
        plan = make_plan(laws, m)
        assert all(sub.loc[lt, "steps"] == c.steps for lt, c in plan.by_type.items())
    assert len(recipe_table(laws, (7e10,), by_depth=True)) == 30


def test_tie_break_and_family_choice():
    best, opts = choose(3e-3, 0.1)
    assert [o.steps for o in opts] == [3, 3, 3] and best.family == "jordan"
    best, _ = choose(1e-3, 0.1)
    assert best.family == "polar-express" and best.steps == 3  # jordan needs 4 (tau_3 = 2.45e-3)
    best, opts = choose(1e-7, 0.1)
    assert best.family == "designed" and best.steps < opts[0].steps
    best, opts = choose(1.0, 0.1)  # a law predicting s ≥ 1 (tiny target): one step of anything
    assert best.steps == 1 and all(o.steps == 1 for o in opts)
    with pytest.raises(ConfigError, match="not in"):
        choose(float("nan"), 0.1)


def test_params_map_and_plan_json(laws, records):
    run = records[records.run_id == records.run_id.iloc[0]]
    names = names_from_records(run)
    names["blocks.1.q.weight [block 0]"] = ("q", 0.5)
    names["blocks.1.mlp.gate.weight"] = ("mlp_up", 0.6)  # between fitted depths 0.5 and 0.75
    names["lm_router.weight"] = ("other", float("nan"))  # unfitted type → default (most demanding)
    names["stem.q.weight"] = ("q", float("nan"))  # unknown depth → the layer type's worst case
    plan = make_plan(laws, 7e10, names=names)
    d = json.loads(json.dumps(plan.to_dict()))
    assert d["format"] == "muonscope.plan/1" and d["target_params"] == 7e10
    assert d["quantile"] == 0.5 and d["rho"] == 0.1
    assert "blocks.1.q.weight [block 0]" not in d["params"] and "blocks.1.q.weight" in d["params"]
    by_depth = {(c.layer_type, c.rel_depth): c for c in plan.by_depth}
    for name, (lt, depth) in names_from_records(run).items():
        c = by_depth[(lt, round(depth, 3))]
        wider = {"ns_dtype": c.ns_dtype} if c.ns_dtype else {}
        assert d["params"][name] == {"schedule": c.schedule.name, "steps": c.steps, "layer_type": lt, **wider}
    lo, hi = by_depth[("mlp_up", 0.5)], by_depth[("mlp_up", 0.75)]
    worse = lo if lo.ell <= hi.ell else hi
    assert d["params"]["blocks.1.mlp.gate.weight"]["steps"] == worse.steps
    assert d["params"]["stem.q.weight"]["steps"] == plan.by_type["q"].steps
    assert d["params"]["lm_router.weight"] == {**d["default"], "layer_type": "other"}
    assert d["default"]["steps"] == max(c.steps for c in plan.by_type.values())
    for entry in [*d["params"].values(), d["default"], *d["layer_types"].values()]:
        name = entry["schedule"]
        assert name in ("jordan", "polar-express") or name in d["schedules"]
    for key, sd in d["schedules"].items():
        assert sd["name"] == key and len(sd["coefficients"][0]) == 3
    assert set(d["layer_types"]) == set(plan.by_type)


def test_plan_loads_into_the_optimizer(laws, records):
    torch = pytest.importorskip("torch")
    from muonscope.optim import Muon
    from muonscope.optim.plan import load_plan

    run = records[records.run_id == records.run_id.iloc[0]]
    names = names_from_records(run)
    plan = make_plan(laws, 1e12, names=names)
    d = json.loads(json.dumps(plan.to_dict()))
    parsed = load_plan(d)
    for name, c in plan.params.items():
        pp = parsed.for_param(name)
        assert pp.steps == c.steps and pp.schedule.coefficients == c.schedule.coefficients
        assert pp.schedule.safety == c.schedule.safety
    gen = torch.Generator().manual_seed(0)
    params = [(n, torch.nn.Parameter(torch.randn(8, 12, generator=gen))) for n in sorted(names)]
    opt = Muon(params, lr=0.01, plan=d)
    seen = {}

    class Hook:
        def wants_spectrum(self, step):
            return False

        def on_orthogonalize(self, event):
            seen[event.name] = event.orthogonalizer

    opt.register_orth_hook(Hook())
    for _, p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    opt.step()
    assert set(seen) == set(names)
    s = np.geomspace(1e-6, 1, 50)
    for name, orth in seen.items():
        c = plan.params[name]
        assert orth.label == (c.schedule.name, c.steps)
        np.testing.assert_allclose(np.asarray(orth.scalar_map(s)), composed_map(c.schedule, c.steps, s), rtol=1e-12)


def test_planner_errors(laws):
    with pytest.raises(ConfigError, match="no fits for q=0.75"):
        make_plan(laws, 7e10, quantile=0.75)
    with pytest.raises(ConfigError, match="positive"):
        make_plan(laws, -1)
    with pytest.raises(ConfigError, match="rho"):
        make_plan(laws, 7e10, rho=0)
    with pytest.raises(ScheduleError, match="unknown schedule"):
        make_plan(laws, 7e10, families=("jordan", "nope"))
    with pytest.raises(ConfigError, match="one run"):
        names_from_records(synthetic_records([1e6, 2e6], layer_types=("q",), n_blocks=1, steps=STEPS[:3]))


def test_exact_polar_when_no_ns_configuration_lifts(laws, records):
    best, opts = choose(1e-13, 0.1)
    assert best.family == "exact" and all(o.steps is None for o in opts)
    best, _ = choose(1e-9, 0.1, families=("classical",), max_steps=3)
    assert best.family == "exact"
    # A tiny step budget forces exact polar for every layer; the plan says so and Muon obeys it.
    run = records[records.run_id == records.run_id.iloc[0]]
    plan = make_plan(laws, 1e12, max_steps=2, names=names_from_records(run))
    assert all(c.exact and c.matmuls is None for c in plan.by_type.values())
    d = json.loads(json.dumps(plan.to_dict()))
    assert d["default"] == {"orthogonalizer": "exact"}
    assert all(v["orthogonalizer"] == "exact" for v in d["params"].values())
    torch = pytest.importorskip("torch")
    from muonscope.optim import Muon

    name = sorted(d["params"])[0]
    w = torch.nn.Parameter(torch.randn(8, 12, generator=torch.Generator().manual_seed(1)))
    opt = Muon([(name, w)], lr=0.01, plan=d)
    kinds = []

    class Hook:
        def wants_spectrum(self, step):
            return False

        def on_orthogonalize(self, event):
            kinds.append(event.orthogonalizer.kind)

    opt.register_orth_hook(Hook())
    w.grad = torch.randn_like(w)
    opt.step()
    assert kinds == ["exact"]
    assert "exact" in plan.table()["schedule"].tolist()


def test_layers_below_the_runs_resolution_get_a_wider_ns_dtype(laws):
    # bf16 NS lifts nothing below s ≈ 1e-5 however many steps it runs (measured floor 3e-5):
    # a plan that must lift smaller s asks for fp32 (resolves down to 1e-8), fp64 (1e-9) or the
    # exact polar factor for that layer.
    from muonscope.orth.analysis import RESOLUTION_FLOORS

    def wanted(ell, dtype):
        wider = [d for d in ("bfloat16", "float32", "float64") if RESOLUTION_FLOORS[d] <= RESOLUTION_FLOORS[dtype]]
        return next((d for d in wider if ell >= RESOLUTION_FLOORS[d]), "exact")

    for dtype in ("bfloat16", "float32"):
        plan = make_plan(laws, 7e10, ns_dtype=dtype)
        assert plan.to_dict()["ns_dtype"] == dtype
        for c in [*plan.by_depth, *plan.by_type.values()]:
            want = wanted(c.ell, dtype)
            if c.exact:
                assert want == "exact" or c.options and all(o.steps is None for o in c.options) or c.ell < 1e-11
            elif want == dtype:
                assert c.ns_dtype is None and "ns_dtype" not in c.config()
            else:
                assert c.ns_dtype == want and c.config()["ns_dtype"] == want and want in c.label
    marked = [c for c in make_plan(laws, 7e10).by_type.values() if c.ns_dtype]
    assert marked, "the 7e10 plan of these laws predicts s below bf16's floor somewhere"
    small = make_plan(laws, 1e6)  # a small target keeps s above the floor: nothing changes
    assert not any(c.ns_dtype for c in small.by_type.values())
    with pytest.raises(ConfigError, match="resolution floor"):
        make_plan(laws, 7e10, ns_dtype="int8")


def test_statistic_criterion_judges_configurations_in_the_runs_dtype(laws):
    from muonscope.laws.criterion import calibrated
    from muonscope.laws.planner import EXACT, choose_by_statistic

    crit = calibrated()
    # A spectrum with a fifth of its directions at 1e-6: any NS meets the bound in exact arithmetic
    # with enough steps, none in bf16 (floor 3e-5: those directions stay at 0), every one in fp32.
    spectrum = np.concatenate([np.full(80, 1e-2), np.full(20, 1e-6)])
    exact_math, *_ = choose_by_statistic(spectrum, crit, max_steps=16)
    in_bf16, *_ = choose_by_statistic(spectrum, crit, max_steps=16, floor=3e-5)
    in_fp32, *_ = choose_by_statistic(spectrum, crit, max_steps=16, floor=1e-8)
    assert exact_math is not EXACT and in_bf16 is EXACT and in_fp32 == exact_math
    for dtype in ("bfloat16", "float32"):
        plan = make_plan(laws, 7e10, criterion=crit, ns_dtype=dtype)
        wider = {c.ns_dtype for c in plan.by_depth if c.ns_dtype}
        assert dtype not in wider and wider <= {"float32", "float64"}
    assert any(c.ns_dtype for c in make_plan(laws, 7e10, criterion=crit).by_depth)
    assert not any(c.ns_dtype for c in make_plan(laws, 7e10, criterion=crit, ns_dtype="float64").by_depth)
