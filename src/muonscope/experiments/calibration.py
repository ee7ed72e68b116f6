"""Calibration of the NS recipe on training loss: which spectral statistic predicts the loss an
orthogonalizer costs, and how much of it is tolerable.

Every *method* trains the same tiny GPT with the same seed-determined initialization, data order
and validation batches, so methods pair up by (preset, seed). Methods are

- references: the exact polar factor (``exact``) and Jordan × 5 (``jordan-5``);
- oracles (``top{q}-rho{ρ}``, :class:`~muonscope.orth.oracle.TopQExact`): exact on the top
  ⌈q·r⌉ directions, ρ·s/s_q below — damage of known shape and size;
- real configurations: ``jordan-k``, ``polar-express-k``, ``designed-ℓ-k``;
- plans: ``plan:<path>`` (a per-parameter plan JSON, ``{preset}`` in the path is substituted).

Each finished run appends one row to ``OUT/runs.csv`` (under a file lock, so several processes
can share one output): final validation loss, its curve, NS FLOPs per step and statistics of the
run's *own* spectra after burn-in (distortion D, failed shares at 0.1 and 0.5, overshoot).
Runs resume from their checkpoints under ``OUT/runs/``; rows already in the CSV are skipped, and
each run is claimed by a lock, so any number of processes can work through one job list.
"""

from __future__ import annotations

import csv
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from muonscope._jsonfile import write_json
from muonscope.errors import ConfigError
from muonscope.experiments.jobs import claim, locked
from muonscope.experiments.model import get_preset

CSV_NAME = "runs.csv"
BURN_IN = 100  # spectra of earlier steps are left out of the run statistics
REFERENCES = ("exact", "jordan-5")
ORACLE_Q = (0.25, 0.5, 0.75, 0.9, 0.95)
ORACLE_RHO = (0.0, 0.1, 0.3, 0.7)
REAL = ("jordan-2", "jordan-3", "jordan-4", "jordan-6", "polar-express-2", "polar-express-3",
        "polar-express-4", "polar-express-5", "designed-0.03-3", "designed-0.01-4", "designed-0.001-5")
COMPACT_ORACLES = ("top0.25-rho0", "top0.5-rho0", "top0.5-rho0.3", "top0.75-rho0", "top0.75-rho0.1",
                   "top0.9-rho0", "top0.9-rho0.1", "top0.9-rho0.3", "top0.95-rho0", "top0.95-rho0.3",
                   "top0.95-rho0.7")
COMPACT_REAL = ("jordan-3", "jordan-4", "jordan-6", "polar-express-3", "polar-express-4", "polar-express-5",
                "designed-0.01-4")
STATS = ("distortion", "distortion_nonnull", "frac_failed", "frac_failed_nonnull", "frac_failed_50",
         "ns_out_max")
COLUMNS = ["method", "family", "preset", "seed", "steps", "model_params", "final_val_loss", "val_curve",
           "ns_flops_per_step", "ns_matmuls_per_step", *STATS, "ns_out_max_peak", "wall_seconds", "threads"]
_ORACLE = re.compile(r"^top(?P<q>[0-9.]+)-rho(?P<rho>[0-9.]+)$")
_NS = re.compile(r"^(?P<schedule>jordan|polar-express|classical|dion5|designed-[0-9.e+-]+?)-(?P<steps>\d+)$")


def grid_methods(full: bool = False) -> list[str]:
    """The calibration grid: references, oracles and real configurations.

    ``full``: every oracle (q, ρ) of ORACLE_Q × ORACLE_RHO and every REAL configuration. Default:
    the compact design that spans the same range of damage (q from 0.25 to 0.95, ρ from 0 to 0.7,
    denser where the tolerance crossing lies, at high q) and the real configurations that bracket
    Jordan × 5 in cost.
    """
    if full:
        oracles = [f"top{q:g}-rho{rho:g}" for q in ORACLE_Q for rho in ORACLE_RHO]
        return [*REFERENCES, *oracles, *REAL]
    return [*REFERENCES, *COMPACT_ORACLES, *COMPACT_REAL]


