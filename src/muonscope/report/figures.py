"""Matplotlib figures. Each function writes one PNG (Agg backend, no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_ns_maps(configs, *, rho: float = 0.1, path: str | Path, s_min: float = 1e-7) -> Path:
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
