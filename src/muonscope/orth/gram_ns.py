"""Gram Newton–Schulz: the NS map iterated on the m×m Gram matrix instead of the m×n input.

For X = G/(‖G‖_F·f) (m ≤ n after transposing) every NS step is X ← P(XXᵀ)·X with the polynomial
P(R) = aI + bR + cR². Since P(R) commutes with R, k steps equal Q·X₀ with Q = P₁P₂⋯P_k, and each
step's Gram matrix follows from the previous one without touching X::

    R ← X₀X₀ᵀ,  Q ← I
    per step:  P = aI + bR + cR²,  Q ← Q·P,  R ← P·R·P
    output:    Q·X₀

(Dao AI Lab, 2026). In exact arithmetic each singular value follows the same scalar map as
standard NS (:func:`muonscope.orth.analysis.composed_map`). Only the first and last products
touch the n side: 4m²n + O(k·m³) FLOPs instead of k(4m²n + 2m³), a saving once n/m ≳ 2.

Round-off accumulates in R over the steps (R stops being the Gram matrix of QX₀), so low precision
needs *restarts*: after step j, X ← Q·X, R ← XXᵀ, Q ← I. ``restarts`` lists those j. Measured
against the exact float64 map (tests/test_gram_ns.py, BENCHMARKS.md): bf16 without restarts blows
up on decaying spectra; one restart after step 2 (the published fp16 recipe) stays bounded in
bf16 but with several times the error of standard bf16 NS; restarts after steps 2 and 3 keep
standard-bf16 accuracy across Jordan, Polar Express and dion5 schedules. Defaults per dtype:
:func:`default_restarts`.

Guard: a schedule with large coefficients (designed ones for tiny ℓ) can still drive R off in low
precision. Every output is checked against the map's bound, ‖O‖_F ≤ 1.5·max p·√r (one norm per
matrix); a matrix that is not finite or exceeds it is recomputed by standard NS, with a
:class:`GramFallbackWarning`. A Gram-NS output therefore never leaves standard NS's error class by
more than the bound allows.

Compute dtype (``dtype=None``): fp16 on CUDA (fast there, and 3 more mantissa bits than bf16),
else :func:`~muonscope.orth.matrix_ns.default_compute_dtype` (bf16 where bf16 GEMM is fast, fp32
elsewhere; fp16 GEMM is emulated on most CPUs).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable
from functools import lru_cache

import torch

from muonscope.errors import ConfigError
from muonscope.orth.analysis import gram_default_restarts, gram_ns_cost, output_band
from muonscope.orth.matrix_ns import (
    NS_DTYPE_ENV,
    default_compute_dtype,
    empty_gram,
    finish,
    gram_fp32,
    newton_schulz,
    side_mm,
    small_gram,
    start,
    with_lead,
)
from muonscope.orth.schedules import Schedule


def default_restarts(dtype: torch.dtype, steps: int) -> tuple[int, ...]:
    """Safe restart positions for ``steps`` steps in ``dtype``
    (:func:`muonscope.orth.analysis.gram_default_restarts`: bf16 2, 3; fp16 2; fp32 4; fp64 none)."""
    return gram_default_restarts(str(dtype).removeprefix("torch."), steps)


def check_restarts(restarts: Iterable[int] | None, steps: int) -> tuple[int, ...] | None:
    """Restart positions as a sorted tuple of distinct step numbers in [1, steps) (None: default)."""
    if restarts is None:
        return None
    try:
        pos = sorted({int(j) for j in restarts})
        ok = all(not isinstance(j, bool) and float(j) == int(j) for j in restarts)
    except (TypeError, ValueError):
        ok = False
    if not ok or any(j < 1 for j in pos):
        raise ConfigError(f"Gram NS restarts must be step numbers >= 1 (restart after that step), got {restarts!r}")
    return tuple(j for j in pos if j < steps)


def _mm(C, A, B, *, beta: float, alpha: float = 1.0):
    """beta·C + alpha·A·B, batched or not."""
    return (torch.baddbmm if A.ndim == 3 else torch.addmm)(C, A, B, beta=beta, alpha=alpha)


def _apply(Q, X: torch.Tensor, tall: bool) -> torch.Tensor:
    """Q·X (wide) or X·Q (tall) for Q a matrix or a pending factor (a, Z) = aI + Z (then
    aX + ZX in one fused GEMM)."""
    if isinstance(Q, tuple):
        return side_mm(X, Q[1], tall, Q[0])
    return X @ Q if tall else Q @ X


GUARD_FACTOR = 1.5  # allowed ‖O‖_F / (max p · √r): bf16 round-off moves outputs by a few percent


class GramFallbackWarning(RuntimeWarning):
    """Gram NS left the map's bound on some matrices; they were recomputed by standard NS."""


@lru_cache(maxsize=256)
def _map_peak(schedule: Schedule, steps: int) -> float:
    return output_band(schedule, steps, 1e-12).high


