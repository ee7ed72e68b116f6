"""Matrix views on models built from Hugging Face configs: MoE expert stacks (one matrix per
expert), GPT-2 Conv1D ((in, out) storage), routers to AdamW, layer types of every monitored matrix."""

import copy
import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from muonscope.errors import ConfigError, ShapeError
from muonscope.optim import Muon, MuonWithAdamW, split_params
from muonscope.optim.views import MatrixViewWarning, infer_views, matrices, matrix_shape
from muonscope.spectra import SpectralMonitor

transformers = pytest.importorskip("transformers")

D, I, E = 16, 24, 4


def _mixtral():
    cfg = transformers.MixtralConfig(vocab_size=64, hidden_size=D, intermediate_size=I, num_hidden_layers=2,
                                     num_attention_heads=2, num_key_value_heads=1, num_local_experts=E,
                                     num_experts_per_tok=2, max_position_embeddings=32)
    return transformers.MixtralForCausalLM(cfg)


def _qwen2_moe():
    cfg = transformers.Qwen2MoeConfig(vocab_size=64, hidden_size=D, intermediate_size=I, moe_intermediate_size=8,
                                      shared_expert_intermediate_size=12, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, num_experts=E,
                                      num_experts_per_tok=2, max_position_embeddings=32)
    return transformers.Qwen2MoeForCausalLM(cfg)


