"""Muon against AdamW in two regimes at matched budgets: the tiny GPT on offline text and a small
ViT matched to it on an offline image set.

Every (task, optimizer, lr, seed) run trains for the same steps and batch size. The lr swept is
Muon's (hidden matrices; embeddings, head and 1-D parameters keep AdamW at the training default) or
AdamW's (every parameter). At ``snapshots`` evenly spaced steps (and at 0) the run records the
validation loss and, for the block matrices (q, k, v, o, mlp up/down), the mean stable rank
‖W‖_F²/‖W‖₂² and normalized spectral entropy H/log r (:mod:`muonscope.spectra.metrics`).

GPT runs call :func:`muonscope.experiments.train.train` segment by segment (``resume=True``, only
``steps`` grows: bit-identical to one call) and read the weights from the checkpoint. Each run
writes ``result.json`` atomically when it ends; a rerun skips runs that have one and restarts any
that do not.

Summary per task and optimizer: validation loss at each lr (mean, 95% t-interval over seeds), the
best lr, the plateau (lrs whose mean loss is within ``plateau_tol`` relatively of the best), and the
weight-spectrum trajectories at the best lr; per task the paired difference Muon − AdamW at the
respective best lrs; and a verdict on the reversal.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from muonscope._jsonfile import write_json
from muonscope.errors import ConfigError
from muonscope.experiments.config import TrainConfig
from muonscope.experiments.dynamics.stats import paired_effect
from muonscope.spectra import metrics as M

TASKS = ("gpt", "vit")
OPTIMIZERS = ("muon", "adamw")
RESULT = "result.json"


@dataclass(frozen=True)
class RegimesConfig:
    """Grid and budget (defaults sized to ≈ 35 CPU-minutes at one thread)."""

    tasks: tuple[str, ...] = TASKS
    muon_lrs: tuple[float, ...] = (0.005, 0.01, 0.02, 0.04)
    adamw_lrs: tuple[float, ...] = (0.001, 0.002, 0.004, 0.008)
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 300
    snapshots: int = 5
    preset: str = "tiny"  # the GPT preset; the ViT copies its width, depth and heads
    gpt_batch: int = 16
    corpus: str = "stdlib"
    corpus_bytes: int = 2_000_000
    eval_batches: int = 8
    dataset: str = "digits"
    upsample: int = 1
    patch: int = 2
    vit_batch: int = 64
    weight_decay: float = 0.01
    warmup_steps: int = 20
    plateau_tol: float = 0.02

    def __post_init__(self) -> None:
        tasks = tuple(dict.fromkeys(self.tasks))
        bad = [t for t in tasks if t not in TASKS]
        if not tasks or bad:
            raise ConfigError(f"unknown task {bad[0] if bad else '(none)'!r}; use {' and/or '.join(TASKS)}")
        object.__setattr__(self, "tasks", tasks)
        for name in ("muon_lrs", "adamw_lrs"):
            lrs = tuple(float(x) for x in getattr(self, name))
            if not lrs:
                raise ConfigError(f"the {name.split('_')[0]} lr grid is empty; give at least one lr > 0")
            if any(not (math.isfinite(x) and x > 0) for x in lrs) or len(set(lrs)) != len(lrs):
                raise ConfigError(f"{name.replace('_', ' ')} must be distinct positive numbers, got {list(lrs)}")
            object.__setattr__(self, name, tuple(sorted(lrs)))
        if not self.seeds:
            raise ConfigError("need at least one seed")
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        for name in ("steps", "snapshots", "gpt_batch", "eval_batches", "vit_batch", "patch", "upsample"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if self.snapshots > self.steps:
            raise ConfigError(f"snapshots ({self.snapshots}) exceed steps ({self.steps})")
        if not (self.plateau_tol >= 0 and self.weight_decay >= 0 and self.warmup_steps >= 0):
            raise ConfigError("plateau_tol, weight_decay and warmup_steps must be >= 0")
        from muonscope.experiments.model import get_preset

        get_preset(self.preset)
        if "vit" in self.tasks:
            from muonscope.experiments.dynamics.vit import check_dataset

            check_dataset(self.dataset)
        if "gpt" in self.tasks:
            from muonscope.experiments.data import load_corpus

            load_corpus(self.corpus, max_bytes=min(self.corpus_bytes, 10_000))  # unknown names fail here

    def lrs(self, optimizer: str) -> tuple[float, ...]:
        return self.muon_lrs if optimizer == "muon" else self.adamw_lrs

    def snapshot_steps(self) -> list[int]:
        return [0] + [round(self.steps * (i + 1) / self.snapshots) for i in range(self.snapshots)]

    def runs(self) -> list[RunSpec]:
        return [RunSpec(t, o, lr, s) for t in self.tasks for o in OPTIMIZERS for lr in self.lrs(o) for s in self.seeds]

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class RunSpec:
    task: str
    optimizer: str
    lr: float
    seed: int

    @property
    def key(self) -> str:
        return f"{self.task}/{self.optimizer}-lr{self.lr:g}-seed{self.seed}"


def weight_metrics(named: list[tuple[str, torch.Tensor]]) -> dict:
    """Mean stable rank and normalized spectral entropy over the given matrices."""
    sv = [torch.linalg.svdvals(p.detach().double()).numpy() for _, p in named]
    return {"stable_rank": float(np.mean([M.stable_rank(s) for s in sv])),
            "entropy": float(np.mean([M.spectral_entropy(s, normalized=True) for s in sv]))}


def _train_config(spec: RunSpec, cfg: RegimesConfig, steps: int) -> TrainConfig:
    seg = max(cfg.steps // cfg.snapshots, 1)
    base = TrainConfig()
    return TrainConfig(preset=cfg.preset, optimizer=spec.optimizer, steps=steps, batch_size=cfg.gpt_batch,
                       corpus=cfg.corpus, corpus_bytes=cfg.corpus_bytes, seed=spec.seed,
                       lr=spec.lr if spec.optimizer == "muon" else base.lr,
                       adamw_lr=spec.lr if spec.optimizer == "adamw" else base.adamw_lr,
                       weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps, monitor_every=seg,
                       eval_every=seg, eval_batches=cfg.eval_batches, checkpoint_every=seg)


def run_gpt(spec: RunSpec, cfg: RegimesConfig, run_dir: Path) -> dict:
    """Train the GPT in segments ending at the snapshot steps; weights from each checkpoint."""
    from muonscope.experiments.model import GPT, get_preset
    from muonscope.experiments.train import CHECKPOINT, train

    model = GPT(get_preset(cfg.preset), seed=spec.seed)
    names = [m.name for m in model.hidden_matrices()]
    params = dict(model.named_parameters())
    out = {"steps": [0], "val_loss": [float("nan")], **{k: [v] for k, v in
                                                        weight_metrics([(n, params[n]) for n in names]).items()}}
    for end in cfg.snapshot_steps()[1:]:
        s = train(_train_config(spec, cfg, end), run_dir, resume=True, progress=False)
        state = torch.load(run_dir / CHECKPOINT, map_location="cpu", weights_only=True)["model"]
        wm = weight_metrics([(n, state[n]) for n in names])
        out["steps"].append(end)
        out["val_loss"].append(float(s["final_val_loss"]))
        for k, v in wm.items():
            out[k].append(v)
    return out


def _vit_optimizer(model, spec: RunSpec, cfg: RegimesConfig):
    """As the GPT's: Muon for the block matrices (patch embedding and head to AdamW), or AdamW."""
    base = TrainConfig()
    if spec.optimizer == "adamw":
        decay = [p for p in model.parameters() if p.ndim >= 2]
        no_decay = [p for p in model.parameters() if p.ndim < 2]
        return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                  {"params": no_decay, "weight_decay": 0.0}], lr=spec.lr, betas=(0.9, 0.95))
    from muonscope.experiments.config import orthogonalization
    from muonscope.laws.design import resolve_schedule
    from muonscope.optim import MuonWithAdamW

    return MuonWithAdamW(model, lr=spec.lr, weight_decay=cfg.weight_decay, momentum=base.momentum,
                         nesterov=base.nesterov, schedule=resolve_schedule(base.schedule),
                         adjust_lr_fn=base.adjust_lr_fn, adamw_lr=base.adamw_lr, adamw_betas=(0.9, 0.95),
                         adamw_weight_decay=cfg.weight_decay, adamw_params=[r"^patch\.", r"^cls$", r"^pos$"],
                         **orthogonalization(base))


