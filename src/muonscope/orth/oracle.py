"""Oracle orthogonalizers from the exact SVD: controlled, known damage to the polar factor.

``TopQExact(q, rho)`` maps X = UΣVᵀ (s = σ/‖X‖_F, descending, r = min(m, n), k = ⌈q·r⌉) to
U diag(t) Vᵀ with

    t_i = 1                 for ranks i ≤ k   (the top-q directions, exactly orthogonalized)
    t_i = ρ · s_i / s_k     for ranks i > k   (the rest, scaled below ρ like an under-lifting NS)

q = 1 is the exact polar factor; ρ = 0 updates only along the top-q directions. It is a
calibration instrument (how much does leaving a share of the spectrum under-lifted cost?), not a
method to train with: it costs an SVD per call.
"""

from __future__ import annotations

import numpy as np
import torch

from muonscope.conventions import quantile_rank
from muonscope.errors import ConfigError, ShapeError
from muonscope.orth.orthogonalizers import ExactPolar, Orthogonalizer


def top_q_map(s: np.ndarray, q: float, rho: float) -> np.ndarray:
    """Output singular values t for a normalized spectrum ``s`` (any order; last axis)."""
    s = np.asarray(s, dtype=np.float64)
    r = s.shape[-1]
    if r == 0:
        return s.copy()
    order = np.argsort(-s, axis=-1, kind="stable")
    ranked = np.take_along_axis(s, order, axis=-1)
    k = quantile_rank(r, q)
    s_k = ranked[..., k - 1:k]
    with np.errstate(invalid="ignore", divide="ignore"):
        tail = np.where(s_k > 0, rho * ranked / s_k, 0.0)
    out_ranked = np.where(np.arange(r) < k, np.where(ranked > 0, 1.0, 0.0), tail)
    out = np.empty_like(out_ranked)
    np.put_along_axis(out, order, out_ranked, axis=-1)
    return out


class TopQExact(Orthogonalizer):
    """Exact polar factor on the top ⌈q·r⌉ directions, ρ·s/s_q below them (float64 SVD)."""

    kind = "top-q"

    def __init__(self, q: float, rho: float = 0.0) -> None:
        q, rho = float(q), float(rho)
        if not 0.0 < q <= 1.0:
            raise ConfigError(f"top-q oracle: q must lie in (0, 1], got {q}")
        if not 0.0 <= rho <= 1.0:
            raise ConfigError(f"top-q oracle: rho must lie in [0, 1], got {rho}")
        self.q, self.rho = q, rho

    def __call__(self, G, *, want_spectrum=False):
        if G.ndim < 2:
            raise ShapeError(f"TopQExact needs a (..., m, n) tensor, got shape {tuple(G.shape)}")
        work = G.to(torch.float64)
        if work.numel() == 0:
            out = G.clone()
            return out, (work.new_zeros(*work.shape[:-2], min(work.shape[-2:])) if want_spectrum else None)
        U, S, Vh = torch.linalg.svd(work, full_matrices=False)
        frob = torch.linalg.vector_norm(S, dim=-1, keepdim=True).clamp(min=torch.finfo(S.dtype).tiny)
        s = S / frob
        t = torch.from_numpy(top_q_map(s.cpu().numpy(), self.q, self.rho)).to(U)
        out = ((U * t.unsqueeze(-2)) @ Vh).to(G.dtype)
        return out, (s if want_spectrum else None)

    def flops(self, m, n):
        return ExactPolar().flops(m, n)

    def matmuls(self):
        return 0

    def scalar_map(self, s):
        return top_q_map(s, self.q, self.rho)

    @property
    def label(self):
        return (f"top{self.q:g}-rho{self.rho:g}", 0)

    def __repr__(self) -> str:
        return f"TopQExact(q={self.q}, rho={self.rho})"
