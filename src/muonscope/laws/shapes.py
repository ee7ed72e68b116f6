"""Matrix shapes per layer type at a target size, for the planner's Gram-or-standard choice.

From a Hugging Face ``config.json`` (keys of GPT-2, Llama/Mistral/Qwen, Mixtral, DeepSeek and
similar configs) with d = hidden size, h heads, h_kv key/value heads, d_h head size, f MLP width,
shapes are torch's (out, in)::

    q (h·d_h, d)   k, v (h_kv·d_h, d)   qkv ((h + 2h_kv)·d_h, d)   o (d, h·d_h)
    mlp_up (f, d)  mlp_down (d, f)      router (E, d) with E experts

For mixture-of-experts configs f is the expert width (``moe_intermediate_size`` when given):
expert matrices are the bulk of the MLP. Or from a JSON object ``{layer_type: [rows, cols]}``.
"""

from __future__ import annotations

from collections.abc import Mapping

from muonscope.errors import ConfigError
from muonscope.spectra.layers import LAYER_TYPES

_HIDDEN = ("hidden_size", "n_embd", "d_model", "dim")
_HEADS = ("num_attention_heads", "n_head", "num_heads", "n_heads")
_KV_HEADS = ("num_key_value_heads", "n_kv_heads", "num_kv_heads")
_FF = ("moe_intermediate_size", "intermediate_size", "n_inner", "ffn_dim", "d_ff", "ffn_hidden_size")
_EXPERTS = ("num_local_experts", "n_routed_experts", "num_experts", "moe_num_experts")


def _int(cfg: Mapping, keys: tuple[str, ...], what: str, required: bool = True) -> int | None:
    for key in keys:
        value = cfg.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"model config: {key!r} ({what}) must be a positive integer, got {value!r}")
        return value
    if required:
        raise ConfigError(f"model config has no {what} (looked for {', '.join(keys)})")
    return None


def shapes_from_config(cfg: Mapping) -> dict[str, tuple[int, int]]:
    """{layer_type: (rows, cols)} of a Hugging Face model config (see the module docstring)."""
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"a model config must be a JSON object, got {type(cfg).__name__}")
    if not any(k in cfg for k in _HIDDEN) and isinstance(cfg.get("text_config"), Mapping):
        cfg = cfg["text_config"]  # multimodal configs nest the language model's
    d = _int(cfg, _HIDDEN, "hidden size")
    h = _int(cfg, _HEADS, "number of attention heads")
    kv = 1 if cfg.get("multi_query") is True else _int(cfg, _KV_HEADS, "key/value heads", required=False) or h
    hd = _int(cfg, ("head_dim",), "head size", required=False)
    if hd is None:
        if d % h:
            raise ConfigError(f"model config: hidden size {d} is not a multiple of {h} heads; give 'head_dim'")
        hd = d // h
    f = _int(cfg, _FF, "MLP width", required=False) or 4 * d  # GPT-2: n_inner null means 4d
    shapes = {"q": (h * hd, d), "k": (kv * hd, d), "v": (kv * hd, d), "qkv": ((h + 2 * kv) * hd, d),
              "o": (d, h * hd), "mlp_up": (f, d), "mlp_down": (d, f)}
    experts = _int(cfg, _EXPERTS, "number of experts", required=False)
    if experts is not None:
        shapes["router"] = (experts, d)
    return shapes


def read_shapes(raw: Mapping) -> dict[str, tuple[int, int]]:
    """Shapes from a JSON object: a model config, or ``{layer_type: [rows, cols]}``."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"shapes: expected a JSON object, got {type(raw).__name__}")
    if raw and all(k in LAYER_TYPES for k in raw):
        out = {}
        for lt, shape in raw.items():
            ok = isinstance(shape, (list, tuple)) and len(shape) == 2 and all(
                isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in shape)
            if not ok:
                raise ConfigError(f"shapes: {lt!r} must be [rows, cols] of positive integers, got {shape!r}")
            out[lt] = (int(shape[0]), int(shape[1]))
        return out
    return shapes_from_config(raw)