@torch.no_grad()
def _vit_eval(model, data) -> tuple[float, float]:
    model.eval()
    logits = model(data.x_val)
    model.train()
    return float(F.cross_entropy(logits, data.y_val)), float((logits.argmax(-1) == data.y_val).float().mean())


def run_vit(spec: RunSpec, cfg: RegimesConfig, data) -> dict:
    """Train the ViT with linear warmup then a constant lr, as the GPT's training loop does."""
    from muonscope.experiments.dynamics.vit import ViT
    from muonscope.experiments.model import get_preset

    g = get_preset(cfg.preset)
    model = ViT(d_model=g.d_model, n_layer=g.n_layer, n_head=g.n_head, image_size=data.image_size, patch=cfg.patch,
                channels=data.channels, classes=data.classes, seed=spec.seed)
    opt = _vit_optimizer(model, spec, cfg)
    base_lrs = [grp["lr"] for grp in opt.param_groups]
    gen = torch.Generator().manual_seed(spec.seed)
    snaps = set(cfg.snapshot_steps())
    loss0, acc0 = _vit_eval(model, data)
    out = {"steps": [0], "val_loss": [loss0], "val_acc": [acc0],
           **{k: [v] for k, v in weight_metrics(model.hidden_matrices()).items()}}
    n = data.y_train.numel()
    for step in range(cfg.steps):
        f = min(1.0, (step + 1) / max(cfg.warmup_steps, 1))
        for grp, lr in zip(opt.param_groups, base_lrs, strict=True):
            grp["lr"] = lr * f
        idx = torch.randint(0, n, (cfg.vit_batch,), generator=gen)
        loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"training loss became {value} at step {step}")
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step + 1 in snaps:
            vl, va = _vit_eval(model, data)
            out["steps"].append(step + 1)
            out["val_loss"].append(vl)
            out["val_acc"].append(va)
            for k, v in weight_metrics(model.hidden_matrices()).items():
                out[k].append(v)
    return out