@dataclass(frozen=True)
class Method:
    """A named orthogonalization for calibration runs and its TrainConfig options."""

    name: str
    family: str  # reference, oracle, ns, plan
    options: dict = field(default_factory=dict, hash=False, compare=False)


def parse_method(name: str, preset: str) -> Method:
    """``exact``, ``top0.5-rho0.1``, ``jordan-4``, ``designed-0.001-5`` or ``plan:path/{preset}.json``."""
    if name == "exact":
        return Method(name, "reference", {"orthogonalizer": "exact"})
    if m := _ORACLE.match(name):
        q, rho = float(m["q"]), float(m["rho"])
        if q >= 1.0:
            raise ConfigError(f"{name}: top-q with q = 1 is the exact polar factor; use 'exact'")
        return Method(name, "oracle", {"orthogonalizer": "top-q", "oracle_q": q, "oracle_rho": rho})
    if m := _NS.match(name):
        family = "reference" if name == "jordan-5" else "ns"
        return Method(name, family, {"schedule": m["schedule"], "ns_steps": int(m["steps"])})
    if name.startswith("plan:"):
        path = Path(name.removeprefix("plan:").replace("{preset}", preset))
        from muonscope.optim.plan import load_plan

        raw = load_plan(path).raw  # validates
        return Method(name, "plan", {"plan": dict(raw)})
    raise ConfigError(f"unknown calibration method {name!r}; use exact, top<q>-rho<ρ>, <schedule>-<steps> "
                      "(jordan, polar-express, designed-<ℓ>) or plan:<path>")


def method_config(method: Method, preset: str, seed: int, steps: int, **base):
    """The TrainConfig of one calibration run (the sweep's training setup, paired by seed)."""
    from muonscope.experiments.train import TrainConfig

    opts = dict(preset=preset, seed=seed, steps=steps, eval_every=50, eval_batches=16, checkpoint_every=100,
                monitor_every=10, quantiles=(0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99))
    opts.update(base)
    opts.update(method.options)
    return TrainConfig(**opts).validate()


def run_dir(runs: Path, method: str, preset: str, seed: int) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.+-]", "_", method)
    return runs / safe / f"{preset}-s{seed}"


def done(out: Path) -> set[tuple[str, str, int]]:
    path = out / CSV_NAME
    if not path.exists():
        return set()
    with path.open() as fh:
        return {(r["method"], r["preset"], int(r["seed"])) for r in csv.DictReader(fh)}


def _append_row(out: Path, row: dict) -> None:
    """Add one row to runs.csv under its lock; the whole file is rewritten atomically, so a failed
    write (disk full) keeps the previous rows and never leaves a partial line."""
    import io

    from muonscope._atomic import atomic_write

    path = out / CSV_NAME
    with locked(path):
        old = path.read_text() if path.exists() else ""
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=COLUMNS)
        if not old:
            w.writeheader()
        w.writerow(row)
        atomic_write(path, old + buf.getvalue())


def run_stats(spectra, burn_in: int = BURN_IN) -> dict:
    """Mean over the sampled records at steps ≥ burn_in of each fidelity statistic."""
    late = spectra[spectra.step >= burn_in]
    if late.empty:
        raise ConfigError(f"no spectral records at steps >= {burn_in}: train longer than the burn-in")
    r = late[["rows", "cols"]].min(axis=1)
    nonnull = (late.frac_failed - late.null_dirs / r).clip(lower=0.0)
    return {
        "distortion": float(late.distortion.mean()), "distortion_nonnull": float(late.distortion_nonnull.mean()),
        "frac_failed": float(late.frac_failed.mean()), "frac_failed_nonnull": float(nonnull.mean()),
        "frac_failed_50": float(late.frac_failed_50.mean()), "ns_out_max": float(late.ns_out_max.mean()),
        "ns_out_max_peak": float(late.ns_out_max.max()),
    }


