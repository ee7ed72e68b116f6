"""Size sweep: one training run per (preset, seed), a manifest, resumable, shared by processes.

Layout::

    OUT/sweep.json                 the sweep's plan and each run's status
    OUT/{preset}-{optimizer}[-lr{lr}][-{adjust_lr_fn}]-s{seed}/   one run directory each

Re-running the same sweep skips finished runs and resumes partial ones from their checkpoints
(the run store's generations keep the rows free of duplicates); re-running it with more ``steps``
extends every run from its checkpoint. ``jobs=N`` trains with N worker processes of
``threads`` BLAS threads each; every run is claimed by a lock (:mod:`.jobs`), so several
invocations may also share one sweep directory.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

from muonscope._atomic import check_dir_target, ensure_dir
from muonscope._jsonfile import read_json
from muonscope.errors import ConfigError, StoreError
from muonscope.experiments.jobs import claim, update_json
from muonscope.experiments.model import SWEEP_PRESETS, get_preset
from muonscope.experiments.train import CHECKPOINT, TrainConfig, same_run, train

MANIFEST = "sweep.json"
_DEFAULT = TrainConfig()


def run_name(cfg: TrainConfig) -> str:
    """``{preset}-{optimizer}-s{seed}``, with ``-lr{lr}`` / ``-{adjust_lr_fn}`` where they differ
    from the defaults (so lr checks share one sweep directory)."""
    parts = [cfg.preset, cfg.optimizer]
    if cfg.optimizer == "muon" and cfg.lr != _DEFAULT.lr:
        parts.append(f"lr{cfg.lr:g}")
    if cfg.optimizer == "muon" and cfg.adjust_lr_fn != _DEFAULT.adjust_lr_fn:
        parts.append(cfg.adjust_lr_fn)
    return "-".join([*parts, f"s{cfg.seed}"])


def plan_sweep(base: TrainConfig, presets=SWEEP_PRESETS, seeds=(0,), adamw_presets=(),
               steps_by_preset: dict[str, int] | None = None, lrs=(), adjust_lr_fns=()) -> list[TrainConfig]:
    """The runs of a sweep: Muon at every (seed, preset, adjust_lr_fn, lr), AdamW baselines at
    ``adamw_presets``. Empty ``lrs`` / ``adjust_lr_fns`` mean ``base``'s."""
    if not presets:
        raise ConfigError("a sweep needs at least one preset")
    if not seeds:
        raise ConfigError("a sweep needs at least one seed")
    for p in (*presets, *adamw_presets):
        get_preset(p)
    runs = []
    for seed in seeds:  # seed-major: an early stop leaves whole size ladders
        for preset in presets:
            steps = (steps_by_preset or {}).get(preset, base.steps)
            for fn in adjust_lr_fns or (base.adjust_lr_fn,):
                for lr in lrs or (base.lr,):
                    runs.append(dataclasses.replace(base, preset=preset, seed=seed, optimizer="muon", steps=steps,
                                                    lr=lr, adjust_lr_fn=fn).validate())
    for preset in adamw_presets:
        steps = (steps_by_preset or {}).get(preset, base.steps)
        runs.append(dataclasses.replace(base, preset=preset, seed=seeds[0], optimizer="adamw", steps=steps).validate())
    names = [run_name(c) for c in runs]
    if len(set(names)) != len(names):
        raise ConfigError("the sweep names some run twice (repeated preset or seed)")
    return runs


def _merge_plan(runs: list[TrainConfig], mpath: Path) -> dict:
    """Add the planned runs to the manifest (refusing changed configurations; more steps extend)."""
    planned = {run_name(c): c.to_dict() for c in runs}

    def change(manifest: dict) -> dict:
        entries = manifest.get("runs", {})
        for name, cfg in planned.items():
            old = entries.get(name)
            if old is None:
                entries[name] = {"config": cfg, "status": "pending"}
                continue
            if not same_run(old.get("config", {}), cfg):
                raise ConfigError(f"run {name} in {mpath} was planned with a different configuration "
                                  "(only --steps may grow); use another output directory")
            if old["config"]["steps"] < cfg["steps"]:
                entries[name] = {**old, "config": cfg, "status": "extend"}
        return {"format": "muonscope.sweep/1", "runs": entries}

    return update_json(mpath, change, StoreError)


