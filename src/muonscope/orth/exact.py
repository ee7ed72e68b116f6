"""Exact polar factor via SVD: G = UΣVᵀ ↦ UVᵀ.

Directions with σ ≤ rtol·σ_max are treated as zero and dropped (the partial isometry), matching
NS, which maps s = 0 to 0; a zero matrix maps to zeros.
"""

from __future__ import annotations

import torch

from muonscope.errors import ShapeError


def polar_exact(
    G: torch.Tensor,
    *,
    dtype: torch.dtype | None = torch.float64,
    rtol: float | None = None,
    return_singular_values: bool = False,
):
    """Polar factor of ``G`` (…, m, n) by SVD in ``dtype`` (default float64), returned in G's dtype.

    With ``return_singular_values=True`` also returns the normalized singular values
    s = σ/‖G‖_F (…, r), descending, in the SVD dtype.
    """
    if G.ndim < 2:
        raise ShapeError(f"polar_exact needs a (..., m, n) tensor, got shape {tuple(G.shape)}")
    work = G.to(dtype) if dtype is not None else G
    if work.numel() == 0:
        out = G.clone()
        sv = work.new_zeros(*work.shape[:-2], min(work.shape[-2:]))
        return (out, sv) if return_singular_values else out
    U, S, Vh = torch.linalg.svd(work, full_matrices=False)
    if rtol is None:
        rtol = max(work.shape[-2:]) * torch.finfo(work.dtype).eps
    smax = S[..., :1]
    keep = (S > rtol * smax) & (smax > 0)
    O = (U * keep.unsqueeze(-2).to(U.dtype)) @ Vh
    out = O.to(G.dtype)
    if return_singular_values:
        frob = torch.linalg.vector_norm(S, dim=-1, keepdim=True)
        return out, S / frob.clamp(min=torch.finfo(S.dtype).tiny)
    return out
