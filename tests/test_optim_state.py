"""Optimizer state that cannot silently corrupt training: load_state_dict paired by name (or by
position with shape checks) and atomic, duplicate tensors refused, options re-checked at step(),
zero / non-finite updates and huge momenta counted and warned."""

import copy
import warnings

import pytest
import torch
from torch import nn

from muonscope.errors import ConfigError, StateDictMismatchError
from muonscope.optim import Muon, MuonWithAdamW
from muonscope.optim.layout import align_state_dict
from muonscope.orth.orthogonalizers import NewtonSchulz, Orthogonalizer


def _equal(a, b):
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b or (a != a and b != b)


def _params(*shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(s, generator=g)) for s in shapes]


def _grads(params, seed):
    g = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)


def _trained(named, steps=2, **kw):
    opt = Muon(named, lr=0.02, ns_dtype=torch.float32, **kw)
    params = [p for g in opt.param_groups for p in g["params"]]
    for s in range(steps):
        _grads(params, s)
        opt.step()
    return opt


# --- load_state_dict ----------------------------------------------------------------------------
def test_named_state_loads_by_name_in_another_order_and_resumes_identically():
    a, b = _params((6, 8), (6, 8))
    ref = _trained([("a", a), ("b", b)])
    sd = copy.deepcopy(ref.state_dict())
    snap = {"a": a.detach().clone(), "b": b.detach().clone()}
    _grads([a, b], 7)
    ref.step()
    want = {"a": a.detach().clone(), "b": b.detach().clone()}

    a.data.copy_(snap["a"])
    b.data.copy_(snap["b"])
    swapped = Muon([("b", b), ("a", a)], lr=0.5, ns_dtype=torch.float32)  # same shapes, other order
    swapped.load_state_dict(sd)
    assert torch.equal(swapped.state[a]["momentum_buffer"], sd["state"][0]["momentum_buffer"])
    assert torch.equal(swapped.state[b]["momentum_buffer"], sd["state"][1]["momentum_buffer"])
    assert swapped.param_groups[0]["param_names"] == ["b", "a"] and swapped.param_groups[0]["lr"] == 0.02
    _grads([a, b], 7)
    swapped.step()
    torch.testing.assert_close(a, want["a"], rtol=0, atol=0)
    torch.testing.assert_close(b, want["b"], rtol=0, atol=0)


def _bad_layouts():
    """(description, named parameter groups) that do not fit a state saved over groups
    [{a (6, 8), b (6, 8)}, {c (4, 6)}]."""
    a, b, c, d = _params((6, 8), (6, 8), (4, 6), (6, 8), seed=3)
    return [
        ("missing name", [[("a", a), ("b", b)], [("d", c)]]),
        ("extra name", [[("a", a), ("b", b), ("d", d)], [("c", c)]]),
        ("moved group", [[("a", a)], [("b", b), ("c", c)]]),
        ("other shape", [[("a", a), ("b", b)], [("c", nn.Parameter(torch.zeros(6, 4)))]]),
        ("group count", [[("a", a), ("b", b), ("c", c)]]),
    ]


@pytest.mark.parametrize("case", [c for c, _ in _bad_layouts()])
def test_mismatched_layouts_are_refused_and_change_nothing(case):
    a, b, c = _params((6, 8), (6, 8), (4, 6), seed=1)
    saved = _trained([{"params": [("a", a), ("b", b)]}, {"params": [("c", c)]}]).state_dict()
    groups = dict(_bad_layouts())[case]
    opt = _trained([{"params": g} for g in groups], steps=1)
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(StateDictMismatchError) as info:
        opt.load_state_dict(saved)
    assert _equal(opt.state_dict(), before)
    expect = {"missing name": "'d'", "extra name": "'d'", "moved group": "'b'", "other shape": "(4, 6)",
              "group count": "number of parameter groups"}[case]
    assert expect in str(info.value)


def test_unnamed_state_is_paired_by_position_and_other_shapes_refused_at_load():
    a, b = _params((6, 8), (8, 6))
    saved = _trained([a, b]).state_dict()
    assert "param_names" not in saved["param_groups"][0]
    same = Muon(_params((6, 8), (8, 6), seed=5), lr=0.1)
    same.load_state_dict(saved)
    assert same.param_groups[0]["lr"] == 0.02
    flipped = Muon(_params((8, 6), (6, 8), seed=5), lr=0.1)
    with pytest.raises(StateDictMismatchError, match=r"momentum_buffer \(6, 8\), parameter \(8, 6\)"):
        flipped.load_state_dict(saved)
    assert flipped.param_groups[0]["lr"] == 0.1 and not flipped.state
    with pytest.raises(StateDictMismatchError, match="size of optimizer's group"):
        Muon(_params((6, 8)), lr=0.1).load_state_dict(saved)


