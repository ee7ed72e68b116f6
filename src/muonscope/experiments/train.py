"""Train one tiny GPT with Muon (AdamW for embeddings, head and 1-D params) or an AdamW baseline,
with the spectral monitor writing a run store.

A run directory holds the run store (``run.json``, ``spectra/``, ``metrics/``) and ``checkpoint.pt``
(model, optimizer, batch-sampler RNG, step), saved atomically every ``checkpoint_every`` steps, on
Ctrl-C and at the end. ``resume=True`` continues from it bit-identically on the same machine (same
thread count): parameters after N + M resumed steps equal those of N + M uninterrupted steps.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from muonscope.errors import ConfigError, StoreError
from muonscope.experiments.data import load_corpus
from muonscope.experiments.model import GPT, get_preset
from muonscope.laws.design import resolve_schedule
from muonscope.optim.checkpoint import load_checkpoint, save_checkpoint

CHECKPOINT = "checkpoint.pt"
ORTHOGONALIZERS = ("ns", "exact", "hybrid", "top-q")


@dataclass
class TrainConfig:
    """Everything that defines a training run (written to run.json)."""

    preset: str = "tiny"
    optimizer: str = "muon"  # "muon" (Muon + AdamW) or "adamw"
    steps: int = 600
    batch_size: int = 16
    block_size: int | None = None  # None: the preset's block size
    corpus: str = "stdlib"
    corpus_bytes: int = 8_000_000
    seed: int = 0
    lr: float = 0.01  # Muon lr
    adamw_lr: float = 0.002  # embeddings, head, 1-D params (and every param for optimizer="adamw")
    weight_decay: float = 0.01
    momentum: float = 0.95
    nesterov: bool = False
    schedule: str = "jordan"
    ns_steps: int | str = 5  # or "adaptive": per-matrix steps from the monitored s_q
    orthogonalizer: str = "ns"  # "ns", "exact" (SVD polar factor), "hybrid" (NS + exact correction), "top-q" (oracle)
    target_q: float = 0.5  # adaptive: quantile NS must lift
    rho: float = 0.1  # adaptive and hybrid: failure level
    max_steps: int | None = None  # adaptive: most steps (None: twice the schedule's default)
    hybrid_every: int = 100  # hybrid: correct every k-th step ...
    hybrid_bound: float | None = 0.0  # ... and while the bulk NS map's failed share exceeds this
    hybrid_fraction: float = 0.05  # hybrid: bottom share of directions corrected
    hybrid_correction: str = "bottom"  # hybrid: "bottom" (Gram eigendecomposition) or "exact" (SVD)
    oracle_q: float = 1.0  # top-q oracle: directions at descending rank <= ceil(q r) mapped to 1 ...
    oracle_rho: float = 0.0  # ... the rest to oracle_rho * s / s_q
    adjust_lr_fn: str = "match_rms_adamw"
    warmup_steps: int = 20
    monitor_every: int = 10
    monitor_spectrum: str = "svd"  # "svd": exact float64 spectra; "gram": reuse NS's Gram (cheaper)
    quantiles: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)
    eval_every: int = 100
    eval_batches: int = 8
    checkpoint_every: int = 200
    bf16_autocast: bool = False  # fp32 keeps bf16 rounding out of small singular values
    plan: dict | None = field(default=None, repr=False)

    def validate(self) -> TrainConfig:
        if self.optimizer not in ("muon", "adamw"):
            raise ConfigError(f"optimizer must be 'muon' or 'adamw', got {self.optimizer!r}")
        for name in ("steps", "batch_size", "monitor_every", "eval_every", "eval_batches", "checkpoint_every"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        for name in ("lr", "adamw_lr"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ConfigError(f"{name} must be positive and finite, got {v!r}")
        if self.ns_steps != "adaptive" and (isinstance(self.ns_steps, bool) or not isinstance(self.ns_steps, int)
                                            or self.ns_steps < 1):
            raise ConfigError(f"ns_steps must be a positive integer or 'adaptive', got {self.ns_steps!r}")
        if self.orthogonalizer not in ORTHOGONALIZERS:
            raise ConfigError(f"orthogonalizer must be one of {ORTHOGONALIZERS}, got {self.orthogonalizer!r}")
        resolve_schedule(self.schedule)
        if self.optimizer == "muon":
            _orthogonalization(self)  # raises ConfigError on bad adaptive/hybrid options
        get_preset(self.preset)
        return self

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["quantiles"] = list(self.quantiles)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown training options: {', '.join(sorted(unknown))}")
        d = dict(d)
        if "quantiles" in d:
            d["quantiles"] = tuple(d["quantiles"])
        return cls(**d).validate()


def same_run(saved: dict, requested: dict) -> bool:
    """True if ``requested`` continues ``saved``: equal except a total ``steps`` not smaller.

    Options missing from ``saved`` (added to TrainConfig later) match their default.
    """
    a, b = dict(saved), dict(requested)
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
    for k in set(b) - set(a):
        if k in defaults and b[k] == defaults[k]:
            a[k] = b[k]
    return a.pop("steps") <= b.pop("steps") and a == b


def _orthogonalization(cfg: TrainConfig) -> dict:
    """Muon keyword arguments selecting NS, adaptive steps, exact polar or hybrid correction."""
    from muonscope.optim.adaptive import AdaptiveSteps
    from muonscope.orth.hybrid import HybridNS
    from muonscope.orth.oracle import TopQExact

    if cfg.orthogonalizer == "top-q":
        return {"orthogonalizer": TopQExact(cfg.oracle_q, cfg.oracle_rho), "ns_steps": None}
    if cfg.orthogonalizer == "hybrid":
        steps = None if cfg.ns_steps == "adaptive" else cfg.ns_steps
        orth = HybridNS(cfg.schedule, steps, correction=cfg.hybrid_correction, fraction=cfg.hybrid_fraction,
                        every=cfg.hybrid_every, bound=cfg.hybrid_bound, rho=cfg.rho)
        return {"orthogonalizer": orth, "ns_steps": steps}
    if cfg.ns_steps == "adaptive":
        AdaptiveSteps(cfg.target_q, cfg.rho, cfg.max_steps)  # validates
    return {"orthogonalizer": cfg.orthogonalizer, "ns_steps": cfg.ns_steps, "target_q": cfg.target_q,
            "rho": cfg.rho, "max_steps": cfg.max_steps}


def build_optimizer(model: GPT, cfg: TrainConfig):
    """Muon for the block matrices (NS, adaptive steps, exact polar or hybrid), AdamW for the rest;
    or AdamW everywhere."""
    if cfg.optimizer == "adamw":
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
        no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
        return torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.adamw_lr, betas=(0.9, 0.95))
    from muonscope.optim import MuonWithAdamW

    return MuonWithAdamW(
        model, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum, nesterov=cfg.nesterov,
        schedule=resolve_schedule(cfg.schedule), adjust_lr_fn=cfg.adjust_lr_fn, adamw_lr=cfg.adamw_lr, adamw_betas=(0.9, 0.95),
        adamw_weight_decay=cfg.weight_decay, plan=cfg.plan, **_orthogonalization(cfg))


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warmup over ``warmup_steps``, then constant (so spectra can settle)."""
    return min(1.0, (step + 1) / max(cfg.warmup_steps, 1))


