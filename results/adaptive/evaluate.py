"""Evaluation of adaptive, planned, hybrid and exact orthogonalization against fixed Jordan x5.

Trains the tiny GPT with each method at several sizes and seeds (same init, data order and
validation batches per seed, so methods pair up by seed), one run at a time in this process, and
appends one summary row per finished run to ``results/adaptive/runs.csv``. Re-running skips runs
already summarized and resumes partial ones from their checkpoints.

    .venv/bin/python results/adaptive/evaluate.py run --steps 300 --seeds 0 1 2
    .venv/bin/python results/adaptive/evaluate.py summarize

The static plan comes from laws fitted on the complete runs of ``runs/sweep`` (planned for each
evaluated model's own size, names from that size's sweep run); it is written to
``results/adaptive/plans/{preset}.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RUNS = ROOT / "runs" / "adaptive-eval"
SWEEP = ROOT / "runs" / "sweep"
CSV = HERE / "runs.csv"
PRESETS = ("d48", "d64", "d96")
METHODS = {
    "jordan5": {},
    "adaptive": {"ns_steps": "adaptive", "target_q": 0.5, "rho": 0.1},
    "plan": {},  # filled per preset from the fitted laws
    "hybrid": {"orthogonalizer": "hybrid", "hybrid_every": 10, "hybrid_bound": 0.0, "hybrid_fraction": 0.05},
    "exact": {"orthogonalizer": "exact"},
    "adaptive-q90": {"ns_steps": "adaptive", "target_q": 0.9, "rho": 0.1},
    # the hybrid again, sampled off its every-10th-step probe (steps 1, 7, 14, …): unbiased frac_failed
    "hybrid-offset": {"orthogonalizer": "hybrid", "hybrid_every": 10, "hybrid_bound": 0.0, "hybrid_fraction": 0.05,
                      "monitor_every": 7},
}
NULL_S = 1e-7  # normalized singular values below this are float32 round-off (numerically null)
COLUMNS = ["method", "preset", "seed", "model_params", "steps", "final_val_loss", "final_train_loss",
           "ns_flops", "ns_matmuls", "ns_flops_per_step", "wall_seconds", "tokens_per_s", "frac_failed",
           "frac_failed_nonnull", "frac_failed_last", "mean_ns_steps", "threads"]


def plan_for(preset: str) -> dict:
    """The planner's static plan for ``preset`` from laws fitted on the complete sweep runs."""
    path = HERE / "plans" / f"{preset}.json"
    if path.exists():
        return json.loads(path.read_text())
    from muonscope.laws import fit_laws, make_plan, names_from_records
    from muonscope.spectra.store import RunStore, find_runs, read_runs

    complete = [p for p in find_runs([SWEEP]) if RunStore.open(p).meta.get("status") == "complete"
                and RunStore.open(p).meta["config"]["optimizer"] == "muon"]
    df = read_runs(complete)
    laws = fit_laws(df)
    own = [p for p in complete if RunStore.open(p).meta.get("preset") == preset]
    if not own:
        raise SystemExit(f"no complete sweep run of {preset} in {SWEEP} to name its parameters")
    mine = read_runs(own)
    size = int(mine["model_params"].iloc[0])
    plan = make_plan(laws, size, quantile=0.5, rho=0.1, names=names_from_records(mine)).to_dict()
    plan["fitted_on"] = [p.name for p in complete]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(plan, indent=1))
    return plan


def done_runs() -> set[tuple[str, str, int]]:
    if not CSV.exists():
        return set()
    with CSV.open() as fh:
        return {(r["method"], r["preset"], int(r["seed"])) for r in csv.DictReader(fh)}


def summarize_run(run_dir: Path, method: str, preset: str, seed: int, wall: float) -> dict:
    from muonscope.spectra.store import RunStore

    store = RunStore.open(run_dir)
    meta, m, sp = store.meta, store.metrics(), store.spectra()
    val = m[m.name == "val_loss"].sort_values("step")
    flops = m[m.name == "ns_flops"]
    mm = m[m.name == "ns_matmuls"]
    tps = m[m.name == "tokens_per_s"].sort_values("step")
    late = sp[sp.step >= 50]
    null = (late.s_min < NULL_S).astype(float) / late[["rows", "cols"]].min(axis=1)
    last = sp[sp.step == sp.step.max()]
    return {
        "method": method, "preset": preset, "seed": seed, "model_params": meta["model_params"],
        "steps": meta.get("steps"), "final_val_loss": float(val.value.iloc[-1]),
        "final_train_loss": meta.get("final_train_loss"),
        "ns_flops": float(flops.value.sum()), "ns_matmuls": float(mm.value.sum()),
        "ns_flops_per_step": float(flops.value.mean()), "wall_seconds": wall,
        "tokens_per_s": float(tps.value.iloc[-1]) if len(tps) else math.nan,
        "frac_failed": float(late.frac_failed.mean()),
        "frac_failed_nonnull": float((late.frac_failed - null).clip(lower=0).mean()),
        "frac_failed_last": float(last.frac_failed.mean()),
        "mean_ns_steps": float(late.ns_steps.mean()), "threads": meta.get("threads"),
    }