def test_saved_names_against_an_unnamed_optimizer_pair_by_position():
    a, b = _params((6, 8), (6, 8))
    saved = _trained([("a", a), ("b", b)]).state_dict()
    opt = Muon([b, a], lr=0.1)  # no names here: position decides, as in torch
    opt.load_state_dict(saved)
    assert torch.equal(opt.state[b]["momentum_buffer"], saved["state"][0]["momentum_buffer"])


def test_invalid_saved_options_or_extra_change_nothing():
    a, b = _params((6, 8), (6, 8))
    opt = _trained([("a", a), ("b", b)])
    saved = opt.state_dict()
    before = copy.deepcopy(saved)
    for edit in (lambda sd: sd["param_groups"][0].update(lr=float("inf")),
                 lambda sd: sd["param_groups"][0].update(momentum=1.5),
                 lambda sd: sd["param_groups"][0].update(ns_steps=10**9),
                 lambda sd: sd["param_groups"][0].update(split=5),
                 lambda sd: sd["muonscope"].update(step=-3),
                 lambda sd: sd["muonscope"].update(stats=[1, 2])):
        bad = copy.deepcopy(saved)
        bad["param_groups"][0]["lr"] = 0.3
        edit(bad)
        with pytest.raises(ConfigError):
            opt.load_state_dict(bad)
        assert _equal(opt.state_dict(), before)


def test_a_failing_policy_state_rolls_everything_back():
    class Fragile:
        key = "fragile"

        def select(self, name, step, orth, group):
            return orth

        def wants_spectrum(self, step):
            return False

        def on_orthogonalize(self, event):
            pass

        def state_dict(self):
            return {"n": 1}

        def load_state_dict(self, state):
            if state.get("n") != 1:
                raise ConfigError("bad policy state")

    (a,) = _params((6, 8))
    opt = _trained([("a", a)], policies=[Fragile()])
    before = copy.deepcopy(opt.state_dict())
    bad = copy.deepcopy(before)
    bad["param_groups"][0]["lr"] = 0.5
    bad["muonscope"]["step"] = 99
    bad["muonscope"]["controllers"]["fragile"] = {"n": 2}
    with pytest.raises(ConfigError, match="bad policy state"):
        opt.load_state_dict(bad)
    assert _equal(opt.state_dict(), before)


def test_a_load_pre_hook_may_adapt_the_layout_before_it_is_checked():
    a, b = _params((6, 8), (6, 8))
    saved = _trained([("old.a", a), ("old.b", b)]).state_dict()
    opt = Muon([("new.a", a), ("new.b", b)], lr=0.1)
    with pytest.raises(StateDictMismatchError):
        opt.load_state_dict(saved)

    def rename(optimizer, sd):
        sd = copy.deepcopy(sd)
        for g in sd["param_groups"]:
            g["param_names"] = [n.replace("old.", "new.") for n in g["param_names"]]
        return sd

    opt.register_load_state_dict_pre_hook(rename)
    opt.load_state_dict(saved)
    assert torch.equal(opt.state[a]["momentum_buffer"], saved["state"][0]["momentum_buffer"])
    assert len(opt._optimizer_load_state_dict_pre_hooks) == 1  # the hook stays registered


def test_align_state_dict_leaves_its_input_alone_and_refuses_non_state_dicts():
    a, b = _params((6, 8), (6, 8))
    saved = _trained([("a", a), ("b", b)]).state_dict()
    before = copy.deepcopy(saved)
    out = align_state_dict(saved, [{"params": [b, a], "param_names": ["b", "a"]}])
    assert out["param_groups"][0]["params"] == [1, 0] and _equal(saved, before)
    for bad in ([1, 2], {"state": {}}, {"state": [], "param_groups": []}, {"param_groups": [{"lr": 1}]}):
        with pytest.raises(StateDictMismatchError):
            align_state_dict(bad, [{"params": [a]}])


class _Net(nn.Module):
    def __init__(self, out=3):
        super().__init__()
        self.body = nn.Linear(6, 8)
        self.head = nn.Linear(8, out)

    def forward(self, x):
        return self.head(torch.tanh(self.body(x)))


def _combined(model, steps=2, lr=0.02):
    opt = MuonWithAdamW(model, lr=lr, ns_dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(5, 6, generator=g)).square().mean().backward()
        opt.step()
    return opt