def summarize_run(path: Path, method: Method, preset: str, seed: int, wall: float, burn_in: int = BURN_IN) -> dict:
    from muonscope.spectra.store import RunStore

    store = RunStore.open(path)
    meta, metrics = store.meta, store.metrics()
    val = metrics[metrics.name == "val_loss"].sort_values("step")
    per_step = {k: metrics[metrics.name == k].value.mean() for k in ("ns_flops", "ns_matmuls")}
    return {
        "method": method.name, "family": method.family, "preset": preset, "seed": seed,
        "steps": meta.get("steps"), "model_params": meta["model_params"],
        "final_val_loss": float(val.value.iloc[-1]),
        "val_curve": json.dumps({int(s): round(float(v), 6) for s, v in zip(val.step, val.value, strict=True)}),
        "ns_flops_per_step": float(per_step["ns_flops"]), "ns_matmuls_per_step": float(per_step["ns_matmuls"]),
        **run_stats(store.spectra(), burn_in), "wall_seconds": round(wall, 1), "threads": meta.get("threads"),
    }


def jobs(methods, presets, seeds) -> list[tuple[str, str, int]]:
    """Every (method, preset, seed), seed-major so that early stops leave complete pairs."""
    for p in presets:
        get_preset(p)
    return [(m, p, s) for s in seeds for p in presets for m in methods]


def run_calibration(out, methods, presets, seeds, *, steps: int = 600, shard: tuple[int, int] = (0, 1),
                    runs=None, budget: float | None = None, burn_in: int = BURN_IN, log=print, **base) -> int:
    """Train every job of this shard not yet in ``out/runs.csv`` (resuming partial runs from their
    checkpoints under ``runs``, default ``out/runs``); returns how many finished."""
    from muonscope.experiments.train import train

    out = Path(out)
    runs = Path(runs) if runs is not None else out / "runs"
    index, count = shard
    if not (count >= 1 and 0 <= index < count):
        raise ConfigError(f"shard must be i/n with 0 <= i < n, got {index}/{count}")
    if not (isinstance(steps, int) and steps > burn_in):
        raise ConfigError(f"steps must be an integer above the burn-in of {burn_in}, got {steps!r}")
    todo = jobs(methods, presets, seeds)[index::count]
    parsed = {(m, p): parse_method(m, p) for m, p, _ in todo}  # every method name checked up front
    out.mkdir(parents=True, exist_ok=True)
    t_start, ran = time.time(), 0
    for name, preset, seed in todo:
        if (name, preset, seed) in done(out):
            continue
        if budget is not None and time.time() - t_start > budget:
            log(f"budget of {budget:.0f} s used; re-run to continue")
            break
        method = parsed[(name, preset)]
        cfg = method_config(method, preset, seed, steps, **base)
        rdir = run_dir(runs, name, preset, seed)
        with claim(rdir) as mine:
            if not mine or (name, preset, seed) in done(out):
                continue  # another process trains (or just finished) this run
            t0 = time.time()
            summary = train(cfg, rdir, resume=(rdir / "run.json").exists(), progress=False)
            if summary["status"] != "complete":
                log(f"{name} {preset} s{seed}: {summary['status']}")
                break
            row = summarize_run(rdir, method, preset, seed, time.time() - t0, burn_in)
            _append_row(out, row)
        ran += 1
        log(f"{name:18s} {preset} s{seed}: val {row['final_val_loss']:.4f}  D {row['distortion']:.4f}  "
            f"failed {row['frac_failed']:.4f}  {row['wall_seconds']:.0f}s")
    return ran


# --- analysis --------------------------------------------------------------------------------------


