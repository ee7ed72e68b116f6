"""Fuzzing the library's public entry points with bad values.

Every case must end in one of two ways: a typed :class:`~muonscope.errors.MuonscopeError` with no
parameter and no optimizer state changed, or success with finite parameters after two steps.
Structural mistakes that torch itself reports (a tensor that is not a leaf, a set of parameters)
may raise torch's documented ``TypeError``/``ValueError`` instead.
"""

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from muonscope.errors import MuonscopeError
from muonscope.optim import Muon, MuonWithAdamW, load_plan, split_params
from muonscope.optim.adaptive import AdaptiveSteps
from muonscope.orth.hybrid import HybridNS

INF, NAN = float("inf"), float("nan")
ODD = [INF, -INF, NAN, -1.0, -1e-300, 0.0, 1.0, 1.5, 1e7, 1e300, 10**30, -(10**9), 10**9, 2**63, True, False,
       None, "0.1", "adaptive", "", "ns", "jordan", [], [1, 2], (0.9,), (0.9, 1.0, 0.5), {}, {"a": 1},
       torch.tensor(INF), torch.tensor(NAN), torch.tensor([0.1, 0.2]), torch.tensor(0.01), complex(1, 1),
       torch.float16, torch.int32, object()]
NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**70), 2**70))
VALUES = st.one_of(NUMBERS, st.sampled_from(ODD), st.text(max_size=6),
                   st.lists(NUMBERS, max_size=4), st.tuples(NUMBERS, NUMBERS))

MUON_OPTIONS = ["lr", "weight_decay", "momentum", "nesterov", "ns_coefficients", "eps", "ns_steps", "adjust_lr_fn",
                "schedule", "orthogonalizer", "momentum_form", "ns_dtype", "split", "plan", "nonfinite",
                "distributed", "target_q", "rho", "max_steps", "policies", "controllers", "views"]
ADAMW_OPTIONS = ["adamw_lr", "adamw_betas", "adamw_eps", "adamw_weight_decay", "nonfinite", "muon_params",
                 "adamw_params"]


def _snapshot(opt, params):
    return copy.deepcopy(opt.state_dict()), [p.detach().clone() for p in params]


def _same(a, b):
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.dtype == b.dtype and (torch.equal(a, b) or bool(torch.isclose(a, b, 0, 0, equal_nan=True).all())))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is type(b) and type(a).__eq__ is object.__eq__:
        return True  # plain objects (deep-copied in the snapshot) compare by type
    return a == b or (a != a and b != b)


def _steps(opt, params, grads, n=2) -> str:
    """Step ``n`` times: 'refused' (typed error, nothing changed) or 'ok' (finite parameters)."""
    for _ in range(n):
        for p, g in zip(params, grads(), strict=True):
            p.grad = g
        sd, before = _snapshot(opt, params)
        try:
            opt.step()
        except MuonscopeError:
            assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True)), "parameters changed"
            assert _same(opt.state_dict(), sd), "optimizer state changed"
            return "refused"
        assert all(torch.isfinite(p).all() for p in params), "non-finite parameters"
    return "ok"


def _matrices(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(s, generator=g)) for s in ((6, 8), (8, 4))]


def _grads(params, seed=1):
    g = torch.Generator().manual_seed(seed)
    return lambda: [torch.randn(p.shape, generator=g) for p in params]


def _drive_muon(**kwargs) -> str:
    params = _matrices()
    before = [p.detach().clone() for p in params]
    try:
        opt = Muon([("a", params[0]), ("b", params[1])], **kwargs)
    except MuonscopeError:
        assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True))
        return "refused"
    return _steps(opt, params, _grads(params))


# --- Muon's constructor ----------------------------------------------------------------------------
@settings(max_examples=220)
@given(option=st.sampled_from(MUON_OPTIONS), value=VALUES)
def test_muon_constructor_with_any_value(option, value):
    _drive_muon(**{option: value})


