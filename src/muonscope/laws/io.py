"""Laws JSON (format ``muonscope.laws/1``): fits, stabilization table, tests, skipped groups.

Layout::

    {"format": "muonscope.laws/1", "quantiles": [...], "settings": {...}, "runs": [...],
     "fits": [{"layer_type", "rel_depth", "q", "alpha", "log_c", "c", "alpha_ci", "alpha_ci_t",
               "alpha_huber", "r2", "sigma", "points": [{"run_id", "model_params", "value",
               "ci_low", "ci_high", "residual"}], ...}],
     "shared_exponent": [...], "skipped": [...],
     "stabilization": {"columns": [...], "data": [[...], ...]}}

NaN is written as ``null``. Loading rebuilds the same :class:`~muonscope.laws.fit.Laws` (fits
are reconstructed from their stored fields, so predictions after a round trip are identical).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from muonscope._jsonfile import read_json, write_json
from muonscope.errors import ConfigError
from muonscope.laws.powerlaw import PowerLawFit, SharedExponentTest

FORMAT = "muonscope.laws/1"


def _clean(x):
    """JSON-safe copy: NaN/inf → None, numpy scalars → Python, tuples → lists."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _f(x) -> float:
    return float("nan") if x is None else float(x)


def _fit_to_dict(f: PowerLawFit) -> dict:
    res = f.residuals
    cis = f.value_ci or tuple((float("nan"), float("nan")) for _ in f.sizes)
    return {
        "layer_type": f.layer_type, "rel_depth": f.rel_depth, "q": f.q,
        "alpha": f.alpha, "log_c": f.log_c, "c": f.c, "alpha_se": f.alpha_se, "r2": f.r2, "sigma": f.sigma,
        "alpha_ci": list(f.alpha_ci), "log_c_ci": list(f.log_c_ci), "alpha_ci_t": list(f.alpha_ci_t),
        "alpha_huber": f.alpha_huber, "log_c_huber": f.log_c_huber, "level": f.level,
        "n_boot_used": f.n_boot_used, "n_points": f.n_points, "n_sizes": f.n_sizes,
        "r_exponent": f.r_exponent, "alpha_flat": f.alpha_flat,
        "points": [{"run_id": r, "model_params": m, "value": v, "ci_low": lo, "ci_high": hi, "residual": e}
                   for r, m, v, (lo, hi), e in zip(f.run_ids, f.sizes, f.values, cis, res.tolist(), strict=True)],
    }


def _fit_from_dict(d: dict) -> PowerLawFit:
    pts = d["points"]
    return PowerLawFit(
        layer_type=str(d["layer_type"]), rel_depth=_f(d.get("rel_depth")), q=float(d["q"]),
        sizes=tuple(float(p["model_params"]) for p in pts), values=tuple(float(p["value"]) for p in pts),
        run_ids=tuple(str(p["run_id"]) for p in pts), alpha=float(d["alpha"]), log_c=float(d["log_c"]),
        alpha_se=_f(d["alpha_se"]), r2=_f(d["r2"]), sigma=_f(d["sigma"]),
        alpha_ci=tuple(map(_f, d["alpha_ci"])), log_c_ci=tuple(map(_f, d["log_c_ci"])),
        alpha_ci_t=tuple(map(_f, d["alpha_ci_t"])), alpha_huber=_f(d["alpha_huber"]),
        log_c_huber=_f(d["log_c_huber"]), level=float(d.get("level", 0.95)),
        n_boot_used=int(d.get("n_boot_used", 0)), r_exponent=_f(d.get("r_exponent")),
        value_ci=tuple((_f(p.get("ci_low")), _f(p.get("ci_high"))) for p in pts),
    )


def _shared_to_dict(t: SharedExponentTest) -> dict:
    return {"layer_type": t.layer_type, "rel_depth": t.rel_depth, "ref_q": t.ref_q, "qs": list(t.qs),
            "alphas": list(t.alphas), "slopes": list(t.slopes), "p_values": list(t.p_values),
            "p_value": t.p_value, "n_runs": t.n_runs, "shared": t.shared, "spread": t.spread}


def _shared_from_dict(d: dict) -> SharedExponentTest:
    return SharedExponentTest(str(d["layer_type"]), _f(d.get("rel_depth")), float(d["ref_q"]),
                              tuple(map(float, d["qs"])), tuple(map(float, d["alphas"])),
                              tuple(map(float, d["slopes"])), tuple(map(_f, d["p_values"])),
                              float(d["p_value"]), int(d["n_runs"]), bool(d["shared"]))


def laws_to_dict(laws) -> dict:
    stab = laws.stabilization
    stab_cols = list(stab.columns)
    data = [list(r) for r in stab.itertuples(index=False, name=None)]
    return _clean({
        "format": FORMAT, "quantiles": laws.quantiles, "settings": laws.settings, "runs": laws.runs,
        "fits": [_fit_to_dict(f) for f in laws.fits],
        "shared_exponent": [_shared_to_dict(t) for t in laws.shared],
        "skipped": laws.skipped, "convergence": laws.convergence,
        "stabilization": {"columns": stab_cols, "data": data},
    })


def laws_from_dict(d: dict):
    from muonscope.laws.fit import Laws

    if not isinstance(d, dict) or d.get("format") != FORMAT:
        got = d.get("format") if isinstance(d, dict) else type(d).__name__
        raise ConfigError(f"not a laws file (format {got!r}, expected {FORMAT!r}); create one with `muonscope fit`")
    try:
        stab_d = d.get("stabilization") or {"columns": [], "data": []}
        stab = pd.DataFrame(stab_d["data"], columns=stab_d["columns"])
        for col in ("rel_depth", "value", "ci_low", "ci_high", "log_se", "band", "drift", "tail_value",
                    "tail_drift", "value_used"):
            if col in stab:
                stab[col] = pd.to_numeric(stab[col], errors="coerce").astype(np.float64)
        return Laws(
            fits=[_fit_from_dict(f) for f in d["fits"]], stabilization=stab,
            shared=[_shared_from_dict(t) for t in d.get("shared_exponent", [])],
            skipped=[{**s, "rel_depth": _f(s.get("rel_depth"))} for s in d.get("skipped", [])],
            runs=list(d.get("runs", [])), quantiles=[float(q) for q in d.get("quantiles", [])],
            settings=dict(d.get("settings", {})), convergence=dict(d.get("convergence", {})),
        )
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise ConfigError(f"malformed laws file: {exc!r}; regenerate it with `muonscope fit`") from exc


def save_laws(laws, path: str | os.PathLike) -> Path:
    return write_json(path, laws_to_dict(laws), allow_nan=False)


def load_laws(path: str | os.PathLike):
    path = Path(path)
    d = read_json(path, ConfigError,
                  missing=f"laws file {path} does not exist; create it with `muonscope fit RUNS -o {path}`")
    return laws_from_dict(d)


__all__ = ["FORMAT", "laws_to_dict", "laws_from_dict", "save_laws", "load_laws"]
