"""Spectral metrics of a matrix from its singular values (numpy, float64).

All functions take singular values ``s`` (last axis; any order, any positive scale unless stated)
and are invariant to rescaling s ↦ c·s. An all-zero spectrum has no shape: metrics return NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from muonscope.conventions import quantile_rank


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
    return np.array([quantile_rank(r, q) for q in qs]) - 1


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


# --- Functions of matrices (not only of their singular values) ------------------------------------


from muonscope.errors import ConfigError, ShapeError  # noqa: E402


def _frames(X, k: int) -> tuple[np.ndarray, np.ndarray]:
    U, _, Vt = np.linalg.svd(np.asarray(X, dtype=np.float64), full_matrices=False)
    return U[:, :k], Vt[:k].T


def _numerical_rank(X: np.ndarray) -> int:
    s = np.linalg.svd(X, compute_uv=False)
    return int(np.sum(s > max(X.shape) * np.finfo(np.float64).eps * (s[0] if s.size else 0.0)))


def subspace_sin_theta(P, Q) -> float:
    """‖sin Θ‖_F between the column spans of orthonormal P, Q (m×k each): ‖(I − PPᵀ)Q‖_F."""
    P = np.asarray(P, dtype=np.float64)
    Q = np.asarray(Q, dtype=np.float64)
    if P.ndim != 2 or P.shape != Q.shape:
        raise ShapeError(f"subspace_sin_theta needs two m×k bases of one shape, got {P.shape}, {Q.shape}")
    return float(np.linalg.norm(Q - P @ (P.T @ Q)))


def frame_alignment(A, B, k: int | None = None) -> float:
    """‖sin Θ‖_F between the top-k singular frames of two m×n matrices A and B.

    With U_k, V_k the leading k left/right singular vectors: √(‖sin Θ(U_k^A, U_k^B)‖_F² +
    ‖sin Θ(V_k^A, V_k^B)‖_F²). 0 when both top-k subspaces coincide, at most √(2k). ``k`` defaults
    to the smaller numerical rank of A and B (σ > max(m, n)·eps·σ_max); a side of dimension k is
    the whole space and contributes 0.
    """
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    if A.ndim != 2 or A.shape != B.shape:
        raise ShapeError(f"frame_alignment needs two matrices of one shape, got {A.shape}, {B.shape}")
    r = min(A.shape)
    if k is None:
        k = max(min(_numerical_rank(A), _numerical_rank(B)), 1)
    k = int(k)
    if not 1 <= k <= r:
        raise ConfigError(f"k must lie in [1, {r}], got {k}")
    UA, VA = _frames(A, k)
    UB, VB = _frames(B, k)
    return float(math.hypot(subspace_sin_theta(UA, UB), subspace_sin_theta(VA, VB)))


def shared_frame_misalignment(W, G) -> float:
    """How far G is from sharing W's singular frames: √(1 − ‖diag(U_Wᵀ G V_W)‖²/‖G‖_F²).

    0 exactly when G = U_W diag(g) V_Wᵀ (the alignment under which a gradient moves each singular
    value of W independently); 1 when G has no energy on W's singular pairs. NaN for G = 0.
    """
    W = np.asarray(W, dtype=np.float64)
    G = np.asarray(G, dtype=np.float64)
    if W.ndim != 2 or W.shape != G.shape:
        raise ShapeError(f"shared_frame_misalignment needs two matrices of one shape, got {W.shape}, {G.shape}")
    U, _, Vt = np.linalg.svd(W, full_matrices=False)
    diag = np.einsum("ir,ij,rj->r", U, G, Vt)
    g = float(np.linalg.norm(G))
    if g == 0.0:
        return float("nan")
    # ‖G − U diag(d) Vᵀ‖_F/‖G‖_F: U diag(d) Vᵀ is G's orthogonal projection onto span{uᵢvᵢᵀ}
    return float(np.linalg.norm(G - (U * diag) @ Vt) / g)
