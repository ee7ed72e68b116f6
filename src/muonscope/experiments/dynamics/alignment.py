"""Frame alignment between the gradient and the weight under Muon: two definitions side by side.

For W = U_W Σ_W V_Wᵀ and G = U_G Σ_G V_Gᵀ and a rank k, the principal angles θ₁…θ_k between
span U_W[:, :k] and span U_G[:, :k] are the arccos of the singular values of U_W[:, :k]ᵀU_G[:, :k]
(likewise on the right), and ‖sin Θ‖_F = √(Σᵢ sin²θᵢ) = ‖(I − PPᵀ)Q‖_F.

- ``paper``: the definition of the paper's alignment script: k = the **target rank**, each side
  on its own (left and right ‖sin Θ‖_F, at most √k; the script also reports the mean cos θᵢ).
- ``current``: :func:`muonscope.spectra.metrics.frame_alignment` as ``dynamics sensing`` records
  it: k = the smaller **numerical rank** of W and G, both sides combined,
  √(‖sin Θ_left‖_F² + ‖sin Θ_right‖_F²), at most √(2k).

For independent random k-dimensional subspaces of R^m, E‖sin Θ‖_F² = k(1 − k/m) per side: the
"no alignment" level each definition is compared with. Also recorded: the shared-frame
misalignment (:func:`~muonscope.spectra.metrics.shared_frame_misalignment`).

Muon here is exact polar, no momentum: polar(cG) = polar(G), so the measurement scaling (and a
1/n in the loss) does not change the trajectory; the settings differ in shape, target rank, start
and lr schedule.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from muonscope.errors import ConfigError
from muonscope.experiments.dynamics.problems import DTYPE, SensingConfig, SensingProblem
from muonscope.experiments.dynamics.sensing import initial_weights
from muonscope.experiments.dynamics.steps import lr_at
from muonscope.orth import polar_exact
from muonscope.spectra import metrics as M

THRESHOLD = 0.1  # the paper: ‖sin Θ‖_F < 0.1 after a transient


@dataclass(frozen=True)
class AlignmentSetting:
    """One sensing setting: W rows×cols, n measurements, target rank, start, lr and schedule."""

    name: str
    rows: int
    cols: int
    measurements: int
    rank: int
    kappa: float = 1.0
    init: str = "gaussian"  # "gaussian": i.i.d. N(0, init_scale²) entries; "powerlaw": as `dynamics sensing`
    init_scale: float = 0.1
    lr: float = 0.01
    schedule: str = "constant"
    steps: int = 3000
    record_every: int = 10

    def __post_init__(self) -> None:
        SensingConfig(self.rows, self.cols, self.measurements, self.rank, self.kappa)  # validates the shape
        if self.init not in ("gaussian", "powerlaw"):
            raise ConfigError(f"init must be 'gaussian' or 'powerlaw', got {self.init!r}")
        for name in ("steps", "record_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        lr_at(0, self.steps, 1.0, self.schedule)  # raises on an unknown schedule
        if not (math.isfinite(self.lr) and self.lr > 0 and self.init_scale > 0):
            raise ConfigError("lr and init_scale must be positive")

    def to_dict(self) -> dict:
        return asdict(self)


def paper_setting(d: int = 20, steps: int = 3000) -> AlignmentSetting:
    """The paper's alignment script for d = 20 (W 20×20, 200 measurements, rank 2, W₀ = 0.1·N(0, 1),
    lr 0.01 constant, 3000 steps); other d keep its ratio n = d²/2."""
    return AlignmentSetting(f"paper-d{d}", d, d, d * d // 2, 2, steps=steps)


def sensing_setting(steps: int = 1000) -> AlignmentSetting:
    """The `dynamics sensing` defaults (W 50×20, n = 100, full rank, κ = 5, concentrated start,
    lr 0.01 cosine): where DYNAMICS.md measured ≈ 3.44."""
    return AlignmentSetting("sensing", 50, 20, 100, 20, kappa=5.0, init="powerlaw", lr=0.01, schedule="cosine",
                            steps=steps, record_every=5)


def principal_angles(P: np.ndarray, Q: np.ndarray) -> np.ndarray:
    """Principal angles (radians, ascending) between the spans of orthonormal P, Q (m×k)."""
    c = np.linalg.svd(P.T @ Q, compute_uv=False)
    return np.arccos(np.clip(c, -1.0, 1.0))


def paper_alignment(W: np.ndarray, G: np.ndarray, k: int) -> dict:
    """Left and right ‖sin Θ‖_F and mean cos θ between the top-k singular frames of W and G."""
    UW, _, VWt = np.linalg.svd(W, full_matrices=False)
    UG, _, VGt = np.linalg.svd(G, full_matrices=False)
    left = principal_angles(UW[:, :k], UG[:, :k])
    right = principal_angles(VWt[:k].T, VGt[:k].T)
    return {"sin_left": float(np.linalg.norm(np.sin(left))), "sin_right": float(np.linalg.norm(np.sin(right))),
            "cos_left": float(np.cos(left).mean()), "cos_right": float(np.cos(right).mean())}


def random_level(m: int, k: int) -> float:
    """√(k(1 − k/m)): the root-mean-square ‖sin Θ‖_F of two independent random k-planes in R^m."""
    return math.sqrt(k * (1.0 - k / m))


METRICS = ("sin_left", "sin_right", "cos_left", "cos_right", "current", "current_k", "misalignment",
           "rel_residual")


def run_setting(setting: AlignmentSetting, seeds, progress: Callable[[int], None] | None = None) -> dict:
    """Traces (S, T) of every metric in :data:`METRICS` under exact-polar Muon."""
    cfg = SensingConfig(setting.rows, setting.cols, setting.measurements, setting.rank, setting.kappa)
    prob = SensingProblem.generate(cfg, list(seeds))
    if setting.init == "powerlaw":
        W = initial_weights(prob, "powerlaw", setting.init_scale)
    else:
        W = torch.stack([setting.init_scale * torch.randn(setting.rows, setting.cols, dtype=DTYPE,
                                                          generator=torch.Generator().manual_seed(10_000 + int(s)))
                         for s in prob.seeds])
    traces = {k: [] for k in METRICS}
    steps = []
    for t in range(setting.steps + 1):
        G = prob.gradient(W)
        if t % setting.record_every == 0 or t == setting.steps:
            steps.append(t)
            rel = prob.relative_residual(W).numpy()
            row = {k: np.full(prob.batch, np.nan) for k in METRICS}
            for i in range(prob.batch):
                Wi, Gi = W[i].numpy(), G[i].numpy()
                for key, v in paper_alignment(Wi, Gi, setting.rank).items():
                    row[key][i] = v
                row["current"][i] = M.frame_alignment(Wi, Gi)
                row["current_k"][i] = min(M._numerical_rank(Wi), M._numerical_rank(Gi))
                row["misalignment"][i] = M.shared_frame_misalignment(Wi, Gi)
                row["rel_residual"][i] = rel[i]
            for key in METRICS:
                traces[key].append(row[key])
        if t == setting.steps:
            break
        W = W - lr_at(t, setting.steps, setting.lr, setting.schedule) * polar_exact(G)
        if progress is not None:
            progress(1)
    return {"steps": np.asarray(steps), **{k: np.stack(v, axis=1) for k, v in traces.items()}}


def summarize_setting(setting: AlignmentSetting, tr: dict, late_from: float = 0.5) -> dict:
    """Per metric, the median over the late window (steps ≥ late_from·T) per seed, then the mean and
    range over seeds; the share of late records below 0.1; the random levels of both definitions."""
    late = tr["steps"] >= late_from * setting.steps
    out = {}
    for key in METRICS:
        med = np.nanmedian(tr[key][:, late], axis=1)
        out[key] = {"late_median_mean": float(np.mean(med)), "late_median_min": float(np.min(med)),
                    "late_median_max": float(np.max(med))}
    both = (tr["sin_left"][:, late] < THRESHOLD) & (tr["sin_right"][:, late] < THRESHOLD)
    k_cur = int(np.nanmedian(tr["current_k"][:, late]))
    mean_paper = 0.5 * (tr["sin_left"] + tr["sin_right"]).mean(0)
    return {
        "setting": setting.to_dict(), "late_window": f"steps >= {late_from:g} * {setting.steps}",
        "metrics": out,
        "paper_share_late_below_0.1_both_sides": float(both.mean()),
        "paper_min_over_time_of_seed_mean": float(np.min(mean_paper)),
        "paper_step_of_min": int(tr["steps"][int(np.argmin(mean_paper))]),
        "random_level_paper": {"left": random_level(setting.rows, setting.rank),
                               "right": random_level(setting.cols, setting.rank)},
        "current_k_late": k_cur,
        "random_level_current": math.hypot(random_level(setting.rows, min(k_cur, setting.rows)),
                                           random_level(setting.cols, min(k_cur, setting.cols))),
    }


def verdict(settings: list[dict]) -> str:
    """Which definition gives ≈ 3.44, and whether < 0.1 after the transient is reproduced."""
    parts = []
    for s in settings:
        name = s["setting"]["name"]
        m = s["metrics"]
        parts.append(f"{name}: current {m['current']['late_median_mean']:.2f} (random "
                     f"{s['random_level_current']:.2f}), paper left/right {m['sin_left']['late_median_mean']:.2f}/"
                     f"{m['sin_right']['late_median_mean']:.2f} (random {s['random_level_paper']['left']:.2f}/"
                     f"{s['random_level_paper']['right']:.2f}), late share < 0.1: "
                     f"{s['paper_share_late_below_0.1_both_sides']:.2f}")
    ok = any(s["paper_share_late_below_0.1_both_sides"] > 0.5 for s in settings)
    parts.append("< 0.1 after a transient: " + ("reproduced in at least one setting" if ok else "not reproduced"))
    return "; ".join(parts)


def experiment(settings: list[AlignmentSetting], seeds, *, summary_path=None, figure_path=None,
               progress: Callable[[int], None] | None = None) -> dict:
    """Run every setting, summarize, write the JSON and the figure."""
    from muonscope.experiments.dynamics import record

    if not settings:
        raise ConfigError("no alignment settings given")
    seeds = list(seeds)
    if not seeds:
        raise ConfigError("need at least one seed")
    results = [(s, run_setting(s, seeds, progress)) for s in settings]
    summary = {"experiment": "frame_alignment", "seeds": seeds, "threshold": THRESHOLD,
               "definitions": {"paper": "k = target rank; left and right ||sin Theta||_F separately (the paper's "
                                        "alignment script; it also reports mean cos theta)",
                               "current": "k = smaller numerical rank of W and G; sqrt(left^2 + right^2) "
                                          "(muonscope.spectra.metrics.frame_alignment, `dynamics sensing`)"},
               "settings": [summarize_setting(s, tr) for s, tr in results]}
    summary["verdict"] = verdict(summary["settings"])
    if summary_path is not None:
        record.write_json(summary_path, summary)
    if figure_path is not None:
        from muonscope.experiments.dynamics.figures import plot_alignment

        plot_alignment(results, figure_path)
    return summary
