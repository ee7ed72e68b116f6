"""Layer identity from parameter names: layer type, block index, relative depth.

Built-in rules cover nanoGPT-style models (``blocks.3.attn.q``, ``transformer.h.3.attn.c_attn``),
Hugging Face GPT-2 (fused ``c_attn`` → ``qkv``) and LLaMA-style models (``q_proj`` … ``down_proj``;
``gate_proj`` and ``up_proj`` are both up-projections → ``mlp_up``), and MoE layers: experts
(fused stacks ``experts.gate_up_proj`` / ``experts.down_proj`` whose matrices are named
``…[expert e]``, or per-expert modules ``experts.3.w1``, ``shared_expert.up_proj``) → ``mlp_up`` /
``mlp_down`` with the expert index e recorded; routers (``mlp.gate``, ``router``,
``shared_expert_gate``) → ``router``. A user mapping {regex: layer_type} is tried first.
rel_depth = (block + 1) / n_blocks, so the last block is 1. ``torch.compile``'s ``_orig_mod.``
prefixes are ignored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from muonscope.errors import ConfigError

LAYER_TYPES = ("q", "k", "v", "o", "qkv", "mlp_up", "mlp_down", "router", "other")

_EXPERTS = r"(?:^|\.)(?:experts\.(?:\d+\.)?|shared_experts?\.)"
_BLOCK = re.compile(r"(?:^|\.)(?:blocks|h|layers|layer|block)\.(\d+)\.")
_RULES: tuple[tuple[re.Pattern, str], ...] = tuple(
    (re.compile(p), t)
    for p, t in (
        (r"(?:attn|attention)\.(?:c_attn|qkv|qkv_proj|Wqkv|query_key_value)\b", "qkv"),
        (r"(?:attn|attention)\.(?:q|q_proj|query|wq)\b", "q"),
        (r"(?:attn|attention)\.(?:k|k_proj|key|wk)\b", "k"),
        (r"(?:attn|attention)\.(?:v|v_proj|value|wv)\b", "v"),
        (r"(?:attn|attention)\.(?:o|o_proj|c_proj|out_proj|dense|wo|proj)\b", "o"),
        (r"(?:mlp|feed_forward|ffn)\.(?:up|up_proj|c_fc|fc1|gate_proj|w1|w3|dense_h_to_4h|gate_up_proj)\b", "mlp_up"),
        (r"(?:mlp|feed_forward|ffn)\.(?:down|down_proj|c_proj|fc2|w2|dense_4h_to_h)\b", "mlp_down"),
        (_EXPERTS + r"(?:up|up_proj|gate_proj|gate_up_proj|c_fc|fc1|w1|w3|w13)\b", "mlp_up"),
        (_EXPERTS + r"(?:down|down_proj|c_proj|fc2|w2)\b", "mlp_down"),
        (r"(?:^|\.)(?:router|shared_expert_gate|(?:mlp|moe|block_sparse_moe|feed_forward|ffn)\.gate)\.", "router"),
    )
)
_EXPERT_INDEX = re.compile(r"\[expert (\d+)\]|(?:^|\.)experts\.(\d+)\.")


@dataclass(frozen=True)
class LayerInfo:
    layer_type: str
    block: int  # -1 when the name carries no block index
    rel_depth: float  # NaN when unknown
    expert: int | None = None  # index in an MoE layer's experts


def classify(name: str, user_map: Mapping[str, str] | None = None) -> tuple[str, int]:
    """(layer_type, block) for a parameter name; unknown names are ("other", -1 or the block)."""
    name = name.replace("_orig_mod.", "")
    m = _BLOCK.search(name)
    block = int(m[1]) if m else -1
    for pattern, layer_type in (user_map or {}).items():
        if re.search(pattern, name):
            if layer_type not in LAYER_TYPES:
                raise ConfigError(f"layer map: {layer_type!r} is not one of {', '.join(LAYER_TYPES)}")
            return layer_type, block
    for pattern, layer_type in _RULES:
        if pattern.search(name):
            return layer_type, block
    return "other", block


class LayerIndex:
    """Layer identity for a fixed set of parameter names (n_blocks inferred unless given)."""

    def __init__(self, names: Iterable[str], user_map: Mapping[str, str] | None = None,
                 n_blocks: int | None = None) -> None:
        for pattern in (user_map or {}):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"layer map: invalid regex {pattern!r}: {exc}") from exc
        self.user_map = dict(user_map or {})
        self._types = {n: classify(n, self.user_map) for n in names}
        blocks = [b for _, b in self._types.values() if b >= 0]
        self.n_blocks = n_blocks if n_blocks is not None else (max(blocks) + 1 if blocks else 0)

    def __call__(self, name: str) -> LayerInfo:
        base = name.split("[", 1)[0]
        if base not in self._types:
            self._types[base] = classify(base, self.user_map)
        layer_type, block = self._types[base]
        rel = (block + 1) / self.n_blocks if block >= 0 and self.n_blocks > 0 else float("nan")
        m = _EXPERT_INDEX.search(name)
        return LayerInfo(layer_type, block, rel, int(m[1] or m[2]) if m else None)
