"""Paired comparisons across seeds: each seed runs every optimizer on the same problem instance.

For paired values aₛ, bₛ (s = 1…n) with differences δₛ = aₛ − bₛ: mean δ̄, standard deviation
s_δ, the standardized paired effect size d_z = δ̄/s_δ, a 95% t-interval for δ̄, the exact
Wilcoxon signed-rank p-value (two-sided) and the share of seeds with a > b.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as sps

from muonscope.errors import ConfigError


@dataclass(frozen=True)
class PairedEffect:
    metric: str
    a: str
    b: str
    n: int
    mean_a: float
    mean_b: float
    mean_diff: float
    sd_diff: float
    d_z: float
    ci95_low: float
    ci95_high: float
    wilcoxon_p: float
    frac_a_greater: float

    def to_dict(self) -> dict:
        return asdict(self)


def paired_effect(a, b, *, metric: str = "", label_a: str = "a", label_b: str = "b") -> PairedEffect:
    """Paired statistics of a − b over seeds (NaN pairs are dropped)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ConfigError(f"paired comparison needs equally many values, got {a.size} and {b.size}")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    n = int(a.size)
    nan = float("nan")
    if n == 0:
        return PairedEffect(metric, label_a, label_b, 0, nan, nan, nan, nan, nan, nan, nan, nan, nan)
    d = a - b
    mean = float(d.mean())
    sd = float(d.std(ddof=1)) if n > 1 else nan
    if n > 1 and sd > 0:
        half = float(sps.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
        dz = mean / sd
    else:
        half, dz = nan, (nan if mean == 0 or n < 2 else math.copysign(math.inf, mean))
    if n > 1 and np.any(d != 0):
        p = float(sps.wilcoxon(a, b, zero_method="wilcox", alternative="two-sided").pvalue)
    else:
        p = nan
    return PairedEffect(metric, label_a, label_b, n, float(a.mean()), float(b.mean()), mean, sd, dz,
                        mean - half, mean + half, p, float(np.mean(a > b)))