def _guard(out: torch.Tensor, G: torch.Tensor, schedule: Schedule, steps: int, eps: float,
           dtype: torch.dtype) -> torch.Tensor:
    """``out`` with every matrix outside ‖O‖_F ≤ GUARD_FACTOR·max p·√r replaced by standard NS."""
    r = min(out.shape[-2:])
    limit = GUARD_FACTOR * max(_map_peak(schedule, steps), 1.0) * math.sqrt(r)
    wide = torch.promote_types(out.dtype, torch.float32)  # fp32 accumulation for half-width outputs
    norms = torch.linalg.vector_norm(out, dim=(-2, -1), dtype=wide)
    bad = ~(norms <= limit)
    if not bool(bad.any()):
        return out
    idx = bad.reshape(-1).nonzero().reshape(-1)
    warnings.warn(f"Gram NS ({schedule.name} x{steps}, {str(dtype).removeprefix('torch.')}) left the map's bound "
                  f"on {idx.numel()} of {bad.numel()} matrices of shape {tuple(out.shape[-2:])} "
                  f"(max ||O||_F {float(norms.nan_to_num(math.inf).max()):.3g} > {limit:.3g}); they were "
                  "recomputed by standard NS", GramFallbackWarning, stacklevel=4)
    flat = out.reshape(-1, *out.shape[-2:]).clone()
    flat[idx] = newton_schulz(G.reshape(-1, *G.shape[-2:])[idx], schedule, steps, eps=eps, dtype=dtype).to(out.dtype)
    return flat.reshape(out.shape)


def gram_compute_dtype(device: torch.device | str) -> torch.dtype:
    """Gram NS's compute dtype when none is given: fp16 on CUDA, the NS default elsewhere."""
    if torch.device(device).type == "cuda" and not os.environ.get(NS_DTYPE_ENV, "").strip():
        return torch.float16
    return default_compute_dtype(device)


def gram_newton_schulz(
    G: torch.Tensor,
    schedule: str | Schedule = "jordan",
    steps: int | None = None,
    *,
    restarts: Iterable[int] | None = None,
    eps: float = 1e-7,
    dtype: torch.dtype | None = None,
    return_gram: bool = False,
    overwrite: bool = False,
    guard: bool = True,
):
    """Approximate polar factor of ``G`` (…, m, n) by ``steps`` Gram-NS steps of ``schedule``.

    Same contract as :func:`muonscope.orth.matrix_ns.newton_schulz` (G's shape and dtype out; with
    ``return_gram`` also A₀ = GGᵀ/‖G‖_F² in fp32 or wider; tall G iterates on GᵀG and returns
    X₀·Q). ``restarts``: steps after which X and R are recomputed from the running product (None:
    :func:`default_restarts` of the dtype). ``overwrite``: normalize G in place (caller's scratch).
    ``guard``: recompute outputs that leave the map's bound by standard NS (see the module docstring).
    """
    dtype = dtype or gram_compute_dtype(G.device)
    sched, steps, coeffs, X, tall, lead = start(G, schedule, steps, dtype, eps, overwrite)
    restart = check_restarts(restarts, steps)
    restart = default_restarts(dtype, steps) if restart is None else restart
    gram = None
    if X.numel() == 0:
        if return_gram:
            gram = empty_gram(X, dtype)
    else:
        R = small_gram(X, tall)
        if return_gram:
            gram = (R if R.dtype.itemsize >= 4 else gram_fp32(G, X, tall, sched.safety, eps)) * sched.safety**2
        # Q is kept as None (the identity), a pending one-step factor (a, Z) meaning aI + Z, or a
        # matrix: a one-step factor is never rounded as a matrix (its aI part would lose bits in
        # bf16); products with it fold a into the GEMM's accumulation, as standard NS does.
        Q = None
        for i, (a, b, c) in enumerate(coeffs, start=1):
            Z = _mm(R, R, R, beta=b, alpha=c)  # bR + cR²; this step's factor is P = aI + Z
            if Q is None:
                Q = (a, Z)
            elif isinstance(Q, tuple):  # (a₀I + Z₀)(aI + Z) = a₀aI + a₀Z + aZ₀ + Z₀Z
                a0, Z0 = Q
                Q = _mm(torch.add(Z.mul(a0), Z0, alpha=a), Z0, Z, beta=1.0)
                Q.diagonal(dim1=-2, dim2=-1).add_(a0 * a)
            else:
                Q = _mm(Q, Q, Z, beta=a)  # Q·P = aQ + QZ
            if i == len(coeffs):
                break
            if i in restart:
                X, Q = _apply(Q, X, tall), None
                R = small_gram(X, tall)
            else:
                RP = _mm(R, R, Z, beta=a)  # R·P = aR + RZ
                R = _mm(RP, Z, RP, beta=a)  # P·R·P = a·RP + Z·RP
        if Q is not None:
            X = _apply(Q, X, tall)
    out = finish(X, lead, G.dtype)
    if guard and out.numel() != 0:
        out = _guard(out, G, sched, steps, eps, dtype)
    return (out, with_lead(gram, lead)) if return_gram else out


def gram_flops(m: int, n: int, steps: int, restarts: Iterable[int] = ()) -> int:
    """FLOPs of one Gram-NS call (:func:`muonscope.orth.analysis.gram_ns_cost`)."""
    return gram_ns_cost(m, n, steps, tuple(restarts))[0]
