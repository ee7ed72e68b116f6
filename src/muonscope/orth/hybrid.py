"""Hybrid orthogonalization: Newton–Schulz for the bulk, the exact polar factor for the weakest directions.

For X (m×n, transposed so m ≤ n) with SVD X = UΣVᵀ, NS gives O_ns ≈ U p(Σ/‖X‖_F) Vᵀ, which leaves
directions with small s = σ/‖X‖_F far below 1. The *bottom* correction works in float64 from the
Gram matrix A = XXᵀ = QΛQᵀ (eigenvalues ascending, Λ = Σ²): with Q_B the eigenvectors of the
b = ⌈f·m⌉ smallest eigenvalues,

    O = O_ns − Q_B (Q_Bᵀ O_ns) + Q_B · polar(Q_Bᵀ X).

Since Q_Bᵀ X = Σ_B V_Bᵀ, the last term is U_B V_Bᵀ: NS's component in span(Q_B) is replaced by the
exact polar factor there (``polar`` is the float64 SVD of the small b×n matrix, so near-degenerate
bottom eigenvalues are handled). With b = m, O = Q polar(QᵀX) = polar(X). Directions below the
float64 Gram's resolution (λ ≤ m·ε·λ_max, i.e. σ ≤ √(m·ε)·σ_max ≈ 1e-7·σ_max) are null and map to
0, as in the partial isometry of :func:`~muonscope.orth.exact.polar_exact` (whose SVD cut is lower,
m·ε·σ_max; on float32 inputs the directions in between are round-off). The *exact* correction
skips NS and returns polar(X) by SVD.

:class:`HybridNS` is the corrected orthogonalizer (kind ``"hybrid"``); its policy fields say when an
optimizer should use it instead of the plain NS :attr:`HybridNS.bulk`: at step 1, every ``every``
steps, and whenever the share of directions the bulk NS map leaves below ρ (measured on the float64
spectrum of the last corrected call) exceeds ``bound``. ``muonscope.optim`` applies that policy per
matrix; cost (``flops``, ``matmuls``) and ``scalar_map`` describe one corrected call, so accounting
and fidelity stay honest step by step.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from muonscope import validate as V
from muonscope.conventions import FAILURE_RHO, sampled
from muonscope.errors import ConfigError, ShapeError
from muonscope.orth.analysis import composed_map, ns_flops, ns_matmuls
from muonscope.orth.exact import polar_exact
from muonscope.orth.matrix_ns import newton_schulz
from muonscope.orth.orthogonalizers import (
    ExactPolar,
    NewtonSchulz,
    Orthogonalizer,
    register_orthogonalizer,
)
from muonscope.orth.schedules import Schedule

CORRECTIONS = ("bottom", "exact")
EIGH_FLOPS_PER_CUBE = 9  # symmetric eigensolver with vectors ≈ 9m³ (Golub & Van Loan, symmetric QR)


def bottom_count(r: int, fraction: float) -> int:
    """Number of corrected directions b = min(r, max(1, ⌈fraction·r⌉)) (0 when r = 0)."""
    if r <= 0:
        return 0
    return min(r, max(1, math.ceil(fraction * r - 1e-9)))


def null_level(m: int) -> float:
    """Relative eigenvalue level m·ε₆₄ below which a Gram direction counts as null (σ ≤ √(m·ε)·σ_max)."""
    return max(m, 1) * float(torch.finfo(torch.float64).eps)


def correct_bottom(X: torch.Tensor, O: torch.Tensor, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace the bottom ``fraction`` of ``O``'s left singular directions of ``X`` by polar(X)'s.

    ``X``, ``O``: (…, m, n) with m ≤ n. Returns ``(O_corrected, s)``: the corrected update in O's
    dtype and the normalized singular values s = √λ/‖X‖_F of X (float64, descending).
    """
    if X.shape != O.shape or X.ndim < 2:
        raise ShapeError(f"correct_bottom needs X and O of one (..., m, n) shape, got {tuple(X.shape)} and {tuple(O.shape)}")
    m, n = X.shape[-2:]
    if m > n:
        raise ShapeError(f"correct_bottom expects rows <= cols (transpose first), got {m}x{n}")
    b = bottom_count(m, fraction)
    X64 = X.to(torch.float64)
    if X64.numel() == 0 or b == 0:
        return O.clone(), X64.new_zeros(*X.shape[:-2], m)
    evals, Q = torch.linalg.eigh(X64 @ X64.mT)  # ascending
    QB = Q[..., :b]                              # (…, m, b)
    # Directions below the Gram's resolution (λ ≤ m·ε·λ_max) are null: their rows of Q_BᵀX are
    # zeroed, so polar() drops them and they map to 0.
    keep = evals[..., :b] > null_level(m) * evals[..., -1:]
    Y = (QB.mT @ X64) * keep.unsqueeze(-1).to(X64.dtype)
    O64 = O.to(torch.float64)
    polar_B = polar_exact(Y, dtype=torch.float64)  # (…, b, n): V_Bᵀ rows, a partial isometry
    out = O64 + QB @ (polar_B - QB.mT @ O64)
    frob2 = evals.clamp(min=0).sum(-1, keepdim=True)
    s = (evals.clamp(min=0) / frob2.clamp(min=torch.finfo(torch.float64).tiny)).sqrt().flip(-1)
    return out.to(O.dtype), s


