"""Exponents over training time: α(t) from windows ending at successive steps, and a verdict
on whether each exponent has stopped moving.

Window value: for every run and (layer_type, rel_depth, q), the geometric mean of s_q over the
samples with end − width < step ≤ end, combined over the group's matrices by geometric mean (as
in :func:`~muonscope.laws.fit.fit_laws`). α(end) is the OLS slope of −log s against log M over
all runs (seeds pooled) with the sizes-then-seeds bootstrap interval of
:func:`~muonscope.laws.powerlaw.fit_power_law`, and also per seed.

Verdict: the drift of an exponent is the OLS slope of α(end) against end over the windows ending
in the last ``last_frac`` of training, in α units per 1000 steps (pooled runs), with a seed
interval (mean ± t·sd/√n over per-seed drifts). It is *converged* when |drift| ≤ ``tolerance``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.special import stdtrit

from muonscope.errors import FitError
from muonscope.laws.powerlaw import fit_power_law
from muonscope.laws.stabilize import check_records, select_source

TOLERANCE = 0.05  # |dα/dt| per 1000 steps below which an exponent counts as converged


def window_values(df: pd.DataFrame, ends, width: int = 200, qs=None, *, source: str | None = None) -> pd.DataFrame:
    """One row per (run, layer_type, rel_depth, q, end): model_params, seed, log_value, n_samples."""
    from muonscope.spectra.metrics import quantile_column

    if not (isinstance(width, int) and width > 0):
        raise FitError(f"window width must be a positive number of steps, got {width!r}")
    qs = check_records(df, qs)
    df = select_source(df, source)
    seed = df["seed"] if "seed" in df.columns else pd.Series(0, index=df.index)
    base = df.assign(_seed=seed.fillna(0).astype(int), _depth=df["rel_depth"].round(3).fillna(-1.0))
    frames = []
    for end in sorted({int(e) for e in ends}):
        w = base[(base["step"] > end - width) & (base["step"] <= end)]
        if w.empty:
            continue
        for q in qs:
            col = quantile_column(q)
            v = w[w[col] > 0].assign(_log=lambda d, c=col: np.log(d[c].astype(np.float64)))
            per_matrix = v.groupby(["run_id", "param"], sort=False).agg(
                layer_type=("layer_type", "first"), rel_depth=("_depth", "first"), model_params=("model_params", "first"),
                seed=("_seed", "first"), log_value=("_log", "mean"), n_samples=("_log", "size")).reset_index()
            g = per_matrix.groupby(["run_id", "layer_type", "rel_depth"], sort=True).agg(
                model_params=("model_params", "first"), seed=("seed", "first"), log_value=("log_value", "mean"),
                n_samples=("n_samples", "min")).reset_index()
            frames.append(g.assign(q=float(q), end=end))
    if not frames:
        raise FitError("no spectral samples fall inside any window; check the window ends against the recorded steps")
    return pd.concat(frames, ignore_index=True)


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    xc = x - x.mean()
    return float(xc @ (y - y.mean()) / (xc @ xc))


def alpha_over_time(df: pd.DataFrame, ends=None, *, width: int = 200, qs=None, source: str | None = None,
                    n_boot: int = 1000, level: float = 0.95, seed: int = 0, every: int = 100) -> pd.DataFrame:
    """α(end) per (layer_type, rel_depth, q) and window end; default ends every ``every`` steps
    from ``width`` to the last recorded step.

    Columns: layer_type, rel_depth, q, end, alpha, alpha_lo, alpha_hi (bootstrap over sizes and
    seeds), n_sizes, n_runs, and alpha_seed{k} per seed with 3 or more sizes."""
    if ends is None:
        last = int(df["step"].max())
        ends = list(range(width, last + 1, every))
        if not ends or ends[-1] != last:
            ends.append(last)
    wv = window_values(df, ends, width, qs, source=source)
    rows = []
    rng_seed = seed
    for (lt, depth, q, end), g in wv.groupby(["layer_type", "rel_depth", "q", "end"], sort=True):
        if g["model_params"].nunique() < 3:
            continue
        fit = fit_power_law(g["model_params"].to_numpy(np.float64), np.exp(g["log_value"].to_numpy()),
                            layer_type=lt, rel_depth=depth, q=q, n_boot=n_boot, level=level, seed=rng_seed)
        rng_seed += 1
        row = {"layer_type": lt, "rel_depth": float("nan") if depth == -1.0 else float(depth), "q": float(q),
               "end": int(end), "alpha": fit.alpha, "alpha_lo": fit.alpha_ci[0], "alpha_hi": fit.alpha_ci[1],
               "n_sizes": int(g["model_params"].nunique()), "n_runs": len(g)}
        for s, gs in g.groupby("seed"):
            if gs["model_params"].nunique() >= 3:
                row[f"alpha_seed{int(s)}"] = -_slope(np.log(gs["model_params"].to_numpy(np.float64)),
                                                     gs["log_value"].to_numpy())
        rows.append(row)
    if not rows:
        raise FitError("no (layer type, depth, q) group has runs at 3 or more sizes in any window")
    return pd.DataFrame(rows)


def convergence_table(alpha_t: pd.DataFrame, *, last_frac: float = 0.5, tolerance: float = TOLERANCE,
                      level: float = 0.95) -> pd.DataFrame:
    """Per exponent: α at the last window, drift per 1000 steps over the last ``last_frac`` of the
    window ends (pooled, and mean with t-interval over seeds), and the verdict."""
    if not (0 < last_frac <= 1):
        raise FitError(f"last_frac must lie in (0, 1], got {last_frac}")
    if not (math.isfinite(tolerance) and tolerance > 0):
        raise FitError(f"tolerance must be positive, got {tolerance}")
    seed_cols = sorted(c for c in alpha_t.columns if c.startswith("alpha_seed"))
    rows = []
    for (lt, depth, q), g in alpha_t.groupby(["layer_type", alpha_t["rel_depth"].fillna(-1.0), "q"], sort=True):
        g = g.sort_values("end")
        first, last = g["end"].min(), g["end"].max()
        tail = g[g["end"] >= last - last_frac * (last - first)]
        if len(tail) < 2:
            tail = g.tail(2)
        x = tail["end"].to_numpy(np.float64) / 1000.0
        drift = _slope(x, tail["alpha"].to_numpy()) if len(tail) >= 2 else float("nan")
        per_seed = [_slope(x, tail[c].to_numpy()) for c in seed_cols if tail[c].notna().all()]
        n = len(per_seed)
        if n >= 2:
            m, sd = float(np.mean(per_seed)), float(np.std(per_seed, ddof=1))
            half = float(stdtrit(n - 1, 0.5 + level / 2)) * sd / math.sqrt(n)
            lo, hi = m - half, m + half
        else:
            lo = hi = float("nan")
        fin = g.iloc[-1]
        seeds_last = [fin[c] for c in seed_cols if pd.notna(fin.get(c))]
        rows.append({
            "layer_type": lt, "rel_depth": float("nan") if depth == -1.0 else float(depth), "q": float(q),
            "end": int(last), "alpha": float(fin["alpha"]), "alpha_lo": float(fin["alpha_lo"]),
            "alpha_hi": float(fin["alpha_hi"]),
            "alpha_seed_sd": float(np.std(seeds_last, ddof=1)) if len(seeds_last) >= 2 else float("nan"),
            "n_sizes": int(fin["n_sizes"]), "n_seeds": len(seeds_last),
            "drift_per_1k": drift, "drift_lo": lo, "drift_hi": hi, "tolerance": tolerance,
            "converged": bool(abs(drift) <= tolerance) if math.isfinite(drift) else False,
            "verdict": ("converged" if math.isfinite(drift) and abs(drift) <= tolerance
                        else f"still drifting ({drift:+.3f} per 1000 steps)" if math.isfinite(drift)
                        else "not assessed (one window)"),
        })
    return pd.DataFrame(rows)


def verdicts(table: pd.DataFrame) -> dict:
    """Convergence table as the ``Laws.convergence`` mapping."""
    from muonscope.laws.fit import convergence_key

    return {convergence_key(r.layer_type, r.rel_depth, r.q): {
        "converged": bool(r.converged), "drift_per_1k": float(r.drift_per_1k), "tolerance": float(r.tolerance),
        "end": int(r.end)} for r in table.itertuples()}