def test_muon_with_adamw_refuses_other_shapes_in_either_part_and_changes_neither():
    torch.manual_seed(0)
    saved = _combined(_Net()).state_dict()
    torch.manual_seed(0)
    other = _Net(out=4)  # the AdamW head differs; Muon's body matches
    opt = _combined(other, steps=1, lr=0.5)
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(StateDictMismatchError, match="head.weight"):
        opt.load_state_dict(saved)
    assert _equal(opt.state_dict(), before)
    former = {"muon": copy.deepcopy(_combined(_Net()).muon.state_dict()),
              "adamw": copy.deepcopy(_combined(_Net()).adamw.state_dict())}
    with pytest.raises(StateDictMismatchError):
        opt.load_state_dict(former)
    assert _equal(opt.state_dict(), before)
    torch.manual_seed(0)
    same = _combined(_Net(), steps=1, lr=0.5)
    same.load_state_dict(saved)
    assert _equal(same.state_dict(), saved)


def test_muon_with_adamw_pairs_by_name():
    torch.manual_seed(0)
    model = _Net()
    saved = _combined(model).state_dict()
    groups = [{"params": [("body.weight", model.body.weight)], "use_muon": True},
              {"params": [("head.bias", model.head.bias), ("head.weight", model.head.weight),
                          ("body.bias", model.body.bias)], "use_muon": False}]
    opt = MuonWithAdamW(groups, lr=0.1, ns_dtype=torch.float32)
    opt.load_state_dict(saved)
    names = saved["param_groups"][1]["param_names"]
    for n, p in (("head.bias", model.head.bias), ("head.weight", model.head.weight)):
        torch.testing.assert_close(opt.adamw.state[p]["exp_avg"], saved["state"][1 + names.index(n)]["exp_avg"],
                                   rtol=0, atol=0)


# --- duplicates ---------------------------------------------------------------------------------
def test_a_tensor_listed_twice_is_refused():
    a, b = _params((6, 8), (4, 4))
    with pytest.raises(ConfigError, match="duplicate parameters"):
        Muon([a, b, a])
    with pytest.raises(ConfigError, match="duplicate parameters.*'x'"):
        Muon([("w", a), ("x", a)])
    with pytest.raises(ConfigError, match="more than one parameter group"):
        Muon([{"params": [a]}, {"params": [b, a]}])
    opt = Muon([a])
    with pytest.raises(ConfigError, match="more than one parameter group"):
        opt.add_param_group({"params": [a]})
    assert len(opt.param_groups) == 1
    bias = nn.Parameter(torch.zeros(4))
    with pytest.raises(ConfigError, match="twice"):
        MuonWithAdamW([{"params": [a], "use_muon": True}, {"params": [a, bias], "use_muon": False}])
    with pytest.raises(ConfigError, match="twice"):
        MuonWithAdamW([{"params": [a], "use_muon": True}, {"params": [bias, bias], "use_muon": False}])
    both = MuonWithAdamW([{"params": [a], "use_muon": True}, {"params": [bias], "use_muon": False}])
    with pytest.raises(ConfigError, match="twice"):
        both.add_param_group({"params": [bias], "use_muon": False})
    with pytest.raises(ConfigError, match="twice"):
        both.add_param_group({"params": [a], "use_muon": False})
    assert len(both.param_groups) == 2


# --- options edited after construction ------------------------------------------------------------
@pytest.mark.parametrize("key, value", [("lr", float("inf")), ("lr", torch.tensor(float("nan"))), ("lr", -1.0),
                                        ("momentum", 1.0), ("weight_decay", float("inf")), ("eps", 0.0),
                                        ("ns_steps", 10**9), ("lr", "0.1"), ("weight_decay", 200.0)])
def test_values_set_on_a_group_later_raise_at_step_before_anything_is_touched(key, value):
    a, b = _params((6, 8), (8, 6))
    opt = _trained([("a", a), ("b", b)], steps=1)
    before = copy.deepcopy(opt.state_dict())
    params = [a.detach().clone(), b.detach().clone()]
    _grads([a, b], 5)
    opt.param_groups[0][key] = value
    with pytest.raises(ConfigError, match=key):
        opt.step()
    opt.param_groups[0][key] = before["param_groups"][0][key]
    assert _equal(opt.state_dict(), before)
    assert torch.equal(a, params[0]) and torch.equal(b, params[1])


@pytest.mark.parametrize("key, value", [("lr", float("inf")), ("betas", (0.9, 1.0)), ("eps", float("nan")),
                                        ("weight_decay", -0.1)])
