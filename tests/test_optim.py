"""muonscope.Muon: peer cross-check with torch.optim.Muon, hooks, plans, per-group options."""

import inspect
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import muonscope
from helpers import matrix_with_spectrum
from muonscope.errors import ConfigError
from muonscope.optim import Muon, OrthEvent
from muonscope.orth import analysis as A
from muonscope.orth.matrix_ns import newton_schulz


def _mlp(seed=0):
    torch.manual_seed(seed)
    # Two 32×32 layers (batched together) and a 32×16 / 16×32 pair (batched after transposing).
    return nn.Sequential(nn.Linear(16, 32, bias=False), nn.Tanh(), nn.Linear(32, 32, bias=False), nn.Tanh(),
                         nn.Linear(32, 32, bias=False), nn.Tanh(), nn.Linear(32, 16, bias=False))


def _train(model, opt, steps=20, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(64, 16, generator=g)
        y = torch.randn(64, 16, generator=g)
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def _fp32_torch_ns(monkeypatch):
    """Make torch.optim.Muon run its own NS in fp32: its source with the bf16 cast swapped."""
    import torch.optim._muon as tm

    src = inspect.getsource(tm._zeropower_via_newtonschulz)
    assert "grad.bfloat16()" in src
    ns = {}
    exec(src.replace("grad.bfloat16()", "grad.float()"), tm.__dict__ | {"torch": torch}, ns)  # noqa: S102
    monkeypatch.setattr(tm, "_zeropower_via_newtonschulz", ns["_zeropower_via_newtonschulz"])


CONFIG = dict(lr=0.02, weight_decay=0.1, momentum=0.95, nesterov=True, adjust_lr_fn="original", ns_steps=5)


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_peer_cross_check_with_torch_muon(precision, monkeypatch):
    ours, theirs = _mlp(), _mlp()
    start = [p.detach().clone() for p in theirs.parameters()]
    if precision == "fp32":
        _fp32_torch_ns(monkeypatch)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    _train(ours, Muon(ours.named_parameters(), ns_dtype=dtype, **CONFIG))
    _train(theirs, torch.optim.Muon(theirs.parameters(), **CONFIG))
    # bf16: 8-bit mantissa, so NS outputs differ by ~1e-2 relative where summation orders differ;
    # fp32: only summation order (batched vs single products) differs, ~1e-6 relative.
    tol = 2e-2 if precision == "bf16" else 2e-5
    for a, b, s in zip(ours.parameters(), theirs.parameters(), start, strict=True):
        moved = (b - s).norm()
        assert moved > 0.05
        assert (a - b).norm() <= tol * moved


def test_lazy_package_exports():
    assert muonscope.Muon is Muon
    assert issubclass(Muon, torch.optim.Optimizer)


class Recorder:
    def __init__(self, want=lambda step: True):
        self.want, self.asked, self.events, self.snapshots = want, [], [], []

    def wants_spectrum(self, step):
        self.asked.append(step)
        return self.want(step)

    def on_orthogonalize(self, event):
        self.events.append(event)
        self.snapshots.append((event.param.grad.clone(), event.matrix.clone(), event.momentum.clone()))


def test_hook_events_carry_ns_input_spectrum_and_update(rng):
    model = _mlp()
    opt = Muon(model.named_parameters(), lr=0.01, ns_dtype=torch.float64, momentum=0.9)
    rec = Recorder(want=lambda step: step == 2)
    handle = opt.register_orth_hook(rec)
    _train(model, opt, steps=3)
    assert rec.asked == [1, 2, 3]
    names = [n for n, _ in model.named_parameters()]
    assert [e.name for e in rec.events] == names * 3 or sorted(e.name for e in rec.events) == sorted(names * 3)
    for e, (grad, matrix, momentum) in zip(rec.events, rec.snapshots, strict=True):
        assert isinstance(e, OrthEvent) and e.process_rank == 0
        assert (e.spectrum is not None) == (e.step == 2)
        if e.step == 3:
            assert torch.equal(momentum, opt.state[e.param]["momentum_buffer"])
        # Nesterov input: lerp(G, B, β), seen at the time of the event.
        torch.testing.assert_close(matrix, grad.lerp(momentum, 0.9))
        assert e.update.dtype == torch.float64  # the update comes in the NS compute dtype
        torch.testing.assert_close(e.update.float(), newton_schulz(e.matrix, "jordan", 5, dtype=torch.float64))
        assert e.orthogonalizer.label == ("jordan", 5)
        if e.spectrum is not None:
            sv = torch.linalg.svdvals(e.matrix.double())
            assert e.spectrum.dtype == torch.float64 and e.spectrum.shape == (min(e.matrix.shape),)
            torch.testing.assert_close(e.spectrum, sv / sv.norm(), atol=1e-7, rtol=1e-6)
    handle.remove()
    _train(model, opt, steps=1)
    assert len(rec.events) == 3 * len(names) and rec.asked == [1, 2, 3]


def test_unnamed_params_are_param_i():
    a, b = nn.Parameter(torch.randn(4, 6)), nn.Parameter(torch.randn(5, 3))
    opt = Muon([{"params": [a]}, {"params": [b], "lr": 0.1}])
    assert [n for n, _, _ in opt.named_params()] == ["param0", "param1"]
    rec = Recorder(lambda s: False)
    opt.register_orth_hook(rec)
    a.grad, b.grad = torch.randn(4, 6), torch.randn(5, 3)
    opt.step()
    assert sorted(e.name for e in rec.events) == ["param0", "param1"]


def _single_step_update(opt, p, G):
    """Apply one step with momentum 0, no Nesterov, no decay; return O = −ΔW/lr (scaled)."""
    before = p.detach().clone()
    p.grad = G
    opt.step()
    return (before - p.detach())


@pytest.mark.parametrize("steps", [2, 5])
def test_plan_steps_give_that_scalar_map(steps, rng):
    r = 24
    s = torch.logspace(-3, 0, r, dtype=torch.float64).flip(0)
    s = s / s.norm()
    G, U, V = matrix_with_spectrum(s, r, 40, generator=rng)
    planned = nn.Parameter(torch.zeros(r, 40, dtype=torch.float64))
    other = nn.Parameter(torch.zeros(r, 40, dtype=torch.float64))
    plan = {"format": "muonscope.plan/1", "params": {"blk.q": {"schedule": "jordan", "steps": steps}},
            "default": {"schedule": "polar-express", "steps": 4}}
    opt = Muon([("blk.q", planned), ("blk.k", other)], lr=1.0, momentum=0.0, nesterov=False,
               weight_decay=0.0, ns_dtype=torch.float64, plan=plan)
    other.grad = G.clone()
    O = _single_step_update(opt, planned, G.clone())
    got = torch.diagonal(U.T @ O @ V).numpy()
    np.testing.assert_allclose(got, A.composed_map("jordan", steps, s.numpy()), atol=1e-10)
    O2 = -other.detach()
    np.testing.assert_allclose(torch.diagonal(U.T @ O2 @ V).numpy(),
                               A.composed_map("polar-express", 4, s.numpy()), atol=1e-10)
    labels = {n: opt.orthogonalizer_for(n, g)[0].label for n, _, g in opt.named_params()}
    assert labels == {"blk.q": ("jordan", steps), "blk.k": ("polar-express", 4)}


def test_plan_custom_schedule_and_file(tmp_path):
    import json

    plan = {"format": "muonscope.plan/1", "target_params": 7e10,
            "schedules": {"designed": {"name": "designed", "coefficients": [[3.0, -3.2, 1.2], [2.0, -1.5, 0.5]],
                                       "safety": 1.0, "default_steps": 6}},
            "params": {"w": {"schedule": "designed", "layer_type": "q"}}}
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    opt = Muon([("w", nn.Parameter(torch.randn(8, 8)))], plan=str(path))
    orth, _ = opt.orthogonalizer_for("w", opt.param_groups[0])
    assert orth.label == ("designed", 6)
    bad = [{"format": "other/1"}, {"params": {"w": {"steps": 0}}}, {"params": {"w": {"schedule": "nope"}}},
           {"params": {"w": 5}}, {"schedules": {"d": {"coefficients": [[1, 2]]}}}, [1, 2]]
    for p in bad:
        with pytest.raises(ConfigError):
            Muon([("w", nn.Parameter(torch.randn(8, 8)))], plan=p)
    with pytest.raises(ConfigError, match="not found"):
        Muon([("w", nn.Parameter(torch.randn(8, 8)))], plan=str(tmp_path / "missing.json"))
    with pytest.warns(UserWarning, match="match no Muon parameter"):
        Muon([("w", nn.Parameter(torch.randn(8, 8)))], plan={"params": {"typo": {"steps": 3}}})


def test_per_group_schedule_orthogonalizer_and_lr_adjust(rng):
    G = torch.randn(12, 30, dtype=torch.float64, generator=rng)
    a, b, c = (nn.Parameter(torch.zeros(12, 30, dtype=torch.float64)) for _ in range(3))
    opt = Muon([{"params": [a], "schedule": "classical", "ns_steps": 3},
                {"params": [b], "orthogonalizer": "exact"},
                {"params": [c], "adjust_lr_fn": "match_rms_adamw"}],
               lr=0.5, momentum=0.0, nesterov=False, weight_decay=0.0, ns_dtype=torch.float64)
    for p in (a, b, c):
        p.grad = G.clone()
    opt.step()
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    torch.testing.assert_close(-a.detach() / 0.5, newton_schulz(G, "classical", 3, dtype=torch.float64))
    torch.testing.assert_close(-b.detach() / 0.5, U @ Vh)  # exact polar; 12 ≤ 30 so scale 1
    torch.testing.assert_close(-c.detach() / (0.5 * 0.2 * math.sqrt(30)),
                               newton_schulz(G, "jordan", 5, dtype=torch.float64))


def test_sum_momentum_form_and_decay():
    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(6, 10, dtype=torch.float64))
    w0 = p.detach().clone()
    opt = Muon([p], lr=0.1, weight_decay=0.2, momentum=0.5, nesterov=True, momentum_form="sum",
               ns_dtype=torch.float64)
    g1, g2 = torch.randn(6, 10, dtype=torch.float64), torch.randn(6, 10, dtype=torch.float64)
    p.grad = g1
    opt.step()
    p.grad = g2
    opt.step()
    B1 = g1
    W1 = w0 * (1 - 0.02) - 0.1 * newton_schulz(g1 + 0.5 * B1, dtype=torch.float64)
    B2 = 0.5 * B1 + g2
    W2 = W1 * (1 - 0.02) - 0.1 * newton_schulz(g2 + 0.5 * B2, dtype=torch.float64)
    torch.testing.assert_close(p.detach(), W2)
    torch.testing.assert_close(opt.state[p]["momentum_buffer"], B2)