def run_all(cfg: RegimesConfig, out_dir: str | Path, progress: Callable[[int], None] | None = None) -> list[dict]:
    """Run every missing run (one ``result.json`` each) and return all results."""
    out = Path(out_dir)
    data = None
    results = []
    for spec in cfg.runs():
        run_dir = out / "runs" / spec.key
        res_path = run_dir / RESULT
        if res_path.is_file():
            import json

            results.append(json.loads(res_path.read_text()))
            if progress is not None:
                progress(1)
            continue
        if run_dir.exists():  # an interrupted run: start it again
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        t0 = time.process_time()
        w0 = time.perf_counter()
        diverged = False
        try:
            if spec.task == "gpt":
                traj = run_gpt(spec, cfg, run_dir)
            else:
                if data is None:
                    from muonscope.experiments.dynamics.vit import load_images

                    data = load_images(cfg.dataset, cfg.upsample)
                traj = run_vit(spec, cfg, data)
        except FloatingPointError as exc:
            diverged, traj = True, {"error": str(exc)}
        res = {"spec": asdict(spec), "config": cfg.to_dict(), "diverged": diverged, "trajectory": traj,
               "final_val_loss": float("nan") if diverged else traj["val_loss"][-1],
               "cpu_seconds": time.process_time() - t0, "wall_seconds": time.perf_counter() - w0,
               "threads": torch.get_num_threads()}
        if spec.task == "vit" and not diverged:
            res["final_val_acc"] = traj["val_acc"][-1]
        write_json(res_path, res)
        results.append(res)
        if progress is not None:
            progress(1)
    return results


def _ci(x: np.ndarray) -> list[float]:
    from scipy import stats as sps

    x = x[np.isfinite(x)]
    if x.size < 2:
        return [float("nan"), float("nan")]
    half = float(sps.t.ppf(0.975, x.size - 1)) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return [float(x.mean() - half), float(x.mean() + half)]


