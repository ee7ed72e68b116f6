"""A tiny nanoGPT-style decoder family for the spectral size sweep.

Architecture: byte-level vocabulary (256), learned position embedding, ``n_layer`` pre-LayerNorm
blocks ``x ← x + attn(ln_1(x)); x ← x + mlp(ln_2(x))``, final LayerNorm, untied output head.
Attention uses separate bias-free projections ``q, k, v, o`` (d×d) and causal
``scaled_dot_product_attention``; the MLP is ``down(GELU(up(x)))`` with ``up``: d→4d, ``down``: 4d→d,
bias-free. Parameter names are ``wte, wpe, blocks.{i}.attn.{q,k,v,o}, blocks.{i}.mlp.{up,down},
blocks.{i}.ln_{1,2}, ln_f, lm_head``.

**Model size M** (used everywhere in muonscope: run stores, fits, plans) is the number of
*non-embedding* parameters: every parameter except ``wte``, ``wpe`` and ``lm_head`` (LayerNorm
weights and biases count). For the presets, M = n_layer·(12d² + 4d) + 2d.

**Width/depth rule of the presets**: fixed depth n_layer = 4, fixed head dimension 16, width d
scaled. Then M ≈ 48d², so d ∝ √M, and every monitored matrix has r = min(m, n) = d ∝ √M. With
Frobenius normalization a flat spectrum sits at s = 1/√r ∝ M^(−1/4): this is the α = 0.25 baseline
of the power-law exponents (same spectral shape, more directions). With n_layer = 4 the relative
depths N/4, N/2, 3N/4, N are blocks 0, 1, 2, 3 (zero-based), so all 24 hidden matrices are tracked.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from muonscope.errors import ConfigError, ShapeError

VOCAB_SIZE = 256
HEAD_DIM = 16
EMBEDDING_PARAMS = ("wte.weight", "wpe.weight", "lm_head.weight")


@dataclass(frozen=True)
class GPTConfig:
    """Shape of one model. ``n_layer`` must be a multiple of 4 and ``d_model`` of ``n_head``."""

    n_layer: int
    n_head: int
    d_model: int
    block_size: int
    vocab_size: int = VOCAB_SIZE
    dropout: float = 0.0

    def __post_init__(self):
        for field in ("n_layer", "n_head", "d_model", "block_size", "vocab_size"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"GPTConfig.{field} must be a positive integer, got {value!r}")
        if self.n_layer % 4:
            raise ConfigError(
                f"GPTConfig.n_layer must be a multiple of 4 (relative depths N/4, N/2, 3N/4, N), "
                f"got {self.n_layer}"
            )
        if self.d_model % self.n_head:
            raise ConfigError(
                f"GPTConfig.d_model ({self.d_model}) must be divisible by n_head ({self.n_head})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout!r}")

    @property
    def non_embedding_params(self) -> int:
        """M = n_layer·(12d² + 4d) + 2d: block matrices, block LayerNorms and ``ln_f``."""
        d = self.d_model
        return self.n_layer * (12 * d * d + 4 * d) + 2 * d

    @property
    def embedding_params(self) -> int:
        """Parameters of ``wte`` (V·d), ``wpe`` (block_size·d) and ``lm_head`` (V·d)."""
        return (2 * self.vocab_size + self.block_size) * self.d_model

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> GPTConfig:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        try:
            return cls(**known)
        except TypeError as exc:
            raise ConfigError(f"incomplete GPTConfig {data!r}: {exc}") from None


@dataclass(frozen=True)
class MatrixInfo:
    """One hidden weight matrix: its parameter name, layer type, block and relative depth."""

    name: str
    layer_type: str  # q, k, v, o, mlp_up, mlp_down
    block: int  # zero-based block index
    rel_depth: float  # (block + 1) / n_layer: 0.25, 0.5, 0.75, 1.0 for the tracked blocks
    rows: int
    cols: int


_LAYER_TYPES = (
    ("attn.q", "q"),
    ("attn.k", "k"),
    ("attn.v", "v"),
    ("attn.o", "o"),
    ("mlp.up", "mlp_up"),
    ("mlp.down", "mlp_down"),
)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        d = config.d_model
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.q = nn.Linear(d, d, bias=False)
        self.k = nn.Linear(d, d, bias=False)
        self.v = nn.Linear(d, d, bias=False)
        self.o = nn.Linear(d, d, bias=False)
        self.resid_drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        h = self.n_head

        def heads(t):
            return t.view(B, T, h, C // h).transpose(1, 2)  # (B, h, T, hd)

        y = F.scaled_dot_product_attention(
            heads(self.q(x)),
            heads(self.k(x)),
            heads(self.v(x)),
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=True,
        )
        return self.resid_drop(self.o(y.transpose(1, 2).reshape(B, T, C)))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        d = config.d_model
        self.up = nn.Linear(d, 4 * d, bias=False)
        self.down = nn.Linear(4 * d, d, bias=False)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.down(F.gelu(self.up(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.d_model)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.d_model)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Decoder-only transformer; ``forward(idx, targets) -> (logits, loss)``.

    ``seed`` makes the initialization deterministic without touching the global RNG:
    every Linear/Embedding weight ~ N(0, 0.02²), residual outputs (``attn.o``, ``mlp.down``)
    ~ N(0, (0.02/√(2·n_layer))²), LayerNorms at weight 1, bias 0.
    Model size M = :meth:`non_embedding_params` (everything except ``wte``, ``wpe``, ``lm_head``).
    """

    def __init__(self, config: GPTConfig, *, seed: int = 0, device: torch.device | str | None = None):
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise ConfigError(f"GPT needs a GPTConfig, got {type(config).__name__}")
        self.config = config
        with torch.device("meta"):  # allocate once, initialize below with our own generator
            self.wte = nn.Embedding(config.vocab_size, config.d_model)
            self.wpe = nn.Embedding(config.block_size, config.d_model)
            self.drop = nn.Dropout(config.dropout)
            self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
            self.ln_f = nn.LayerNorm(config.d_model)
            self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.to_empty(device=device if device is not None else "cpu")
        self.reset_parameters(seed)

    @torch.no_grad()
    def reset_parameters(self, seed: int = 0) -> None:
        """Re-initialize every parameter deterministically from ``seed`` (global RNG untouched)."""
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        resid_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, p in self.named_parameters():  # fixed registration order → reproducible
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                p.fill_(1.0)
            elif name.endswith(("ln_1.bias", "ln_2.bias", "ln_f.bias")):
                p.zero_()
            else:
                std = resid_std if name.endswith(("attn.o.weight", "mlp.down.weight")) else 0.02
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32) * std)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``idx`` (B, T) byte ids, T ≤ block_size → logits (B, T, V) and mean cross-entropy
        against ``targets`` (B, T) computed in float32 (``None`` without targets)."""
        if idx.ndim != 2:
            raise ShapeError(f"GPT input must be (batch, time) token ids, got shape {tuple(idx.shape)}")
        B, T = idx.shape
        if T > self.config.block_size:
            raise ShapeError(
                f"sequence length {T} exceeds block_size {self.config.block_size}; "
                "crop the input or build the model with a larger block_size"
            )
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        loss = None
        if targets is not None:
            if targets.shape != idx.shape:
                raise ShapeError(f"targets shape {tuple(targets.shape)} != input shape {(B, T)}")
            loss = F.cross_entropy(logits.float().reshape(B * T, -1), targets.reshape(B * T))
        return logits, loss

    def non_embedding_params(self) -> int:
        """Model size M: all parameters except ``wte``, ``wpe`` and ``lm_head``."""
        return sum(p.numel() for n, p in self.named_parameters() if n not in EMBEDDING_PARAMS)

    def total_params(self) -> int:
        """All parameters, embeddings and output head included."""
        return sum(p.numel() for p in self.parameters())

    def hidden_matrices(self) -> list[MatrixInfo]:
        """The 6·n_layer block matrices (q, k, v, o, mlp_up, mlp_down), in block order.

        These are the 2-D hidden weights Muon is meant for; everything else (embeddings, head,
        LayerNorms) belongs to AdamW.
        """
        n = self.config.n_layer
        out = []
        for i, block in enumerate(self.blocks):
            for suffix, layer_type in _LAYER_TYPES:
                mod = block.get_submodule(suffix)
                rows, cols = mod.weight.shape
                out.append(
                    MatrixInfo(f"blocks.{i}.{suffix}.weight", layer_type, i, (i + 1) / n, rows, cols)
                )
        return out

    def monitored_matrices(self) -> list[MatrixInfo]:
        """Hidden matrices at relative depths N/4, N/2, 3N/4, N (blocks N/4−1, …, N−1): 24 matrices."""
        n = self.config.n_layer
        tracked = {n // 4 - 1, n // 2 - 1, 3 * n // 4 - 1, n - 1}
        return [m for m in self.hidden_matrices() if m.block in tracked]


def _preset(d_model: int, n_layer: int = 4, block_size: int = 128) -> GPTConfig:
    return GPTConfig(n_layer=n_layer, n_head=d_model // HEAD_DIM, d_model=d_model, block_size=block_size)


#: Size presets. Width family (``d32`` … ``d288``): n_layer = 4, head_dim = 16, width d scaled
#: (d ∝ √M, α = 0.25 baseline), M ≈ 0.05M … 4.0M (80×; the default sweep starts at d48).
#: ``tiny`` (d32, block 64) is for tests (seconds).
#: Depth + width family (``L4-d48`` … ``L16-d96``): depth and width grow together, d ∝ n_layer^0.5
#: (GPT-2's family grows d ∝ n_layer^0.55 from 12 to 48 layers), M ≈ 0.11M … 1.8M (16×); M ∝ n_layer·d² ∝ d⁴, so
#: r = d ∝ M^(1/4) and the flat-spectrum baseline is α = 1/8. ``gpu-*``: 8 blocks, block 256, for the
#: GPU sweep (M ≈ 1.6M … 32M).
PRESETS: dict[str, GPTConfig] = {
    "tiny": _preset(32, block_size=64),
    "d32": _preset(32),
    "d48": _preset(48),
    "d64": _preset(64),
    "d96": _preset(96),
    "d128": _preset(128),
    "d176": _preset(176),
    "d224": _preset(224),
    "d288": _preset(288),
    "L4-d48": _preset(48, 4),
    "L8-d64": _preset(64, 8),
    "L12-d80": _preset(80, 12),
    "L16-d96": _preset(96, 16),
    **{f"gpu-d{d}": _preset(d, 8, block_size=256) for d in (128, 192, 256, 320, 448, 576)},
}

#: Presets of the default (width) size sweep, smallest first.
SWEEP_PRESETS: tuple[str, ...] = ("d48", "d64", "d96", "d128", "d176", "d224", "d288")
#: Presets of the depth + width family, smallest first.
DEPTH_PRESETS: tuple[str, ...] = ("L4-d48", "L8-d64", "L12-d80", "L16-d96")
#: Presets of the GPU sweep (``scripts/gpu_sweep.sh``), smallest first.
GPU_PRESETS: tuple[str, ...] = tuple(f"gpu-d{d}" for d in (128, 192, 256, 320, 448, 576))
FAMILIES: dict[str, tuple[str, ...]] = {"width": SWEEP_PRESETS, "depth": DEPTH_PRESETS, "gpu": GPU_PRESETS}


def width_depth_rule(preset: str) -> str:
    """The scaling rule of the family ``preset`` belongs to (recorded in every run store)."""
    if preset in DEPTH_PRESETS:
        return "n_layer and width together (d ∝ n_layer^0.5), head_dim = 16"
    if preset in GPU_PRESETS:
        return "n_layer = 8, head_dim = 16, width d scaled, block 256"
    return "n_layer = 4, head_dim = 16, width d scaled"


def get_preset(name: str) -> GPTConfig:
    """The :class:`GPTConfig` of preset ``name``; unknown names raise :class:`ConfigError`."""
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        valid = ", ".join(PRESETS)
        raise ConfigError(f"unknown model preset {name!r}; choose one of: {valid}") from None
