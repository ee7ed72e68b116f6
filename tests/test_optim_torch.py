"""torch conventions: torch's own optimizer test inputs (optim_db's Muon entry), exact state-dict
round trips, and MuonWithAdamW as one torch optimizer (state/param_groups, defaults, schedulers)."""

import copy
import warnings

import pytest
import torch
from torch import nn

from muonscope.optim import Muon, MuonWithAdamW

cop = pytest.importorskip("torch.testing._internal.common_optimizers")
MUON_INFO = next((o for o in getattr(cop, "optim_db", []) if o.optim_cls.__name__ == "Muon"), None)
pytestmark = pytest.mark.skipif(MUON_INFO is None, reason="this torch has no Muon entry in optim_db")


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(s, generator=g)) for s in ((6, 9), (9, 6), (8, 8))]


def _run(opt_cls, kwargs, steps=4):
    params = _params()
    opt = opt_cls(params, **kwargs)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    return params


@pytest.mark.parametrize("optim_input", MUON_INFO.optim_inputs_func("cpu") if MUON_INFO else [],
                         ids=lambda oi: oi.desc.replace(" ", "_"))
def test_optim_inputs_match_torch_muon(optim_input):
    """Same result as torch.optim.Muon (bf16 NS) on every optim input: bf16 NS on both sides."""
    kwargs = dict(optim_input.kwargs)
    theirs = _run(torch.optim.Muon, kwargs)
    ours = _run(Muon, {**kwargs, "ns_dtype": torch.bfloat16})
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # bit-identical


def _error_inputs():
    out = []
    for ei in MUON_INFO.optim_error_inputs_func("cpu", torch.float32) if MUON_INFO else []:
        if ei.optimizer_error_input.desc == "only support 2D parameters":
            continue  # muonscope reads > 2-D parameters through a matrix view (test_optim_views)
        if ei.optimizer_error_input.desc == "a param group cannot have duplicate parameters":
            continue  # torch warns; muonscope refuses the double update with a ConfigError (test_optim_state)
        out.append(pytest.param(ei, id=ei.optimizer_error_input.desc.replace(" ", "_")))
    return out


@pytest.mark.parametrize("error_input", _error_inputs())
def test_error_inputs_raise_torchs_exceptions(error_input):
    oi = error_input.optimizer_error_input
    on_step = error_input.error_on == cop.OptimizerErrorEnum.STEP_ERROR
    check = (pytest.warns if issubclass(error_input.error_type, Warning) else pytest.raises)(
        error_input.error_type, match=error_input.error_regex)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if on_step:
            opt = Muon(oi.params, **oi.kwargs)
            with check:
                opt.step()
        else:
            with check:
                Muon(oi.params, **oi.kwargs)