BAD_MUON = [("lr", INF), ("lr", NAN), ("lr", -1e-3), ("lr", torch.tensor(INF)), ("lr", torch.tensor([0.1, 0.2])),
            ("lr", 1e30), ("lr", "0.02"), ("weight_decay", INF), ("weight_decay", -0.1), ("weight_decay", 1e4),
            ("momentum", 1.0), ("momentum", -0.1), ("momentum", NAN), ("eps", 0.0), ("eps", INF), ("eps", -1e-7),
            ("ns_steps", 0), ("ns_steps", 10**9), ("ns_steps", 2.5), ("ns_steps", True), ("ns_steps", "fast"),
            ("ns_coefficients", (INF, 0, 0)), ("ns_coefficients", (1, 2)), ("ns_coefficients", "abc"),
            ("ns_coefficients", (3.4e38, 0, 0)), ("schedule", {"name": "big", "coefficients": [[1e5, 0, 0]]}),
            ("schedule", {"name": "s", "coefficients": [[3, -3, 1]], "default_steps": INF}),
            ("schedule", {"name": "s", "coefficients": 0.0}), ("schedule", {"name": "s", "coefficients": [[3, -3, 1]],
                                                                           "default_steps": 10**9}),
            ("nesterov", "yes"), ("nesterov", None), ("adjust_lr_fn", "arbitrary"), ("momentum_form", "adam"),
            ("ns_dtype", torch.int32), ("ns_dtype", "floaty"), ("split", 0), ("split", [3, 0]), ("split", 5),
            ("split", True), ("orthogonalizer", "svd"), ("orthogonalizer", [1]), ("schedule", "nope"),
            ("nonfinite", "ignore"), ("distributed", "yes"), ("distributed", torch.tensor([0.1, 0.2])), ("target_q", 0.0), ("target_q", NAN),
            ("rho", 0.0), ("rho", 1.0), ("rho", INF), ("max_steps", 0), ("max_steps", 10**6),
            ("views", ["matrix"]), ("views", {"a": "sideways"}), ("policies", object()), ("policies", [object()]),
            ("plan", {"params": {"a": {"steps": 10**9}}}), ("plan", {"default": {"steps": 0}}),
            ("plan", {"params": {"a": {"orthogonalizer": "nope"}}}), ("plan", 5)]


@pytest.mark.parametrize("option, value", BAD_MUON, ids=[f"{k}={v!r}"[:40] for k, v in BAD_MUON])
def test_muon_refuses_bad_values(option, value):
    with pytest.raises(MuonscopeError):
        Muon(_matrices(), **{option: value})


@pytest.mark.parametrize("option, value", [("lr", torch.tensor(0.01)), ("lr", 0), ("momentum", 0.0),
                                           ("weight_decay", 0), ("ns_steps", 100), ("eps", 1e-30),
                                           ("ns_dtype", "float64"), ("split", 2), ("adjust_lr_fn", "match_rms_adamw")])
def test_muon_accepts_edge_values_and_stays_finite(option, value):
    assert _drive_muon(**{option: value}) == "ok"


# --- values set on a param group after construction ------------------------------------------------
GROUP_KEYS = ["lr", "weight_decay", "momentum", "eps", "ns_steps", "nesterov", "ns_coefficients", "adjust_lr_fn",
              "schedule", "orthogonalizer", "momentum_form", "ns_dtype", "split", "params"]


@settings(max_examples=200)
@given(key=st.sampled_from(GROUP_KEYS), value=VALUES)
def test_step_after_any_group_edit(key, value):
    params = _matrices()
    opt = Muon(params, lr=0.02)
    grads = _grads(params)
    assert _steps(opt, params, grads, n=1) == "ok"
    if key == "params":
        if not isinstance(value, list) or not all(isinstance(v, torch.Tensor) for v in value):
            return  # only tensor lists are meaningful here; torch's own checks cover the rest at add time
        value = [*params, *value]
    opt.param_groups[0][key] = value
    _steps(opt, params, grads)


