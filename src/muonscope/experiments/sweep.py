"""Size sweep: one training run per (preset, seed), a manifest, resumable, with a summary table.

Layout::

    OUT/sweep.json                 the sweep's plan and each run's status
    OUT/{preset}-{optimizer}-s{seed}/   one run directory each (run store + checkpoint)

Re-running the same sweep skips finished runs and resumes partial ones from their checkpoints
(the run store's generations keep the rows free of duplicates); re-running it with more ``steps``
extends every run from its checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

from muonscope._jsonfile import read_json, write_json
from muonscope.errors import ConfigError, StoreError
from muonscope.experiments.model import SWEEP_PRESETS, get_preset
from muonscope.experiments.train import CHECKPOINT, TrainConfig, same_run, train

MANIFEST = "sweep.json"


def run_name(cfg: TrainConfig) -> str:
    return f"{cfg.preset}-{cfg.optimizer}-s{cfg.seed}"


def plan_sweep(base: TrainConfig, presets=SWEEP_PRESETS, seeds=(0,), adamw_presets=(),
               steps_by_preset: dict[str, int] | None = None) -> list[TrainConfig]:
    """The runs of a sweep: Muon at every (preset, seed), AdamW baselines at ``adamw_presets``."""
    if not presets:
        raise ConfigError("a sweep needs at least one preset")
    for p in (*presets, *adamw_presets):
        get_preset(p)
    runs = []
    for preset in presets:
        for seed in seeds:
            steps = (steps_by_preset or {}).get(preset, base.steps)
            runs.append(dataclasses.replace(base, preset=preset, seed=seed, optimizer="muon", steps=steps).validate())
    for preset in adamw_presets:
        steps = (steps_by_preset or {}).get(preset, base.steps)
        runs.append(dataclasses.replace(base, preset=preset, seed=seeds[0], optimizer="adamw", steps=steps).validate())
    return runs


def _write_manifest(path: Path, manifest: dict) -> None:
    write_json(path, manifest, indent=2)


def run_sweep(runs: list[TrainConfig], out_dir: str | os.PathLike, *, progress: bool = True,
              console=None) -> list[dict]:
    """Run (or resume) every run of the sweep in ``out_dir``; returns one summary row per run."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mpath = out / MANIFEST
    entries = {run_name(c): {"config": c.to_dict(), "status": "pending"} for c in runs}
    if mpath.exists():
        old = read_json(mpath, StoreError, missing=f"{mpath} vanished")
        for name, e in old.get("runs", {}).items():
            if name in entries:
                if not same_run(e.get("config", {}), entries[name]["config"]):
                    raise ConfigError(f"run {name} in {mpath} was planned with a different configuration "
                                      "(only --steps may grow); use another output directory")
                if e["config"]["steps"] < entries[name]["config"]["steps"]:
                    e = {**e, "config": entries[name]["config"], "status": "extend"}
                entries[name] = e
    manifest = {"format": "muonscope.sweep/1", "runs": entries}
    _write_manifest(mpath, manifest)
    rows = []
    for cfg in runs:
        name = run_name(cfg)
        rdir = out / name
        e = entries[name]
        if e.get("status") == "complete" and (rdir / "run.json").exists():
            if console is not None:
                console.print(f"[dim]{name}: complete, skipped[/dim]")
        else:
            resume = (rdir / CHECKPOINT).exists() or (rdir / "run.json").exists()
            if console is not None:
                console.print(f"{name}: {'resuming' if resume else 'starting'} ({cfg.steps} steps)")
            t0 = time.time()
            summary = train(cfg, rdir, resume=resume, progress=progress)
            e.update(summary)
            e["status"] = summary["status"]
            e["wall_seconds"] = e.get("wall_seconds", 0.0) + (time.time() - t0)
            _write_manifest(mpath, manifest)
            if summary["status"] != "complete":
                break
        rows.append(summary_row(rdir))
    return rows


def summary_row(run_dir: Path) -> dict:
    from muonscope.spectra.store import RunStore

    meta = RunStore.open(run_dir).meta
    return {"run": run_dir.name, "preset": meta.get("preset"), "optimizer": meta["config"]["optimizer"],
            "seed": meta.get("seed"), "model_params": meta.get("model_params"), "steps": meta.get("steps"),
            "status": meta.get("status"), "final_val_loss": meta.get("final_val_loss"),
            "tokens_per_s": meta.get("tokens_per_s")}
