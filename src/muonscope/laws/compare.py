"""Side-by-side exponents of two sets of laws (e.g. two model families, or a refit with more seeds).

For every (layer_type, rel_depth, q) fitted in both: α and its interval in each, the number of
sizes each used, the difference, and the excess over each family's same-shape baseline α_flat
(a spectrum whose shape does not change with size gives α = α_flat = β/2, r ∝ M^β), which is what
is comparable across families whose width grows at different rates.
"""

from __future__ import annotations

import pandas as pd

from muonscope.laws.fit import Laws


def compare_exponents(a: Laws, b: Laws, names: tuple[str, str] = ("a", "b")) -> pd.DataFrame:
    na, nb = names
    keys = ["layer_type", "rel_depth", "q"]
    cols = ["alpha", "alpha_lo", "alpha_hi", "n_sizes", "n_points", "alpha_flat"]
    ta = a.exponent_table()[keys + cols].assign(rel_depth=lambda t: t.rel_depth.round(3))
    tb = b.exponent_table()[keys + cols].assign(rel_depth=lambda t: t.rel_depth.round(3))
    m = ta.merge(tb, on=keys, suffixes=(f"_{na}", f"_{nb}"))
    m["delta"] = m[f"alpha_{nb}"] - m[f"alpha_{na}"]
    for n in names:
        m[f"excess_{n}"] = m[f"alpha_{n}"] - m[f"alpha_flat_{n}"]
    m["delta_excess"] = m[f"excess_{nb}"] - m[f"excess_{na}"]
    m["intervals_overlap"] = (m[f"alpha_lo_{na}"] <= m[f"alpha_hi_{nb}"]) & (m[f"alpha_lo_{nb}"] <= m[f"alpha_hi_{na}"])
    return m.sort_values(keys).reset_index(drop=True)
