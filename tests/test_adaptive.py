"""Adaptive NS steps and hybrid correction in Muon: choices, hysteresis, exactness, accounting."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from helpers import matrix_with_spectrum
from muonscope.errors import ConfigError
from muonscope.experiments.train import TrainConfig, same_run, train
from muonscope.optim import Muon, OrthEvent
from muonscope.optim.adaptive import AdaptiveSteps, HybridControl, spectral_quantile
from muonscope.orth.analysis import composed_map
from muonscope.orth.exact import polar_exact
from muonscope.orth.hybrid import HybridNS
from muonscope.orth.matrix_ns import newton_schulz
from muonscope.orth.orthogonalizers import NewtonSchulz
from muonscope.spectra.store import RunStore

GRID = np.logspace(-7, 0, 200001)


def fewest_steps_by_scalar_map(s_q, rho=0.1, schedule="jordan", max_steps=10):
    """Reference: fewest k whose composed map keeps every s ∈ [s_q, 1] at ≥ ρ (dense grid)."""
    grid = GRID[GRID >= s_q]
    for k in range(1, max_steps + 1):
        if composed_map(schedule, k, grid).min() >= rho:
            return k
    return max_steps


class Recorder:
    def __init__(self):
        self.events = []

    def wants_spectrum(self, step):
        return False

    def on_orthogonalize(self, event):
        self.events.append(event)


@pytest.mark.parametrize("target", [0.2, 0.02, 4e-3, 1.2e-3, 3e-4])
def test_adaptive_choice_matches_scalar_map(target, rng):
    r = 41
    idx = math.ceil(0.5 * r) - 1  # s_q50 sits at descending rank ⌈0.5·r⌉
    s = np.concatenate([np.logspace(0, math.log10(target), idx + 1), target * np.logspace(-0.1, -3, r - idx - 1)])
    s = s / np.linalg.norm(s)
    s_q = s[idx]
    X, U, V = matrix_with_spectrum(s, r, 60, generator=rng, dtype=torch.float32)
    p = nn.Parameter(torch.zeros(r, 60))
    ctl = AdaptiveSteps(target_q=0.5, rho=0.1, max_steps=10, margin=1.0)
    opt = Muon([("w", p)], lr=0.01, ns_steps="adaptive", controllers=[ctl])
    p.grad = X.clone()
    opt.step()
    k = ctl.steps_for("w")
    # s_q comes from the float32 Gram matrix: its eigenvalues s² are accurate to ≈ r·ε₃₂·s_max²
    assert abs(ctl.decisions["w"].s_q ** 2 - s_q**2) <= r * 1.2e-7 * s[0] ** 2
    assert k == fewest_steps_by_scalar_map(s_q)
    # the chosen k lifts every direction at or above s_q to ≥ ρ in the matrix iteration itself
    out = torch.diagonal(U.mT @ newton_schulz(X.double(), "jordan", k, dtype=torch.float64) @ V)
    assert out[: idx + 1].min() >= 0.1
    if k > 1:
        fewer = torch.diagonal(U.mT @ newton_schulz(X.double(), "jordan", k - 1, dtype=torch.float64) @ V)
        assert fewer[: idx + 1].min() < 0.1


def fake_event(name, step, steps, value, r=16):
    m = torch.zeros(r, r)
    return OrthEvent(name=name, param=m, step=step, matrix=m, momentum=m,
                     spectrum=torch.full((r,), float(value), dtype=torch.float64),
                     orthogonalizer=NewtonSchulz("jordan", steps), update=m)


def drive(ctl, values, start=5):
    """Feed sampled s_q values; the next event uses the previous decision. Returns the choices."""
    ctl._managed.add("w")
    steps, out = start, []
    for i, v in enumerate(values):
        ctl.on_orthogonalize(fake_event("w", (i + 1) * ctl.every, steps, v))
        steps = ctl.steps_for("w")
        out.append(steps)
    return out


def test_hysteresis_holds_inside_the_margin():
    ctl = AdaptiveSteps(margin=1.5)
    tau3 = 2.4454e-3  # Jordan: τ_0.1(3); τ_0.1(2) = 8.44e-3, τ_0.1(4) = 7.11e-4
    # s_q oscillates between 0.95·τ3 and 1.4·τ3: one step up to 4, then no flapping back.
    seq = [1.6 * tau3] + [0.95 * tau3, 1.4 * tau3] * 10
    choices = drive(ctl, seq)
    assert choices[0] == 3 and set(choices[1:]) == {4}
    assert ctl.decisions["w"].switches == 1
    # a rise by more than the margin steps down again
    assert drive(ctl, [1.6 * tau3], start=4) == [3]
    # without hysteresis the same sequence flaps on every sample
    flappy = AdaptiveSteps(margin=1.0)
    choices = drive(flappy, seq)
    assert choices[1:] == [4, 3] * 10 and flappy.decisions["w"].switches == 20


def test_steps_up_immediately_and_respects_bounds():
    ctl = AdaptiveSteps(max_steps=6, min_steps=2)
    assert drive(ctl, [0.5]) == [2]  # even 1 step would do: min_steps
    assert drive(ctl, [1e-9], start=2) == [6]  # nothing lifts it: max_steps
    assert AdaptiveSteps().bounds(NewtonSchulz("polar-express").schedule) == (1, 10)


def test_decision_applies_from_the_next_step_and_is_counted(rng):
    p = nn.Parameter(torch.zeros(24, 40))
    rec = Recorder()
    opt = Muon([("w", p)], lr=0.01, ns_steps="adaptive", target_q=0.5)
    opt.register_orth_hook(rec)
    for _ in range(3):
        p.grad = torch.randn(24, 40, generator=rng)
        opt.step()
    k = opt.policies[0].steps_for("w")
    assert [e.orthogonalizer.steps for e in rec.events] == [5, k, k]
    assert opt.stats["layers"]["w"]["last_ns_flops"] == k * (4 * 24 * 24 * 40 + 2 * 24**3)
    assert opt.stats["layers"]["w"]["last_orthogonalizer"] == f"jordanx{k}"


def test_spectral_quantile_uses_descending_rank():
    s = torch.tensor([0.1, 0.5, 0.3, 0.2], dtype=torch.float64)
    assert spectral_quantile(s, 0.5) == 0.3 and spectral_quantile(s, 0.9) == 0.1
    assert spectral_quantile(s, 0.25) == 0.5


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(12, 8, bias=False)   # weight 8×12
        self.b = nn.Linear(8, 16, bias=False)   # weight 16×8 → orthogonalized as 8×16
        self.c = nn.Conv1d(4, 6, 3, bias=False)  # weight 6×4×3 → flattened 6×12


def _grads(model, rng):
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=rng)


def test_accounting_matches_hand_count(rng):
    model = Small()
    opt = Muon(model.named_parameters(), lr=0.01)
    _grads(model, rng)
    opt.step()
    # Jordan x5, 5·(4m²n + 2m³) with m ≤ n: 8×12 → 5·4096 = 20480; 8×16 → 5·5120 = 25600;
    # 6×12 → 5·(1728 + 432) = 10800.
    per = {"a.weight": 20480, "b.weight": 25600, "c.weight": 10800}
    assert {k: v["last_ns_flops"] for k, v in opt.stats["layers"].items()} == per
    assert opt.stats["last_ns_flops"] == 56880 and opt.stats["last_ns_matmuls"] == 45
    _grads(model, rng)
    opt.step()
    assert opt.stats["ns_flops"] == 2 * 56880 and opt.stats["layers"]["a.weight"]["ns_matmuls"] == 30

    # hybrid, corrected on step 1 only (every=10, no bound), bottom ⌈0.25·m⌉ directions:
    # 8×12, b=2: 20480 + Gram 1536 + eigh 4608 + 6·2·8·12 = 1152 + 6·4·12 = 288 + 22·8 = 176 → 28240
    # 8×16, b=2: 25600 + 2048 + 4608 + 1536 + 384 + 176 → 34352
    # 6×12, b=2: 10800 + 864 + 1944 + 864 + 288 + 176 → 14936
    model = Small()
    h = HybridNS("jordan", 5, fraction=0.25, every=10, bound=None)
    opt = Muon(model.named_parameters(), lr=0.01, orthogonalizer=h)
    _grads(model, rng)
    opt.step()
    assert {k: v["last_ns_flops"] for k, v in opt.stats["layers"].items()} == \
        {"a.weight": 28240, "b.weight": 34352, "c.weight": 14936}
    assert opt.stats["last_ns_matmuls"] == 3 * 19
    _grads(model, rng)
    opt.step()
    assert opt.stats["last_ns_flops"] == 56880 and opt.stats["ns_flops"] == 28240 + 34352 + 14936 + 56880


TINY = dict(preset="tiny", steps=3, batch_size=4, corpus_bytes=200_000, monitor_every=1, eval_every=3,
            checkpoint_every=3, eval_batches=1)


def test_training_metrics_carry_the_per_step_cost(tmp_path):
    # tiny preset: 4 blocks, d=32: q, k, v, o are 32×32 (6·32³ = 196608 per NS step), mlp up/down
    # 128×32 and 32×128 (4·32²·128 + 2·32³ = 589824 per step); Jordan x5 → 5·(16·196608 + 8·589824).
    train(TrainConfig(**TINY), tmp_path / "ns", progress=False)
    m = RunStore.open(tmp_path / "ns").metrics()
    assert m[m.name == "ns_flops"].value.tolist() == [5 * (16 * 196608 + 8 * 589824)] * 3
    assert m[m.name == "ns_matmuls"].value.tolist() == [15 * 24] * 3
    train(TrainConfig(**TINY, orthogonalizer="hybrid", hybrid_every=2, hybrid_bound=None), tmp_path / "hy",
          progress=False)
    st = RunStore.open(tmp_path / "hy")
    f = st.metrics()
    flops = f[f.name == "ns_flops"].sort_values("step").value.tolist()
    h = HybridNS(every=2)
    corrected = 16 * h.flops(32, 32) + 8 * h.flops(32, 128)
    assert flops == [corrected, corrected, 5 * (16 * 196608 + 8 * 589824)]  # steps 1 and 2 corrected
    sp = st.spectra()
    assert set(sp[sp.step == 2].ns_schedule) == {"jordan+bottom0.05"}
    assert set(sp[sp.step == 3].ns_schedule) == {"jordan"}
    # per-layer cost in the spectral records
    q2, q3 = sp[(sp.step == 2) & (sp.layer_type == "q")], sp[(sp.step == 3) & (sp.layer_type == "mlp_up")]
    assert (q2.ns_flops == h.flops(32, 32)).all() and (q2.ns_matmuls == 19).all()
    assert (q3.ns_flops == 5 * 589824).all() and (q3.ns_matmuls == 15).all()


def test_hybrid_equals_exact_polar_on_corrected_steps(rng):
    for h in (HybridNS(correction="exact", every=3, bound=None),
              HybridNS(fraction=1.0, every=3, bound=None)):
        p = nn.Parameter(torch.zeros(10, 30))
        rec = Recorder()
        opt = Muon([("w", p)], lr=0.01, orthogonalizer=h)
        opt.register_orth_hook(rec)
        for _ in range(6):
            p.grad = torch.randn(10, 30, generator=rng)
            opt.step()
        for e in rec.events:
            if e.step in (1, 3, 6):
                torch.testing.assert_close(e.update, polar_exact(e.matrix), atol=1e-6, rtol=0)
            else:
                torch.testing.assert_close(e.update, newton_schulz(e.matrix, "jordan", 5), atol=1e-6, rtol=0)
        assert opt.stats["layers"]["w"]["ns_flops"] == 3 * h.flops(10, 30) + 3 * h.bulk.flops(10, 30)


def test_failed_share_bound_triggers_correction_per_matrix(rng):
    # "bad" has directions at 1e-5 (Jordan x5 leaves them below 0.1): corrected every step;
    # "good" has a flat spectrum: corrected on step 1 and every 4th step only.
    s_bad = np.array([0.9, 0.4, 0.17] + [1e-5] * 3)
    Xb, _, _ = matrix_with_spectrum(s_bad, 6, 20, generator=rng, dtype=torch.float32)
    bad, good = nn.Parameter(torch.zeros(6, 20)), nn.Parameter(torch.zeros(6, 20))
    h = HybridNS(fraction=0.5, every=4, bound=0.0)
    opt = Muon([("bad", bad), ("good", good)], lr=0.01, momentum=0.0, orthogonalizer=h)
    rec = Recorder()
    opt.register_orth_hook(rec)
    for _ in range(6):
        bad.grad = Xb.clone()
        good.grad = torch.linalg.qr(torch.randn(20, 6, generator=rng)).Q.mT.contiguous()
        opt.step()
    used = {(e.name, e.step): isinstance(e.orthogonalizer, HybridNS) for e in rec.events}
    assert all(used[("bad", t)] for t in range(1, 7))
    assert [t for t in range(1, 7) if used[("good", t)]] == [1, 4]
    ctl = next(c for c in opt.policies if isinstance(c, HybridControl))
    assert ctl.failed_share["bad"] == pytest.approx(0.5) and ctl.failed_share["good"] == 0.0
    for e in rec.events:
        if e.name == "bad":  # every direction of the corrected update reaches ≥ ρ
            assert torch.linalg.svdvals(e.update.double()).min() > 0.6  # NS band >= 0.68, bottom at 1


def test_controller_state_survives_checkpoints(rng):
    torch.manual_seed(0)
    w0 = torch.randn(16, 24)
    grads = [torch.randn(16, 24, generator=rng) for _ in range(25)]

    def make():
        p = nn.Parameter(w0.clone())
        return p, Muon([("w", p)], lr=0.01, ns_steps="adaptive", max_steps=8)

    p1, o1 = make()
    for g in grads:
        p1.grad = g.clone()
        o1.step()
    p2, o2 = make()
    for g in grads[:12]:
        p2.grad = g.clone()
        o2.step()
    sd = o2.state_dict()
    p3, o3 = make()
    with torch.no_grad():
        p3.copy_(p2)
    o3.load_state_dict(sd)
    assert o3.policies[0].decisions == o2.policies[0].decisions
    for g in grads[12:]:
        p3.grad = g.clone()
        o3.step()
    torch.testing.assert_close(p3, p1, atol=0, rtol=0)


def test_bad_options_raise_config_error():
    p = nn.Parameter(torch.zeros(4, 4))
    with pytest.raises(ConfigError):
        Muon([p], ns_steps="adaptiv")
    with pytest.raises(ConfigError):
        Muon([p], ns_steps="adaptive", target_q=0.0)
    with pytest.raises(ConfigError):
        Muon([p], ns_steps="adaptive", max_steps=0)
    with pytest.raises(ConfigError):
        AdaptiveSteps(margin=0.5)
    with pytest.raises(ConfigError):
        Muon([p]).add_controller(object())
    with pytest.raises(ConfigError):
        TrainConfig(ns_steps="fast").validate()
    with pytest.raises(ConfigError):
        TrainConfig(orthogonalizer="svd").validate()
    with pytest.raises(ConfigError):
        TrainConfig(orthogonalizer="hybrid", hybrid_fraction=2.0).validate()


def test_runs_saved_before_the_new_options_still_continue():
    old = TrainConfig().to_dict()
    for k in ("orthogonalizer", "target_q", "rho", "max_steps", "hybrid_every", "hybrid_bound",
              "hybrid_fraction", "hybrid_correction"):
        old.pop(k)
    assert same_run(old, TrainConfig(steps=900).to_dict())
    assert not same_run(old, TrainConfig(steps=900, orthogonalizer="exact").to_dict())


def test_spectrum_driven_controllers_refuse_distributed_runs(monkeypatch):
    import muonscope.optim.muon as muon_mod

    monkeypatch.setattr(muon_mod.D.DistContext, "detect", staticmethod(lambda group, flag: object()))
    p = nn.Parameter(torch.zeros(4, 6))
    p.grad = torch.ones(4, 6)
    with pytest.raises(ConfigError, match="single-process"):
        Muon([("w", p)], ns_steps="adaptive").step()
    with pytest.raises(ConfigError, match="single-process"):
        Muon([("w", p)], orthogonalizer=HybridNS(bound=0.0)).step()
    assert torch.equal(p, torch.zeros(4, 6))  # nothing was touched


def test_adaptive_group_added_later_keeps_the_constructor_options():
    a, b = nn.Parameter(torch.randn(8, 12)), nn.Parameter(torch.randn(8, 12))
    opt = Muon([a], lr=0.01, target_q=0.9, rho=0.3, max_steps=7)
    assert opt.policies == ()
    opt.add_param_group({"params": [b], "ns_steps": "adaptive"})
    (policy,) = opt.policies
    assert (policy.target_q, policy.rho, policy.max_steps) == (0.9, 0.3, 7)
