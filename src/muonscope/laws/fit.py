"""From spectral records of runs at several model sizes to per-layer-type power laws.

Pipeline: :func:`~muonscope.laws.stabilize.stabilize` each (run, matrix, q) trajectory; keep the
stable ones; within a run, matrices of the same (layer_type, rel_depth) are combined by geometric
mean (one point per run and group; rel_depth rounded to 3 decimals so slightly different depth
grids of different models line up); fit log s = log C − α log M per (layer_type, rel_depth, q);
test per (layer_type, rel_depth) whether the quantiles share α. Groups with fewer than 3 sizes of
usable runs are listed in ``skipped`` with the reason, never fitted silently.

Which trajectories are used: the stable ones at their stabilized value, and the flagged ones whose
tail drift |d log s/dt| is at most ``drift_tolerance`` (log units per 1000 steps; default 0.25,
i.e. under 2.5 % per 100 steps) at their tail value, so that a burn-in rule tuned for small models
does not silently drop the largest, slowest ones. Every trajectory's row in ``stabilization``
says whether it was used and why (``used``, ``use``); :meth:`Laws.excluded` lists the rest.

Width rule: per group, r = min(rows, cols) is fitted as r ∝ M^β; a spectrum of unchanged shape
gives α = β/2 (flat spectrum: s = 1/√r), reported next to every exponent as ``alpha_flat``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from muonscope.errors import FitError
from muonscope.laws.powerlaw import (
    PowerLawFit,
    SharedExponentTest,
    fit_power_law,
    shared_exponent_test,
)
from muonscope.laws.stabilize import StabilizeSettings, stabilize


def same_depth(a: float, b: float) -> bool:
    """Depth keys match (both unknown, or equal after rounding to 3 decimals)."""
    if a is None or b is None or (isinstance(a, float) and math.isnan(a)) or (isinstance(b, float) and math.isnan(b)):
        return (a is None or math.isnan(a)) and (b is None or math.isnan(b))
    return round(float(a), 3) == round(float(b), 3)


@dataclass
class Laws:
    """Fitted power laws plus everything a report needs to show how they were obtained.

    ``stabilization``: one row per (run, matrix, q) with burn-in step, stable flag, reason, value
    and CI (see :func:`stabilize`). ``fits``: one :class:`PowerLawFit` per fitted group.
    ``shared``: the shared-exponent tests. ``skipped``: groups not fitted, with the reason.
    ``runs``: per run: run_id, model_params, n_blocks. ``settings``: how it was all computed.
    ``convergence``: optional verdicts per (layer_type, rel_depth, q) from
    :func:`~muonscope.laws.convergence.convergence_table` (key ``"{layer_type}|{rel_depth}|{q}"``).
    """

    fits: list[PowerLawFit]
    stabilization: pd.DataFrame
    shared: list[SharedExponentTest] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    runs: list[dict] = field(default_factory=list)
    quantiles: list[float] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    convergence: dict = field(default_factory=dict)

    def excluded(self) -> pd.DataFrame:
        """Trajectories left out of the fits: run, matrix, q, model size and why."""
        st = self.stabilization
        if "used" not in st.columns:
            st = st.assign(used=st["stable"], use=st["reason"])
        cols = ["run_id", "param", "q", "model_params", "use", "tail_drift"]
        return st.loc[~st["used"].astype(bool), [c for c in cols if c in st.columns]].reset_index(drop=True)

    def converged(self, layer_type: str, rel_depth: float, q: float) -> bool | None:
        """Convergence verdict of one exponent over training time (None: not assessed)."""
        v = self.convergence.get(convergence_key(layer_type, rel_depth, q))
        return None if v is None else bool(v["converged"])

    def layer_types(self) -> list[str]:
        return sorted({f.layer_type for f in self.fits})

    def depths(self, layer_type: str, q: float | None = None) -> list[float]:
        """Fitted rel_depth values of ``layer_type`` (NaN = unknown depth), ascending."""
        ds = {f.rel_depth for f in self.fits if f.layer_type == layer_type and (q is None or f.q == q)}
        return sorted(ds, key=lambda d: (math.isnan(d), d))

    def get(self, layer_type: str, rel_depth: float, q: float) -> PowerLawFit:
        for f in self.fits:
            if f.layer_type == layer_type and same_depth(f.rel_depth, rel_depth) and math.isclose(f.q, q):
                return f
        raise FitError(f"no fit for layer type {layer_type!r}, depth {rel_depth}, q={q:g}; "
                       f"fitted layer types: {', '.join(self.layer_types()) or 'none'}")

    def select(self, *, layer_type: str | None = None, q: float | None = None) -> list[PowerLawFit]:
        return [f for f in self.fits if (layer_type is None or f.layer_type == layer_type)
                and (q is None or math.isclose(f.q, q))]

    def exponent_table(self) -> pd.DataFrame:
        """One row per fit: layer_type, rel_depth, q, alpha with intervals, Huber α, C, R², n, α_flat."""
        rows = [{
            "layer_type": f.layer_type, "rel_depth": f.rel_depth, "q": f.q, "alpha": f.alpha,
            "alpha_lo": f.alpha_ci[0], "alpha_hi": f.alpha_ci[1],
            "alpha_t_lo": f.alpha_ci_t[0], "alpha_t_hi": f.alpha_ci_t[1],
            "alpha_huber": f.alpha_huber, "C": f.c, "r2": f.r2, "sigma": f.sigma,
            "n_points": f.n_points, "n_sizes": f.n_sizes, "alpha_flat": f.alpha_flat,
        } for f in self.fits]
        return pd.DataFrame(rows)

    def alpha_by_q(self) -> pd.DataFrame:
        """α pivoted: rows (layer_type, rel_depth), one column per q."""
        t = self.exponent_table()
        if t.empty:
            return t
        return t.pivot_table(index=["layer_type", "rel_depth"], columns="q", values="alpha", dropna=False)

    def to_dict(self) -> dict:
        from muonscope.laws.io import laws_to_dict

        return laws_to_dict(self)

    def save(self, path) -> None:
        from muonscope.laws.io import save_laws

        save_laws(self, path)

    @classmethod
    def load(cls, path) -> Laws:
        from muonscope.laws.io import load_laws

        return load_laws(path)


def _width_exponent(sizes: np.ndarray, widths: np.ndarray) -> float:
    ok = (widths > 0) & (sizes > 0)
    x, r = np.log(sizes[ok]), np.log(widths[ok])
    if np.unique(x).size < 2:
        return float("nan")
    xc = x - x.mean()
    return float(xc @ (r - r.mean()) / (xc @ xc))


def convergence_key(layer_type: str, rel_depth: float, q: float) -> str:
    depth = "nan" if rel_depth is None or math.isnan(rel_depth) else f"{round(float(rel_depth), 3):g}"
    return f"{layer_type}|{depth}|{float(q):g}"


DRIFT_TOLERANCE = 0.25  # log units per 1000 steps


def mark_used(stab: pd.DataFrame, drift_tolerance: float | None) -> pd.DataFrame:
    """Add ``used``, ``use`` (why) and ``value_used`` to a stabilization table."""
    stable = stab["stable"].astype(bool)
    tol = -1.0 if drift_tolerance is None else float(drift_tolerance)
    kept = ~stable & stab["tail_drift"].abs().le(tol) & np.isfinite(stab["tail_value"]) & (stab["tail_value"] > 0)
    use = np.where(stable, "stable", np.where(
        kept, [f"kept at tail value: drift {d:+.3f}/1000 steps within ±{tol:g}" for d in stab["tail_drift"]],
        "excluded: " + stab["reason"].astype(str)))
    return stab.assign(used=stable | kept, use=use, value_used=np.where(stable, stab["value"], stab["tail_value"]))


def fit_laws(df: pd.DataFrame, qs=None, *, source: str | None = None,
             settings: StabilizeSettings | None = None, level: float = 0.95, n_boot: int = 2000,
             seed: int = 0, drift_tolerance: float | None = DRIFT_TOLERANCE) -> Laws:
    """Stabilize, aggregate and fit every (layer_type, rel_depth, q) group of spectral records.

    ``drift_tolerance=None`` uses stable trajectories only (the strict burn-in rule)."""
    if drift_tolerance is not None and not (math.isfinite(drift_tolerance) and drift_tolerance >= 0):
        raise FitError(f"drift_tolerance must be a non-negative number (log units per 1000 steps) or None, "
                       f"got {drift_tolerance!r}")
    settings = settings or StabilizeSettings()
    stab = mark_used(stabilize(df, qs, source=source, settings=settings), drift_tolerance)
    sizes_all = sorted(stab["model_params"].unique().tolist())
    if len(sizes_all) < 3:
        raise FitError(f"power laws need runs at 3 or more model sizes; the records hold "
                       f"{len(sizes_all)} ({', '.join(f'{m:.3g}' for m in sizes_all)}): add runs at more sizes")
    qs = sorted(stab["q"].unique().tolist())
    st = stab.assign(_depth=stab["rel_depth"].fillna(-1.0))
    good = st[st["used"]].assign(_logv=lambda d: np.log(d["value_used"]), _logw=lambda d: np.log(
        np.minimum(d["rows"], d["cols"]).where(lambda r: r > 0).astype(np.float64)))
    per_run = (good.groupby(["layer_type", "_depth", "q", "run_id"], sort=True)
               .agg(model_params=("model_params", "first"), logv=("_logv", "mean"),
                    logw=("_logw", "mean"), lo=("ci_low", lambda v: float(np.exp(np.log(v).mean()))),
                    hi=("ci_high", lambda v: float(np.exp(np.log(v).mean()))))
               .reset_index())
    fits: list[PowerLawFit] = []
    skipped: list[dict] = []
    rng_seed = seed
    for (lt, depth, q), g_all in st.groupby(["layer_type", "_depth", "q"], sort=True):
        rel = float("nan") if depth == -1.0 else float(depth)
        g = per_run[(per_run.layer_type == lt) & (per_run._depth == depth) & (per_run.q == q)]
        n_sizes = g["model_params"].nunique()
        if n_sizes < 3:
            flagged = g_all[~g_all["used"]]
            why = (f"{n_sizes} model size(s) with usable runs (need 3)"
                   + (f"; {flagged.run_id.nunique()} run(s) flagged: {flagged.reason.iloc[0]}" if len(flagged) else ""))
            skipped.append({"layer_type": lt, "rel_depth": rel, "q": float(q), "reason": why})
            continue
        r_exp = _width_exponent(g["model_params"].to_numpy(np.float64), np.exp(g["logw"].to_numpy()))
        fits.append(fit_power_law(
            g["model_params"].to_numpy(np.float64), np.exp(g["logv"].to_numpy()), run_ids=g["run_id"].tolist(),
            layer_type=lt, rel_depth=rel, q=float(q), level=level, n_boot=n_boot, seed=rng_seed,
            r_exponent=r_exp, value_ci=list(zip(g["lo"], g["hi"], strict=True))))
        rng_seed += 1
    if not fits:
        reasons = "; ".join(sorted({s["reason"] for s in skipped}))[:400]
        raise FitError(f"no group could be fitted: {reasons}")
    shared: list[SharedExponentTest] = []
    if len(qs) >= 2:
        for (lt, depth), g in per_run.groupby(["layer_type", "_depth"], sort=True):
            wide = g.pivot_table(index="run_id", columns="q", values="logv").dropna()
            if wide.shape[1] < 2 or len(wide) < 3:
                continue
            sizes = g.drop_duplicates("run_id").set_index("run_id").loc[wide.index, "model_params"].to_numpy(np.float64)
            if np.unique(sizes).size < 3:
                continue
            shared.append(shared_exponent_test(
                sizes, {float(q): np.exp(wide[q].to_numpy()) for q in wide.columns},
                layer_type=lt, rel_depth=float("nan") if depth == -1.0 else float(depth)))
    runs = []
    for run_id, g in stab.groupby("run_id", sort=True):
        blocks = g["block"][g["block"] >= 0]
        runs.append({"run_id": str(run_id), "model_params": int(g["model_params"].iloc[0]),
                     "n_blocks": int(blocks.max() + 1) if len(blocks) else None,
                     "n_matrices": int(g["param"].nunique()),
                     "n_flagged": int((~g["stable"]).sum()), "n_excluded": int((~g["used"]).sum())})
    cfg = {"source": source, "level": level, "n_boot": n_boot, "seed": seed, "drift_tolerance": drift_tolerance,
           "stabilize": {k: getattr(settings, k) for k in settings.__dataclass_fields__}}
    return Laws(fits=fits, stabilization=stab, shared=shared, skipped=skipped, runs=runs,
                quantiles=[float(q) for q in qs], settings=cfg)