@pytest.mark.parametrize("key, value", [("lr", INF), ("lr", torch.tensor(NAN)), ("momentum", 1.0),
                                        ("weight_decay", INF), ("eps", 0.0), ("ns_steps", 10**9), ("split", 3),
                                        ("schedule", "nope"), ("orthogonalizer", "svd"), ("ns_dtype", "int8"),
                                        ("momentum_form", "adam"), ("nesterov", "no")])
def test_bad_group_edits_are_refused_at_step_with_nothing_changed(key, value):
    params = _matrices()
    opt = Muon(params, lr=0.02)
    grads = _grads(params)
    _steps(opt, params, grads, n=1)
    opt.param_groups[0][key] = value
    assert _steps(opt, params, grads) == "refused"


def test_a_parameter_appended_twice_later_is_refused_at_step():
    params = _matrices()
    opt = Muon(params, lr=0.02)
    opt.param_groups[0]["params"].append(params[0])
    assert _steps(opt, [*params, params[0]], _grads([*params, params[0]])) == "refused"


# --- MuonWithAdamW and split_params ------------------------------------------------------------------
class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(6, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.body(x)))


def _drive_combined(**kwargs) -> str:
    torch.manual_seed(0)
    model = _Net()
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    try:
        opt = MuonWithAdamW(model, **kwargs)
    except MuonscopeError:
        assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True))
        return "refused"
    return _steps(opt, params, _grads(params))


@settings(max_examples=120)
@given(option=st.sampled_from(ADAMW_OPTIONS + ["lr", "momentum", "weight_decay"]), value=VALUES)
def test_muon_with_adamw_with_any_value(option, value):
    _drive_combined(**{option: value})


BAD_ADAMW = [("adamw_lr", INF), ("adamw_lr", NAN), ("adamw_lr", -1.0), ("adamw_lr", torch.tensor(INF)),
             ("adamw_betas", (0.9, 1.0)), ("adamw_betas", (-0.1, 0.9)), ("adamw_betas", (0.9,)),
             ("adamw_betas", 0.9), ("adamw_betas", (NAN, 0.9)), ("adamw_eps", 0.0), ("adamw_eps", INF),
             ("adamw_weight_decay", INF), ("adamw_weight_decay", -1.0), ("adamw_weight_decay", 1e4),
             ("muon_params", 5), ("adamw_params", "("), ("muon_params", "bias"), ("nonfinite", "warn")]


@pytest.mark.parametrize("option, value", BAD_ADAMW, ids=[f"{k}={v!r}"[:40] for k, v in BAD_ADAMW])
def test_muon_with_adamw_refuses_bad_values(option, value):
    with pytest.raises(MuonscopeError):
        MuonWithAdamW(_Net(), **{option: value})


@settings(max_examples=60)
@given(muon=st.one_of(st.none(), VALUES), adamw=st.one_of(st.none(), VALUES),
       head_names=st.one_of(st.just(("head",)), VALUES))
def test_split_params_with_any_selectors(muon, adamw, head_names):
    try:
        out = split_params(_Net(), muon=muon, adamw=adamw, head_names=head_names)
    except MuonscopeError:
        return
    assert sorted(n for n, _ in out.muon + out.adamw) == sorted(n for n, _ in _Net().named_parameters())
    assert all(p.ndim >= 2 for _, p in out.muon)


@pytest.mark.parametrize("option, value", [("adamw_betas", (0.0, 0)), ("adamw_betas", [0.5, 0.9]),
                                           ("adamw_lr", torch.tensor(1e-3)), ("adamw_weight_decay", 0)])
def test_muon_with_adamw_accepts_edge_values_and_stays_finite(option, value):
    assert _drive_combined(**{option: value}) == "ok"


@pytest.mark.parametrize("model", [None, 5, [nn.Linear(2, 2)], "model"])
def test_split_params_needs_a_module(model):
    with pytest.raises(MuonscopeError):
        split_params(model)


