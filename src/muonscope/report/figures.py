"""Matplotlib figures. Each function writes one PNG (Agg backend, no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from muonscope.conventions import FAILURE_RHO


def _sci(x: float) -> str:
    """2.07e-4 rather than 0.000207 (axis titles and labels)."""
    mant, exp = f"{x:.2e}".split("e")
    return f"{mant.rstrip('0').rstrip('.')}e{int(exp)}"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _envelope(s: np.ndarray, y: np.ndarray, decades: float = 1.0):
    """(lower, upper) envelopes of y on a uniform log-s grid: lower(s) = min of y over
    [s, s·10^decades], upper(s) = max over [s·10^-decades, s]. Where p rises (the part that decides
    failure) both equal p(s) exactly; on the oscillating plateau they are the trough and peak
    levels, which a line through thousands of ripples cannot show."""
    from numpy.lib.stride_tricks import sliding_window_view

    per = (len(s) - 1) / np.log10(s[-1] / s[0])
    w = max(1, int(round(decades * per)))
    lower = sliding_window_view(np.concatenate([y, np.full(w, y[-1])]), w + 1).min(axis=1)[: len(y)]
    upper = sliding_window_view(np.concatenate([np.full(w, y[0]), y]), w + 1).max(axis=1)[: len(y)]
    return lower, upper


def plot_ns_maps(configs, *, rho: float = FAILURE_RHO, path: str | Path, s_min: float = 1e-7,
                 configured=None) -> Path:
    """Composed NS maps p(s) on a log-s axis for ``configs`` [(schedule, steps)], τ_ρ marked.

    Built-in schedules (left) and designed minimax schedules (right) oscillate around 1 many times
    per decade once s is lifted; a line cannot show that, so every map is drawn as its envelopes
    (:func:`_envelope`): the lower one solid (what decides failure), the upper one thin
    (overshoot), designed ones with the band between filled. Steps of one family share a colour
    ramp (darker = more steps); duplicates are dropped; ``configured`` (schedule, steps) is drawn
    bold black in both panels as the reference."""
    from muonscope.orth.analysis import composed_map, threshold
    from muonscope.orth.schedules import BUILTIN_NAMES, get_schedule

    plt = _plt()
    seen, builtin, designed = set(), [], []
    for spec, k in ([configured] if configured else []) + list(configs):
        sc = get_schedule(spec)
        if (sc.name, int(k)) in seen:
            continue
        seen.add((sc.name, int(k)))
        (builtin if sc.name in BUILTIN_NAMES else designed).append((sc, int(k)))
    builtin.sort(key=lambda c: (c[0].name, c[1]))
    designed.sort(key=lambda c: (c[0].name, c[1]))
    taus = {(sc.name, k): threshold(sc, k, rho) for sc, k in builtin + designed}
    finite = [t for t in taus.values() if np.isfinite(t) and t > 0]
    s_min = min([s_min] + [t / 10 for t in finite])
    s = np.logspace(np.log10(s_min), 0, 6000)
    refkey = (get_schedule(configured[0]).name, int(configured[1])) if configured else None
    ramps = {"jordan": plt.get_cmap("Blues"), "polar-express": plt.get_cmap("Oranges")}
    families = {}
    for sc, k in builtin:
        families.setdefault(sc.name, []).append(k)
    other = plt.get_cmap("tab10")

    def color(sc, k, i):
        if (sc.name, k) == refkey:
            return "k"
        if sc.name in ramps:
            ks = families[sc.name]
            return ramps[sc.name](0.4 + 0.6 * ks.index(k) / max(len(ks) - 1, 1))
        return other(i % 10)

    panels = [("built-in schedules", builtin)] + ([("designed (minimax) schedules", designed)] if designed else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(max(7.0, 6.2 * len(panels)), 4.6), dpi=110, squeeze=False,
                             sharey=True)
    for ax, (title, group) in zip(axes[0], panels, strict=True):
        shown = list(group)
        if refkey is not None and refkey not in [(g.name, k) for g, k in group]:
            shown = [(get_schedule(configured[0]), int(configured[1]))] + shown
        for i, (sc, k) in enumerate(shown):
            col = color(sc, k, i)
            ref = (sc.name, k) == refkey
            c = s
            lo, hi = _envelope(s, composed_map(sc, k, s))
            if sc.name not in BUILTIN_NAMES:
                ax.fill_between(c, lo, hi, color=col, alpha=0.15, lw=0)
            ax.plot(c, lo, color=col, lw=2.4 if ref else 1.5, label=f"{sc.name} x{k}{' (configured)' if ref else ''}")
            ax.plot(c, hi, color=col, lw=0.7, alpha=0.7)
            t = taus.get((sc.name, k), threshold(sc, k, rho))
            if np.isfinite(t):
                ax.axvline(t, color=col, ls=":", lw=0.9)
                ax.plot([t], [rho], "o", color=col, ms=4)
        ax.axhline(1.0, color="k", lw=0.6)
        ax.axhline(rho, color="crimson", lw=0.9, ls="--", label=f"failure level rho = {rho:g}")
        ax.set_xscale("log")
        ax.set_xlim(s_min, 1.0)
        ax.set_xlabel("normalized singular value s = sigma / ||X||_F")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="major", alpha=0.25)
        ax.legend(fontsize=7, loc="upper left", ncol=2 if len(shown) > 7 else 1)
    axes[0][0].set_ylabel("NS output p(s)  (ideal: 1)")
    axes[0][0].set_ylim(0, 1.6)
    fig.suptitle(f"NS maps p(s): thick = lowest output over the next decade, thin = highest over the last\n"
                 f"dotted: threshold tau_{rho:g} (every s above it maps to >= {rho:g})", fontsize=9)
    return _save(fig, plt, path)


LAYER_ORDER = ("q", "k", "v", "o", "qkv", "mlp_up", "mlp_down", "other")


def _grid(n: int, plt, width: float = 4.2, height: float = 3.2):
    cols = min(3, max(n, 1))
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), dpi=110, squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _save(fig, plt, path, *, layout: bool = True) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if layout:
        fig.tight_layout()
    try:
        from muonscope._atomic import atomic_write_with
    except ImportError:  # pragma: no cover - older trees
        fig.savefig(path)
    else:
        atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png"), what="figure")
    plt.close(fig)
    return path


def _size_colors(sizes, plt):
    sizes = sorted(set(sizes))
    cmap = plt.get_cmap("viridis")
    return {m: cmap(i / max(len(sizes) - 1, 1)) for i, m in enumerate(sizes)}


def plot_trajectories(spectra, stabilization, *, q: float, rel_depth: float, path, tau: float | None = None,
                      tau_label: str = "") -> Path:
    """s_q against step per layer type at one relative depth, one line per model size (seeds
    share the colour), with the detected end of burn-in marked (dot), runs that never stabilized
    dashed and the failure threshold τ of the configured NS drawn in red: below it, the
    configured map lifts a direction to less than ρ."""
    from muonscope.spectra.metrics import quantile_column

    plt = _plt()
    col = quantile_column(q)
    df = spectra[(spectra["rel_depth"].round(3) == round(rel_depth, 3))]
    types = [t for t in LAYER_ORDER if t in set(df["layer_type"])]
    fig, axes = _grid(len(types), plt)
    colors = _size_colors(df["model_params"], plt)
    st = stabilization[(stabilization["q"] == q) & (stabilization["rel_depth"].round(3) == round(rel_depth, 3))]
    labelled = {lt: set() for lt in types}
    for ax, lt in zip(axes, types, strict=True):
        sub = df[df["layer_type"] == lt]
        keys = ["model_params", "run_id", "param"] if "run_id" in sub else ["model_params", "param"]
        for key, g in sub.groupby(keys, sort=True):
            m, param = key[0], key[-1]
            g = g.sort_values("step")
            s = st[(st["param"] == param) & (st["model_params"] == m)]
            if "run_id" in s and len(keys) == 3:
                s = s[s["run_id"] == key[1]]
            stable = bool(s["stable"].iloc[0]) if len(s) else False
            ax.plot(g["step"], g[col], color=colors[m], lw=1.1, ls="-" if stable else "--",
                    label=f"M={m / 1e6:.2g}M" if m not in labelled[lt] else None)
            labelled[lt].add(m)
            if stable and s["burn_in_step"].notna().iloc[0]:
                b = int(s["burn_in_step"].iloc[0])
                y = g.loc[g["step"] >= b, col]
                if len(y):
                    ax.plot([b], [y.iloc[0]], "o", color=colors[m], ms=4)
                ax.axhline(float(s["value"].iloc[0]), color=colors[m], lw=0.6, alpha=0.5)
        ax.set_yscale("log")
        if tau is not None and np.isfinite(tau):
            ax.axhline(tau, color="crimson", ls="--", lw=1.1, label=f"tau = {_sci(tau)} {tau_label}".rstrip())
            y = sub[col][sub[col] > 0]
            if len(y):
                ax.set_ylim(min(float(y.min()), tau) / 1.5, max(float(y.max()), tau) * 1.5)
        ax.set_title(f"{lt} at depth {rel_depth:g}")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(f"{col} (normalized singular value)")
        ax.grid(True, which="both", alpha=0.25)
    if axes:
        axes[0].legend(fontsize=7, title="dot: end of burn-in", title_fontsize=7)
    below = f"; red: NS failure threshold tau{(' of ' + tau_label) if tau_label else ''}" if tau is not None else ""
    fig.suptitle(f"Momentum spectrum quantile s_{q:g} during training (dashed: not stabilized{below})", fontsize=10)
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
    """α with its bootstrap interval: one panel per quantile level, layer types along x, one
    marker colour per relative depth (legend), the same-shape baseline dashed."""
    plt = _plt()
    t = laws.exponent_table()
    types = [x for x in LAYER_ORDER if x in set(t["layer_type"])]
    qs = sorted(t["q"].unique())
    depths = sorted(t["rel_depth"].dropna().unique()) or [float("nan")]
    cols = min(len(qs), 3)
    rows = (len(qs) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.2 * rows), dpi=110, squeeze=False, sharey=True)
    for ax in axes.flat[len(qs):]:
        ax.set_visible(False)
    cmap = plt.get_cmap("viridis")
    width = 0.7 / max(len(depths), 1)
    handles = {}
    for ax, q in zip(axes.flat, qs, strict=False):
        for j, d in enumerate(depths):
            sel = t[np.isclose(t.q, q) & ((t.rel_depth == d) if d == d else t.rel_depth.isna())]
            xs, ys, lo, hi = [], [], [], []
            for ti, lt in enumerate(types):
                r = sel[sel.layer_type == lt]
                if r.empty:
                    continue
                r = r.iloc[0]
                xs.append(ti - 0.35 + width * (j + 0.5))
                ys.append(r.alpha)
                lo.append(r.alpha - r.alpha_lo)
                hi.append(r.alpha_hi - r.alpha)
            if xs:
                h = ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o", ms=3.5, capsize=1.5, lw=1,
                                color=cmap(0.9 * j / max(len(depths) - 1, 1)))
                handles[d] = h
        ax.axhline(baseline, color="k", ls="--", lw=0.9)
        ax.set_xticks(range(len(types)), types, fontsize=8)
        ax.set_title(f"s_{q:g}", fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
    for r in range(rows):
        axes[r][0].set_ylabel("exponent α  (s_q ∝ M^-α)")
    labels = [f"depth {d:g}" if d == d else "depth unknown" for d in handles]
    base = plt.Line2D([], [], color="k", ls="--", lw=0.9)
    fig.legend([*handles.values(), base], [*labels, f"same-shape baseline α = {baseline:g}"], loc="lower center",
               ncol=len(labels) + 1, fontsize=8, frameon=False)
    fig.suptitle("Fitted exponents with 95% bootstrap intervals, per quantile level", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return _save(fig, plt, path, layout=False)


def plot_verdict(laws, *, q: float, tau: float, sizes, path, tau_label: str = "") -> Path:
    """Predicted s_q against model size per layer type, from the smallest measured size to the
    largest target: one line per depth (solid over the measured range, dashed extrapolated) with
    its 95% prediction band, the measured points, τ of the configured NS (red) and the target
    sizes (grey). Where a line crosses τ the configured NS starts to fail that share of directions."""
    plt = _plt()
    fits = laws.select(q=q)
    types = [t for t in LAYER_ORDER if any(f.layer_type == t for f in fits)]
    fig, axes = _grid(len(types), plt, width=4.2, height=3.0)
    cmap = plt.get_cmap("viridis")
    depths = sorted({f.rel_depth for f in fits if f.rel_depth == f.rel_depth})
    hi_m = max(max(sizes), max(max(f.sizes) for f in fits))
    grid_all = np.logspace(np.log10(min(min(f.sizes) for f in fits)), np.log10(hi_m), 60)
    lows = [float(f.band(grid_all)[0].min()) for f in fits]
    y_lo = max(min([tau, *lows]) / 10, 1e-12)
    y_hi = min(1.0, 3 * max(max(f.values) for f in fits))
    for ax, lt in zip(axes, types, strict=True):
        group = sorted((f for f in fits if f.layer_type == lt), key=lambda f: f.rel_depth)
        for f in group:
            j = depths.index(f.rel_depth) if f.rel_depth in depths else 0
            color = cmap(0.9 * j / max(len(depths) - 1, 1))
            lo_m, top = min(f.sizes), max(f.sizes)
            grid = np.logspace(np.log10(lo_m), np.log10(hi_m), 60)
            center, low, high = f.band(grid)
            inside = grid <= top * 1.0001
            ax.fill_between(grid, low, high, color=color, alpha=0.10, lw=0)
            ax.plot(grid[inside], center[inside], color=color, lw=1.4, label=f"depth {f.rel_depth:g}")
            ax.plot(grid[~inside], center[~inside], color=color, lw=1.2, ls="--")
            ax.plot(f.sizes, f.values, "o", color=color, ms=2.5)
        ax.axhline(tau, color="crimson", lw=1.1, ls="--")
        for m in sizes:
            ax.axvline(m, color="0.6", lw=0.7, ls=":")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(y_lo, y_hi)
        ax.set_title(f"{lt}", fontsize=10)
        ax.set_xlabel("model size M (non-embedding parameters)", fontsize=8)
        ax.set_ylabel(f"predicted s_{q:g}", fontsize=8)
        ax.grid(True, which="major", alpha=0.25)
    if axes:
        axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"Predicted s_{q:g} vs size (dashed: extrapolated; band: 95% prediction interval)\n"
                 f"red: tau = {_sci(tau)}{(' of ' + tau_label) if tau_label else ''}; dotted: sizes in the verdict",
                 fontsize=9)
    return _save(fig, plt, path)


def plot_losses(curves: dict, *, path, sizes: dict | None = None) -> Path:
    """Training (thin) and validation (markers) loss per run; ``curves`` maps a label to a metrics
    DataFrame (long form: step, name, value). With ``sizes`` (label → model size) runs are coloured
    by size and the legend has one entry per size and optimizer (seeds share it)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    cmap = plt.get_cmap("tab20")
    by_size = _size_colors([sizes[k] for k in curves if k in sizes], plt) if sizes else {}
    shown = set()
    order = sorted(curves.items(), key=lambda kv: ((sizes or {}).get(kv[0], 0.0), kv[0]))
    for i, (label, m) in enumerate(order):
        adamw = "adamw" in label
        if sizes and label in sizes:
            color = by_size[sizes[label]]
            key = (sizes[label], adamw)
            legend = None if key in shown else f"M={sizes[label] / 1e6:.2g}M{' AdamW' if adamw else ''}"
            shown.add(key)
        else:
            color, legend = cmap(i % 20), label
        tr = m[m["name"] == "train_loss"].sort_values("step")
        if len(tr):
            w = max(1, len(tr) // 50)
            ax.plot(tr["step"], tr["value"].rolling(w, min_periods=1).mean(), color=color, lw=1,
                    ls="--" if adamw else "-", label=legend)
        va = m[m["name"] == "val_loss"].sort_values("step")
        if len(va):
            ax.plot(va["step"], va["value"], "o", color=color, ms=3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats per byte)")
    ax.set_title("Loss curves (lines: training, smoothed; dots: validation; dashed: AdamW)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, plt, path)


def plot_failed_share(spectra, *, path, nonnull=None) -> Path:
    """Share of directions NS lifts to less than ρ, against step, per layer type (mean over
    depths and seeds), one line per model size. With ``nonnull`` (per record, the share without
    the matrix's structural null directions) that is drawn solid and the raw share thin dotted."""
    plt = _plt()
    types = [t for t in LAYER_ORDER if t in set(spectra["layer_type"])]
    fig, axes = _grid(len(types), plt)
    colors = _size_colors(spectra["model_params"], plt)
    df = spectra.assign(_nonnull=nonnull if nonnull is not None else spectra["frac_failed"])
    for ax, lt in zip(axes, types, strict=True):
        sub = df[df["layer_type"] == lt]
        for m, g in sub.groupby("model_params"):
            y = g.groupby("step")["_nonnull"].mean()
            ax.plot(y.index, 100 * y.values, color=colors[m], lw=1.1, label=f"M={m / 1e6:.2g}M")
            if nonnull is not None:
                raw = g.groupby("step")["frac_failed"].mean()
                if (raw - y).abs().max() > 1e-9:
                    ax.plot(raw.index, 100 * raw.values, color=colors[m], lw=0.7, ls=":")
        ax.set_title(f"{lt}: directions NS fails to lift", fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("failed share (%)")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    if axes:
        axes[0].legend(fontsize=7)
    if nonnull is not None:
        fig.suptitle("Failed share without the numerically null (structural) directions; dotted: with them",
                     fontsize=10)
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