def steps_to_reach(curve: dict, loss: float) -> float:
    """First (log-linearly interpolated) step at which a validation curve reaches ``loss``; inf if never."""
    pts = sorted((int(k), float(v)) for k, v in curve.items())
    prev = None
    for s, v in pts:
        if v <= loss:
            if prev is None:
                return float(s)
            (s0, v0) = prev
            if v0 == v:
                return float(s)
            f = (v0 - loss) / (v0 - v)
            return float(math.exp(math.log(s0) + f * (math.log(s) - math.log(s0))))
        prev = (s, v)
    return math.inf


def paired(df, reference: str):
    """Per (preset, method): paired Δ final val loss against ``reference`` (mean, sd, t, n) and the
    token efficiency (steps the reference needs to reach the method's final loss ÷ the method's steps)."""
    import pandas as pd

    base = df[df.method == reference]
    rows = []
    for (preset, method), g in df.groupby(["preset", "method"], sort=False):
        m = g.merge(base, on=["preset", "seed"], suffixes=("", "_ref"))
        if m.empty:
            continue
        d = m.final_val_loss - m.final_val_loss_ref
        eff = [steps_to_reach(json.loads(c), loss) / s for c, loss, s in
               zip(m.val_curve_ref, m.final_val_loss, m.steps, strict=True)]
        n = len(d)
        sd = float(d.std(ddof=1)) if n > 1 else math.nan
        rows.append({"preset": preset, "method": method, "family": g.family.iloc[0], "n": n,
                     "dloss": float(d.mean()), "dloss_sd": sd,
                     "dloss_t": float(d.mean() / (sd / math.sqrt(n))) if n > 1 and sd > 0 else math.nan,
                     "token_efficiency": float(np.median(eff)),
                     "flops_ratio": float((m.ns_flops_per_step / m.ns_flops_per_step_ref).mean()),
                     **{s: float(g[s].mean()) for s in (*STATS, "ns_out_max_peak")},
                     "val_loss": float(g.final_val_loss.mean())})
    return pd.DataFrame(rows)


def spearman(x, y) -> float:
    from scipy.stats import spearmanr

    ok = np.isfinite(x) & np.isfinite(y)
    return float(spearmanr(np.asarray(x)[ok], np.asarray(y)[ok]).statistic) if ok.sum() > 2 else math.nan


def noise_level(table) -> float:
    """Twice the median standard error of a paired Δ (3 seeds: the size a Δ must have to show)."""
    se = (table.dloss_sd / np.sqrt(table.n)).to_numpy()
    se = se[np.isfinite(se) & (table.n.to_numpy() > 1)]
    if se.size == 0:
        raise ConfigError("paired noise needs at least two seeds per method")
    return 2.0 * float(np.median(se))


def monotone_fit(x, y) -> tuple[np.ndarray, np.ndarray]:
    """Isotonic (non-decreasing) least-squares fit of y on x: (sorted x, fitted y)."""
    from scipy.optimize import isotonic_regression

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    order = np.argsort(x[ok], kind="stable")
    xs, ys = x[ok][order], y[ok][order]
    return xs, isotonic_regression(ys).x


def crossing(xs: np.ndarray, fit: np.ndarray, level: float) -> float:
    """Smallest x at which the monotone fit reaches ``level`` (linear between points; inf if never)."""
    above = np.nonzero(fit >= level)[0]
    if above.size == 0:
        return math.inf
    i = int(above[0])
    if i == 0 or fit[i] == fit[i - 1]:
        return float(xs[i])
    return float(xs[i - 1] + (level - fit[i - 1]) / (fit[i] - fit[i - 1]) * (xs[i] - xs[i - 1]))


