"""Train one tiny GPT with Muon (AdamW for embeddings, head and 1-D params) or an AdamW baseline,
with the spectral monitor writing a run store.

A run directory holds the run store (``run.json``, ``spectra/``, ``metrics/``) and ``checkpoint.pt``
(model, optimizer, batch-sampler RNG, step), saved atomically every ``checkpoint_every`` steps, on
Ctrl-C and at the end. ``resume=True`` continues from it bit-identically on the same machine (same
thread count): parameters after N + M resumed steps equal those of N + M uninterrupted steps.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch

from muonscope.errors import ConfigError, StoreError
from muonscope.experiments.config import TrainConfig, orthogonalization, same_run
from muonscope.experiments.data import load_corpus
from muonscope.experiments.model import GPT, get_preset, width_depth_rule
from muonscope.laws.design import resolve_schedule
from muonscope.optim.checkpoint import load_checkpoint, save_checkpoint

CHECKPOINT = "checkpoint.pt"


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
        adamw_weight_decay=cfg.weight_decay, plan=cfg.plan, **orthogonalization(cfg))


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warmup over ``warmup_steps``, then constant (so spectra can settle)."""
    return min(1.0, (step + 1) / max(cfg.warmup_steps, 1))


@torch.no_grad()
def evaluate(model: GPT, corpus, cfg: TrainConfig, block_size: int, device: torch.device | None = None) -> float:
    """Mean validation loss over ``eval_batches`` fixed batches (seeded, identical at every call)."""
    model.eval()
    gen = torch.Generator().manual_seed(10_000 + cfg.seed)
    losses = []
    for _ in range(cfg.eval_batches):
        x, y = corpus.get_batch("val", cfg.batch_size, block_size, gen, device)
        with _autocast(device, cfg):
            _, loss = model(x, y)
        losses.append(float(loss))
    model.train()
    return sum(losses) / len(losses)


def _save(path: Path, step: int, model, optimizer, gen: torch.Generator, cfg: TrainConfig) -> None:
    save_checkpoint(path, model=model, optimizer=optimizer, rng=False, step=step,
                    generator=gen.get_state(), config=cfg.to_dict())


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/None: CUDA when available, else CPU; otherwise the named device, checked."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"unknown device {device!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available (use --device cpu)")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device must be cpu, cuda[:N] or auto, got {device!r}")
    return dev


def _autocast(device: torch.device | None, cfg: TrainConfig):
    return torch.autocast(device.type if device is not None else "cpu", dtype=torch.bfloat16,
                          enabled=cfg.bf16_autocast)


def train(cfg: TrainConfig, out_dir: str | os.PathLike, *, resume: bool = False, progress: bool = True,
          stop_after: int | None = None, device: str | torch.device = "cpu") -> dict:
    """Train, monitor and store one run in ``out_dir``; returns a summary dict.

    ``device``: where model, batches and optimizer state live (``"auto"``: CUDA if available);
    ``cfg.bf16_autocast`` runs forward and backward under bf16 autocast there (weights, optimizer
    state and the monitor's spectra stay fp32/float64). ``stop_after`` ends the loop after that
    many steps of this call (a checkpoint is saved), as a Ctrl-C would: used to test resumption.
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
    dev = resolve_device(device)
    model = GPT(mcfg, seed=cfg.seed).to(dev)
    optimizer = build_optimizer(model, cfg)
    base_lrs = [g["lr"] for g in optimizer.param_groups]  # before loading: saved lrs are warmup-scaled
    gen = torch.Generator().manual_seed(cfg.seed)
    start = 0
    if resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path, model=model, optimizer=optimizer, rng=False, map_location=dev)
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
        "corpus": corpus.describe(), "width_depth_rule": width_depth_rule(cfg.preset),
        "threads": torch.get_num_threads(), "device": str(dev), "status": "running",
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
            x, y = corpus.get_batch("train", cfg.batch_size, block_size, gen, dev)
            with _autocast(dev, cfg):
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
                row["val_loss"] = evaluate(model, corpus, cfg, block_size, dev)
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
