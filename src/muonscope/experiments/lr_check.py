"""Learning-rate check across sizes: which lr minimizes the validation loss at each size, under
each Muon lr-scaling rule (``adjust_lr_fn``).

A rule transfers across sizes when its best lr is the same at every size; a best lr that falls
(or rises) with width biases the fitted exponents, because larger models then train at an
effectively higher (lower) lr than smaller ones.
"""

from __future__ import annotations

import math

import pandas as pd

from muonscope.errors import StoreError


def lr_check_table(paths) -> pd.DataFrame:
    """One row per finished Muon run: preset, model_params, adjust_lr_fn, lr, seed, steps, final_val_loss."""
    from muonscope.experiments.sweep import summary_row
    from muonscope.spectra.store import find_runs

    cols = ["preset", "model_params", "adjust_lr_fn", "lr", "seed", "steps", "final_val_loss"]
    rows = [{k: r[k] for k in cols} for r in map(summary_row, find_runs(paths))
            if r["optimizer"] == "muon" and r["status"] == "complete"]
    if not rows:
        raise StoreError(f"no finished Muon runs in {', '.join(map(str, paths))}")
    return pd.DataFrame(rows).sort_values(["adjust_lr_fn", "model_params", "lr"]).reset_index(drop=True)


def best_lrs(table: pd.DataFrame) -> pd.DataFrame:
    """Per (rule, size): the best lr, its loss, the loss at the rule's lr nearest to the median
    best lr, and whether the best lr lies at the edge of the grid (then the true optimum may lie outside)."""
    rows = []
    for (fn, m), g in table.groupby(["adjust_lr_fn", "model_params"], sort=True):
        g = g.groupby("lr", as_index=False)["final_val_loss"].mean().sort_values("lr")
        i = int(g["final_val_loss"].idxmin())
        lr = float(g.loc[i, "lr"])
        rows.append({"adjust_lr_fn": fn, "model_params": int(m), "best_lr": lr,
                     "best_val_loss": float(g.loc[i, "final_val_loss"]),
                     "at_grid_edge": lr in (float(g["lr"].min()), float(g["lr"].max())),
                     "n_lrs": len(g)})
    out = pd.DataFrame(rows)
    out["log2_best_lr"] = out["best_lr"].map(math.log2)
    return out
