"""Spectral dynamics of matrix sensing under Muon and its controls, over many paired seeds.

Every update rule of :mod:`.steps` runs from the same initialization on the same batch of problems
(one per seed). On recorded steps t the state Wₜ and the gradient Gₜ = ∇L(Wₜ) give: the loss, the
normalized spectrum s = σ(Wₜ)/‖Wₜ‖_F, its normalized entropy H/log r (pᵢ = σᵢ/Σσ), stable rank,
nuclear/Frobenius ratio, nuclear norm, the frame alignment ‖sin Θ‖_F between the singular frames
of Gₜ and Wₜ and the shared-frame misalignment of Gₜ in Wₜ's singular basis. Seeds pair the rules,
so the final state is compared with paired effect sizes (:mod:`.stats`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from muonscope.errors import ConfigError
from muonscope.experiments.dynamics import record
from muonscope.experiments.dynamics.problems import DTYPE, SensingConfig, SensingProblem
from muonscope.experiments.dynamics.stats import paired_effect
from muonscope.experiments.dynamics.steps import Stepper, UpdateRule, lr_at
from muonscope.spectra import metrics as M

INITS = ("zero", "gaussian", "powerlaw")
TRACE_METRICS = ("loss", "rel_residual", "entropy", "stable_rank", "nuc_frob", "nuclear_norm",
                 "frob_norm", "sin_theta", "misalignment")


@dataclass(frozen=True)
class SensingRunConfig:
    """A sensing-dynamics experiment: problem shape, rules, seeds, schedule, initialization.

    ``lr`` is the step of the norm-bounded rules (Muon moves each singular direction by lr);
    ``gd_lr`` scales 1/λ_max(AAᵀ) for plain GD. ``init``: ``zero``; ``gaussian`` (i.i.d.
    entries); ``powerlaw`` (Haar frames, σᵢ ∝ i⁻², a concentrated spectrum); for the last two
    ``init_scale`` = ‖W₀‖_F/‖W*‖_F.
    """

    problem: SensingConfig = field(default_factory=SensingConfig)
    rules: tuple[str, ...] = ("muon", "muon-ns", "gd", "nmgd", "random-orth")
    seeds: tuple[int, ...] = tuple(range(10))
    steps: int = 1000
    lr: float = 0.01
    gd_lr: float = 1.0
    lr_schedule: str = "cosine"
    momentum: float = 0.0
    nesterov: bool = False
    init: str = "powerlaw"
    init_scale: float = 0.1
    record_every: int = 5

    def __post_init__(self) -> None:
        if not self.rules:
            raise ConfigError("give at least one update rule")
        for spec in self.rules:
            UpdateRule.parse(spec)
        if not self.seeds:
            raise ConfigError("give at least one seed")
        if not (isinstance(self.steps, int) and self.steps >= 1):
            raise ConfigError(f"steps must be a positive int, got {self.steps!r}")
        if not (self.lr > 0 and self.gd_lr > 0):
            raise ConfigError("learning rates must be positive")
        if self.init not in INITS:
            raise ConfigError(f"unknown init {self.init!r}; use one of {', '.join(INITS)}")
        if not (self.init_scale >= 0):
            raise ConfigError("init_scale must be >= 0")
        if not (isinstance(self.record_every, int) and self.record_every >= 1):
            raise ConfigError("record_every must be a positive int")
        lr_at(0, 1, 1.0, self.lr_schedule)  # validates the schedule name

    def to_dict(self) -> dict:
        d = asdict(self)
        d["problem"] = self.problem.to_dict()
        d["rules"] = list(self.rules)
        d["seeds"] = list(self.seeds)
        return d


def initial_weights(problem: SensingProblem, init: str, scale: float) -> torch.Tensor:
    """W₀ per seed (drawn from generator seed + 10⁶, independent of the problem's draws)."""
    S, (p, d) = problem.batch, problem.shape
    if init == "zero" or scale == 0:
        return torch.zeros(S, p, d, dtype=DTYPE)
    out = []
    for i, seed in enumerate(problem.seeds):
        g = torch.Generator().manual_seed(int(seed) + 1_000_000)
        if init == "gaussian":
            W0 = torch.randn(p, d, generator=g, dtype=DTYPE)
        else:
            r = min(p, d)
            U, _ = torch.linalg.qr(torch.randn(p, r, generator=g, dtype=DTYPE))
            V, _ = torch.linalg.qr(torch.randn(d, r, generator=g, dtype=DTYPE))
            W0 = (U * torch.arange(1, r + 1, dtype=DTYPE).pow(-2.0)) @ V.T
        out.append(W0 * (scale * problem.W_star[i].norm() / W0.norm()))
    return torch.stack(out)


@dataclass
class Trajectory:
    """One rule's recorded trajectory over all seeds: arrays of shape (S, T) or (S, T, r)."""

    rule: str
    ns_label: tuple[str, int]
    steps: np.ndarray
    traces: dict[str, np.ndarray]
    spectra: np.ndarray  # normalized singular values of W, descending
    input_spectra: np.ndarray  # normalized singular values of the rule's input (gradient/momentum)
    final_W: np.ndarray
    lr: np.ndarray


@dataclass
class SensingResult:
    config: SensingRunConfig
    trajectories: dict[str, Trajectory]
    problem: SensingProblem

    def final(self, rule: str, metric: str) -> np.ndarray:
        return self.trajectories[rule].traces[metric][:, -1]


def _measure(W: torch.Tensor, G: torch.Tensor) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    sv = torch.linalg.svdvals(W).numpy()
    gv = torch.linalg.svdvals(G).numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        s = sv / np.linalg.norm(sv, axis=-1, keepdims=True)
        sg = gv / np.linalg.norm(gv, axis=-1, keepdims=True)
    Wn, Gn = W.numpy(), G.numpy()
    sin_t = np.full(W.shape[0], np.nan)
    mis = np.full(W.shape[0], np.nan)
    for i in range(W.shape[0]):
        if sv[i, 0] > 0 and gv[i, 0] > 0:
            sin_t[i] = M.frame_alignment(Wn[i], Gn[i])
            mis[i] = M.shared_frame_misalignment(Wn[i], Gn[i])
    with np.errstate(invalid="ignore", divide="ignore"):
        vals = {
            "entropy": M.spectral_entropy(sv, normalized=True),
            "stable_rank": M.stable_rank(sv),
            "nuc_frob": M.nuclear_frobenius_ratio(sv),
            "nuclear_norm": sv.sum(-1),
            "frob_norm": np.linalg.norm(sv, axis=-1),
            "sin_theta": sin_t,
            "misalignment": mis,
        }
    return vals, s, sg


def run_rule(problem: SensingProblem, rule: UpdateRule, cfg: SensingRunConfig,
             progress: Callable[[int], None] | None = None) -> Trajectory:
    """Run one rule on every seed of ``problem`` (batched), recording every ``record_every`` steps."""
    W = initial_weights(problem, cfg.init, cfg.init_scale)
    gen = torch.Generator().manual_seed(int(problem.seeds[0]) + 2_000_000)
    stepper = Stepper(rule, momentum=cfg.momentum, nesterov=cfg.nesterov, generator=gen)
    if rule.kind == "gd":
        base = (cfg.gd_lr / problem.smoothness()).view(-1, 1, 1)
    else:
        base = torch.full((problem.batch, 1, 1), cfg.lr, dtype=DTYPE)
    rec_steps, traces, spectra, in_spectra, lrs = [], {k: [] for k in TRACE_METRICS}, [], [], []
    for t in range(cfg.steps + 1):
        G = problem.gradient(W)
        if t % cfg.record_every == 0 or t == cfg.steps:
            vals, s, sg = _measure(W, G)
            vals["loss"] = problem.loss(W).numpy()
            vals["rel_residual"] = problem.relative_residual(W).numpy()
            for k in TRACE_METRICS:
                traces[k].append(vals[k])
            spectra.append(s)
            in_spectra.append(sg)
            rec_steps.append(t)
            lrs.append(lr_at(t, cfg.steps, 1.0, cfg.lr_schedule) * base.view(-1).numpy())
        if t == cfg.steps:
            break
        W, _, _ = stepper.step(W, G, lr_at(t, cfg.steps, 1.0, cfg.lr_schedule) * base)
        if not torch.isfinite(W).all():
            raise ConfigError(f"{rule.label} diverged at step {t}: lower the learning rate")
        if progress is not None:
            progress(1)
    return Trajectory(
        rule=rule.label, ns_label=rule.ns_label, steps=np.array(rec_steps),
        traces={k: np.stack(v, axis=1) for k, v in traces.items()},
        spectra=np.stack(spectra, axis=1), input_spectra=np.stack(in_spectra, axis=1),
        final_W=W.numpy().copy(), lr=np.stack(lrs, axis=1),
    )


def run_sensing(cfg: SensingRunConfig, progress: Callable[[int], None] | None = None) -> SensingResult:
    """Run every rule of ``cfg`` on the seeds' problems."""
    problem = SensingProblem.generate(cfg.problem, cfg.seeds)
    trajs = {}
    for spec in cfg.rules:
        rule = UpdateRule.parse(spec)
        trajs[rule.label] = run_rule(problem, rule, cfg, progress)
    return SensingResult(cfg, trajs, problem)


# --- summaries ---------------------------------------------------------------------------------


def _late(x: np.ndarray, frac: float = 0.5) -> np.ndarray:
    """Per-seed median over the last ``frac`` of recorded steps."""
    k = max(1, int(math.ceil(x.shape[1] * frac)))
    return np.nanmedian(x[:, -k:], axis=1)


def summarize(result: SensingResult, reference: str | None = None) -> dict:
    """Per-rule final statistics and paired effects of ``reference`` (default: muon) vs each rule."""
    trajs = result.trajectories
    ref = reference or ("muon" if "muon" in trajs else next(iter(trajs)))
    if ref not in trajs:
        raise ConfigError(f"reference rule {ref!r} was not run; ran: {', '.join(trajs)}")
    w_ref = trajs[ref].final_W
    W_star = result.problem.W_star.numpy()
    under = result.problem.config.underdetermined
    w_mf = result.problem.min_frobenius().numpy() if under else None
    star_entropy = M.spectral_entropy(np.linalg.svd(W_star, compute_uv=False), normalized=True)
    per_rule = {}
    for label, tr in trajs.items():
        fin = {k: v[:, -1] for k, v in tr.traces.items()}
        dist_ref = np.linalg.norm(tr.final_W - w_ref, axis=(-2, -1)) / np.linalg.norm(w_ref, axis=(-2, -1))
        dist_mf = (np.linalg.norm(tr.final_W - w_mf, axis=(-2, -1)) / np.linalg.norm(w_mf, axis=(-2, -1))
                   if under else np.full(tr.final_W.shape[0], np.nan))
        per_rule[label] = {
            "ns_schedule": tr.ns_label[0], "ns_steps": tr.ns_label[1],
            **{f"final_{k}_mean": float(np.nanmean(v)) for k, v in fin.items()},
            **{f"final_{k}_sd": float(np.nanstd(v, ddof=1)) if v.size > 1 else float("nan") for k, v in fin.items()},
            "entropy_init_mean": float(np.nanmean(tr.traces["entropy"][:, 0])),
            "stable_rank_init_mean": float(np.nanmean(tr.traces["stable_rank"][:, 0])),
            "entropy_max_mean": float(np.nanmean(np.nanmax(tr.traces["entropy"], axis=1))),
            "sin_theta_late_median": float(np.nanmedian(_late(tr.traces["sin_theta"]))),
            "misalignment_late_median": float(np.nanmedian(_late(tr.traces["misalignment"]))),
            "rel_dist_to_reference_mean": float(np.mean(dist_ref)),
            "rel_dist_to_min_frobenius_mean": float(np.mean(dist_mf)),
        }
    effects = []
    for label in trajs:
        if label == ref:
            continue
        for metric in ("entropy", "stable_rank", "nuc_frob", "nuclear_norm", "loss"):
            effects.append(paired_effect(result.final(ref, metric), result.final(label, metric),
                                         metric=f"final_{metric}", label_a=ref, label_b=label).to_dict())
    return {
        "config": result.config.to_dict(),
        "reference": ref,
        "target_entropy_mean": float(np.mean(star_entropy)),
        "rules": per_rule,
        "paired": effects,
    }


def write_stores(result: SensingResult, out_dir: str | Path, *, overwrite: bool = False) -> list[Path]:
    """One run store per (rule, seed) under ``out_dir`` named ``{rule}-seed{seed}``."""
    out_dir = Path(out_dir)
    cfg = result.config
    p, d = result.problem.shape
    paths = []
    for label, tr in result.trajectories.items():
        safe = label.replace("[", "_").replace("]", "").replace(",", "_")
        for i, seed in enumerate(result.problem.seeds):
            meta = {
                "run_id": f"sensing-{safe}-seed{seed}", "model_params": p * d,
                "param_count_rule": "entries of the sensed matrix W (rows*cols)",
                "config": {**cfg.to_dict(), "rule": label, "seeds": [seed]}, "seed": int(seed),
                "experiment": "dynamics.sensing",
            }
            spectra, metrics = [], []
            for j, step in enumerate(tr.steps):
                s = tr.spectra[i, j]
                if np.all(np.isfinite(s)):
                    spectra.append(record.spectral_row(step, s * tr.traces["frob_norm"][i, j], source="weight",
                                                       rows=p, cols=d, ns_label=tr.ns_label))
                sg = tr.input_spectra[i, j]
                if np.all(np.isfinite(sg)):
                    spectra.append(record.spectral_row(step, sg, source="ns_input", rows=p, cols=d,
                                                       ns_label=tr.ns_label))
                vals = {"train_loss": tr.traces["loss"][i, j], "lr": tr.lr[i, j]}
                vals.update({k: tr.traces[k][i, j] for k in
                             ("rel_residual", "nuclear_norm", "frob_norm", "sin_theta", "misalignment")})
                metrics.extend(record.metric_rows(step, vals))
            paths.append(record.write_run(out_dir / f"{safe}-seed{seed}", meta, spectra, metrics,
                                          overwrite=overwrite))
    return paths


def experiment(cfg: SensingRunConfig, out_dir: str | Path | None = None, *, summary_path: str | Path | None = None,
               figure_dir: str | Path | None = None, overwrite: bool = False,
               progress: Callable[[int], None] | None = None) -> dict:
    """Run, write run stores (``out_dir``), the JSON summary and the figures; return the summary."""
    from muonscope.experiments.dynamics import figures

    result = run_sensing(cfg, progress)
    summary = summarize(result)
    if out_dir is not None:
        summary["stores"] = [str(p) for p in write_stores(result, out_dir, overwrite=overwrite)]
    if figure_dir is not None:
        fd = Path(figure_dir)
        summary["figures"] = [str(figures.plot_sensing(result, fd / "sensing_trajectories.png")),
                              str(figures.plot_final_spectra(result, fd / "sensing_final_spectra.png"))]
    if summary_path is not None:
        record.write_json(summary_path, summary)
    return summary
