"""Shared test helpers."""

import torch


def matrix_with_spectrum(s, m, n, *, generator=None, dtype=torch.float64):
    """U diag(s) Vᵀ with Haar-random U (m×r), V (n×r), r = len(s) ≤ min(m, n)."""
    s = torch.as_tensor(s, dtype=torch.float64)
    r = s.numel()
    U, _ = torch.linalg.qr(torch.randn(m, r, dtype=torch.float64, generator=generator))
    V, _ = torch.linalg.qr(torch.randn(n, r, dtype=torch.float64, generator=generator))
    return ((U * s) @ V.T).to(dtype), U, V