class HybridNS(Orthogonalizer):
    """NS (``schedule`` × ``steps``) plus an exact correction of the weakest directions.

    A call always corrects: ``correction="bottom"`` replaces the bottom ``fraction`` of directions
    by the exact polar factor (float64 Gram eigendecomposition, see the module docstring);
    ``"exact"`` returns polar(G) by SVD. The policy fields (``every``, ``bound``, ``rho``) are read
    by the optimizer, which uses :attr:`bulk` (plain NS) on the other steps.

    Cost of one bottom-corrected call on m×n (m ≤ n, b = ⌈f·m⌉): NS k(4m²n + 2m³), float64 Gram
    2m²n, eigensolve 9m³, Q_BᵀX, Q_BᵀO and Q_B(·) 6bmn, SVD of the b×n block 6b²n + 22b³.
    """

    kind = "hybrid"

    def __init__(self, schedule: str | Schedule = "jordan", steps: int | None = None, *,
                 correction: str = "bottom", fraction: float = 0.05, every: int = 100,
                 bound: float | None = 0.0, rho: float = FAILURE_RHO, dtype: torch.dtype | None = None,
                 eps: float = 1e-7) -> None:
        if correction not in CORRECTIONS:
            raise ConfigError(f"correction must be one of {CORRECTIONS}, got {correction!r}")
        for name, v in (("fraction", fraction), ("bound", bound), ("rho", rho), ("eps", eps)):
            if isinstance(v, (str, bytes)):
                raise ConfigError(f"{name} must be a number, got {v!r}")
        V.real("fraction", fraction, low=0.0, high=1.0, low_open=True)
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(f"every must be a positive int (correct every k-th step), got {every!r}")
        V.steps("every", every)
        if bound is not None:
            V.real("bound (a failed share; None disables it)", bound, low=0.0, high=1.0, high_open=True)
        V.fraction("rho", rho)
        V.real("eps", eps, low=0.0, high=1.0, low_open=True)
        if steps is not None:
            if isinstance(steps, bool) or not isinstance(steps, int):
                raise ConfigError(f"steps must be a positive int or None, got {steps!r}")
            V.ns_steps("steps", steps)
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ConfigError(f"dtype must be a floating torch dtype or None, got {dtype!r}")
        self.bulk = NewtonSchulz(schedule, steps, dtype=dtype, eps=eps)
        V.ns_steps("steps (the schedule's default_steps)", self.bulk.steps)
        V.ns_coefficients(f"schedule {self.bulk.schedule.name!r}", self.bulk.schedule.coefficients)
        self.correction, self.fraction = correction, float(fraction)
        self.every, self.bound, self.rho = every, (None if bound is None else float(bound)), float(rho)
        self._exact = ExactPolar()

    # --- what one (corrected) call does --------------------------------------------------------
    @property
    def schedule(self) -> Schedule:
        return self.bulk.schedule

    @property
    def steps(self) -> int:
        return self.bulk.steps

    def __call__(self, G, *, want_spectrum=False):
        """Return ``(O, s)``; s (float64, descending) is always returned: the correction computes it."""
        if self.correction == "exact":
            return polar_exact(G, dtype=torch.float64, return_singular_values=True)
        if G.ndim < 2:
            raise ShapeError(f"HybridNS needs a (..., m, n) tensor, got shape {tuple(G.shape)}")
        O = newton_schulz(G, self.bulk.schedule, self.bulk.steps, eps=self.bulk.eps, dtype=self.bulk.dtype)
        transpose = G.shape[-2] > G.shape[-1]
        X, Ot = (G.mT, O.mT) if transpose else (G, O)
        out, s = correct_bottom(X, Ot, self.fraction)
        return (out.mT if transpose else out), s

    def flops(self, m, n):
        if self.correction == "exact":
            return self._exact.flops(m, n)
        r, c = (m, n) if m <= n else (n, m)
        b = bottom_count(r, self.fraction)
        return (ns_flops(r, c, self.steps) + 2 * r * r * c + EIGH_FLOPS_PER_CUBE * r**3
                + 6 * b * r * c + 6 * b * b * c + 22 * b**3)

    def matmuls(self):
        """NS products plus the correction's four (XXᵀ, Q_BᵀX, Q_BᵀO, Q_B·); 0 for the SVD form."""
        return 0 if self.correction == "exact" else ns_matmuls(self.steps) + 4

    def scalar_map(self, s):
        """Output per normalized singular value of one matrix's spectrum ``s`` (last axis).

        Bottom form: the ⌈f·r⌉ smallest map to 1 (to 0 when null, s ≤ √(r·ε₆₄)·s_max), the rest
        follow the NS map.
        """
        s = np.asarray(s, dtype=np.float64)
        if self.correction == "exact" or s.size == 0:
            return (s > 0).astype(np.float64)
        r = s.shape[-1]
        floor = np.sqrt(null_level(r)) * s.max(axis=-1, keepdims=True)
        exact = (s > floor).astype(np.float64)
        out = composed_map(self.schedule, self.steps, s)
        b = bottom_count(r, self.fraction)
        order = np.argsort(s, axis=-1, kind="stable")[..., :b]
        np.put_along_axis(out, order, np.take_along_axis(exact, order, axis=-1), axis=-1)
        return out

    @property
    def label(self):
        tag = "exact" if self.correction == "exact" else f"bottom{self.fraction:g}"
        return (f"{self.schedule.name}+{tag}", self.steps)

    # --- the policy the optimizer applies --------------------------------------------------------
    def bulk_failed_share(self, s) -> float:
        """Share of ``s`` that the plain NS map lifts to less than ρ."""
        s = np.asarray(s, dtype=np.float64)
        return float(np.mean(self.bulk.scalar_map(s) < self.rho)) if s.size else 0.0

    def corrects(self, step: int, failed_share: float | None) -> bool:
        """Correct at ``step``? Step 1, every ``every``-th step, or a failed share above ``bound``."""
        if sampled(step, self.every):
            return True
        return self.bound is not None and failed_share is not None and failed_share > self.bound

    def __repr__(self) -> str:
        return (f"HybridNS(schedule={self.schedule.name!r}, steps={self.steps}, correction={self.correction!r}, "
                f"fraction={self.fraction:g}, every={self.every}, bound={self.bound}, rho={self.rho:g})")


register_orthogonalizer("hybrid", lambda schedule="jordan", steps=None, dtype=None, eps=1e-7:
                        HybridNS(schedule if schedule is not None else "jordan", steps, dtype=dtype, eps=eps))

__all__ = ["CORRECTIONS", "HybridNS", "bottom_count", "correct_bottom", "null_level"]
