"""`muonscope train` and `muonscope sweep`: tiny GPTs on offline text with the spectral monitor."""

from __future__ import annotations

import contextlib
from pathlib import Path

import typer
from rich.table import Table

from muonscope import validate as V
from muonscope.cli._app import (
    app,
    console,
    csv_list,
    fail,
    number_list,
    set_threads,
    threads_option,
)
from muonscope.experiments.config import (
    MAX_BATCH_SIZE,
    PRESET_NAMES,
    SWEEP_ADJUST_LR_FN,
    SWEEP_LR,
    TrainConfig,
)
from muonscope.validate import MAX_NS_STEPS

D = TrainConfig()  # every default below is the library's


#: CLI option → TrainConfig field, for the options a resume may repeat.
_TRAIN_FIELDS = {"preset": "preset", "optimizer": "optimizer", "steps": "steps", "batch_size": "batch_size",
                 "corpus": "corpus", "seed": "seed", "lr": "lr", "adamw_lr": "adamw_lr", "schedule": "schedule",
                 "ns_steps": "ns_steps", "monitor_every": "monitor_every", "eval_every": "eval_every",
                 "checkpoint_every": "checkpoint_every", "adjust_lr_fn": "adjust_lr_fn", "bf16": "bf16_autocast"}


def given_options(ctx: typer.Context, values: dict) -> dict:
    """The TrainConfig fields whose options were typed on the command line (not defaults)."""
    out = {}
    for opt, field in _TRAIN_FIELDS.items():  # typer may vendor click: compare the source by name
        if getattr(ctx.get_parameter_source(opt), "name", None) in ("COMMANDLINE", "ENVIRONMENT"):
            out[field] = values[opt]
    return out


def read_plan(plan: Path) -> dict:
    """A plan JSON object (from `muonscope plan`), checked to be a readable JSON object."""
    from muonscope._jsonfile import read_json
    from muonscope.errors import ConfigError

    if plan.exists() and not plan.is_file():
        fail(f"--plan {plan} is not a regular file")
    raw = read_json(plan, ConfigError, missing=f"--plan {plan}: no such file")
    if not isinstance(raw, dict) or not isinstance(raw.get("params", {}), dict):
        fail(f"--plan {plan} is not a plan (a JSON object from `muonscope plan`)")
    return raw


