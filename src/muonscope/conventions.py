"""Conventions shared by every layer (no imports): quantile rank, failure level, null level.

- Quantile rank: s_q is the normalized singular value at descending rank ⌈q·r⌉ (1-based, clipped
  to [1, r]), so s_0.9 is a small one.
- A direction *fails* when the orthogonalizer maps it below ``FAILURE_RHO`` of its ideal value 1.
- Spectra are sampled on step 1 and every ``every``-th step (:func:`sampled`).
- Recipes are shown for the target sizes ``TARGET_SIZES`` unless asked otherwise.
- Normalized singular values below ``NULL_LEVEL`` are numerically null for float32 momenta (the
  round-off floor; e.g. the all-ones direction LayerNorm removes sits at 1e-9–1e-8).
"""

from __future__ import annotations

import math

FAILURE_RHO = 0.1
NULL_LEVEL = 1e-7
TARGET_SIZES = (1.2e8, 7e9, 7e10, 1e12)
PLAN_FORMAT = "muonscope.plan/1"  # per-parameter NS plan files  # model sizes (parameters) recipes are shown for by default


def quantile_rank(r: int, q: float) -> int:
    """1-based descending rank ⌈q·r⌉ of quantile level ``q`` in a spectrum of ``r`` values."""
    if r < 1:
        raise ValueError("a spectrum needs at least one singular value")
    return min(max(math.ceil(q * r - 1e-9), 1), r)


def sampled(step: int, every: int) -> bool:
    """The sampling cadence of monitors and spectrum-driven policies: step 1 and every ``every``-th."""
    return step == 1 or step % every == 0