def test_stats_count_flops_and_matmuls():
    model = _mlp()
    opt = Muon(model.parameters(), ns_steps=3)
    _train(model, opt, steps=2)
    shapes = [p.shape for p in model.parameters()]
    flops = sum(A.ns_flops(m, n, 3) for m, n in shapes)
    assert opt.stats["last_ns_flops"] == flops and opt.stats["ns_flops"] == 2 * flops
    assert opt.stats["last_ns_matmuls"] == 9 * len(shapes) and opt.stats["ns_matmuls"] == 18 * len(shapes)
    assert opt.stats["skipped_nonfinite"] == 0 and opt.stats["steps"] == 2


def test_batched_equals_one_by_one():
    torch.manual_seed(3)
    ps = [nn.Parameter(torch.randn(16, 24)) for _ in range(3)] + [nn.Parameter(torch.randn(24, 16))]
    qs = [nn.Parameter(p.detach().clone()) for p in ps]
    grads = [torch.randn_like(p) for p in ps]
    together = Muon(ps, lr=0.1)
    alone = [Muon([q], lr=0.1) for q in qs]
    for p, q, g in zip(ps, qs, grads, strict=True):
        p.grad, q.grad = g.clone(), g.clone()
    together.step()
    for o in alone:
        o.step()
    for p, q in zip(ps, qs, strict=True):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0)