@app.command()
def train(
    ctx: typer.Context,
    out: Path = typer.Option(..., "--out", "-o", help="Run directory (run store + checkpoint)."),
    preset: str = typer.Option("d64", "--preset", help="Model size preset: " + ", ".join(PRESET_NAMES)
                               + " (d64 is the smallest of the calibration and sweep sizes)."),
    optimizer: str = typer.Option(D.optimizer, "--optimizer", help="muon (Muon + AdamW) or adamw."),
    steps: int = typer.Option(D.steps, "--steps", help="Total optimizer steps (on --resume: may grow)."),
    batch_size: int = typer.Option(D.batch_size, "--batch-size", help=f"Sequences per step (1..{MAX_BATCH_SIZE})."),
    corpus: str = typer.Option(D.corpus, "--corpus", help="stdlib, shakespeare, or a file/directory path."),
    seed: int = typer.Option(D.seed, "--seed", help="Seed of the weights and the batch sampler (0..2^63-1)."),
    lr: float = typer.Option(D.lr, "--lr", help="Muon learning rate."),
    adamw_lr: float = typer.Option(D.adamw_lr, "--adamw-lr"),
    schedule: str = typer.Option(D.schedule, "--schedule", help="NS schedule for every Muon matrix."),
    ns_steps: int = typer.Option(D.ns_steps, "--ns-steps", help=f"NS steps per update (1..{MAX_NS_STEPS})."),
    monitor_every: int = typer.Option(D.monitor_every, "--monitor-every"),
    eval_every: int = typer.Option(D.eval_every, "--eval-every"),
    checkpoint_every: int = typer.Option(D.checkpoint_every, "--checkpoint-every"),
    adjust_lr_fn: str = typer.Option(D.adjust_lr_fn, "--adjust-lr-fn", help="Muon lr scaling per matrix: "
                                     "match_rms_adamw (0.2·√max(m,n)) or original (√max(1,m/n))."),
    plan: Path = typer.Option(None, "--plan", help="Plan JSON from `muonscope plan` (per-layer NS)."),
    resume: bool = typer.Option(False, "--resume/--no-resume", help="Continue the run in --out from its "
                                "checkpoint; its settings come from OUT/run.json (repeat none, or only a "
                                "larger --steps)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda[:N] or auto (CUDA when available)."),
    bf16: bool = typer.Option(None, "--bf16/--no-bf16", help="bf16 autocast for forward/backward "
                              "(default: on for CUDA, off on CPU)."),
    threads: int = typer.Option(0, "--threads", help="torch threads (0: leave torch's default)."),
) -> None:
    """Train one tiny GPT with the spectral monitor on; Ctrl-C saves a checkpoint and exits cleanly."""
    from muonscope._atomic import check_dir_target
    from muonscope.experiments.train import resolve_device, resume_config
    from muonscope.experiments.train import train as run_train

    threads = threads_option("--threads", threads)
    check_dir_target(out, "--out")
    dev = resolve_device(device)
    values = dict(preset=preset, optimizer=optimizer, steps=steps, batch_size=batch_size, corpus=corpus, seed=seed,
                  lr=lr, adamw_lr=adamw_lr, schedule=schedule, ns_steps=ns_steps, monitor_every=monitor_every,
                  eval_every=eval_every, checkpoint_every=checkpoint_every, adjust_lr_fn=adjust_lr_fn, bf16=bf16)
    plan_dict = read_plan(plan) if plan is not None else None
    if resume:
        given = given_options(ctx, values)
        if plan_dict is not None:
            given["plan"] = plan_dict
        cfg = resume_config(out, given)
    else:
        cfg = TrainConfig(preset=preset, optimizer=optimizer, steps=steps, batch_size=batch_size, corpus=corpus,
                          seed=seed, lr=lr, adamw_lr=adamw_lr, schedule=schedule, ns_steps=ns_steps,
                          monitor_every=monitor_every, eval_every=eval_every, checkpoint_every=checkpoint_every,
                          adjust_lr_fn=adjust_lr_fn, bf16_autocast=dev.type == "cuda" if bf16 is None else bf16,
                          plan=plan_dict).validate()
    set_threads(threads)
    with _sigterm_as_interrupt():
        summary = run_train(cfg, out, resume=resume, progress=True, device=dev, require_run=resume)
    console.print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in summary.items()})
    if summary["status"] != "complete":
        console.print(f"interrupted at step {summary['steps']}: continue with `muonscope train -o {out} --resume`")
        raise typer.Exit(code=130)


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """While training, SIGTERM (a scheduler's preemption, ``timeout``) stops it like Ctrl-C:
    checkpoint, exit 130. The previous handler is restored afterwards."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def sweep_table(rows: list[dict], planned: int, out) -> Table:
    """One row per sweep run: size, steps, status, final validation loss, throughput."""
    table = Table(title=f"sweep {out}: {len(rows)}/{planned} runs done")
    for col in ("run", "model_params", "steps", "status", "final_val_loss", "tokens_per_s"):
        table.add_column(col, justify="left" if col in ("run", "status") else "right")
    for r in rows:
        table.add_row(r["run"], f"{r['model_params']:,}", str(r["steps"]), str(r["status"]),
                      f"{r['final_val_loss']:.4f}" if r["final_val_loss"] is not None else "-",
                      f"{r['tokens_per_s']:,.0f}" if r["tokens_per_s"] else "-")
    return table


@app.command()
def sweep(
    out: Path = typer.Option(..., "--out", "-o", help="Sweep directory (one run directory per run)."),
    presets: str = typer.Option(None, "--presets", help="Comma-separated presets (default: the --family's)."),
    family: str = typer.Option("width", "--family", help="Preset family: width (n_layer 4, d48…d288), "
                               "depth (n_layer and width together, L4-d48…L16-d96) or gpu (gpu-d128…gpu-d576)."),
    seeds: str = typer.Option("0", "--seeds", help="Comma-separated seeds."),
    adamw: str = typer.Option("", "--adamw", help="Presets that also get an AdamW baseline run."),
    steps: int = typer.Option(D.steps, "--steps", help="Optimizer steps per run."),
    batch_size: int = typer.Option(D.batch_size, "--batch-size"),
    corpus: str = typer.Option(D.corpus, "--corpus"),
    lr: str = typer.Option(str(SWEEP_LR), "--lr", help="Muon learning rate; several (comma-separated) for an "
                           "lr check. Default: the sweep rule's (see results/lr_check)."),
    adjust_lr_fn: str = typer.Option(SWEEP_ADJUST_LR_FN, "--adjust-lr-fn",
                                     help="match_rms_adamw and/or original (comma-separated)."),
    monitor_every: int = typer.Option(D.monitor_every, "--monitor-every"),
    monitor_spectrum: str = typer.Option(D.monitor_spectrum, "--monitor-spectrum", help="svd (float64) or gram."),
    eval_every: int = typer.Option(D.eval_every, "--eval-every"),
    jobs: int = typer.Option(1, "--jobs", "-j", help="Worker processes sharing the job list (each --threads)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda[:N] or auto (CUDA when available)."),
    bf16: bool = typer.Option(None, "--bf16/--no-bf16", help="bf16 autocast (default: on for CUDA, off on CPU)."),
    threads: int = typer.Option(0, "--threads", help="torch threads per process (0: torch's default; "
                                "1 with --jobs > 1)."),
) -> None:
    """Train every size preset (resumable: finished runs are skipped, partial ones resumed)."""
    from muonscope._atomic import check_dir_target
    from muonscope.experiments.model import FAMILIES
    from muonscope.experiments.sweep import plan_sweep, run_sweep
    from muonscope.experiments.train import resolve_device

    if family not in FAMILIES:
        fail(f"--family must be one of {', '.join(FAMILIES)}, got {family!r}")
    jobs = V.integer("--jobs", jobs, low=1, high=256)
    threads = threads_option("--threads", threads)
    seed_list = number_list(seeds, "--seeds", V.seed) or [0]
    lrs = number_list(lr, "--lr", V.positive)
    check_dir_target(out, "--out")
    dev = resolve_device(device)
    base = TrainConfig(steps=steps, batch_size=batch_size, corpus=corpus, monitor_every=monitor_every,
                       monitor_spectrum=monitor_spectrum, eval_every=eval_every,
                       bf16_autocast=dev.type == "cuda" if bf16 is None else bf16).validate()
    runs = plan_sweep(base, csv_list(presets) or FAMILIES[family], seed_list, csv_list(adamw),
                      lrs=lrs, adjust_lr_fns=csv_list(adjust_lr_fn))
    if threads or jobs > 1:
        set_threads(threads or 1)
    rows = run_sweep(runs, out, progress=True, console=console, jobs=jobs, threads=threads or 1, device=str(dev))
    console.print(sweep_table(rows, len(runs), out))


@app.command("lr-check")
def lr_check(
    runs: list[Path] = typer.Argument(..., help="Sweep directories of an lr check (`muonscope sweep --lr a,b,c`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for lr_check.csv, best_lr.csv and lr_check.png."),
) -> None:
    """Best Muon lr per model size and lr-scaling rule: does the lr rule transfer across sizes?"""
    from muonscope._atomic import atomic_write_with, check_dir_target, created_dirs
    from muonscope.experiments.lr_check import best_lrs, lr_check_table
    from muonscope.report.figures import plot_lr_check

    check_dir_target(out, "--out")
    table = lr_check_table(runs)
    best = best_lrs(table)
    with created_dirs(out):
        atomic_write_with(out / "lr_check.csv", lambda p: table.to_csv(p, index=False, float_format="%.5g"))
        atomic_write_with(out / "best_lr.csv", lambda p: best.to_csv(p, index=False, float_format="%.5g"))
        atomic_write_with(out / "lr_check.png", lambda p: plot_lr_check(table, path=p))
    t = Table(title="best Muon lr per size (final validation loss)")
    for col in ("adjust_lr_fn", "model_params", "best_lr", "best_val_loss", "at grid edge"):
        t.add_column(col, justify="right")
    for r in best.itertuples():
        t.add_row(r.adjust_lr_fn, f"{r.model_params:,}", f"{r.best_lr:g}", f"{r.best_val_loss:.4f}",
                  "yes" if r.at_grid_edge else "")
    console.print(t)
    console.print(f"wrote {out}/lr_check.csv, best_lr.csv, lr_check.png")
