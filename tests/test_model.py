"""Tiny-GPT family: names, parameter counts, presets, init, forward against a manual reference."""

import math

import pytest
import torch
import torch.nn.functional as F

from muonscope.errors import ConfigError, ShapeError
from muonscope.experiments.data import load_corpus
from muonscope.experiments.model import (
    DEPTH_PRESETS,
    GPT,
    GPU_PRESETS,
    PRESETS,
    SWEEP_PRESETS,
    GPTConfig,
    get_preset,
)

TINY = PRESETS["tiny"]


def test_layer_names_exact():
    model = GPT(GPTConfig(n_layer=4, n_head=2, d_model=16, block_size=8))
    names = {n for n, _ in model.named_parameters()}
    expected = {"wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias", "lm_head.weight"}
    for i in range(4):
        expected |= {f"blocks.{i}.attn.{p}.weight" for p in "qkvo"}
        expected |= {f"blocks.{i}.mlp.up.weight", f"blocks.{i}.mlp.down.weight"}
        expected |= {f"blocks.{i}.ln_{j}.{w}" for j in (1, 2) for w in ("weight", "bias")}
    assert names == expected
    assert model.get_submodule("blocks.2.attn.q").bias is None
    assert model.get_submodule("blocks.2.mlp.up").weight.shape == (64, 16)
    assert model.get_submodule("blocks.2.mlp.down").weight.shape == (16, 64)
    assert model.lm_head.weight.data_ptr() != model.wte.weight.data_ptr()  # untied


@pytest.mark.parametrize("name", list(PRESETS))
def test_param_counts(name):
    cfg = PRESETS[name]
    model = GPT(cfg)
    d, L, V = cfg.d_model, cfg.n_layer, cfg.vocab_size
    by_hand = sum(p.numel() for n, p in model.named_parameters() if not n.startswith(("wte", "wpe", "lm_head")))
    assert model.non_embedding_params() == by_hand == L * (12 * d * d + 4 * d) + 2 * d
    assert model.non_embedding_params() == cfg.non_embedding_params
    assert model.total_params() == by_hand + 2 * V * d + cfg.block_size * d
    assert model.total_params() == cfg.non_embedding_params + cfg.embedding_params


def test_presets_span_and_rule():
    sizes = [PRESETS[n].non_embedding_params for n in SWEEP_PRESETS]
    assert len(SWEEP_PRESETS) >= 6
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)
    assert sizes[-1] / sizes[0] >= 30
    for n in PRESETS:
        cfg = PRESETS[n]
        assert cfg.d_model // cfg.n_head == 16  # documented head rule
        assert cfg.n_layer == 4 or n not in SWEEP_PRESETS  # width family: fixed depth
    # depth + width family: n_layer 4 … 16 (relative depths 1/4 … 1 exist), d ∝ n_layer^0.5
    depths = [PRESETS[n] for n in DEPTH_PRESETS]
    assert [c.n_layer for c in depths] == [4, 8, 12, 16]
    for c in depths:
        assert c.d_model == pytest.approx(48 * math.sqrt(c.n_layer / 4), rel=0.1)  # d a multiple of 16
    assert PRESETS[GPU_PRESETS[-1]].non_embedding_params >= 30e6
    # d ∝ √M: the matrix rank r = d scales like M^0.5 within 1% (LayerNorm terms are tiny).
    for n in SWEEP_PRESETS:
        cfg = PRESETS[n]
        assert cfg.d_model == pytest.approx(math.sqrt(cfg.non_embedding_params / 48), rel=0.01)


def test_get_preset_errors():
    assert get_preset("d64") is PRESETS["d64"]
    with pytest.raises(ConfigError) as err:
        get_preset("huge")
    assert "tiny" in str(err.value) and "d288" in str(err.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(n_layer=3, n_head=2, d_model=16, block_size=8),
        dict(n_layer=4, n_head=3, d_model=16, block_size=8),
        dict(n_layer=4, n_head=2, d_model=0, block_size=8),
        dict(n_layer=4, n_head=2, d_model=16, block_size=8, dropout=1.5),
        dict(n_layer=4.0, n_head=2, d_model=16, block_size=8),
    ],
)
def test_bad_config(kwargs):
    with pytest.raises(ConfigError):
        GPTConfig(**kwargs)


def test_config_round_trip():
    assert GPTConfig.from_dict(TINY.to_dict()) == TINY
    with pytest.raises(ConfigError):
        GPTConfig.from_dict({"n_layer": 4})


def test_init_deterministic_and_leaves_global_rng():
    torch.manual_seed(7)
    before = torch.get_rng_state()
    a, b, c = GPT(TINY, seed=1), GPT(TINY, seed=1), GPT(TINY, seed=2)
    assert torch.equal(torch.get_rng_state(), before)
    for (n, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters(), strict=True):
        assert torch.equal(pa, pb), n
        if pa.ndim == 2:
            assert not torch.equal(pa, pc), n
    w = a.get_submodule("blocks.0.attn.q").weight
    o = a.get_submodule("blocks.0.attn.o").weight
    # std 0.02 and 0.02/√(2·4) on 1024 entries: sample std within ~10%.
    assert w.std().item() == pytest.approx(0.02, rel=0.1)
    assert o.std().item() == pytest.approx(0.02 / math.sqrt(8), rel=0.1)