def summarize(cfg: RegimesConfig, results: list[dict]) -> dict:
    """Per task/optimizer lr tables, best lr, plateau, spectra at the best lr; per task Muon − AdamW."""
    by = {(r["spec"]["task"], r["spec"]["optimizer"], float(r["spec"]["lr"]), int(r["spec"]["seed"])): r
          for r in results}
    tasks = {}
    for task in cfg.tasks:
        opts = {}
        for o in OPTIMIZERS:
            rows = []
            for lr in cfg.lrs(o):
                vals = np.array([by[(task, o, lr, s)]["final_val_loss"] for s in cfg.seeds], dtype=np.float64)
                finite = vals[np.isfinite(vals)]
                row = {"lr": lr, "val_loss": vals.tolist(), "diverged": int(np.sum(~np.isfinite(vals))),
                       "mean": float(finite.mean()) if finite.size == vals.size else float("inf"),
                       "ci95": _ci(vals)}
                if task == "vit":
                    row["val_acc_mean"] = float(np.mean([by[(task, o, lr, s)].get("final_val_acc", float("nan"))
                                                         for s in cfg.seeds]))
                rows.append(row)
            best = min(rows, key=lambda r: r["mean"])
            plateau = [r["lr"] for r in rows if r["mean"] <= best["mean"] * (1 + cfg.plateau_tol)]
            traj = {}
            for metric in ("stable_rank", "entropy"):
                runs = [by[(task, o, best["lr"], s)] for s in cfg.seeds]
                ok = [r["trajectory"][metric] for r in runs if not r["diverged"]]
                if ok:
                    arr = np.array(ok)
                    traj[metric] = {"steps": runs[0]["trajectory"]["steps"], "mean": arr.mean(0).tolist(),
                                    "final_ci95": _ci(arr[:, -1]), "initial": float(arr[:, 0].mean())}
            opts[o] = {"rows": rows, "best_lr": best["lr"], "best_mean": best["mean"], "best_ci95": best["ci95"],
                       "plateau_lrs": plateau, "plateau_span": max(plateau) / min(plateau),
                       "plateau_at_grid_edge": best["lr"] in (cfg.lrs(o)[0], cfg.lrs(o)[-1]),
                       "spectra_at_best_lr": traj}
        a = [by[(task, "muon", opts["muon"]["best_lr"], s)]["final_val_loss"] for s in cfg.seeds]
        b = [by[(task, "adamw", opts["adamw"]["best_lr"], s)]["final_val_loss"] for s in cfg.seeds]
        effect = paired_effect(a, b, metric="val_loss", label_a="muon", label_b="adamw").to_dict()
        sr = {o: opts[o]["spectra_at_best_lr"].get("stable_rank", {}).get("mean", [float("nan")])[-1]
              for o in OPTIMIZERS}
        tasks[task] = {"optimizers": opts, "muon_minus_adamw": effect, "final_stable_rank_at_best_lr": sr,
                       "winner": _winner(effect)}
    cpu = sum(r["cpu_seconds"] for r in results)
    return {"experiment": "regimes", "config": cfg.to_dict(), "tasks": tasks,
            "cpu_seconds_total": cpu, "runs": len(results), "verdict": verdict(tasks)}


def _winner(effect: dict) -> str:
    lo, hi = effect["ci95_low"], effect["ci95_high"]
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "undetermined"  # fewer than two finite paired seeds: no interval
    return "muon" if hi < 0 else "adamw" if lo > 0 else "tie"


def verdict(tasks: dict) -> str:
    """The paper: Muon wins the GPT (high stable rank, broad plateau), AdamW wins the ViT."""
    parts = []
    for task, t in tasks.items():
        e = t["muon_minus_adamw"]
        o = t["optimizers"]
        parts.append(f"{task}: {t['winner']} (Muon - AdamW val loss {e['mean_diff']:+.4f} "
                     f"[{e['ci95_low']:+.4f}, {e['ci95_high']:+.4f}]); stable rank muon "
                     f"{t['final_stable_rank_at_best_lr']['muon']:.2f} vs adamw "
                     f"{t['final_stable_rank_at_best_lr']['adamw']:.2f}; plateau span muon "
                     f"{o['muon']['plateau_span']:g}x vs adamw {o['adamw']['plateau_span']:g}x")
    if "gpt" in tasks and "vit" in tasks:
        g, v = tasks["gpt"]["winner"], tasks["vit"]["winner"]
        if g == "muon" and v == "adamw":
            parts.append("reversal reproduced")
        elif g == "muon" and v == "tie":
            parts.append("Muon wins the GPT, the ViT is a tie: reversal not reproduced (no ViT advantage for AdamW)")
        elif g == v:
            parts.append(f"no reversal: {g} on both" if g != "tie" else "no reversal: ties on both")
        else:
            parts.append(f"reversal not reproduced (gpt: {g}, vit: {v})")
    return "; ".join(parts)


def experiment(cfg: RegimesConfig, out_dir, *, summary_dir=None,
               progress: Callable[[int], None] | None = None) -> dict:
    """Run (resumably) under ``OUT/runs``; summarize to ``regimes.json`` and plot ``regimes.png`` in
    ``summary_dir`` (default ``OUT``)."""
    out = Path(out_dir)
    results = run_all(cfg, out, progress)
    summary = summarize(cfg, results)
    dest = Path(summary_dir) if summary_dir is not None else out
    write_json(dest / "regimes.json", summary, allow_nan=True)
    from muonscope.experiments.dynamics.figures import plot_regimes

    plot_regimes(summary, dest / "regimes.png")
    return summary

