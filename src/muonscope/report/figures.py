"""Matplotlib figures. Each function writes one PNG (Agg backend, no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from muonscope.conventions import FAILURE_RHO


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_ns_maps(configs, *, rho: float = FAILURE_RHO, path: str | Path, s_min: float = 1e-7) -> Path:
    """Composed NS maps p(s) on a log-s axis for ``configs`` [(schedule, steps)], τ_ρ marked."""
    from muonscope.orth.analysis import composed_map, threshold
    from muonscope.orth.schedules import get_schedule

    plt = _plt()
    s = np.logspace(np.log10(s_min), 0, 2000)
    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=120)
    for spec, k in configs:
        sc = get_schedule(spec)
        (line,) = ax.plot(s, composed_map(sc, k, s), lw=1.6, label=f"{sc.name} x{k}")
        t = threshold(sc, k, rho)
        if np.isfinite(t):
            ax.axvline(t, color=line.get_color(), ls=":", lw=1)
            ax.plot([t], [rho], "o", color=line.get_color(), ms=4)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.axhline(rho, color="crimson", lw=0.8, ls="--", label=f"failure level rho={rho:g}")
    ax.set_xscale("log")
    ax.set_xlabel("normalized singular value s = sigma / ||X||_F")
    ax.set_ylabel("NS output p(s)  (ideal: 1)")
    ax.set_title(f"Newton-Schulz maps; dotted: threshold tau_{rho:g} (all s above it reach {rho:g})")
    ax.set_ylim(0, 1.3)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


LAYER_ORDER = ("q", "k", "v", "o", "qkv", "mlp_up", "mlp_down", "other")


def _grid(n: int, plt, width: float = 4.2, height: float = 3.2):
    cols = min(3, max(n, 1))
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), dpi=110, squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _save(fig, plt, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _size_colors(sizes, plt):
    sizes = sorted(set(sizes))
    cmap = plt.get_cmap("viridis")
    return {m: cmap(i / max(len(sizes) - 1, 1)) for i, m in enumerate(sizes)}


def plot_trajectories(spectra, stabilization, *, q: float, rel_depth: float, path) -> Path:
    """s_q against step per layer type at one relative depth, one line per model size,
    with the detected end of burn-in marked (dot) and runs that never stabilized dashed."""
    from muonscope.spectra.metrics import quantile_column

    plt = _plt()
    col = quantile_column(q)
    df = spectra[(spectra["rel_depth"].round(3) == round(rel_depth, 3))]
    types = [t for t in LAYER_ORDER if t in set(df["layer_type"])]
    fig, axes = _grid(len(types), plt)
    colors = _size_colors(df["model_params"], plt)
    st = stabilization[(stabilization["q"] == q) & (stabilization["rel_depth"].round(3) == round(rel_depth, 3))]
    for ax, lt in zip(axes, types, strict=True):
        sub = df[df["layer_type"] == lt]
        for (m, param), g in sub.groupby(["model_params", "param"], sort=True):
            g = g.sort_values("step")
            s = st[(st["param"] == param) & (st["model_params"] == m)]
            stable = bool(s["stable"].iloc[0]) if len(s) else False
            ax.plot(g["step"], g[col], color=colors[m], lw=1.1, ls="-" if stable else "--",
                    label=f"M={m / 1e6:.2g}M")
            if stable and s["burn_in_step"].notna().iloc[0]:
                b = int(s["burn_in_step"].iloc[0])
                y = g.loc[g["step"] >= b, col]
                if len(y):
                    ax.plot([b], [y.iloc[0]], "o", color=colors[m], ms=4)
                ax.axhline(float(s["value"].iloc[0]), color=colors[m], lw=0.6, alpha=0.5)
        ax.set_yscale("log")
        ax.set_title(f"{lt} at depth {rel_depth:g}")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(f"{col} (normalized singular value)")
        ax.grid(True, which="both", alpha=0.25)
    if axes:
        axes[0].legend(fontsize=7, title="dot: end of burn-in", title_fontsize=7)
    fig.suptitle(f"Momentum spectrum quantile s_{q:g} during training (dashed: not stabilized)")
    return _save(fig, plt, path)


def plot_fits(laws, *, q: float, path) -> Path:
    """Stabilized s_q against model size M on log-log axes per layer type, one fitted power law
    per relative depth with its 95% prediction band."""
    plt = _plt()
    fits = laws.select(q=q)
    types = [t for t in LAYER_ORDER if any(f.layer_type == t for f in fits)]
    fig, axes = _grid(len(types), plt)
    cmap = plt.get_cmap("plasma")
    for ax, lt in zip(axes, types, strict=True):
        group = sorted((f for f in fits if f.layer_type == lt), key=lambda f: f.rel_depth)
        for i, f in enumerate(group):
            color = cmap(0.85 * i / max(len(group) - 1, 1))
            sizes = np.array(f.sizes)
            grid = np.logspace(np.log10(sizes.min()), np.log10(sizes.max()), 50)
            center, low, high = f.band(grid)
            ax.fill_between(grid, low, high, color=color, alpha=0.12)
            ax.plot(grid, center, color=color, lw=1.2,
                    label=f"depth {f.rel_depth:g}: α={f.alpha:.2f} [{f.alpha_ci[0]:.2f}, {f.alpha_ci[1]:.2f}]")
            ax.plot(sizes, f.values, "o", color=color, ms=4)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{lt}: s_{q:g} = C·M^(-α)")
        ax.set_xlabel("model size M (non-embedding parameters)")
        ax.set_ylabel(f"stabilized s_{q:g}")
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=7)
    fig.suptitle("Power-law fits across model sizes (band: 95% prediction interval)")
    return _save(fig, plt, path)


def plot_exponents(laws, *, path, baseline: float = 0.25) -> Path:
    """α with its bootstrap interval per layer type and depth, one marker per quantile level."""
    plt = _plt()
    t = laws.exponent_table()
    types = [x for x in LAYER_ORDER if x in set(t["layer_type"])]
    qs = sorted(t["q"].unique())
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(types) * 2), 4.2), dpi=110)
    depths = sorted(t["rel_depth"].dropna().unique())
    width = 0.8 / max(len(depths) * len(qs), 1)
    cmap = plt.get_cmap("tab10")
    for ti, lt in enumerate(types):
        k = 0
        for d in depths:
            for qi, q in enumerate(qs):
                row = t[(t.layer_type == lt) & (t.rel_depth == d) & (t.q == q)]
                x = ti - 0.4 + width * (k + 0.5)
                k += 1
                if row.empty:
                    continue
                r = row.iloc[0]
                ax.errorbar([x], [r.alpha], yerr=[[r.alpha - r.alpha_lo], [r.alpha_hi - r.alpha]],
                            fmt="o", ms=3, color=cmap(qi), alpha=0.4 + 0.6 * d, capsize=1.5,
                            label=f"q={q:g}" if (ti == 0 and d == depths[-1]) else None)
    ax.axhline(baseline, color="k", ls="--", lw=0.9, label=f"same-shape baseline α={baseline:g}")
    ax.set_xticks(range(len(types)), types)
    ax.set_ylabel("exponent α  (s_q ∝ M^-α)")
    ax.set_title("Fitted exponents per layer type (within a type: depth increases left to right; darker = deeper)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=3)
    return _save(fig, plt, path)


def plot_losses(curves: dict, *, path) -> Path:
    """Training (thin) and validation (markers) loss per run; ``curves`` maps a label to a metrics
    DataFrame (long form: step, name, value)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    cmap = plt.get_cmap("tab20")
    for i, (label, m) in enumerate(sorted(curves.items())):
        color = cmap(i % 20)
        tr = m[m["name"] == "train_loss"].sort_values("step")
        if len(tr):
            w = max(1, len(tr) // 50)
            ax.plot(tr["step"], tr["value"].rolling(w, min_periods=1).mean(), color=color, lw=1,
                    ls="--" if "adamw" in label else "-", label=label)
        va = m[m["name"] == "val_loss"].sort_values("step")
        if len(va):
            ax.plot(va["step"], va["value"], "o", color=color, ms=3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats per byte)")
    ax.set_title("Loss curves (lines: training, smoothed; dots: validation; dashed: AdamW)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, plt, path)


def plot_failed_share(spectra, *, path) -> Path:
    """Share of directions NS lifts to less than ρ, against step, per layer type (mean over
    depths), one line per model size."""
    plt = _plt()
    types = [t for t in LAYER_ORDER if t in set(spectra["layer_type"])]
    fig, axes = _grid(len(types), plt)
    colors = _size_colors(spectra["model_params"], plt)
    for ax, lt in zip(axes, types, strict=True):
        sub = spectra[spectra["layer_type"] == lt]
        for m, g in sub.groupby("model_params"):
            y = g.groupby("step")["frac_failed"].mean()
            ax.plot(y.index, 100 * y.values, color=colors[m], lw=1, label=f"M={m / 1e6:.2g}M")
        ax.set_title(f"{lt}: directions NS fails to lift")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("failed share (%)")
        ax.grid(True, alpha=0.3)
    if axes:
        axes[0].legend(fontsize=7)
    return _save(fig, plt, path)


def plot_alpha_over_time(alpha_t, *, path, tolerance: float | None = None) -> Path:
    """α(t) per quantile level (rows) and relative depth (columns), one line per layer type with its
    sizes-and-seeds bootstrap band: an exponent has converged where its line is flat."""
    plt = _plt()
    qs = sorted(alpha_t["q"].unique())
    depths = sorted(alpha_t["rel_depth"].dropna().unique()) or [float("nan")]
    types = [x for x in LAYER_ORDER if x in set(alpha_t["layer_type"])] + \
        sorted(set(alpha_t["layer_type"]) - set(LAYER_ORDER))
    cmap = plt.get_cmap("tab10")
    fig, axes = plt.subplots(len(qs), len(depths), figsize=(3.6 * len(depths), 2.6 * len(qs)), dpi=110,
                             squeeze=False, sharex=True)
    for i, q in enumerate(qs):
        for j, d in enumerate(depths):
            ax = axes[i][j]
            sel = alpha_t[(alpha_t.q == q) & ((alpha_t.rel_depth == d) if d == d else alpha_t.rel_depth.isna())]
            for k, lt in enumerate(types):
                g = sel[sel.layer_type == lt].sort_values("end")
                if g.empty:
                    continue
                ax.plot(g.end, g.alpha, "-o", ms=2.5, lw=1.3, color=cmap(k), label=lt)
                ax.fill_between(g.end, g.alpha_lo, g.alpha_hi, color=cmap(k), alpha=0.12, lw=0)
            ax.axhline(0.25, color="k", ls="--", lw=0.7)
            ax.set_title(f"q={q:g}, depth {d:g}", fontsize=9)
            ax.grid(True, alpha=0.3)
            if j == 0:
                ax.set_ylabel("α (window ending at step)")
            if i == len(qs) - 1:
                ax.set_xlabel("training step (window end)")
    axes[0][0].legend(fontsize=7, ncol=2)
    note = f"; converged: |dα/dt| ≤ {tolerance:g} per 1000 steps" if tolerance else ""
    fig.suptitle("Exponents over training time (dashed: same-shape baseline 0.25; bands: bootstrap over "
                 f"sizes and seeds{note})", fontsize=10)
    return _save(fig, plt, path)


def plot_lr_check(table, *, path) -> Path:
    """Final validation loss against lr, one panel per lr-scaling rule, one line per model size."""
    plt = _plt()
    rules = sorted(table["adjust_lr_fn"].unique())
    fig, axes = _grid(len(rules), plt, width=5.0, height=3.6)
    colors = _size_colors(table["model_params"], plt)
    for ax, fn in zip(axes, rules, strict=True):
        t = table[table.adjust_lr_fn == fn]
        for m, g in t.groupby("model_params"):
            g = g.groupby("lr", as_index=False)["final_val_loss"].mean().sort_values("lr")
            ax.plot(g.lr, g.final_val_loss, "-o", ms=4, color=colors[m], label=f"M={m / 1e6:.2f}M")
            best = g.loc[g.final_val_loss.idxmin()]
            ax.plot([best.lr], [best.final_val_loss], "*", ms=11, color=colors[m])
        ax.set_xscale("log", base=2)
        ax.set_xlabel("Muon lr")
        ax.set_ylabel("final validation loss")
        ax.set_title(f"adjust_lr_fn = {fn}  (star: best lr per size)", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, plt, path)