@dataclass
class Calibration:
    """What the calibration measured at one preset: paired tables, statistic ranking, the criterion."""

    preset: str
    vs_exact: object  # DataFrame from paired(…, "exact")
    vs_reference: object  # DataFrame from paired(…, "jordan-5")
    noise: float
    ranking: object  # DataFrame: statistic, spearman, residual rms, crossing
    statistic: str
    absolute: float
    delta: float
    overshoot_cap: float

    def criterion(self, source: str) -> dict:
        return {"kind": "statistic", "statistic": self.statistic,
                "delta": self.delta, "absolute": self.absolute if math.isfinite(self.absolute) else None,
                "reference": ["jordan", 5], "overshoot_cap": self.overshoot_cap, "rho": 0.1, "source": source}


# statistics the planner predicts from a law-predicted spectrum → the measured column calibrating each
# (without the numerically null directions, which predicted spectra do not contain)
PLANNABLE = {"distortion": "distortion_nonnull", "frac_failed": "frac_failed_nonnull"}


def calibrate(df, preset: str) -> Calibration:
    """Rank the statistics by how well one monotone curve through oracle and real runs predicts
    the paired Δ loss against the exact polar factor; set the bounds where the curve crosses the
    paired noise (against exact: ``absolute``; against Jordan × 5: ``delta`` above its statistic)."""
    from muonscope.laws.criterion import overshoot
    from muonscope.orth.schedules import get_schedule

    d = df[df.preset == preset]
    if not {"exact", "jordan-5"} <= set(d.method):
        raise ConfigError(f"calibration at {preset} needs the references exact and jordan-5")
    vs_exact, vs_ref = paired(d, "exact"), paired(d, "jordan-5")
    fitted = vs_exact[vs_exact.family != "plan"]
    noise = noise_level(fitted)
    oracle, real = fitted[fitted.family == "oracle"], fitted[fitted.family != "oracle"]
    rows = []
    for stat, col in PLANNABLE.items():
        xs, fit = monotone_fit(fitted[col], fitted.dloss)
        resid = float(np.sqrt(np.mean((fitted.sort_values(col, kind="stable").dloss.to_numpy() - fit) ** 2)))
        rows.append({"statistic": stat, "measured_as": col, "spearman": spearman(fitted[col], fitted.dloss),
                     "spearman_oracle": spearman(oracle[col], oracle.dloss),
                     "spearman_ns": spearman(real[col], real.dloss),
                     "residual_rms": resid, "crossing": crossing(xs, fit, noise)})
    import pandas as pd

    ranking = pd.DataFrame(rows).sort_values(["spearman", "residual_rms"], ascending=[False, True])
    best = str(ranking.statistic.iloc[0])
    col = PLANNABLE[best]
    absolute = float(ranking.crossing.iloc[0])
    ref = vs_ref[vs_ref.family != "plan"]
    xs, fit = monotone_fit(ref[col], ref.dloss)
    ref_stat = float(ref[ref.method == "jordan-5"][col].iloc[0])
    delta = max(crossing(xs, fit, noise) - ref_stat, 0.0)
    cap = math.ceil(overshoot(get_schedule("jordan"), 5) * 100) / 100
    return Calibration(preset, vs_exact, vs_ref, noise, ranking, best, absolute,
                       delta if math.isfinite(delta) else 0.0, cap)


def write_summary(cal: Calibration, df, out: Path) -> dict:
    """Tables (CSV), the criterion (JSON) and figures of one calibration into ``out``."""
    from muonscope._atomic import atomic_write_with, ensure_dir

    ensure_dir(out)
    for name, table in ((f"paired_vs_exact_{cal.preset}.csv", cal.vs_exact),
                        (f"paired_vs_jordan5_{cal.preset}.csv", cal.vs_reference),
                        (f"statistics_{cal.preset}.csv", cal.ranking)):
        atomic_write_with(out / name, lambda p, t=table: t.to_csv(p, index=False, float_format="%.6g"))
    n = int(cal.vs_exact.n.max())
    fitted = int((cal.vs_exact.family != "plan").sum())
    source = (f"calibration at {cal.preset}: {fitted} methods x {n} paired seeds; "
              f"noise (2 x median paired SE) {cal.noise:.4g}; spearman({cal.statistic}, dloss) "
              f"{float(cal.ranking.spearman.iloc[0]):.3f}")
    criterion = cal.criterion(source)
    write_json(out / "criterion.json", criterion)
    figures(cal, out)
    return criterion