def _record(mpath: Path, name: str, summary: dict, wall: float) -> None:
    def change(manifest: dict) -> dict:
        e = manifest["runs"][name]
        e.update(summary)
        e["wall_seconds"] = e.get("wall_seconds", 0.0) + wall
        return manifest

    update_json(mpath, change, StoreError)


def _complete(mpath: Path, name: str, rdir: Path) -> bool:
    entry = read_json(mpath, StoreError, missing=f"{mpath} vanished")["runs"][name]
    return entry.get("status") == "complete" and (rdir / "run.json").exists()


def _work(runs: list[TrainConfig], out: Path, progress: bool, log, device="cpu") -> bool:
    """Train every unclaimed, unfinished run; False if one was interrupted."""
    mpath = out / MANIFEST
    for cfg in runs:
        name = run_name(cfg)
        rdir = out / name
        with claim(rdir) as mine:
            if not mine:
                continue  # another process trains it
            if _complete(mpath, name, rdir):
                log(f"[dim]{name}: complete, skipped[/dim]")
                continue
            resume = (rdir / CHECKPOINT).exists() or (rdir / "run.json").exists()
            log(f"{name}: {'resuming' if resume else 'starting'} ({cfg.steps} steps)")
            t0 = time.time()
            summary = train(cfg, rdir, resume=resume, progress=progress, device=device)
            _record(mpath, name, summary, time.time() - t0)
            if summary["status"] != "complete":
                return False
            log(f"{name}: done, val {summary.get('final_val_loss', float('nan')):.4f}, "
                f"{time.time() - t0:.0f} s")
    return True


def _worker(runs: list[TrainConfig], out: str, threads: int, device: str) -> bool:
    import torch

    torch.set_num_threads(threads)
    return _work(runs, Path(out), progress=False, log=lambda m: print(m, flush=True), device=device)


def run_sweep(runs: list[TrainConfig], out_dir: str | os.PathLike, *, progress: bool = True, console=None,
              jobs: int = 1, threads: int = 1, device: str = "cpu") -> list[dict]:
    """Run (or resume) every run of the sweep in ``out_dir``; returns one summary row per finished run.

    ``jobs > 1`` starts that many worker processes (``threads`` torch threads each) that share the
    job list through run claims; with ``jobs = 1`` the calling process trains, with a progress bar.
    ``device`` as in :func:`~muonscope.experiments.train.train`.
    """
    if not (isinstance(jobs, int) and jobs >= 1):
        raise ConfigError(f"jobs must be a positive integer, got {jobs!r}")
    out = Path(out_dir)
    check_dir_target(out, "sweep directory")
    for corpus in sorted({c.corpus for c in runs}):
        check_corpus(corpus)  # before anything is created
    ensure_dir(out)
    _merge_plan(runs, out / MANIFEST)
    if jobs == 1:
        log = console.print if console is not None else (lambda m: None)
        _work(runs, out, progress, log, device)
    else:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(jobs) as pool:
            pool.starmap(_worker, [(runs, str(out), threads, str(device))] * jobs)
    return [summary_row(out / run_name(c)) for c in runs if (out / run_name(c) / "run.json").exists()]


def check_corpus(corpus: str) -> None:
    """Raise :class:`ConfigError` if ``corpus`` names no built-in corpus and no existing text path
    (cheap: the files are listed, not read)."""
    from muonscope.experiments.data import shakespeare_files, user_files

    if corpus == "stdlib":
        return
    if corpus == "shakespeare":
        shakespeare_files()
        return
    _, files = user_files(Path(corpus).expanduser())
    if not files:
        raise ConfigError(f"corpus {corpus!r} holds no text files")


def summary_row(run_dir: Path) -> dict:
    from muonscope.spectra.store import RunStore

    meta = RunStore.open(run_dir).meta
    cfg = meta.get("config", {})
    return {"run": run_dir.name, "preset": meta.get("preset"), "optimizer": cfg.get("optimizer"),
            "lr": cfg.get("lr"), "adjust_lr_fn": cfg.get("adjust_lr_fn"),
            "seed": meta.get("seed"), "model_params": meta.get("model_params"), "steps": meta.get("steps"),
            "status": meta.get("status"), "final_val_loss": meta.get("final_val_loss"),
            "tokens_per_s": meta.get("tokens_per_s")}
