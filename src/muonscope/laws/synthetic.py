"""Synthetic spectral records with known power laws (for tests, examples and report previews).

Run i (size M, seed) holds, per matrix (layer type t, block b) and quantile level q, the trajectory

    s_q(step) = C_q · (M/M₀)^(−α_{t,d}) · (1 + A·e^(−step/τ)) · e^(ε_run + ε_step),

with rel_depth d = (b + 1)/n_blocks, C_q = C·(1 − 0.9·q) (so s_0.1 > … > s_0.9), a burn-in
transient of relative amplitude A and time constant τ, a per-run offset ε_run ~ N(0, σ_run²) shared
by all steps and quantiles of the matrix, i.i.d. step noise ε_step ~ N(0, σ_step²) shared by the
quantiles of a step, and independent per-quantile noise N(0, σ_q²). With ``alpha_q_slope`` ≠ 0
the quantiles do not share an exponent: α_q = α + slope·(q − 0.5).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from muonscope.spectra.metrics import quantile_column

DEFAULT_TYPES = ("q", "k", "v", "o", "mlp_up", "mlp_down")


def synthetic_records(sizes: Sequence[float], *, alpha: float | Callable[[str, float], float] = 0.25,
                      c: float = 0.1, m0: float = 1e6, qs: Sequence[float] = (0.1, 0.25, 0.5, 0.75, 0.9),
                      layer_types: Sequence[str] = DEFAULT_TYPES, n_blocks: int = 4,
                      steps: Sequence[int] | None = None, burn_in_amp: float = 2.0, tau: float = 60.0,
                      sigma_step: float = 0.05, sigma_run: float = 0.02, sigma_q: float = 0.01,
                      alpha_q_slope: float = 0.0, seeds: int = 1,
                      width0: int = 64, seed: int = 0) -> pd.DataFrame:
    """Spectral-record DataFrame for runs at ``sizes`` (× ``seeds``) with known exponents.

    ``alpha`` is a number or a function (layer_type, rel_depth) → α; ``c`` is s_0 at M = ``m0``.
    Widths grow like √M (width0 at the smallest size); MLP matrices are width × 4·width.
    """
    rng = np.random.default_rng(seed)
    steps = np.arange(10, 1001, 10) if steps is None else np.asarray(steps)
    afn = alpha if callable(alpha) else (lambda _t, _d: float(alpha))
    rows = []
    for m in sizes:
        width = max(4, int(round(width0 * math.sqrt(m / min(sizes)))))
        for sd in range(seeds):
            run_id = f"synth-{m:.3g}-s{sd}"
            for b in range(n_blocks):
                d = (b + 1) / n_blocks
                for lt in layer_types:
                    shape = (4 * width, width) if lt == "mlp_down" else (width, 4 * width) if lt == "mlp_up" else (width, width)
                    a = afn(lt, d)
                    offset = math.exp(rng.normal(0, sigma_run))
                    noise = rng.normal(0, sigma_step, size=steps.size)
                    trend = (1 + burn_in_amp * np.exp(-steps / tau)) * np.exp(noise)
                    base = {"run_id": run_id, "param": f"blocks.{b}.{lt}.weight", "layer_type": lt, "block": b,
                            "rel_depth": d, "rows": shape[0], "cols": shape[1], "model_params": int(m),
                            "source": "ns_input", "process_rank": 0, "seed": sd}
                    for i, st in enumerate(steps):
                        rec = dict(base, step=int(st))
                        for q in qs:
                            aq = a + alpha_q_slope * (q - 0.5)
                            rec[quantile_column(q)] = (c * (1 - 0.9 * q) * (m / m0) ** (-aq) * offset * trend[i]
                                                       * math.exp(rng.normal(0, sigma_q)))
                        rows.append(rec)
    return pd.DataFrame(rows)
