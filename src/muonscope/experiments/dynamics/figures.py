"""Figures of the dynamics experiments (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

COLORS = {"muon": "C0", "gd": "C1", "nmgd": "C2", "random-orth": "C3"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _color(label: str, i: int) -> str:
    return COLORS.get(label, f"C{4 + i % 6}")


def _save(fig, path) -> Path:
    from muonscope._atomic import atomic_write_with

    path = Path(path)
    fig.tight_layout()
    atomic_write_with(path, lambda p: fig.savefig(p, dpi=110))
    _plt().close(fig)
    return path


def plot_sensing(result, path) -> Path:
    """Mean ± sd over seeds of normalized entropy, stable rank, relative residual and misalignment."""
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    panels = [("entropy", "1 - normalized spectral entropy of W (0: flat)", True),
              ("stable_rank", "stable rank of W", False),
              ("rel_residual", "relative residual ||A(W) - y|| / ||y||", True),
              ("misalignment", "shared-frame misalignment of G in W's frames", False)]
    for ax, (metric, title, logy) in zip(axes.ravel(), panels, strict=True):
        for i, (label, tr) in enumerate(result.trajectories.items()):
            x = 1.0 - tr.traces[metric] if metric == "entropy" else tr.traces[metric]
            mean, sd = np.nanmean(x, axis=0), np.nanstd(x, axis=0)
            ax.plot(tr.steps, mean, color=_color(label, i), label=label, lw=1.4)
            if not logy:
                ax.fill_between(tr.steps, mean - sd, mean + sd, color=_color(label, i), alpha=0.15, lw=0)
        if metric == "entropy":
            target = np.mean([_norm_entropy(W) for W in result.problem.W_star.numpy()])
            ax.axhline(1.0 - target, color="k", ls=":", lw=1, label="target W*")
        if logy:
            ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    cfg = result.config
    fig.suptitle(f"matrix sensing {cfg.problem.rows}x{cfg.problem.cols}, n={cfg.problem.measurements}, "
                 f"{len(cfg.seeds)} seeds, init={cfg.init} ({cfg.init_scale:g}), lr={cfg.lr:g} {cfg.lr_schedule}",
                 fontsize=10)
    return _save(fig, path)


def _norm_entropy(W) -> float:
    from muonscope.spectra import metrics as M

    return float(M.spectral_entropy(np.linalg.svd(W, compute_uv=False), normalized=True))


def plot_final_spectra(result, path) -> Path:
    """Final normalized singular values (mean over seeds) per rule, with the target's."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    r = result.problem.config.r
    idx = np.arange(1, r + 1)
    for i, (label, tr) in enumerate(result.trajectories.items()):
        ax.plot(idx, np.nanmean(tr.spectra[:, -1], axis=0), "o-", ms=3, color=_color(label, i), label=label)
    sv = np.linalg.svd(result.problem.W_star.numpy(), compute_uv=False)
    ax.plot(idx, (sv / np.linalg.norm(sv, axis=-1, keepdims=True)).mean(0), "k:", label="target W*")
    ax.axhline(1 / np.sqrt(r), color="gray", lw=0.8, ls="--", label="flat 1/sqrt(r)")
    ax.set_xlabel("index i (descending)")
    ax.set_ylabel("sigma_i / ||W||_F")
    ax.set_title("final normalized spectrum", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_nuclear(outputs: list[dict], path) -> Path:
    """Per setting: the Muon nuclear-norm trace of the first seed against the cvxpy minimum, and
    the per-seed ratios ‖W‖_*/min‖W‖_* of every interpolant."""
    plt = _plt()
    fig, axes = plt.subplots(1, 1 + len(outputs), figsize=(5 * (1 + len(outputs)), 4))
    ax = axes[0]
    for k, out in enumerate(outputs):
        tr = out.get("traces", {}).get("muon")
        if tr is None:
            continue
        ax.plot(tr["steps"], tr["nuclear"][0], color=f"C{k}", label=f"{out['setting']}: Muon (seed {out['seeds'][0]})")
        ax.axhline(out["rows"][0]["min_nuclear"], color=f"C{k}", ls="--", lw=1, label=f"{out['setting']}: cvxpy minimum")
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlabel("step")
    ax.set_ylabel("||W||_*")
    ax.set_title("Muon's nuclear norm during training", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    for ax, out in zip(axes[1:], outputs, strict=True):
        labels = [k for k in out["summary"] if k != "target"]
        for i, label in enumerate(labels):
            ratios = [row[f"{label}_ratio"] for row in out["rows"]]
            jitter = np.linspace(-0.15, 0.15, len(ratios)) if len(ratios) > 1 else [0.0]
            ax.plot(i + np.asarray(jitter), ratios, "o", ms=4, color=_color(label, i))
            ax.plot([i - 0.25, i + 0.25], [np.mean(ratios)] * 2, "k-", lw=1.5)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, fontsize=7, rotation=15)
        ax.set_ylabel("||W||_* / min ||W||_*")
        pr = out["problem"]
        ax.set_title(f"{out['setting']}: W {pr['rows']}x{pr['cols']}, n={pr['measurements']}, "
                     f"{len(out['seeds'])} seed(s)", fontsize=10)
        ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_entropy(summary: dict, examples: list[tuple[str, np.ndarray, np.ndarray]], path) -> Path:
    """Left: share of instances where γ = 0 maximizes the first-order entropy gain, per regime.
    Right: gain profiles of example instances (normalized by their maximum |gain|)."""
    plt = _plt()
    states = summary.get("sensing_states")
    fig, axes = plt.subplots(1, 3 if states else 2, figsize=(18 if states else 12, 4.4))
    ax = axes[0]
    regimes = summary["regimes"]
    y = np.arange(len(regimes))
    norms = [k for k in ("frobenius", "spectral") if k in regimes[0]]
    for j, nm in enumerate(norms):
        ax.barh(y + (j - 0.5) * 0.38, [r[nm]["polar_is_max"] for r in regimes], height=0.38,
                label=f"{nm}-matched", color=f"C{j}")
    ax.set_yticks(y)
    ax.set_yticklabels([f"{r['regime']} (mis {r['misalignment_mean']:.2f})" for r in regimes], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("share of instances where polar (gamma=0) maximizes dH")
    ax.set_xlim(0, 1)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="x")
    ax = axes[1]
    for i, (label, gammas, gains) in enumerate(examples):
        gains = np.asarray(gains)
        ax.plot(gammas, gains / np.max(np.abs(gains)), "o-", ms=3, color=f"C{i}", label=label)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("gamma (update spectrum sigma_G^gamma, Frobenius-matched)")
    ax.set_ylabel("first-order entropy gain (scaled)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if states:
        ax = axes[2]
        rows = states["rows"]
        steps = [r["step"] for r in rows]
        ax.plot(steps, [r["polar_is_max"] for r in rows], "o-", ms=2.5, label="share of seeds: polar maximizes dH")
        ax.plot(steps, [r["misalignment_mean"] for r in rows], "-", color="C3", label="misalignment of G (mean)")
        ax.plot(steps, [r["polar_gain_negative"] for r in rows], ":", color="k", label="share: polar dH < 0")
        ax.set_xscale("symlog", linthresh=10)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("Muon step (matrix sensing)")
        ax.set_title("states visited by Muon in matrix sensing", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_noise(summary: dict, path) -> Path:
    """Left: measured vs predicted momentum noise factor. Right: B·NSR(B)/B_crit against B/B_crit."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    ax = axes[0]
    mom = summary["momentum"]
    for j, rho in enumerate(sorted({m["rho"] for m in mom})):
        rows = [m for m in mom if m["rho"] == rho]
        b = [m["beta"] for m in rows]
        ax.errorbar(b, [m["measured"] for m in rows], yerr=[2 * m["stderr"] for m in rows], fmt="o",
                    color=f"C{j}", label=f"measured, rho={rho:g}")
        bb = np.linspace(min(b), max(b), 100)
        ax.plot(bb, (1 - bb) * (1 + bb * rho) / ((1 + bb) * (1 - bb * rho)), color=f"C{j}", lw=1)
    bb = np.linspace(0.5, 0.99, 100)
    ax.plot(bb, (1 - bb) ** 2, "k:", label="naive (1-beta)^2")
    ax.set_yscale("log")
    ax.set_xlabel("beta")
    ax.set_ylabel("Var(momentum) / Var(noise)")
    ax.set_title("momentum noise factor (lines: (1-b)(1+b rho)/((1+b)(1-b rho)))", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax = axes[1]
    for i, sim in enumerate(summary["polar"]):
        bc = sim["B_crit"]
        B = np.array([r["batch"] for r in sim["rows"]])
        ax.plot(B / bc, [r["B_times_nsr"] / bc for r in sim["rows"]], "o-", ms=2.5, lw=1,
                color=f"C{i % 10}", label=f"{sim['spectrum_type']} r={sim['r']}")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("B / B_crit")
    ax.set_ylabel("B * NSR(B) / B_crit  (1 = first-order theory)")
    ax.set_title("polar-factor noise under batch-B gradient noise (square G)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    return _save(fig, path)


def plot_weight_decay(summary: dict, path) -> Path:
    """Per ATSR definition (rows): ATSR against λ per mode, the final fit, the blocks left out."""
    plt = _plt()
    defs = summary["definitions"]
    fig, axes = plt.subplots(len(defs), 3, figsize=(15, 4.2 * len(defs)), squeeze=False)
    colors = {"coupled": "C3", "decoupled": "C0"}
    for row, (name, block) in zip(axes, defs.items(), strict=True):
        base = block["baseline"]
        for mode in block["config"]["modes"]:
            rows = [r for r in block["rows"] if r["mode"] == mode]
            lam = np.array([r["lambda"] for r in rows])
            mean = np.array([r["atsr_mean"] for r in rows])
            ci = np.nan_to_num(np.array([r["atsr_ci95"] for r in rows]), nan=0.0)
            err = [np.maximum(mean - ci[:, 0], 0) if ci.any() else 0 * mean, np.maximum(ci[:, 1] - mean, 0)]
            row[0].errorbar(lam, mean, yerr=err, color=colors[mode], marker="o", ms=4, capsize=3,
                            label=f"{mode} (mean, 95% t-interval)")
            row[1].plot(lam, [r["final_rel_residual_median"] for r in rows], color=colors[mode], marker="o", ms=4,
                        label=mode)
            row[2].plot(lam, [r["blocks_never_acquired"] for r in rows], color=colors[mode], marker="o", ms=4,
                        label=f"{mode}: never acquired")
            row[2].plot(lam, [r["blocks_excluded_at_start"] for r in rows], color=colors[mode], marker="x", ls="--",
                        ms=5, label=f"{mode}: at the level at step 0")
        if np.all(np.isfinite(base["atsr_ci95"])):
            row[0].axhspan(*base["atsr_ci95"], color="0.6", alpha=0.3, lw=0)
        row[0].axhline(base["atsr_mean"], color="k", lw=1, ls=":", label="lambda = 0")
        row[1].axhline(base["final_rel_residual_median"], color="k", lw=1, ls=":", label="lambda = 0")
        for ax in row:
            ax.axvline(summary["paper"]["boundary"], color="0.4", lw=1, ls="--")
            ax.set_xscale("log")
            ax.set_xlabel("weight decay lambda")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        row[0].set_title(f"ATSR, definition '{name}'", fontsize=10)
        row[1].set_title("final relative residual (median over seeds)", fontsize=10)
        row[1].set_yscale("log")
        row[2].set_title(f"share of blocks left out of ATSR (t_k = 0), '{name}'", fontsize=10)
        row[2].set_ylim(-0.05, 1.05)
    cfg = summary["config"]
    fig.suptitle(f"Muon + weight decay: {cfg['blocks']} blocks of {cfg['block_size']}, n={cfg['measurements']}, "
                 f"lr={cfg['lr']:g}, {cfg['steps']} steps, masses every {cfg['track_every']} steps, "
                 f"{len(cfg['seeds'])} seeds (dashed: the paper's boundary 1e-2)", fontsize=10)
    return _save(fig, path)


def plot_alignment(results, path) -> Path:
    """Per setting (columns): the paper's left/right ‖sin Θ‖_F (top) and the current definition with
    the shared-frame misalignment (bottom) over training, mean and range over seeds."""
    from muonscope.experiments.dynamics.alignment import THRESHOLD, random_level

    plt = _plt()
    fig, axes = plt.subplots(2, len(results), figsize=(4.6 * len(results), 7.5), squeeze=False)
    for j, (s, tr) in enumerate(results):
        top, bottom = axes[0, j], axes[1, j]
        x = tr["steps"]
        for key, color, label in (("sin_left", "C0", "left"), ("sin_right", "C1", "right")):
            y = tr[key]
            top.plot(x, y.mean(0), color=color, lw=1.3, label=f"paper (k = {s.rank}), {label}")
            top.fill_between(x, y.min(0), y.max(0), color=color, alpha=0.15, lw=0)
        top.axhline(THRESHOLD, color="k", ls="--", lw=1, label="0.1 (the paper's claim)")
        top.axhline(random_level(s.rows, s.rank), color="0.5", ls=":", lw=1, label="random k-planes")
        top.set_title(f"{s.name}: W {s.rows}x{s.cols}, n={s.measurements}, rank {s.rank}", fontsize=10)
        top.set_ylabel("||sin Theta||_F (paper's definition)")
        y = tr["current"]
        bottom.plot(x, y.mean(0), color="C2", lw=1.3, label="current (k = numerical rank, both sides)")
        bottom.fill_between(x, y.min(0), y.max(0), color="C2", alpha=0.15, lw=0)
        mis = tr["misalignment"]
        bottom.plot(x, mis.mean(0), color="C3", lw=1.3, label="shared-frame misalignment")
        bottom.axhline(THRESHOLD, color="k", ls="--", lw=1)
        bottom.set_ylabel("current definition / misalignment")
        res = bottom.twinx()
        res.plot(x, np.median(tr["rel_residual"], 0), color="0.3", lw=0.8, ls="-.", label="rel. residual")
        res.set_yscale("log")
        res.set_ylabel("relative residual (median)", fontsize=8)
        for ax in (top, bottom):
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="upper right")
    fig.suptitle("frame alignment between G and W under exact-polar Muon (mean and range over seeds)", fontsize=11)
    return _save(fig, path)


def plot_regimes(summary: dict, path) -> Path:
    """Per task (rows): validation loss against lr per optimizer (mean, 95% t-interval), and the mean
    stable rank and normalized entropy of the block matrices over training at each one's best lr."""
    plt = _plt()
    tasks = summary["tasks"]
    fig, axes = plt.subplots(len(tasks), 3, figsize=(15, 4.2 * len(tasks)), squeeze=False)
    colors = {"muon": "C0", "adamw": "C1"}
    for row, (task, t) in zip(axes, tasks.items(), strict=True):
        for o, res in t["optimizers"].items():
            lr = np.array([r["lr"] for r in res["rows"]])
            mean = np.array([r["mean"] for r in res["rows"]])
            ci = np.array([r["ci95"] for r in res["rows"]], dtype=np.float64)
            ok = np.isfinite(mean)
            row[0].plot(lr[ok], mean[ok], color=colors[o], marker="o", ms=4, label=f"{o} (best lr {res['best_lr']:g})")
            good = ok & np.all(np.isfinite(ci), axis=1)
            row[0].fill_between(lr[good], ci[good, 0], ci[good, 1], color=colors[o], alpha=0.2, lw=0)
            for j, metric in ((1, "stable_rank"), (2, "entropy")):
                tr = res["spectra_at_best_lr"].get(metric)
                if tr:
                    row[j].plot(tr["steps"], tr["mean"], color=colors[o], marker=".", label=f"{o} at lr {res['best_lr']:g}")
        row[0].set_xscale("log")
        row[0].set_xlabel("lr (Muon: hidden matrices; AdamW: all parameters)")
        row[0].set_title(f"{task}: final validation loss (mean over seeds, 95% CI)", fontsize=10)
        row[1].set_title(f"{task}: mean stable rank of the block matrices", fontsize=10)
        row[2].set_title(f"{task}: mean normalized spectral entropy", fontsize=10)
        for ax in row[1:]:
            ax.set_xlabel("step")
        for ax in row:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    cfg = summary["config"]
    fig.suptitle(f"Muon vs AdamW at matched budgets: preset {cfg['preset']}, {cfg['steps']} steps, "
                 f"{len(cfg['seeds'])} seeds; {summary['verdict'][:150]}", fontsize=9)
    return _save(fig, path)