@settings(max_examples=30, deadline=None)
@given(m=st.integers(1, 12), n=st.integers(1, 12), extra=st.sampled_from([(), (3,), (2, 2)]),
       scale=st.floats(1e-6, 1e6), seed=st.integers(0, 2**31 - 1))
def test_update_is_bounded_and_gradient_scale_invariant(m, n, extra, scale, seed):
    """ΔW = −lr·ratio·NS(G): ‖ΔW‖₂ ≤ lr·ratio·max p (≈1.2024 for 5 Jordan steps), any grad scale."""
    g = torch.Generator().manual_seed(seed)
    G = torch.randn(m, n, *extra, dtype=torch.float64, generator=g)
    deltas = []
    for s in (1.0, scale):
        p = nn.Parameter(torch.zeros(m, n, *extra, dtype=torch.float64))
        opt = Muon([p], lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.0, ns_dtype=torch.float64)
        p.grad = G * s
        opt.step()
        deltas.append(p.detach().reshape(m, -1))
    cols = deltas[0].shape[1]
    bound = 0.1 * math.sqrt(max(1.0, m / cols)) * (A.output_band("jordan", 5, 1e-12).high + 1e-9)
    assert torch.linalg.matrix_norm(deltas[0], ord=2) <= bound
    if G.norm() * scale > 1e-4:  # far above the eps clamp of the normalization
        torch.testing.assert_close(deltas[1], deltas[0], atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("nesterov,form", [(True, "ema"), (False, "sum")])
def test_functional_muon_update_is_the_optimizer_step(nesterov, form):
    """The five-line functional form and the batched optimizer give the same parameters."""
    from muonscope.optim.functional import muon_update
    from muonscope.orth.orthogonalizers import NewtonSchulz

    g = torch.Generator().manual_seed(5)
    w0 = torch.randn(12, 20, generator=g)
    grads = [torch.randn(12, 20, generator=g) for _ in range(3)]
    p = torch.nn.Parameter(w0.clone())
    opt = Muon([p], lr=0.02, weight_decay=0.1, nesterov=nesterov, momentum_form=form, ns_dtype=torch.float32)
    w, buf = w0.clone(), torch.zeros_like(w0)
    orth = NewtonSchulz("jordan", 5, dtype=torch.float32)
    for G in grads:
        p.grad = G.clone()
        opt.step()
        w = w * (1 - 0.02 * 0.1) - 0.02 * muon_update(G, buf, orth, beta=0.95, nesterov=nesterov, form=form)
    torch.testing.assert_close(p.detach(), w, rtol=0, atol=1e-6)


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("hooked", [False, True])
def test_transposed_storage_runs_ns_on_its_own_layout(nesterov, hooked):
    """HF Conv1D-style (in, out) weights: NS runs on the stored layout (NS(Xᵀ) = NS(X)ᵀ), so the
    result equals orthogonalizing the (out, in) matrix; hooks still see (out, in) matrices."""
    g = torch.Generator().manual_seed(3)
    shapes = [(24, 40), (24, 40), (40, 24), (16, 16)]
    raw = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    grads = [[torch.randn(s, generator=g, dtype=torch.float64) for s in shapes] for _ in range(3)]
    conv = [(f"c{i}.weight", nn.Parameter(w.clone())) for i, w in enumerate(raw)]
    lin = [(f"l{i}.weight", nn.Parameter(w.T.clone())) for i, w in enumerate(raw)]
    kw = dict(lr=0.05, ns_dtype=torch.float64, nesterov=nesterov, adjust_lr_fn="original")
    a = Muon(conv, views={r"^c\d\.weight$": "transposed"}, **kw)
    b = Muon(lin, views={r"^l\d\.weight$": "matrix"}, **kw)
    rec = Recorder()
    if hooked:
        a.register_orth_hook(rec)
    for step in grads:
        for (_, p), (_, q), gr in zip(conv, lin, step, strict=True):
            p.grad, q.grad = gr.clone(), gr.T.clone()
        a.step()
        b.step()
    for (_, p), (_, q) in zip(conv, lin, strict=True):
        torch.testing.assert_close(p.detach().T, q.detach(), rtol=0, atol=1e-12)
    for e in rec.events:
        out_features = e.param.shape[1]
        assert e.matrix.shape[0] == out_features and e.update.shape == e.matrix.shape
