"""Train one tiny GPT with Muon (AdamW for embeddings, head and 1-D params) or an AdamW baseline,
with the spectral monitor writing a run store.

A run directory holds the run store (``run.json``, ``spectra/``, ``metrics/``) and ``checkpoint.pt``
(model, optimizer, batch-sampler RNG, step), saved atomically every ``checkpoint_every`` steps, on
Ctrl-C and at the end. ``resume=True`` continues from it bit-identically on the same machine (same
thread count): parameters after N + M resumed steps equal those of N + M uninterrupted steps.

One writer per run directory: :class:`~muonscope.spectra.store.RunLock` (``.lock`` with the owner's
PID, an ``flock`` the kernel drops when the owner dies) is held from before the checkpoint is read
until the run store is closed; a second writer gets "run directory X is in use by PID n". Nothing is
created before the configuration, corpus, model and optimizer are built, and a failure before the
first step removes the directory this call created. A non-finite training loss stops the run with
:class:`~muonscope.errors.NonFiniteError` after saving a checkpoint of the last finite state's step.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch

from muonscope._atomic import check_dir_target
from muonscope._jsonfile import read_json
from muonscope.errors import ConfigError, NonFiniteError, StoreError
from muonscope.experiments.config import TrainConfig, config_conflicts, orthogonalization, same_run
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


def saved_config(out_dir: str | os.PathLike) -> dict:
    """The training configuration stored in ``out_dir/run.json`` (what a resume continues)."""
    out = Path(out_dir)
    from muonscope.spectra.store import check_meta

    meta_file = out / "run.json"
    if not out.is_dir() or not meta_file.is_file():
        hint = "" if out.is_dir() else " (no such directory)"
        raise StoreError(f"cannot resume: {out} holds no run{hint}; check the path, or drop --resume to "
                         "start a new run there")
    meta = read_json(meta_file, StoreError, missing=f"{meta_file} vanished")
    if not isinstance(meta, dict):
        raise StoreError(f"{meta_file} is not a muonscope run file")
    check_meta(meta, meta_file)
    cfg = meta.get("config")
    if not isinstance(cfg, dict):
        raise StoreError(f"cannot resume: {meta_file} records no training configuration")
    return cfg


def resume_config(out_dir: str | os.PathLike, given: dict | None = None) -> TrainConfig:
    """The configuration to resume the run in ``out_dir`` with: the one in its run.json, with the
    options in ``given`` applied. ``given`` may only repeat saved values or raise ``steps``; any
    other difference raises :class:`ConfigError` naming each option as ``name: saved -> given``."""
    saved = saved_config(out_dir)
    given = dict(given or {})
    bad = config_conflicts(saved, given)
    if bad:
        raise ConfigError(f"cannot resume {out_dir} with different options ({'; '.join(bad)}); only --steps "
                          "may grow on resume: drop those options or start a new run directory")
    try:
        return TrainConfig.from_dict({**saved, **given})
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise StoreError(f"cannot resume {out_dir}: its run.json configuration is invalid: {exc}") from None
        raise StoreError(f"cannot resume {out_dir}: its run.json configuration is malformed: {exc}") from None


class _FailedShare:
    """Run-store proxy for the monitor: forwards every call and keeps the mean failed share
    (``frac_failed``) of the newest sampled step, for the progress display."""

    def __init__(self, store) -> None:
        self._store = store
        self.step, self._vals, self.value = None, [], float("nan")

    def __getattr__(self, name):
        return getattr(self._store, name)

    def append_spectra(self, rows) -> None:
        rows = list(rows)
        for r in rows:
            if "frac_failed" not in r:
                continue
            if r.get("step") != self.step:
                self.step, self._vals = r.get("step"), []
            self._vals.append(float(r["frac_failed"]))
            self.value = sum(self._vals) / len(self._vals)
        self._store.append_spectra(rows)


def train(cfg: TrainConfig, out_dir: str | os.PathLike, *, resume: bool = False, progress: bool = True,
          stop_after: int | None = None, device: str | torch.device = "cpu", require_run: bool = False) -> dict:
    """Train, monitor and store one run in ``out_dir``; returns a summary dict.

    ``device``: where model, batches and optimizer state live (``"auto"``: CUDA if available);
    ``cfg.bf16_autocast`` runs forward and backward under bf16 autocast there (weights, optimizer
    state and the monitor's spectra stay fp32/float64). ``stop_after`` ends the loop after that
    many steps of this call (a checkpoint is saved), as a Ctrl-C would: used to test resumption.
    ``resume=True`` continues the run in ``out_dir`` if there is one (else starts it);
    ``require_run=True`` makes a missing run an error instead (the CLI's ``--resume``).
    """
    from muonscope.spectra.store import RunLock, RunStore

    cfg.validate()
    out = Path(out_dir)
    check_dir_target(out, "run directory")
    ckpt_path = out / CHECKPOINT
    if resume and require_run:
        saved_config(out)  # raises when there is no run to resume
    if not resume and (out / "run.json").exists():
        raise StoreError(f"{out} already holds a run; pass resume=True (--resume) or choose another directory")
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
    created = not os.path.lexists(out)
    lock = RunLock(out)
    lock.acquire()
    store = None
    try:
        if resume and ckpt_path.exists():
            state = load_checkpoint(ckpt_path, model=model, optimizer=optimizer, rng=False, map_location=dev)
            if not same_run(state["config"], cfg.to_dict()):
                bad = config_conflicts(state["config"], cfg.to_dict())
                raise ConfigError(f"{ckpt_path} was written with a different configuration ({'; '.join(bad)}); "
                                  "only --steps may grow on resume: start a new run directory")
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
    except BaseException:
        lock.release()
        if created:
            import shutil

            shutil.rmtree(out, ignore_errors=True)
        raise
    try:
        return _loop(cfg, out, store, model, optimizer, corpus, gen, base_lrs, block_size, dev, start,
                     stop_after, progress)
    finally:
        lock.release()


def _loop(cfg, out, store, model, optimizer, corpus, gen, base_lrs, block_size, dev, start, stop_after,
          progress) -> dict:
    from muonscope.spectra.monitor import SpectralMonitor

    ckpt_path = out / CHECKPOINT
    monitor = None
    failed = _FailedShare(store)
    if cfg.optimizer == "muon":
        monitor = SpectralMonitor(optimizer, every=cfg.monitor_every, quantiles=cfg.quantiles, store=failed,
                                  spectrum=cfg.monitor_spectrum)
    tokens_per_step = cfg.batch_size * block_size
    status, step, t0 = "complete", start, time.perf_counter()
    last_loss, last_val = float("nan"), float("nan")
    saved_step = step
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
            last_loss = float(loss.detach())
            if not math.isfinite(last_loss):
                status = "diverged"
                where = (f"the last checkpoint holds step {saved_step}" if ckpt_path.exists()
                         else "no checkpoint was written")
                lrs = f"adamw_lr {cfg.adamw_lr:g}" if cfg.optimizer == "adamw" else f"lr {cfg.lr:g}, adamw_lr {cfg.adamw_lr:g}"
                raise NonFiniteError(f"training loss became {last_loss} at step {step + 1} ({lrs}); {where}: "
                                     "lower the learning rate and start a new run directory")
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            elapsed = time.perf_counter() - t0
            tps = tokens_per_step * (step - start) / max(elapsed, 1e-9)
            row = {"train_loss": last_loss, "lr": base_lrs[0] * f, "tokens": step * tokens_per_step}
            if cfg.optimizer == "muon":  # orthogonalization cost of this step, all Muon matrices
                row.update(ns_flops=optimizer.stats["last_ns_flops"], ns_matmuls=optimizer.stats["last_ns_matmuls"])
            if step % 10 == 0 or step == cfg.steps:
                row["tokens_per_s"] = tps
            if step % cfg.eval_every == 0 or step == cfg.steps:
                row["val_loss"] = last_val = evaluate(model, corpus, cfg, block_size, dev)
            store.log_metrics(step, **row)
            if step % cfg.checkpoint_every == 0:
                store.flush()
                _save(ckpt_path, step, model, optimizer, gen, cfg)
                saved_step = step
            bar.update(step, last_loss, tps, last_val, failed.value)
    except KeyboardInterrupt:
        status = "interrupted"
    finally:
        bar.close()
        try:
            if status == "diverged":
                pass  # keep the last checkpoint, written before the loss went non-finite
            elif saved_step != step or not ckpt_path.exists():
                _save(ckpt_path, step, model, optimizer, gen, cfg)
        finally:
            if monitor is not None:
                monitor.close()
            store.flush()
            if status == "diverged":
                store.update_meta(status="diverged", steps=step, final_train_loss=last_loss)
                store.close()
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
    """Rich progress bar: training loss, latest validation loss, failed share of the newest sampled
    spectra (mean over the monitored matrices), tokens/s and ETA (a no-op when disabled)."""

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
                          TextColumn("loss {task.fields[loss]:.3f}"), TextColumn("val {task.fields[val]}"),
                          TextColumn("failed {task.fields[failed]}"),
                          TextColumn("{task.fields[tps]:,.0f} tok/s"),
                          TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
        self.p.start()
        self.task = self.p.add_task(f"{cfg.preset} {cfg.optimizer} seed {cfg.seed}", total=cfg.steps,
                                    completed=start, loss=float("nan"), tps=0.0, val="-", failed="-")

    @staticmethod
    def fields(loss: float, tps: float, val: float, failed: float) -> dict:
        """The displayed fields: NaN (not measured yet) shows as "-"."""
        return {"loss": loss, "tps": tps, "val": f"{val:.3f}" if math.isfinite(val) else "-",
                "failed": f"{failed:.1%}" if math.isfinite(failed) else "-"}

    def update(self, step: int, loss: float, tps: float, val: float = float("nan"),
               failed: float = float("nan")) -> None:
        if self.p is not None:
            self.p.update(self.task, completed=step, **self.fields(loss, tps, val, failed))

    def close(self) -> None:
        if self.p is not None:
            self.p.stop()