def _equal(a, b):
    """Recursive equality of state dicts (tensors by value)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b or (a != a and b != b)  # NaN statistics compare equal


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 8)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.fc2(torch.relu(self.fc1(self.emb(x)))))


def _train(model, opt, steps=3, sched=None):
    g = torch.Generator().manual_seed(2)
    for _ in range(steps):
        x = torch.randint(0, 10, (4, 5), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x).flatten(0, 1), x.flatten()).backward()
        opt.step()
        if sched is not None:
            sched.step()


def test_loaded_state_dict_equals_saved():
    torch.manual_seed(0)
    model = Net()
    opt = MuonWithAdamW(model, lr=0.02)
    _train(model, opt)
    sd = opt.state_dict()
    assert set(sd) == {"state", "param_groups", "muonscope"}
    assert [g["use_muon"] for g in sd["param_groups"]] == [True, False]
    n_muon = len(sd["param_groups"][0]["params"])
    assert sd["param_groups"][1]["params"][0] == n_muon  # AdamW's parameters numbered after Muon's
    assert set(sd["state"]) == set(range(len(list(model.parameters()))))
    opt2 = MuonWithAdamW(model, lr=0.5)
    opt2.load_state_dict(sd)
    assert _equal(opt2.state_dict(), sd)
    assert opt2.param_groups[0]["lr"] == 0.02 and "differentiable" not in opt2.param_groups[0]
    m = Muon([p for p in model.parameters() if p.ndim == 2 and p.shape != (10, 8)])
    _train(model, MuonWithAdamW(model))  # gives m's parameters gradients
    m.step()
    m2 = Muon([p for p in model.parameters() if p.ndim == 2 and p.shape != (10, 8)], lr=0.3)
    m2.load_state_dict(m.state_dict())
    assert _equal(m2.state_dict(), m.state_dict())


def test_former_layout_loads_and_resumes_identically():
    torch.manual_seed(0)
    model = Net()
    opt = MuonWithAdamW(model, lr=0.02)
    _train(model, opt)
    old = copy.deepcopy({"muon": opt.muon.state_dict(), "adamw": opt.adamw.state_dict(),
                         "adamw_stats": dict(opt._adamw_stats)})
    snap = {k: v.detach().clone() for k, v in model.state_dict().items()}
    _train(model, opt)
    want = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(snap)
    opt2 = MuonWithAdamW(model, lr=0.02)
    opt2.load_state_dict(old)
    _train(model, opt2)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, want[k], rtol=0, atol=0)


def test_schedulers_hooks_and_param_groups():
    torch.manual_seed(0)
    model = Net()
    opt = MuonWithAdamW(model, lr=0.02, adamw_lr=1e-3)
    assert opt.defaults["lr"] == 0.02 and opt.defaults["momentum"] == 0.95
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[0.04, 2e-3], total_steps=6)
    calls = []
    opt.register_step_post_hook(lambda o, a, k: calls.append(o is opt))
    _train(model, opt, steps=3, sched=sched)
    assert calls == [True] * 3
    muon_g, adamw_g = opt.param_groups
    assert muon_g["momentum"] != 0.95 and 0.85 <= muon_g["momentum"] <= 0.95  # cycled
    assert muon_g["lr"] == opt.muon.param_groups[0]["lr"] and 0 < muon_g["lr"] <= 0.04
    assert adamw_g["betas"] == (0.9, 0.999)
    transformers = pytest.importorskip("transformers")
    opt = MuonWithAdamW(model, lr=0.02, adamw_lr=1e-3)
    sched = transformers.get_cosine_schedule_with_warmup(opt, num_warmup_steps=2, num_training_steps=6)
    _train(model, opt, steps=4, sched=sched)
    ratio = sched.get_last_lr()[0] / 0.02
    assert abs(opt.param_groups[1]["lr"] / 1e-3 - ratio) < 1e-12 and 0 < ratio < 1
    extra = nn.Linear(4, 4)
    opt.add_param_group({"params": [("extra.weight", extra.weight)], "use_muon": True, "lr": 0.01})
    opt.add_param_group({"params": [("extra.bias", extra.bias)], "use_muon": False})
    assert [g["use_muon"] for g in opt.param_groups] == [True, True, False, False]
    extra.weight.grad = torch.ones(4, 4)
    opt.zero_grad()
    assert extra.weight.grad is None


@pytest.mark.parametrize("fast", [True, False])
def test_out_of_the_box_dtype_follows_the_bf16_probe(monkeypatch, fast):
    """Default ns_dtype: bf16 (torch.optim.Muon's, bit-identical) where bf16 GEMM is fast, else fp32.
    The probe's answer is injected, so the test does not depend on this machine's CPU."""
    from muonscope.orth import matrix_ns

    monkeypatch.delenv(matrix_ns.NS_DTYPE_ENV, raising=False)
    monkeypatch.setattr(matrix_ns, "cpu_bf16_fast", lambda: fast)
    kwargs = dict(lr=0.02, weight_decay=0.1)
    ours, theirs = _run(Muon, kwargs), _run(torch.optim.Muon, kwargs)
    fp32 = _run(Muon, {**kwargs, "ns_dtype": torch.float32})
    for a, b, c in zip(ours, theirs, fp32, strict=True):
        torch.testing.assert_close(a, b if fast else c, rtol=0, atol=0)
    assert not torch.equal(ours[0], fp32[0] if fast else theirs[0])