# --- plans ------------------------------------------------------------------------------------------
ENTRY = st.fixed_dictionaries({}, optional={"schedule": st.one_of(st.sampled_from(["jordan", "polar_express", "d"]),
                                                                  VALUES),
                                            "steps": st.one_of(st.integers(-5, 10**10), VALUES),
                                            "orthogonalizer": st.one_of(st.sampled_from(["ns", "exact", "hybrid"]),
                                                                        VALUES)})
SCHEDULE = st.fixed_dictionaries({"coefficients": st.one_of(
    st.lists(st.tuples(NUMBERS, NUMBERS, NUMBERS), min_size=1, max_size=2), VALUES)},
    optional={"default_steps": st.one_of(st.integers(-3, 10**10), VALUES), "safety": VALUES})
PLAN = st.fixed_dictionaries({}, optional={
    "format": st.one_of(st.just("muonscope.plan/1"), VALUES),
    "schedules": st.one_of(st.dictionaries(st.just("d"), SCHEDULE, max_size=1), VALUES),
    "params": st.one_of(st.dictionaries(st.sampled_from(["a", "b", "zz"]), ENTRY, max_size=2), VALUES),
    "default": st.one_of(ENTRY, VALUES)})


@settings(max_examples=150)
@given(plan=PLAN)
def test_plans_load_or_raise_typed_and_never_hang(plan):
    try:
        parsed = load_plan(plan)
    except MuonscopeError:
        return
    assert all(1 <= e.steps <= 100 for e in [*parsed.params.values(), parsed.default] if e is not None)
    _drive_muon(plan=plan)


@pytest.mark.parametrize("plan", [
    {"params": {"a": {"steps": 1_000_000_000}}},
    {"params": {"a": {"steps": 1e9}}},
    {"default": {"schedule": "d"}, "schedules": {"d": {"coefficients": [[3.4, -4.7, 2.0]], "default_steps": 10**9}}},
    {"params": {"a": {"orthogonalizer": "qr"}}},
    {"params": {"a": {"schedule": 7}}},
    {"params": ["a"]},
    {"format": "muonscope.plan/9"},
    {"params": torch.tensor([0.1, 0.2])},
    {"schedules": {"d": {"coefficients": 0.0}}, "default": {"schedule": "d"}},
    {"schedules": {"d": {"coefficients": [[2e4, 0, 0]]}}, "default": {"schedule": "d"}},
    {"schedules": {"d": {"coefficients": [[3, -3, 1]], "default_steps": INF}}},
])
def test_bad_plans_are_refused(plan):
    with pytest.raises(MuonscopeError):
        Muon(_matrices(), plan=plan)


# --- policies and orthogonalizers ---------------------------------------------------------------------
@settings(max_examples=120)
@given(option=st.sampled_from(["target_q", "rho", "max_steps", "min_steps", "every", "margin"]), value=VALUES)
def test_adaptive_steps_with_any_value(option, value):
    try:
        policy = AdaptiveSteps(**{option: value})
    except MuonscopeError:
        return
    params = _matrices()
    _steps(Muon(params, ns_steps="adaptive", policies=[policy]), params, _grads(params))


@settings(max_examples=120)
@given(option=st.sampled_from(["schedule", "steps", "correction", "fraction", "every", "bound", "rho", "dtype",
                               "eps"]), value=VALUES)
def test_hybrid_ns_with_any_value(option, value):
    try:
        orth = HybridNS(**{option: value})
    except MuonscopeError:
        return
    params = _matrices()
    _steps(Muon(params, orthogonalizer=orth), params, _grads(params))


BAD_POLICY = [(AdaptiveSteps, "target_q", 1.5), (AdaptiveSteps, "rho", 2.0), (AdaptiveSteps, "max_steps", 10**7),
              (AdaptiveSteps, "min_steps", 0), (AdaptiveSteps, "every", 0), (AdaptiveSteps, "margin", INF),
              (AdaptiveSteps, "margin", 0.5), (HybridNS, "steps", 10**9), (HybridNS, "fraction", 0.0),
              (HybridNS, "fraction", NAN), (HybridNS, "bound", 1.0), (HybridNS, "rho", INF),
              (HybridNS, "eps", 0.0), (HybridNS, "dtype", torch.int64), (HybridNS, "correction", "top"),
              (HybridNS, "every", 2.0), (HybridNS, "schedule", [3.4e38, 0.0, 0.0])]