def _gpt2():
    cfg = transformers.GPT2Config(vocab_size=64, n_embd=D, n_layer=2, n_head=2, n_positions=32,
                                  bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(cfg)


def _backward(model, seed=0, shape=(2, 12)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 64, shape, generator=g)
    model.zero_grad()
    model(x, labels=x).loss.backward()


def _fill_experts(model):
    """HF leaves fused expert stacks uninitialized (torch.empty) until post_init/loading."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "experts." in n and p.ndim == 3:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.mark.parametrize("build", [_mixtral, _qwen2_moe])
def test_expert_stack_update_is_per_expert_muon(build):
    torch.manual_seed(0)
    model = build()
    _fill_experts(model)
    muon, adamw = split_params(model)
    muon_names, adamw_names = {n for n, _ in muon}, {n for n, _ in adamw}
    routers = {n for n in muon_names | adamw_names if n.endswith(("mlp.gate.weight", "shared_expert_gate.weight"))}
    assert routers and routers <= adamw_names  # routers go to AdamW
    stacks = {n: p for n, p in muon if "experts." in n and p.ndim == 3}
    assert len(stacks) == 2 * model.config.num_hidden_layers
    assert set(infer_views(model)) == set(stacks) and set(infer_views(model).values()) == {"experts"}

    opt = MuonWithAdamW(model, lr=0.1, weight_decay=0.0, adamw_lr=0.0)
    _backward(model, shape=(4, 32))  # enough tokens that every expert's gradient has full rank
    before = {n: p.detach().clone() for n, p in stacks.items()}
    grads = {n: p.grad.detach().clone() for n, p in stacks.items()}
    opt.step()
    worst = 0.0
    for n, p in stacks.items():
        delta = before[n] - p.detach()  # = lr · scale · O_e per expert
        for e in range(p.shape[0]):
            alone = nn.Parameter(before[n][e].clone())  # that expert's slice, orthogonalized alone
            alone.grad = grads[n][e].clone()
            Muon([alone], lr=0.1, weight_decay=0.0).step()
            ref = before[n][e] - alone.detach()
            worst = max(worst, float((delta[e] - ref).abs().max() / ref.abs().max()))
            out, inp = p.shape[1], p.shape[2]
            # each expert is near-orthogonal: ‖O_e‖_F ≈ √rank (NS maps singular values into ≈ [0.7, 1.2]),
            # not the ≈ 0.8 a slice of one flattened E × (out·in) matrix gets
            sv = torch.linalg.svdvals(grads[n][e].double())
            rank = int((sv > 1e-3 * sv[0]).sum())
            norm = float(delta[e].norm() / (0.1 * math.sqrt(max(1.0, out / inp))))
            assert 0.7 < norm / math.sqrt(rank) < 1.2
    assert worst < 1e-5, worst  # fp32 NS: batched vs alone differ only by matmul rounding


def test_moe_layer_types_and_expert_index_in_records():
    torch.manual_seed(0)
    model = _mixtral()
    _fill_experts(model)
    opt = MuonWithAdamW(model, lr=0.02)
    mon = SpectralMonitor(opt, every=1)
    _backward(model)
    opt.step()
    recs = {r["param"]: r for r in mon.records}
    assert len(recs) == 2 * (4 + 2 * E)  # q, k, v, o and 2 stacks of E experts per block
    for name, r in recs.items():
        if "experts.gate_up_proj" in name:
            assert (r["layer_type"], r["rows"], r["cols"]) == ("mlp_up", 2 * I, D)
        elif "experts.down_proj" in name:
            assert (r["layer_type"], r["rows"], r["cols"]) == ("mlp_down", D, I)
        else:
            assert r["layer_type"] == name.split("self_attn.")[1][0] and r["expert"] is None
            continue
        assert name.endswith(f"[expert {r['expert']}]") and 0 <= r["expert"] < E
    assert {r["expert"] for r in recs.values() if r["expert"] is not None} == set(range(E))
    assert not any("gate.weight" in n for n in recs)  # the router is AdamW's


class ListExperts(nn.Module):
    """DeepSeek/older-Mixtral layout: a router ``gate`` and an ``experts`` ModuleList of MLPs."""

    def __init__(self):
        super().__init__()
        self.mlp = nn.Module()
        self.mlp.gate = nn.Linear(D, E, bias=False)
        self.mlp.experts = nn.ModuleList(nn.ModuleDict(dict(w1=nn.Linear(D, I), w2=nn.Linear(I, D)))
                                         for _ in range(E))


def test_module_list_experts_route_and_classify():
    model = ListExperts()
    muon, adamw = split_params(model)
    assert "mlp.gate.weight" in {n for n, _ in adamw}
    opt = Muon(muon, lr=0.02)
    mon = SpectralMonitor(opt, every=1)
    for _, p in muon:
        p.grad = torch.randn_like(p)
    opt.step()
    got = {(r["layer_type"], r["expert"]) for r in mon.records}
    assert got == {(t, e) for t in ("mlp_up", "mlp_down") for e in range(E)}


def _as_linear(model):
    """The same model with every HF Conv1D replaced by an equivalent nn.Linear (weight transposed)."""
    lin_model = copy.deepcopy(model)
    for name, mod in list(lin_model.named_modules()):
        if type(mod).__name__ == "Conv1D":
            parent, _, attr = name.rpartition(".")
            lin = nn.Linear(mod.nx, mod.nf)
            with torch.no_grad():
                lin.weight.copy_(mod.weight.T)
                lin.bias.copy_(mod.bias)
            setattr(lin_model.get_submodule(parent), attr, lin)
    return lin_model


def _gpt2_groups(model):
    muon, adamw = split_params(model)
    qkv = [(n, p) for n, p in muon if n.endswith("c_attn.weight")]
    rest = [(n, p) for n, p in muon if not n.endswith("c_attn.weight")]
    return [{"params": qkv, "use_muon": True, "split": [D, D, D]}, {"params": rest, "use_muon": True},
            {"params": adamw, "use_muon": False}]


def test_gpt2_conv1d_equals_linear_model():
    torch.manual_seed(0)
    conv = _gpt2()
    lin = _as_linear(conv)
    views = infer_views(conv)
    assert set(views) == {f"transformer.h.{i}.{m}.weight" for i in range(2)
                          for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    assert set(views.values()) == {"transposed"} and not infer_views(lin)
    opts = [MuonWithAdamW(_gpt2_groups(m), lr=0.05, weight_decay=0.0, adamw_lr=0.0, views=infer_views(m))
            for m in (conv, lin)]
    mons = [SpectralMonitor(o, every=1) for o in opts]
    before = [{n: p.detach().clone() for n, p in m.named_parameters()} for m in (conv, lin)]
    for m, o in zip((conv, lin), opts, strict=True):
        _backward(m)
        o.step()
    worst = 0.0
    for n, W in conv.named_parameters():
        if n not in views:
            continue
        dc = before[0][n] - W.detach()
        dl = before[1][n] - lin.get_parameter(n).detach()
        worst = max(worst, float((dc - dl.T).abs().max() / dl.abs().max()))
    assert worst < 1e-5, worst  # same math (measured: bit-identical); addmm vs linear may round differently
    # lr scale on (out, in): c_fc (4d × d) gets √4 = 2, c_proj (d × 4d) gets 1
    for n, scale in (("transformer.h.0.mlp.c_fc.weight", 2.0), ("transformer.h.0.mlp.c_proj.weight", 1.0)):
        O = (before[0][n] - conv.get_parameter(n).detach()) / 0.05
        assert abs(float(O.norm()) / (scale * math.sqrt(D)) - 1) < 0.3
    rc, rl = ({r["param"]: r for r in mon.records} for mon in mons)
    assert rc.keys() == rl.keys()
    for name, r in rc.items():
        assert (r["layer_type"], r["rows"], r["cols"]) == (rl[name]["layer_type"], rl[name]["rows"], rl[name]["cols"])
        want = {"c_attn": "qkv", "attn.c_proj": "o", "c_fc": "mlp_up", "mlp.c_proj": "mlp_down"}
        assert r["layer_type"] == next(t for k, t in want.items() if k in name)
        if "c_attn" in name:
            assert name.endswith(("[block 0]", "[block 1]", "[block 2]")) and (r["rows"], r["cols"]) == (D, D)
        if "c_fc" in name:
            assert (r["rows"], r["cols"]) == (4 * D, D)


def test_undeclared_3d_warns_declared_does_not():
    p = nn.Parameter(torch.randn(3, 5, 4))
    with pytest.warns(MatrixViewWarning, match="views="):
        Muon([("blob", p)])
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt = Muon([("blob", p)], views={"blob": "experts"})
        Muon([("blob", p)], views={"bl.b": "flatten"})  # regexes match too
    p.grad = torch.randn_like(p)
    w0 = p.detach().clone()
    opt.step()
    assert matrix_shape("experts", p.shape) == (3, 5, 4)
    for e in range(3):  # every expert moved by an orthogonal-ish matrix of its own
        d = w0[e] - p.detach()[e]
        assert abs(float(d.norm()) / (1e-3 * math.sqrt(4)) - 1) < 0.3
    with pytest.raises(ConfigError, match="matrix view"):
        Muon([("blob", p)], views={"blob": "stack"})
    with pytest.raises(ShapeError, match="experts_t"):
        Muon([("w", nn.Parameter(torch.randn(4, 4)))], views={"w": "experts_t"})


def test_views_share_storage_and_transposed_split_is_columns():
    W = torch.arange(24.0).reshape(4, 6)  # (in, out) storage
    M = matrices(W, "transposed")
    assert M.shape == (1, 6, 4) and M.data_ptr() == W.data_ptr()
    p = nn.Parameter(W.clone())
    p.grad = torch.zeros_like(p)
    p.grad[:, :3] = torch.randn(4, 3)  # only output features 0..2 (columns) get a gradient
    opt = Muon([("c_attn.weight", p)], split=[3, 3], views={"c_attn.weight": "transposed"}, weight_decay=0.0)
    opt.step()
    assert torch.equal(p.detach()[:, 3:], W[:, 3:])  # block 1 (columns 3..5) untouched
    assert not torch.equal(p.detach()[:, :3], W[:, :3])
    with pytest.raises(ConfigError, match="out features"):
        Muon([("c_attn.weight", p)], split=[2, 2], views={"c_attn.weight": "transposed"})


def test_compiled_model_names_are_canonical():
    model = torch.compile(_gpt2())  # compilation is lazy: nothing is traced here
    muon, adamw = split_params(model)
    assert all("_orig_mod" not in n for n, _ in muon + adamw)
    opt = MuonWithAdamW(model, lr=0.02)
    assert all("_orig_mod" not in n for n, _, _ in opt.muon.named_params())
    assert set(opt.muon.views) == set(infer_views(_gpt2()))


def test_optim_is_an_attribute_without_import():
    code = "import muonscope; print(muonscope.optim.Muon.__name__, muonscope.spectra.SpectralMonitor.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["Muon", "SpectralMonitor"]
