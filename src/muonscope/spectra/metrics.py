"""Spectral metrics of a matrix from its singular values (numpy, float64).

All functions take singular values ``s`` (last axis; any order, any positive scale unless stated)
and are invariant to rescaling s ↦ c·s. An all-zero spectrum has no shape: metrics return NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def _as_sorted(s) -> np.ndarray:
    s = np.asarray(s, dtype=np.float64)
    return -np.sort(-s, axis=-1)


def quantile_column(q: float) -> str:
    """Column name of quantile level q in spectral records: 0.1 → 's_q10'."""
    return f"s_q{q * 100:g}"


def quantile_ranks(r: int, qs: Sequence[float]) -> np.ndarray:
    """0-based indices of the descending ranks ⌈q·r⌉ (1-based), clipped to [1, r]."""
    if r < 1:
        raise ValueError("a spectrum needs at least one singular value")
    ranks = np.array([min(max(math.ceil(q * r - 1e-12), 1), r) for q in qs])
    return ranks - 1


def quantiles(s, qs: Sequence[float]) -> np.ndarray:
    """s_q for each q: the singular value at descending rank ⌈q·r⌉ (s_0.9 is a small one)."""
    ss = _as_sorted(s)
    return ss[..., quantile_ranks(ss.shape[-1], qs)]


def normalize(s) -> np.ndarray:
    """s/‖s‖₂ = σ/‖W‖_F (NaN for a zero spectrum)."""
    s = np.asarray(s, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return s / np.linalg.norm(s, axis=-1, keepdims=True)


def spectral_entropy(s, *, normalized: bool = False) -> np.ndarray:
    """H = −Σ pᵢ log pᵢ with pᵢ = σᵢ/Σσⱼ; ``normalized`` divides by log r (1 for a flat spectrum)."""
    s = np.abs(np.asarray(s, dtype=np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        p = s / s.sum(axis=-1, keepdims=True)
        h = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)
        h = np.where(np.isfinite(p).all(axis=-1), h, np.nan)
        if normalized:
            r = s.shape[-1]
            h = h / math.log(r) if r > 1 else np.where(np.isfinite(h), 1.0, np.nan)
    return h


def effective_rank(s) -> np.ndarray:
    """exp(H): between 1 (rank one) and r (flat)."""
    return np.exp(spectral_entropy(s))


def stable_rank(s) -> np.ndarray:
    """‖W‖_F²/‖W‖₂² = Σσ²/σ_max²: 1 for rank one, r for a flat spectrum."""
    s = np.asarray(s, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sum(s * s, axis=-1) / np.max(np.abs(s), axis=-1) ** 2


def nuclear_frobenius_ratio(s) -> np.ndarray:
    """‖W‖_*/‖W‖_F = Σσ/√Σσ²: 1 for rank one, √r for a flat spectrum."""
    s = np.abs(np.asarray(s, dtype=np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sum(s, axis=-1) / np.linalg.norm(s, axis=-1)
