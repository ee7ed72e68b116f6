"""Layer identity from parameter names for nanoGPT-style, HF GPT-2 and LLaMA models."""

import math

import pytest
import torch

from muonscope.errors import ConfigError
from muonscope.spectra.layers import LayerIndex, classify


def _typed(model):
    names = [n for n, p in model.named_parameters() if p.ndim == 2]
    idx = LayerIndex(names)
    return idx, {n: idx(n) for n in names}


def test_nanogpt_karpathy_names():
    for name, expected in [
        ("transformer.h.0.attn.c_attn.weight", ("qkv", 0)),
        ("transformer.h.3.attn.c_proj.weight", ("o", 3)),
        ("transformer.h.3.mlp.c_fc.weight", ("mlp_up", 3)),
        ("transformer.h.3.mlp.c_proj.weight", ("mlp_down", 3)),
        ("blocks.2.attn.k.weight", ("k", 2)),
        ("blocks.2.attn.v.weight", ("v", 2)),
        ("lm_head.weight", ("other", -1)),
    ]:
        assert classify(name) == expected


def test_hf_gpt2_small_config():
    transformers = pytest.importorskip("transformers", reason="the 'hf' extra (transformers) is not installed")
    cfg = transformers.GPT2Config(n_layer=4, n_embd=32, n_head=2, vocab_size=64, n_positions=32)
    idx, typed = _typed(transformers.GPT2LMHeadModel(cfg))
    assert idx.n_blocks == 4
    assert typed["transformer.h.3.attn.c_attn.weight"].layer_type == "qkv"
    assert typed["transformer.h.3.attn.c_attn.weight"].rel_depth == 1.0
    assert typed["transformer.h.0.attn.c_proj.weight"].layer_type == "o"
    assert typed["transformer.h.1.mlp.c_fc.weight"].layer_type == "mlp_up"
    assert typed["transformer.h.1.mlp.c_proj.weight"].rel_depth == 0.5
    assert typed["transformer.h.1.mlp.c_proj.weight"].layer_type == "mlp_down"
    assert typed["transformer.wte.weight"].layer_type == "other"


def test_llama_small_config():
    transformers = pytest.importorskip("transformers", reason="the 'hf' extra (transformers) is not installed")
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=64)
    idx, typed = _typed(transformers.LlamaForCausalLM(cfg))
    counts = {}
    for info in typed.values():
        counts[info.layer_type] = counts.get(info.layer_type, 0) + 1
    assert counts["q"] == counts["k"] == counts["v"] == counts["o"] == counts["mlp_down"] == 4
    assert counts["mlp_up"] == 8  # gate_proj and up_proj
    assert typed["model.layers.0.self_attn.q_proj.weight"].rel_depth == 0.25


def test_user_map_overrides_and_validation():
    idx = LayerIndex(["net.0.weight", "net.2.weight"], {r"net\.2": "mlp_down"}, n_blocks=4)
    assert idx("net.2.weight").layer_type == "mlp_down"
    assert idx("net.0.weight").layer_type == "other"
    assert math.isnan(LayerIndex(["w"])("w").rel_depth)
    assert idx("blocks.1.attn.q.weight[block 0]").layer_type == "q"
    with pytest.raises(ConfigError):
        LayerIndex([], {"(": "q"})
    with pytest.raises(ConfigError):
        LayerIndex(["a"], {"a": "gate"})("a")


def test_conv_like_parameter_is_other():
    conv = torch.nn.Conv2d(3, 8, 3)
    idx, typed = _typed(torch.nn.Sequential(conv, torch.nn.Flatten(), torch.nn.Linear(8, 2)))
    assert all(i.layer_type == "other" for i in typed.values())