def test_adamw_values_set_later_raise_before_muon_steps(key, value):
    torch.manual_seed(0)
    model = _Net()
    opt = _combined(model, steps=1)
    before = copy.deepcopy(opt.state_dict())
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    model(torch.randn(5, 6)).sum().backward()
    opt.adamw.param_groups[0][key] = value
    with pytest.raises(ConfigError, match=key):
        opt.step()
    opt.adamw.param_groups[0][key] = before["param_groups"][1][key]
    assert _equal(opt.state_dict(), before)
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())


# --- zero, non-finite and frozen updates ----------------------------------------------------------
class _Broken(Orthogonalizer):
    """Returns ``value`` everywhere: 0 (what an overflowed normalization gives) or NaN."""

    kind = "broken"

    def __init__(self, value):
        self.value = value

    def __call__(self, G, *, want_spectrum=False):
        return torch.full_like(G, self.value), None

    def flops(self, m, n):
        return 0

    def matmuls(self):
        return 0

    def scalar_map(self, s):
        return s * 0


@pytest.mark.parametrize("value, key", [(0.0, "zero_updates"), (float("nan"), "nonfinite_updates")])
def test_zero_and_nonfinite_updates_are_counted_and_warned_once_per_parameter(value, key):
    a, b = _params((6, 8), (4, 4))
    opt = Muon([{"params": [("a", a)], "orthogonalizer": _Broken(value)}, {"params": [("b", b)]}],
               lr=0.02, weight_decay=0.0)
    a0 = a.detach().clone()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for s in range(3):
            _grads([a, b], s)
            opt.step()
    ours = [w for w in caught if issubclass(w.category, RuntimeWarning) and "Muon:" in str(w.message)]
    assert len(ours) == 1 and "'a'" in str(ours[0].message) and "clip" in str(ours[0].message)
    assert opt.stats[key] == 3 and opt.stats["last_" + key] == 1
    assert opt.stats["layers"]["a"][key] == 3 and key not in opt.stats["layers"]["b"]
    assert torch.equal(a, a0)  # nothing applied (and no weight decay here)
    assert torch.isfinite(b).all() and not torch.equal(b, _params((6, 8), (4, 4))[1])


def test_a_zero_gradient_from_zero_momentum_is_not_a_frozen_update():
    (a,) = _params((6, 8))
    opt = Muon([a], lr=0.02)
    a.grad = torch.zeros_like(a)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        opt.step()
    assert opt.stats["zero_updates"] == 0


def test_a_1e38_gradient_leaves_parameters_finite_and_is_either_applied_or_counted():
    torch.manual_seed(0)
    (a,) = _params((16, 12))
    opt = Muon([("a", a)], lr=0.02, ns_dtype=torch.float32)
    g = torch.randn(16, 12)
    g[3, 5] = 1e38
    a.grad = g
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        before = a.detach().clone()
        opt.step()
    assert torch.isfinite(a).all()
    moved = (a - before * (1 - 0.02 * 0.1)).abs().max()
    warned = [w for w in caught if "'a'" in str(w.message)]
    if opt.stats["zero_updates"] or opt.stats["nonfinite_updates"]:
        assert warned and moved == 0
    else:
        assert torch.isfinite(moved) and moved > 0
    assert opt.stats["huge_momentum"] == 1 and warned  # the momentum holds 5e36: counted, warned
    for _ in range(3):  # later ordinary gradients keep the parameter finite
        a.grad = torch.randn(16, 12)
        opt.step()
        assert torch.isfinite(a).all()


def test_ordinary_steps_count_nothing_warn_nothing_and_match_the_reference_update():
    a, b = _params((6, 8), (8, 6))
    opt = Muon([a, b], lr=0.05, weight_decay=0.1, ns_dtype=torch.float32)
    a0 = a.detach().clone()
    _grads([a, b], 0)
    g = a.grad.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        opt.step()
    assert all(opt.stats[k] == 0 for k in ("zero_updates", "nonfinite_updates", "huge_momentum"))
    buf = torch.zeros_like(g).lerp_(g, 1 - 0.95)
    O, _ = NewtonSchulz("jordan", 5, dtype=torch.float32)(g.lerp(buf, 0.95))
    want = a0 * (1 - 0.05 * 0.1) - 0.05 * O  # 6x8: scale √max(1, 6/8) = 1
    torch.testing.assert_close(a.detach(), want, rtol=0, atol=1e-6)  # fp32, batched vs single products