@torch.no_grad()
def evaluate(model: GPT, corpus, cfg: TrainConfig, block_size: int) -> float:
    """Mean validation loss over ``eval_batches`` fixed batches (seeded, identical at every call)."""
    model.eval()
    gen = torch.Generator().manual_seed(10_000 + cfg.seed)
    losses = []
    for _ in range(cfg.eval_batches):
        x, y = corpus.get_batch("val", cfg.batch_size, block_size, gen)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16_autocast):
            _, loss = model(x, y)
        losses.append(float(loss))
    model.train()
    return sum(losses) / len(losses)


def _save(path: Path, step: int, model, optimizer, gen: torch.Generator, cfg: TrainConfig) -> None:
    save_checkpoint(path, model=model, optimizer=optimizer, rng=False, step=step,
                    generator=gen.get_state(), config=cfg.to_dict())


def train(cfg: TrainConfig, out_dir: str | os.PathLike, *, resume: bool = False, progress: bool = True,
          stop_after: int | None = None) -> dict:
    """Train, monitor and store one run in ``out_dir``; returns a summary dict.

    ``stop_after`` ends the loop after that many steps of this call (a checkpoint is saved), as a
    Ctrl-C would: used to test resumption.
    """
    from muonscope.spectra.monitor import SpectralMonitor
    from muonscope.spectra.store import RunStore

    cfg.validate()
    out = Path(out_dir)
    ckpt_path = out / CHECKPOINT
    mcfg = get_preset(cfg.preset)
    block_size = cfg.block_size or mcfg.block_size
    if block_size > mcfg.block_size:
        raise ConfigError(f"block_size {block_size} exceeds the preset's {mcfg.block_size}")
    corpus = load_corpus(cfg.corpus, max_bytes=cfg.corpus_bytes)
    model = GPT(mcfg, seed=cfg.seed)
    optimizer = build_optimizer(model, cfg)
    base_lrs = [g["lr"] for g in optimizer.param_groups]  # before loading: saved lrs are warmup-scaled
    gen = torch.Generator().manual_seed(cfg.seed)
    start = 0
    if resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path, model=model, optimizer=optimizer, rng=False)
        if not same_run(state["config"], cfg.to_dict()):
            raise ConfigError(f"{ckpt_path} was written with a different configuration (only --steps may "
                              "grow on resume); start a new run directory")
        gen.set_state(state["generator"])
        start = int(state["step"])
    elif (out / "run.json").exists() and not resume:
        raise StoreError(f"{out} already holds a run; pass resume=True (--resume) or choose another directory")
    meta = {
        "model_params": model.non_embedding_params(),
        "param_count_rule": "non-embedding parameters (all except wte, wpe, lm_head)",
        "total_params": model.total_params(),
        "model": mcfg.to_dict(), "preset": cfg.preset, "seed": cfg.seed, "config": cfg.to_dict(),
        "corpus": corpus.describe(), "width_depth_rule": "n_layer = 4, head_dim = 16, width d scaled",
        "threads": torch.get_num_threads(), "status": "running",
    }
    store = RunStore.create(out, meta, exist_ok=resume)
    monitor = None
    if cfg.optimizer == "muon":
        monitor = SpectralMonitor(optimizer, every=cfg.monitor_every, quantiles=cfg.quantiles, store=store,
                                  spectrum=cfg.monitor_spectrum)
    tokens_per_step = cfg.batch_size * block_size
    status, step, t0 = "complete", start, time.perf_counter()
    last_loss = float("nan")
    bar = _progress(progress, cfg, start)
    try:
        while step < cfg.steps:
            if stop_after is not None and step - start >= stop_after:
                status = "interrupted"
                break
            f = lr_factor(step, cfg)
            for g, base in zip(optimizer.param_groups, base_lrs, strict=True):
                g["lr"] = base * f
            x, y = corpus.get_batch("train", cfg.batch_size, block_size, gen)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16_autocast):
                _, loss = model(x, y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            last_loss = float(loss.detach())
            if not math.isfinite(last_loss):
                raise FloatingPointError(f"training loss became {last_loss} at step {step}")
            elapsed = time.perf_counter() - t0
            tps = tokens_per_step * (step - start) / max(elapsed, 1e-9)
            row = {"train_loss": last_loss, "lr": base_lrs[0] * f, "tokens": step * tokens_per_step}
            if cfg.optimizer == "muon":  # orthogonalization cost of this step, all Muon matrices
                row.update(ns_flops=optimizer.stats["last_ns_flops"], ns_matmuls=optimizer.stats["last_ns_matmuls"])
            if step % 10 == 0 or step == cfg.steps:
                row["tokens_per_s"] = tps
            if step % cfg.eval_every == 0 or step == cfg.steps:
                row["val_loss"] = evaluate(model, corpus, cfg, block_size)
            store.log_metrics(step, **row)
            if step % cfg.checkpoint_every == 0:
                store.flush()
                _save(ckpt_path, step, model, optimizer, gen, cfg)
            bar.update(step, last_loss, tps)
    except KeyboardInterrupt:
        status = "interrupted"
    finally:
        bar.close()
        _save(ckpt_path, step, model, optimizer, gen, cfg)
        if monitor is not None:
            monitor.close()
        store.flush()
    wall = time.perf_counter() - t0
    summary = {"status": status, "steps": step, "final_train_loss": last_loss,
               "wall_seconds_this_session": wall,
               "tokens_per_s": tokens_per_step * (step - start) / max(wall, 1e-9)}
    if status == "complete":
        m = store.metrics()
        val = m[m.name == "val_loss"]
        summary["final_val_loss"] = float(val.value.iloc[-1]) if len(val) else float("nan")
    store.update_meta(**summary)
    store.close()
    return summary


class _progress:
    """Rich progress bar with loss, tokens/s and ETA (a no-op when disabled)."""

    def __init__(self, enabled: bool, cfg: TrainConfig, start: int) -> None:
        self.p = None
        if not enabled:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.p = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("loss {task.fields[loss]:.3f}"), TextColumn("{task.fields[tps]:,.0f} tok/s"),
                          TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
        self.p.start()
        self.task = self.p.add_task(f"{cfg.preset} {cfg.optimizer} seed {cfg.seed}", total=cfg.steps,
                                    completed=start, loss=float("nan"), tps=0.0)

    def update(self, step: int, loss: float, tps: float) -> None:
        if self.p is not None:
            self.p.update(self.task, completed=step, loss=loss, tps=tps)

    def close(self) -> None:
        if self.p is not None:
            self.p.stop()