def _reference_logits(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """Same network written out with explicit masked softmax attention, from the parameters."""
    P = dict(model.named_parameters())
    cfg = model.config
    B, T = idx.shape
    h, hd = cfg.n_head, cfg.d_model // cfg.n_head
    x = P["wte.weight"][idx] + P["wpe.weight"][:T]
    mask = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)

    def ln(t, pre):
        return F.layer_norm(t, (cfg.d_model,), P[pre + ".weight"], P[pre + ".bias"], eps=1e-5)

    for i in range(cfg.n_layer):
        pre = f"blocks.{i}."
        a = ln(x, pre + "ln_1")
        q, k, v = (
            (a @ P[pre + f"attn.{n}.weight"].T).view(B, T, h, hd).transpose(1, 2) for n in "qkv"
        )
        att = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        att = att.masked_fill(mask, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, cfg.d_model)
        x = x + y @ P[pre + "attn.o.weight"].T
        m = ln(x, pre + "ln_2") @ P[pre + "mlp.up.weight"].T
        x = x + F.gelu(m) @ P[pre + "mlp.down.weight"].T
    return ln(x, "ln_f") @ P["lm_head.weight"].T


def test_forward_matches_reference_and_loss(rng):
    model = GPT(TINY, seed=0).double()
    idx = torch.randint(0, 256, (3, TINY.block_size), generator=rng)
    tgt = torch.randint(0, 256, (3, TINY.block_size), generator=rng)
    with torch.no_grad():
        logits, loss = model(idx, tgt)
        ref = _reference_logits(model, idx)
    torch.testing.assert_close(logits, ref, atol=1e-10, rtol=1e-10)  # float64: round-off only
    assert loss.item() == pytest.approx(F.cross_entropy(ref.reshape(-1, 256), tgt.reshape(-1)).item(), abs=1e-6)
    assert model(idx)[1] is None
    # At init the logits are near zero, so the loss is near log 256 (uniform over bytes).
    assert loss.item() == pytest.approx(math.log(256), abs=0.1)


def test_causal(rng):
    model = GPT(TINY).eval()
    idx = torch.randint(0, 256, (2, 20), generator=rng)
    idx2 = idx.clone()
    idx2[:, 12:] = (idx2[:, 12:] + 1) % 256
    with torch.no_grad():
        a, b = model(idx)[0], model(idx2)[0]
    torch.testing.assert_close(a[:, :12], b[:, :12], atol=1e-6, rtol=0)
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_bf16_autocast_close_to_fp32(rng):
    model = GPT(TINY, seed=3)
    idx = torch.randint(0, 256, (4, 32), generator=rng)
    with torch.no_grad():
        ref, ref_loss = model(idx, idx)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got, loss = model(idx, idx)
    assert got.dtype == torch.bfloat16 and loss.dtype == torch.float32
    # bf16 rounding (eps 7.8e-3) through 4 blocks; logits are O(0.1), so 2e-2 absolute.
    torch.testing.assert_close(got.float(), ref, atol=2e-2, rtol=0)
    assert loss.item() == pytest.approx(ref_loss.item(), abs=1e-2)


def test_shape_errors():
    model = GPT(TINY)
    with pytest.raises(ShapeError):
        model(torch.zeros(2, TINY.block_size + 1, dtype=torch.long))
    with pytest.raises(ShapeError):
        model(torch.zeros(8, dtype=torch.long))
    with pytest.raises(ConfigError):
        GPT({"n_layer": 4})


def test_monitored_matrices():
    model = GPT(TINY)
    mats = model.monitored_matrices()
    assert len(mats) == 24 and len(model.hidden_matrices()) == 24
    assert {m.rel_depth for m in mats} == {0.25, 0.5, 0.75, 1.0}
    assert {m.layer_type for m in mats} == {"q", "k", "v", "o", "mlp_up", "mlp_down"}
    params = dict(model.named_parameters())
    for m in mats:
        assert params[m.name].shape == (m.rows, m.cols)
    deep = GPT(GPTConfig(n_layer=8, n_head=1, d_model=8, block_size=4))
    assert sorted({m.block for m in deep.monitored_matrices()}) == [1, 3, 5, 7]
    assert len(deep.hidden_matrices()) == 48


def test_loss_decreases_on_stdlib():
    corpus = load_corpus("stdlib", max_bytes=400_000)
    model = GPT(TINY, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    eval_gen = torch.Generator().manual_seed(99)
    xv, yv = corpus.get_batch("val", 32, TINY.block_size, eval_gen)

    def val_loss():
        with torch.no_grad():
            return model(xv, yv)[1].item()

    start = val_loss()
    for _ in range(30):
        x, y = corpus.get_batch("train", 16, TINY.block_size, gen)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    end = val_loss()
    # From ≈log 256 = 5.55 the unigram byte statistics of Python source alone are worth > 1 nat.
    assert start == pytest.approx(math.log(256), abs=0.1)
    assert end < start - 1.0
