"""Parameter routing, the combined Muon+AdamW optimizer, lr schedulers and checkpoint resume."""

import pytest
import torch
from torch import nn

import muonscope
from muonscope.errors import ConfigError
from muonscope.optim import Muon, MuonWithAdamW, load_checkpoint, save_checkpoint, split_params


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.Module()
        self.attn.c_attn, self.attn.c_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Module()
        self.mlp.c_fc, self.mlp.c_proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        h = self.ln_1(x)
        q, k, v = self.attn.c_attn(h).chunk(3, dim=-1)
        att = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
        x = x + self.attn.c_proj(att @ v)
        return x + self.mlp.c_proj(torch.nn.functional.gelu(self.mlp.c_fc(self.ln_2(x))))


class TinyGPT(nn.Module):
    """nanoGPT layout: wte/wpe embeddings, blocks, ln_f, lm_head (tied to wte by default)."""

    def __init__(self, vocab=32, d=16, n_layer=2, ctx=8, tied=True):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab, d), wpe=nn.Embedding(ctx, d),
            h=nn.ModuleList(Block(d) for _ in range(n_layer)), ln_f=nn.LayerNorm(d)))
        self.lm_head = nn.Linear(d, vocab, bias=False)
        if tied:
            self.lm_head.weight = self.transformer.wte.weight

    def forward(self, idx):
        x = self.transformer.wte(idx) + self.transformer.wpe(torch.arange(idx.shape[1]))
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


@pytest.mark.parametrize("tied", [True, False])
def test_nanogpt_routing(tied):
    model = TinyGPT(tied=tied)
    muon, adamw = split_params(model)
    hidden = {f"transformer.h.{i}.{m}.weight" for i in range(2)
              for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    assert {n for n, _ in muon} == hidden
    adam_names = {n for n, _ in adamw}
    assert {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight"} <= adam_names
    assert ("lm_head.weight" in adam_names) == (not tied)
    assert all(p.ndim < 2 for n, p in adamw if "wte" not in n and "wpe" not in n and "lm_head" not in n)
    assert len(muon) + len(adamw) == len(list(model.parameters()))


def test_cnn_routing_and_overrides():
    model = SmallCNN()
    muon, adamw = split_params(model)
    assert [n for n, _ in muon] == ["conv1.weight", "conv2.weight"]
    assert {n for n, _ in adamw} == {"conv1.bias", "bn1.weight", "bn1.bias", "conv2.bias", "bn2.weight",
                                     "bn2.bias", "fc.weight", "fc.bias"}
    muon, adamw = split_params(model, adamw=r"^conv1\.", muon=["fc.weight"])
    assert [n for n, _ in muon] == ["conv2.weight", "fc.weight"]
    model.conv2.weight.requires_grad_(False)
    assert [n for n, _ in split_params(model, muon=lambda n, p: n == "fc.weight").muon] == ["conv1.weight", "fc.weight"]
    with pytest.raises(ConfigError, match="both"):
        split_params(model, muon="fc", adamw="fc")
    with pytest.raises(ConfigError, match=">= 2 dims"):
        split_params(model, muon="bn1.weight")
    assert muonscope.split_params is split_params and muonscope.MuonWithAdamW is MuonWithAdamW


def _batch(step, vocab=32, ctx=8):
    g = torch.Generator().manual_seed(1000 + step)
    idx = torch.randint(0, vocab, (4, ctx + 1), generator=g)
    return idx[:, :-1], idx[:, 1:]


def _make(seed=0):
    torch.manual_seed(seed)
    model = TinyGPT()
    opt = MuonWithAdamW(model, lr=0.02, weight_decay=0.01, adamw_lr=3e-3, adamw_betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1 + 0.1 * step))
    return model, opt, sched


def _train(model, opt, sched, steps, start=0):
    losses = []
    for step in range(start, start + steps):
        x, y = _batch(step)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


def test_combined_optimizer_trains_and_schedules():
    model, opt, sched = _make()
    assert isinstance(opt, torch.optim.Optimizer)
    assert [g["use_muon"] for g in opt.param_groups] == [True, False]
    losses = _train(model, opt, sched, 10)
    assert losses[-1] < losses[0]
    lrs = [g["lr"] for g in opt.param_groups]
    assert lrs == pytest.approx([0.02 / 2.0, 3e-3 / 2.0])
    assert opt.muon.param_groups[0]["lr"] == lrs[0] and opt.adamw.param_groups[0]["lr"] == lrs[1]
    assert opt.stats["steps"] == 10 and len(opt.state) == len(list(model.parameters()))
    model.zero_grad(set_to_none=False)
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_checkpoint_resume_is_bit_identical(tmp_path):
    ref_model, ref_opt, ref_sched = _make()
    _train(ref_model, ref_opt, ref_sched, 20)

    model, opt, sched = _make()
    _train(model, opt, sched, 10)
    save_checkpoint(tmp_path / "ck.pt", model=model, optimizer=opt, scheduler=sched, step=10)
    del model, opt, sched
    model, opt, sched = _make(seed=99)  # fresh objects, different init
    extra = load_checkpoint(tmp_path / "ck.pt", model=model, optimizer=opt, scheduler=sched)
    assert extra == {"step": 10}
    _train(model, opt, sched, 10, start=10)
    for (name, a), b in zip(model.named_parameters(), ref_model.parameters(), strict=True):
        assert torch.equal(a, b), name
    assert opt.muon.stats["steps"] == 20


def test_plain_muon_state_dict_round_trip_and_torch_compat():
    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(6, 9))
    opt = Muon([("w", p)], lr=0.05, schedule="polar-express", ns_dtype=torch.bfloat16)
    p.grad = torch.randn(6, 9)
    opt.step()
    sd = opt.state_dict()
    assert sd["muonscope"]["step"] == 1 and sd["param_groups"][0]["ns_dtype"] == "bfloat16"
    q = nn.Parameter(p.detach().clone())
    opt2 = Muon([("w", q)])
    opt2.load_state_dict(sd)
    assert opt2.param_groups[0]["schedule"] == "polar-express" and opt2._muon_step == 1
    # A torch.optim.Muon checkpoint loads too; options it lacks take our defaults.
    t = torch.optim.Muon([nn.Parameter(torch.randn(6, 9))])
    t.param_groups[0]["params"][0].grad = torch.randn(6, 9)
    t.step()
    opt3 = Muon([nn.Parameter(torch.randn(6, 9))], schedule="dion5")
    opt3.load_state_dict(t.state_dict())
    assert opt3.param_groups[0]["momentum_form"] == "ema" and "momentum_buffer" in next(iter(opt3.state.values()))


def test_groups_input_and_errors():
    model = SmallCNN()
    muon, adamw = split_params(model)
    opt = MuonWithAdamW([{"params": muon, "use_muon": True, "lr": 0.03},
                         {"params": adamw, "use_muon": False, "lr": 1e-3}])
    assert [g["lr"] for g in opt.param_groups] == [0.03, 1e-3]
    with pytest.raises(ConfigError, match="use_muon"):
        MuonWithAdamW([{"params": muon}])
    with pytest.raises(ConfigError, match="no trainable"):
        MuonWithAdamW(nn.Sequential())
    only_adam = MuonWithAdamW(nn.ModuleDict({"head": nn.Linear(3, 1)}))  # AdamW alone works
    assert only_adam.muon is None
    with pytest.raises(ConfigError, match="no Muon"):
        only_adam.register_orth_hook(object())
