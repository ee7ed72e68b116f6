"""A small vision transformer matched to a tiny-GPT preset, and the offline image sets it trains on.

Architecture: the GPT preset's width d, depth and head count (pre-LayerNorm blocks, 4d MLP with
GELU), but non-causal attention over p×p patches of the image plus a class token; patches enter
through a linear map (``patch``, routed to AdamW like the GPT's token embedding), the class
token's final state through a linear ``head``. Inputs are standardized per pixel with the
training split's mean and standard deviation.

Data sets (no downloads: they ship with an installed package):
- ``digits``: scikit-learn's 1797 8×8 grey-scale handwritten digits (10 classes), optionally
  upsampled by an integer factor (nearest neighbour); a fixed stratified 80/20 split (split seed 0,
  the same for every run).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from muonscope.errors import ConfigError

DATASETS = ("digits",)
SKLEARN_HINT = ("the ViT data set needs scikit-learn (optional extra 'vision'): "
                "pip install 'muonscope[vision]' or pip install 'scikit-learn>=1.3'")


def have_sklearn() -> bool:
    try:
        import sklearn.datasets  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class ImageData:
    """Standardized images (N, C, H, W) and labels, split into train and val."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    classes: int

    @property
    def image_size(self) -> int:
        return int(self.x_train.shape[-1])

    @property
    def channels(self) -> int:
        return int(self.x_train.shape[1])

    def describe(self) -> dict:
        return {"name": self.name, "train": int(self.y_train.numel()), "val": int(self.y_val.numel()),
                "image_size": self.image_size, "channels": self.channels, "classes": self.classes}


def check_dataset(name: str) -> None:
    if name not in DATASETS:
        raise ConfigError(f"unknown image data set {name!r}; choose one of: {', '.join(DATASETS)}")
    if not have_sklearn():
        raise ConfigError(SKLEARN_HINT)


def load_images(name: str = "digits", upsample: int = 1, val_fraction: float = 0.2) -> ImageData:
    """Load ``name`` (see module docstring), upsampled ×``upsample``, standardized with train stats."""
    check_dataset(name)
    if isinstance(upsample, bool) or not isinstance(upsample, int) or upsample < 1:
        raise ConfigError(f"upsample must be a positive integer, got {upsample!r}")
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(d.target, dtype=torch.long)
    if upsample > 1:
        x = x.repeat_interleave(upsample, dim=-2).repeat_interleave(upsample, dim=-1)
    g = torch.Generator().manual_seed(0)
    val_idx, train_idx = [], []
    for c in range(10):  # stratified split
        idx = torch.nonzero(y == c).squeeze(1)
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        n_val = int(round(val_fraction * idx.numel()))
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    tr, va = torch.cat(train_idx), torch.cat(val_idx)
    mean = x[tr].mean(0, keepdim=True)
    std = x[tr].std(0, keepdim=True).clamp(min=1e-3)
    x = (x - mean) / std
    return ImageData(name, x[tr], y[tr], x[va], y[va], 10)


class _Attention(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d, bias=False) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape

        def split(t):
            return t.view(B, T, self.heads, C // self.heads).transpose(1, 2)

        y = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)), is_causal=False)
        return self.o(y.transpose(1, 2).reshape(B, T, C))


class _Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = _Attention(d, heads)
        self.up, self.down = nn.Linear(d, 4 * d, bias=False), nn.Linear(4 * d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.down(F.gelu(self.up(self.ln2(x))))


class ViT(nn.Module):
    """Patch embedding → class token + positions → ``n_layer`` non-causal blocks → LayerNorm → head."""

    def __init__(self, *, d_model: int, n_layer: int, n_head: int, image_size: int, patch: int, channels: int,
                 classes: int, seed: int = 0) -> None:
        super().__init__()
        if image_size % patch:
            raise ConfigError(f"patch size {patch} does not divide the image size {image_size}")
        if d_model % n_head:
            raise ConfigError(f"d_model {d_model} is not a multiple of n_head {n_head}")
        self.patch_size = patch
        n_tokens = (image_size // patch) ** 2 + 1
        g = torch.Generator().manual_seed(seed)
        self.patch = nn.Linear(channels * patch * patch, d_model)
        self.cls = nn.Parameter(torch.zeros(1, 1, d_model))
        self.pos = nn.Parameter(torch.zeros(1, n_tokens, d_model))
        self.blocks = nn.ModuleList(_Block(d_model, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, classes)
        with torch.no_grad():  # GPT-2-style init, from this model's own generator
            for name, p in self.named_parameters():
                if p.ndim >= 2 or name in ("cls", "pos"):
                    std = 0.02 / math.sqrt(2 * n_layer) if name.endswith(("o.weight", "down.weight")) else 0.02
                    p.copy_(torch.randn(p.shape, generator=g) * std)
                elif name.endswith("bias"):
                    p.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        p = self.patch_size
        t = x.unfold(2, p, p).unfold(3, p, p).permute(0, 2, 3, 1, 4, 5).reshape(B, (H // p) * (W // p), C * p * p)
        t = torch.cat([self.cls.expand(B, -1, -1), self.patch(t)], dim=1) + self.pos
        for block in self.blocks:
            t = block(t)
        return self.head(self.ln_f(t)[:, 0])

    def hidden_matrices(self) -> list[tuple[str, torch.Tensor]]:
        """The block matrices (q, k, v, o, up, down), as in the GPT: the ones Muon orthogonalizes."""
        return [(n, p) for n, p in self.named_parameters() if n.startswith("blocks.") and p.ndim == 2]
