"""Muon robustness policies, conv flattening, row-block splits and argument checking."""

import math

import pytest
import torch
from torch import nn

from muonscope.errors import ConfigError, MuonscopeError, NonFiniteError, UnsupportedParamError
from muonscope.optim import Muon, MuonWithAdamW
from muonscope.orth.matrix_ns import newton_schulz


def _params(seed=0):
    torch.manual_seed(seed)
    return [("a", nn.Parameter(torch.randn(8, 12))), ("b", nn.Parameter(torch.randn(12, 8)))]


def _snapshot(opt, params):
    return ([p.detach().clone() for _, p in params],
            {k: v["momentum_buffer"].clone() for k, v in opt.state.items()})


def _unchanged(opt, params, snap):
    values, bufs = snap
    assert all(torch.equal(p, v) for (_, p), v in zip(params, values, strict=True))
    assert {k: v["momentum_buffer"] for k, v in opt.state.items()}.keys() == bufs.keys()
    assert all(torch.equal(opt.state[k]["momentum_buffer"], v) for k, v in bufs.items())


def test_nonfinite_raise_touches_nothing():
    params = _params()
    opt = Muon(params, lr=0.1)
    for bad_step in (0, 1):  # before any state exists, and with momentum in place
        for _, p in params:
            p.grad = torch.randn_like(p)
        if bad_step:
            opt.step()
            for _, p in params:
                p.grad = torch.randn_like(p)
        params[1][1].grad[2, 3] = float("nan")
        snap = _snapshot(opt, params)
        with pytest.raises(NonFiniteError, match="'?b'?") as info:
            opt.step()
        assert "b" in str(info.value) and "nonfinite='skip'" in str(info.value)
        _unchanged(opt, params, snap)
    assert opt.stats["steps"] == 1


def test_nonfinite_skip_leaves_that_parameter_and_momentum():
    params = _params()
    opt = Muon(params, lr=0.1, nonfinite="skip")
    for _, p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    a0, b0 = (p.detach().clone() for _, p in params)
    mb0 = opt.state[params[1][1]]["momentum_buffer"].clone()
    params[0][1].grad = torch.randn_like(a0)
    params[1][1].grad = torch.full_like(b0, float("inf"))
    opt.step()
    assert torch.equal(params[1][1], b0) and torch.equal(opt.state[params[1][1]]["momentum_buffer"], mb0)
    assert not torch.equal(params[0][1], a0) and torch.isfinite(params[0][1]).all()
    assert opt.stats["skipped_nonfinite"] == 1 and opt.stats["last_skipped_nonfinite"] == 1


def test_zero_and_none_gradients():
    params = _params()
    opt = Muon(params, lr=0.1, weight_decay=0.5)
    a, b = params[0][1], params[1][1]
    a0, b0 = a.detach().clone(), b.detach().clone()
    a.grad = torch.zeros_like(a)
    b.grad = None
    opt.step()
    # Zero momentum orthogonalizes to zero (eps clamp): only the decay acts; b is not touched at all.
    torch.testing.assert_close(a.detach(), a0 * (1 - 0.1 * 0.5))
    assert torch.equal(b, b0) and b not in opt.state


def test_refuses_complex_sparse_and_vectors():
    c = nn.Parameter(torch.randn(4, 4, dtype=torch.complex64))
    c.grad = torch.randn_like(c)
    opt = Muon([c])  # as torch.optim.Muon: complex parameters fail when stepping, with a RuntimeError
    with pytest.raises(UnsupportedParamError, match="complex"):
        opt.step()
    assert issubclass(UnsupportedParamError, RuntimeError)
    with pytest.raises(ConfigError, match="sparse"):
        Muon([torch.randn(4, 4).to_sparse().requires_grad_()])
    with pytest.raises(ConfigError, match="AdamW"):
        Muon([nn.Parameter(torch.randn(4))])
    p = nn.Parameter(torch.randn(4, 4))
    opt = Muon([p])
    p.grad = torch.randn(4, 4).to_sparse()
    with pytest.raises(ConfigError, match="sparse gradient"):
        opt.step()