def run(args) -> None:
    import torch

    from muonscope.experiments.train import TrainConfig, train

    torch.set_num_threads(args.threads)
    done = done_runs()
    t_start = time.time()
    for seed in args.seeds:
        for preset in args.presets:
            for method in args.methods:
                if (method, preset, seed) in done:
                    continue
                if args.budget and time.time() - t_start > args.budget:
                    print(f"budget of {args.budget:.0f}s used; stopping (re-run to continue)", flush=True)
                    return
                opts = dict(METHODS[method])
                if method == "plan":
                    opts["plan"] = plan_for(preset)
                cfg = TrainConfig(**{**dict(preset=preset, steps=args.steps, seed=seed, eval_every=100,
                                            eval_batches=args.eval_batches, checkpoint_every=100,
                                            monitor_every=10), **opts})
                rdir = RUNS / method / f"{preset}-s{seed}"
                t0 = time.time()
                summary = train(cfg, rdir, resume=(rdir / "run.json").exists(), progress=False)
                wall = time.time() - t0
                if summary["status"] != "complete":
                    print(f"{method} {preset} s{seed}: {summary['status']}", flush=True)
                    return
                row = summarize_run(rdir, method, preset, seed, wall)
                new = not CSV.exists()
                with CSV.open("a", newline="") as fh:
                    w = csv.DictWriter(fh, fieldnames=COLUMNS)
                    if new:
                        w.writeheader()
                    w.writerow(row)
                print(f"{method:9s} {preset} s{seed}: val {row['final_val_loss']:.4f}  "
                      f"flops/step {row['ns_flops_per_step']:.3g}  wall {wall:.0f}s  "
                      f"failed {row['frac_failed']:.4f}", flush=True)


def summarize(args) -> None:
    """Per (preset, method): mean ± std over seeds, paired differences to jordan5, FLOP ratios."""
    import pandas as pd

    df = pd.read_csv(CSV)
    base = df[df.method == "jordan5"]
    rows = []
    for (preset, method), g in df.groupby(["preset", "method"], sort=False):
        paired = g.merge(base, on=["preset", "seed"], suffixes=("", "_ref"))
        d = paired.final_val_loss - paired.final_val_loss_ref
        rows.append({
            "preset": preset, "method": method, "seeds": len(g), "model_params": int(g.model_params.iloc[0]),
            "val_loss_mean": g.final_val_loss.mean(), "val_loss_std": g.final_val_loss.std(ddof=1),
            "dval_vs_jordan5_mean": d.mean(), "dval_vs_jordan5_std": d.std(ddof=1) if len(d) > 1 else math.nan,
            "dval_t": d.mean() / (d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 and d.std(ddof=1) > 0 else math.nan,
            "ns_flops_per_step": g.ns_flops_per_step.mean(),
            "flops_vs_jordan5": (paired.ns_flops / paired.ns_flops_ref).mean(),
            "wall_s_mean": g.wall_seconds.mean(), "wall_vs_jordan5": (paired.wall_seconds / paired.wall_seconds_ref).mean(),
            "frac_failed": g.frac_failed.mean(), "frac_failed_nonnull": g.frac_failed_nonnull.mean(),
            "mean_ns_steps": g.mean_ns_steps.mean(),
        })
    out = pd.DataFrame(rows)
    order = {m: i for i, m in enumerate(METHODS)}
    out = out.sort_values(["model_params", "method"], key=lambda c: c.map(order) if c.name == "method" else c)
    out.to_csv(HERE / "summary.csv", index=False, float_format="%.6g")
    print(out.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    figures(df)


def figures(df) -> None:
    """loss_vs_flops.png (per preset: paired val-loss difference to Jordan x5 against
    orthogonalization FLOPs) and
    adaptive_steps.png (steps chosen per layer type over training, seed 0, largest preset)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from muonscope.spectra.store import RunStore

    presets = [p for p in PRESETS if p in set(df.preset)]
    fig, axes = plt.subplots(1, len(presets), figsize=(4.2 * len(presets), 3.6), squeeze=False)
    for ax, preset in zip(axes[0], presets, strict=True):
        d = df[df.preset == preset]
        base = d[d.method == "jordan5"]
        ref = base.ns_flops_per_step.mean()
        for i, (method, g) in enumerate(d[~d.method.str.endswith("-offset")].groupby("method", sort=False)):
            dv = g.merge(base, on="seed", suffixes=("", "_ref")).eval("final_val_loss - final_val_loss_ref")
            ax.errorbar(g.ns_flops_per_step.mean() / ref, dv.mean(), yerr=dv.std(ddof=1) if len(dv) > 1 else 0,
                        fmt="os^vDP*"[i % 7], capsize=3, label=f"{method} (n={len(g)})")
        ax.axhline(0.0, color="0.6", lw=0.8)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator([0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5]))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(f"{preset} ({int(d.model_params.iloc[0]):,} params)")
        ax.set_xlabel("orthogonalization FLOPs / step (÷ Jordan x5)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"val loss − Jordan x5's, same seed, step {int(df.steps.max())}")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(HERE / "loss_vs_flops.png", dpi=110)
    plt.close(fig)

    methods = [m for m in ("adaptive", "adaptive-q90", "plan") if (RUNS / m / f"{presets[-1]}-s0" / "run.json").exists()]
    if not methods:
        return
    fig, axes = plt.subplots(1, len(methods), figsize=(4.4 * len(methods), 3.4), squeeze=False, sharey=True)
    for ax, method in zip(axes[0], methods, strict=True):
        sp = RunStore.open(RUNS / method / f"{presets[-1]}-s0").spectra()
        for lt, g in sp.groupby("layer_type"):
            m = g.groupby("step").ns_steps.mean()
            ax.plot(m.index, m.values, label=lt, drawstyle="steps-post")
        ax.set_title(f"{method}, {presets[-1]} seed 0")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("NS steps (mean over the layer type's matrices)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(HERE / "adaptive_steps.png", dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--steps", type=int, default=300)
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--presets", nargs="+", default=list(PRESETS))
    r.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    r.add_argument("--eval-batches", type=int, default=16)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--budget", type=float, default=0.0, help="stop starting new runs after this many seconds")
    r.set_defaults(func=run)
    s = sub.add_parser("summarize")
    s.set_defaults(func=summarize)
    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
