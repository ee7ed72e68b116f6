"""Shapes per layer type from Hugging Face configs, checked against the models they build."""

import pytest

from muonscope.errors import ConfigError
from muonscope.laws.shapes import read_shapes, shapes_from_config
from muonscope.spectra.layers import LayerIndex

transformers = pytest.importorskip("transformers")

SMALL = dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=1, vocab_size=64)
CONFIGS = {
    "gpt2": lambda: transformers.GPT2Config(n_embd=64, n_head=4, n_layer=1, vocab_size=64),
    "llama": lambda: transformers.LlamaConfig(intermediate_size=176, num_key_value_heads=2, **SMALL),
    "mixtral": lambda: transformers.MixtralConfig(intermediate_size=96, num_key_value_heads=2, num_local_experts=4,
                                                  **SMALL),
    "qwen3_moe": lambda: transformers.Qwen3MoeConfig(intermediate_size=200, moe_intermediate_size=48, head_dim=32,
                                                     num_key_value_heads=2, num_experts=4, **SMALL),
}


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_shapes_match_the_models_the_config_builds(family):
    config = CONFIGS[family]()
    model = transformers.AutoModelForCausalLM.from_config(config)
    shapes = shapes_from_config(config.to_dict())
    matrices = {n: p for n, p in model.named_parameters() if p.ndim >= 2}
    index = LayerIndex(list(matrices))
    seen = set()
    for name, p in matrices.items():
        lt = index(name).layer_type
        if lt == "other":
            continue
        rows, cols = p.shape[-2:]
        if family == "gpt2":  # Conv1D stores (in, out)
            rows, cols = cols, rows
        if name.endswith("gate_up_proj"):  # fused gate and up: two (f, d) matrices stacked
            rows //= 2
        assert (rows, cols) == shapes[lt], (name, lt)
        seen.add(lt)
    assert seen >= {"o", "mlp_up", "mlp_down"}


def test_mapping_and_nested_configs():
    assert read_shapes({"q": [8, 16], "mlp_up": (32, 8)}) == {"q": (8, 16), "mlp_up": (32, 8)}
    nested = {"model_type": "llava", "text_config": {"hidden_size": 32, "num_attention_heads": 2}}
    assert read_shapes(nested)["mlp_up"] == (128, 32)  # GPT-2 style default width 4d
    assert shapes_from_config({"n_embd": 32, "n_head": 4, "multi_query": True})["k"] == (8, 32)
    with pytest.raises(ConfigError, match="rows, cols"):
        read_shapes({"q": [8, True]})
    with pytest.raises(ConfigError, match="hidden size"):
        read_shapes({"num_attention_heads": 2})