@pytest.mark.parametrize("kwargs", [
    dict(adjust_lr_fn="rms"), dict(momentum_form="adam"), dict(ns_dtype=torch.int32), dict(lr=-1.0),
    dict(nonfinite="ignore"), dict(orthogonalizer="svd-please"), dict(ns_steps=0), dict(split=5),
    dict(split=[4, 3]), dict(ns_coefficients=(1.0, 2.0)), dict(schedule="no-such-schedule"),
])
def test_bad_options_raise_typed_errors(kwargs):
    with pytest.raises(MuonscopeError):
        Muon([nn.Parameter(torch.randn(8, 12))], **kwargs)


def test_conv_kernels_flattened_with_flattened_lr_scale():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 32, 3, bias=False)  # weight (32, 3, 3, 3) → matrix 32×27
    w0 = conv.weight.detach().clone()
    G = torch.randn_like(w0)
    opt = Muon(conv.parameters(), lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.0)
    conv.weight.grad = G.clone()
    opt.step()
    scale = math.sqrt(32 / 27)  # the raw leading shape (32, 3) would give √(32/3)
    expected = w0 - 0.1 * scale * newton_schulz(G.reshape(32, -1)).reshape(w0.shape)
    torch.testing.assert_close(conv.weight.detach(), expected)


def test_channels_last_conv():
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(16, 4, 3, 3).to(memory_format=torch.channels_last))
    w0 = w.detach().clone()
    G = torch.randn(16, 4, 3, 3)
    opt = Muon([w], lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.0)
    w.grad = G.clone()
    opt.step()
    torch.testing.assert_close(w.detach(), w0 - 0.1 * newton_schulz(G.reshape(16, -1)).reshape(w0.shape))


@pytest.mark.parametrize("split", [3, [8, 8, 8]])
def test_fused_qkv_row_blocks(split):
    torch.manual_seed(0)
    d = 8
    qkv = nn.Parameter(torch.randn(3 * d, 2 * d))
    w0 = qkv.detach().clone()
    G = torch.randn_like(w0)
    opt = Muon([("attn.qkv", qkv)], lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.0,
               split=split, adjust_lr_fn="match_rms_adamw")
    names = []
    opt.register_orth_hook(type("H", (), {"wants_spectrum": lambda self, s: True,
                                          "on_orthogonalize": lambda self, e: names.append(e.name)})())
    qkv.grad = G.clone()
    opt.step()
    scale = 0.2 * math.sqrt(2 * d)
    blocks = [newton_schulz(G[i * d:(i + 1) * d]) for i in range(3)]
    torch.testing.assert_close(qkv.detach(), w0 - 0.1 * scale * torch.cat(blocks))
    assert sorted(names) == [f"attn.qkv[block {i}]" for i in range(3)]


def test_combined_optimizer_policies():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 6))
    for policy in ("raise", "skip"):
        opt = MuonWithAdamW(model, lr=0.05, adamw_lr=0.01, nonfinite=policy)
        model(torch.randn(4, 6)).sum().backward()
        opt.step()
        model.zero_grad()
        model(torch.randn(4, 6)).sum().backward()
        model[0].bias.grad[0] = float("nan")  # an AdamW parameter
        before = [p.detach().clone() for p in model.parameters()]
        adam_state = {k: v.clone() for k, v in opt.adamw.state[model[0].bias].items()}
        if policy == "raise":
            with pytest.raises(NonFiniteError, match="0.bias"):
                opt.step()
            assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
        else:
            opt.step()
            assert torch.equal(model[0].bias, before[1])
            assert not torch.equal(model[0].weight, before[0])
            assert opt.stats["adamw_skipped_nonfinite"] == 1
            assert torch.isnan(model[0].bias.grad).any()  # the gradient is given back untouched
        assert all(torch.equal(opt.adamw.state[model[0].bias][k], v) for k, v in adam_state.items())
        model.zero_grad()


def test_empty_matrices_are_harmless():
    p, q = nn.Parameter(torch.empty(0, 3)), nn.Parameter(torch.empty(3, 0))
    r = nn.Parameter(torch.randn(3, 3))
    opt = Muon([p, q, r], lr=0.1)
    p.grad, q.grad, r.grad = torch.empty(0, 3), torch.empty(3, 0), torch.randn(3, 3)
    opt.step()
    assert p.shape == (0, 3) and q.shape == (3, 0) and torch.isfinite(r).all()
