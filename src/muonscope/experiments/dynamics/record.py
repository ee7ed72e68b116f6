"""Writing dynamics trajectories into run stores (the one place that talks to the store).

One run per (optimizer, seed). Spectral rows use param ``"W"`` with ``source="weight"`` for the
weight matrix itself (the object whose spectrum the dynamics experiments study) and
``source="ns_input"`` for the matrix the update rule was applied to (gradient or momentum), with
the columns of the spectral record (layer_type ``"other"``, block −1, rel_depth NaN,
model_params = rows·cols, the full normalized spectrum as a list). Scalars go to ``metrics``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from muonscope.conventions import FAILURE_RHO
from muonscope.spectra.monitor import DEFAULT_QUANTILES, spectrum_record
from muonscope.spectra.store import RunStore


def open_run(path: str | os.PathLike, meta: dict, *, overwrite: bool = False) -> RunStore:
    """Create the run directory ``path`` (``overwrite`` replaces an existing run's files)."""
    path = Path(path)
    if overwrite and (path / "run.json").exists():
        import shutil

        shutil.rmtree(path)
    return RunStore.create(path, meta, flush_rows=10**9, flush_seconds=1e9)


def scalar_map_for(ns_label: tuple[str, int]):
    """The map s ↦ output singular value of an update rule: NS composition, exact (1 for s > 0),
    or None for rules that are not orthogonalizers."""
    name, steps = ns_label
    if name == "exact":
        return lambda s: (np.asarray(s) > 0).astype(np.float64)
    if steps > 0:
        from muonscope.orth.analysis import composed_map

        return lambda s: composed_map(name, steps, np.asarray(s, dtype=np.float64))
    return None


def spectral_row(step: int, sigma: np.ndarray, *, source: str, rows: int, cols: int,
                 ns_label: tuple[str, int], quantiles: Sequence[float] = DEFAULT_QUANTILES,
                 param: str = "W", rho: float = FAILURE_RHO) -> dict | None:
    """One spectral record from the singular values ``sigma`` of a rows×cols matrix; for
    ``source="ns_input"`` also ns_out_min and frac_failed (share of directions mapped below ρ)."""
    sigma = np.asarray(sigma, dtype=np.float64)
    frob = float(np.linalg.norm(sigma))
    if sigma.size == 0 or not np.isfinite(frob) or frob == 0.0:
        return None
    s = np.sort(sigma)[::-1] / frob
    rec = {
        "step": int(step), "param": param, "layer_type": "other", "block": -1,
        "rel_depth": float("nan"), "rows": int(rows), "cols": int(cols),
        "model_params": int(rows * cols), "frob_norm": frob, "ns_schedule": ns_label[0],
        "ns_steps": int(ns_label[1]), "source": source, "process_rank": 0,
        "ns_out_min": float("nan"), "frac_failed": float("nan"), "rho": float("nan"),
    }
    smap = scalar_map_for(ns_label) if source == "ns_input" else None
    rec.update(spectrum_record(s, quantiles, scalar_map=smap, rho=rho))
    rec["spectrum"] = [float(x) for x in s]
    return rec


def metric_rows(step: int, values: dict[str, float]) -> list[dict]:
    return [{"step": int(step), "name": k, "value": float(v)} for k, v in values.items()]


def write_run(path: str | os.PathLike, meta: dict, spectra: Iterable[dict], metrics: Iterable[dict],
              *, overwrite: bool = False) -> Path:
    """Write a complete run (meta, spectral rows, metric rows) and close it."""
    store = open_run(path, meta, overwrite=overwrite)
    store.append_spectra([r for r in spectra if r is not None])
    store.append_metrics(list(metrics))
    store.close()
    return Path(path)


def jsonable(obj):
    """Numpy arrays/scalars → lists/floats, NaN/inf → None; dicts, lists and tuples recursed."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def write_json(path: str | os.PathLike, obj) -> Path:
    """Write ``obj`` as indented JSON (see :func:`jsonable`)."""
    import json

    from muonscope._atomic import atomic_write

    return atomic_write(Path(path), json.dumps(jsonable(obj), indent=1, sort_keys=False) + "\n")