@pytest.mark.parametrize("cls, option, value", BAD_POLICY,
                         ids=[f"{c.__name__}.{k}={v!r}"[:40] for c, k, v in BAD_POLICY])
def test_policy_and_orthogonalizer_constructors_refuse_bad_values(cls, option, value):
    with pytest.raises(MuonscopeError):
        cls(**{option: value})


# --- load_state_dict with wrong layouts ----------------------------------------------------------------
def _saved():
    params = _matrices(seed=4)
    opt = Muon([("a", params[0]), ("b", params[1])], lr=0.02)
    _steps(opt, params, _grads(params))
    return opt.state_dict()


LAYOUT_EDITS = {
    "drop a group": lambda sd: sd["param_groups"].pop(),
    "add a group": lambda sd: sd["param_groups"].append(dict(sd["param_groups"][0])),
    "rename": lambda sd: sd["param_groups"][0].update(param_names=["a", "c"]),
    "duplicate name": lambda sd: sd["param_groups"][0].update(param_names=["a", "a"]),
    "drop names, swap ids": lambda sd: (sd["param_groups"][0].pop("param_names"),
                                        sd["param_groups"][0].update(params=[1, 0])),
    "momentum shape": lambda sd: sd["state"][0].update(momentum_buffer=torch.zeros(3, 3)),
    "momentum transposed": lambda sd: sd["state"][1].update(momentum_buffer=sd["state"][1]["momentum_buffer"].T),
    "one param less": lambda sd: (sd["param_groups"][0]["params"].pop(), sd["param_groups"][0].pop("param_names")),
    "lr inf": lambda sd: sd["param_groups"][0].update(lr=INF),
    "momentum 1": lambda sd: sd["param_groups"][0].update(momentum=1.0),
    "split garbage": lambda sd: sd["param_groups"][0].update(split=7),
    "orthogonalizer garbage": lambda sd: sd["param_groups"][0].update(orthogonalizer="nope"),
    "negative step": lambda sd: sd["muonscope"].update(step=-1),
    "groups not a list": lambda sd: sd.update(param_groups={"a": 1}),
    "state not a dict": lambda sd: sd.update(state=[1]),
    "no params key": lambda sd: sd["param_groups"][0].pop("params"),
}


@pytest.mark.parametrize("edit", list(LAYOUT_EDITS))
def test_wrong_layouts_are_refused_and_change_nothing(edit):
    sd = copy.deepcopy(_saved())
    LAYOUT_EDITS[edit](sd)
    params = _matrices(seed=9)
    opt = Muon([("a", params[0]), ("b", params[1])], lr=0.3)
    _steps(opt, params, _grads(params, seed=2), n=1)
    before, weights = _snapshot(opt, params)
    with pytest.raises(MuonscopeError):
        opt.load_state_dict(sd)
    assert _same(opt.state_dict(), before)
    assert all(torch.equal(p, w) for p, w in zip(params, weights, strict=True))
    assert _steps(opt, params, _grads(params)) == "ok"  # still usable


@settings(max_examples=80)
@given(key=st.sampled_from(["lr", "momentum", "weight_decay", "eps", "ns_steps", "split", "schedule", "nesterov",
                            "ns_coefficients", "param_names", "params"]), value=VALUES)
def test_load_state_dict_with_any_group_value(key, value):
    sd = copy.deepcopy(_saved())
    sd["param_groups"][0][key] = value
    params = _matrices(seed=9)
    opt = Muon([("a", params[0]), ("b", params[1])], lr=0.3)
    before, _ = _snapshot(opt, params)
    try:
        opt.load_state_dict(sd)
    except MuonscopeError:
        assert _same(opt.state_dict(), before)
        return
    assert _steps(opt, params, _grads(params)) in ("ok", "refused")