def figures(cal: Calibration, out: Path) -> None:
    """dloss_vs_statistic.png (Δ loss against exact vs each plannable statistic, the monotone fit,
    the noise level) and loss_vs_flops.png (Δ loss against Jordan × 5 vs NS FLOPs ratio)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"oracle": ("o", "tab:blue", "top-q oracle"), "ns": ("s", "tab:orange", "NS configuration"),
              "reference": ("D", "black", "reference"), "plan": ("*", "tab:green", "plan")}
    t = cal.vs_exact
    fig, axes = plt.subplots(1, len(PLANNABLE), figsize=(5.2 * len(PLANNABLE), 4.0), squeeze=False)
    for ax, stat in zip(axes[0], PLANNABLE.values(), strict=True):
        for fam, (marker, color, label) in styles.items():
            g = t[t.family == fam]
            if len(g):
                ax.errorbar(g[stat], g.dloss, yerr=g.dloss_sd / np.sqrt(g.n), fmt=marker, color=color,
                            ms=6, capsize=2, label=label, lw=0.8)
        fitted = t[t.family != "plan"]
        xs, fit = monotone_fit(fitted[stat], fitted.dloss)
        ax.step(xs, fit, where="post", color="0.4", lw=1, label="monotone fit")
        ax.axhline(cal.noise, color="tab:red", ls="--", lw=0.8, label=f"paired noise {cal.noise:.3g}")
        ax.axhline(0, color="0.7", lw=0.6)
        for _, r in t[t.family.isin(["reference", "ns"])].iterrows():
            ax.annotate(r.method, (r[stat], r.dloss), fontsize=6, xytext=(3, 2), textcoords="offset points")
        ax.set_xscale("symlog", linthresh=1e-3)
        ax.set_xlabel(f"{stat} (run's own spectra, steps >= {BURN_IN})")
        ax.set_ylabel("paired Δ val loss vs exact polar")
        ax.set_title(f"{cal.preset}: spearman {spearman(fitted[stat], fitted.dloss):.2f}")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    _savefig(fig, out / f"dloss_vs_statistic_{cal.preset}.png")
    plt.close(fig)

    r = cal.vs_reference
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for fam, (marker, color, label) in styles.items():
        g = r[(r.family == fam) & np.isfinite(r.flops_ratio)]
        if len(g):
            ax.errorbar(g.flops_ratio, g.dloss, yerr=g.dloss_sd / np.sqrt(g.n), fmt=marker, color=color, ms=6,
                        capsize=2, label=label, lw=0.8)
            for _, row in g.iterrows():
                ax.annotate(row.method, (row.flops_ratio, row.dloss), fontsize=6, xytext=(3, 2),
                            textcoords="offset points")
    ax.axhline(cal.noise, color="tab:red", ls="--", lw=0.8, label="paired noise")
    ax.axhline(0, color="0.7", lw=0.6)
    ax.axvline(0.8, color="0.6", ls=":", lw=0.8, label="20 % fewer FLOPs")
    ax.set_xlabel("orthogonalization FLOPs per step / Jordan x5 (SVD counted at 6r²c + 22r³)")
    ax.set_ylabel("paired Δ val loss vs Jordan x5")
    ax.set_title(f"{cal.preset}: loss against orthogonalization cost")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _savefig(fig, out / f"loss_vs_flops_{cal.preset}.png")
    plt.close(fig)


def _savefig(fig, path: Path) -> None:
    from muonscope._atomic import atomic_write_with

    atomic_write_with(path, lambda p: fig.savefig(p, dpi=120))
