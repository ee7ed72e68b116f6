"""Matrix Newton-Schulz iteration toward the polar factor UVᵀ.

For G (…, m, n), transposed so m ≤ n: X₀ = G / max(‖G‖_F · f, eps), then per step
A = X Xᵀ, X ← a X + (b A + c A²) X. Each singular value follows the scalar map of
:mod:`muonscope.orth.analysis`; singular vectors are kept. Three products per step, fused with
``addmm``/``baddbmm`` so the affine parts cost no extra passes.
"""

from __future__ import annotations

import math

import torch

from muonscope.errors import ShapeError
from muonscope.orth.schedules import Schedule, get_schedule


def default_compute_dtype(device: torch.device | str) -> torch.dtype:
    """bf16 on CUDA (tensor cores), fp32 elsewhere."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def newton_schulz(
    G: torch.Tensor,
    schedule: str | Schedule = "jordan",
    steps: int | None = None,
    *,
    eps: float = 1e-7,
    dtype: torch.dtype | None = None,
    return_gram: bool = False,
):
    """Approximate polar factor of ``G`` (…, m, n) by ``steps`` NS steps of ``schedule``.

    Returns a tensor of G's shape and dtype. With ``return_gram=True`` also returns the first
    step's Gram matrix rescaled to A₀ = G Gᵀ/‖G‖_F² (shape (…, r, r), r = min(m, n), in the
    compute dtype), whose eigenvalues are the squared normalized singular values s².
    A zero matrix maps to zeros (the eps clamp), never NaN.
    """
    if G.ndim < 2:
        raise ShapeError(f"newton_schulz needs a (..., m, n) tensor, got shape {tuple(G.shape)}")
    if G.is_complex():
        raise ShapeError("newton_schulz works on real tensors only")
    sched = get_schedule(schedule)
    steps = sched.default_steps if steps is None else steps
    coeffs = sched.step_coefficients(steps)
    dtype = dtype or default_compute_dtype(G.device)
    out_dtype = G.dtype

    transpose = G.shape[-2] > G.shape[-1]
    X = G.mT if transpose else G
    lead = X.shape[:-2]
    m, n = X.shape[-2:]
    X = X.reshape(math.prod(lead), m, n) if len(lead) != 0 else X
    # Cast first (so normalization rounds in the compute dtype) and divide the cast copy in place;
    # without a cast, divide out of place (one pass, no separate clone).
    owned = X.dtype != dtype
    X = X.to(dtype=dtype) if owned else X
    if X.numel() == 0:
        out = X.clone()
        gram = X.new_zeros(*X.shape[:-1], m)
    else:
        norm = torch.linalg.vector_norm(X, dim=(-2, -1), keepdim=True)
        if sched.safety != 1.0:
            norm = norm * sched.safety
        X = X.div_(norm.clamp_(min=eps)) if owned else X / norm.clamp_(min=eps)
        gram = None
        batched = X.ndim == 3
        for i, (a, b, c) in enumerate(coeffs):
            A = X @ X.mT
            if i == 0 and return_gram:
                gram = A * (sched.safety**2)
            if batched:
                B = torch.baddbmm(A, A, A, beta=b, alpha=c)
                X = torch.baddbmm(X, B, X, beta=a)
            else:
                B = torch.addmm(A, A, A, beta=b, alpha=c)
                X = torch.addmm(X, B, X, beta=a)
        if return_gram and gram is None:  # zero steps requested
            gram = (X @ X.mT) * (sched.safety**2)
        out = X
    out = out.reshape(*lead, m, n) if len(lead) != 0 else out
    if transpose:
        out = out.mT
    out = out.to(out_dtype)
    if return_gram:
        gram = gram.reshape(*lead, m, m) if len(lead) != 0 else gram
        return out, gram
    return out
