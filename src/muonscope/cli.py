"""The ``muonscope`` command line.

Every command turns a :class:`~muonscope.errors.MuonscopeError` (or a bad argument) into one line on
stderr and exit code 2. Heavy imports (torch, matplotlib) happen inside commands.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from muonscope.errors import ConfigError, MuonscopeError

app = typer.Typer(
    name="muonscope",
    help="Muon with pluggable orthogonalization, and a view of what Newton-Schulz does to every layer.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
if not console.is_terminal:
    console = Console(width=120)


@app.callback()
def _root() -> None:
    """Muon with pluggable orthogonalization, and a view of what Newton-Schulz does to every layer."""


def fail(message: str) -> None:
    """Abort the command: ``main`` prints one line on stderr and exits with code 2."""
    raise ConfigError(message)


def _parse_shape(shape: str) -> tuple[int, int]:
    try:
        m, n = (int(x) for x in shape.lower().split("x"))
        if m < 1 or n < 1:
            raise ValueError
    except ValueError:
        fail(f"--shape must look like MxN with positive integers (e.g. 1024x4096), got {shape!r}")
    return m, n


@app.command()
def ns(
    schedule: list[str] = typer.Option(None, "--schedule", "-s", help="Schedule name(s); default: all built-ins."),
    steps: list[int] = typer.Option(None, "--steps", "-k", help="Step count(s); default: the schedule's own."),
    rho: list[float] = typer.Option([0.1, 0.5], "--rho", help="Output level(s) for the thresholds tau_rho."),
    shape: str = typer.Option("1024x4096", "--shape", help="Matrix shape MxN for the FLOP count."),
    band_from: float = typer.Option(1e-3, "--band-from", help="Lower end s_min of the output band [s_min, 1]."),
    plot: Path = typer.Option(None, "--plot", help="Write a PNG of the composed maps to this file."),
) -> None:
    """Thresholds, output bands and cost of NS schedules (exact float64 scalar analysis)."""
    from muonscope.orth import analysis
    from muonscope.orth.schedules import BUILTIN_NAMES, get_schedule

    m, n = _parse_shape(shape)
    if any(not (0 < r) for r in rho):
        fail("--rho values must be positive")
    if steps and any(k < 1 for k in steps):
        fail("--steps values must be >= 1")
    if not (0 < band_from <= 1):
        fail("--band-from must lie in (0, 1]")
    scheds = [get_schedule(s) for s in (schedule or BUILTIN_NAMES)]
    table = Table(title=f"Newton-Schulz scalar maps (s = sigma/||X||_F; FLOPs for {m}x{n})")
    table.add_column("schedule")
    table.add_column("steps", justify="right")
    for r in rho:
        table.add_column(f"tau_{r:g}", justify="right")
    table.add_column(f"band over [{band_from:g}, 1]", justify="right")
    table.add_column("matmuls", justify="right")
    table.add_column("GFLOPs", justify="right")
    rows = []
    for sc in scheds:
        for k in steps or [sc.default_steps]:
            taus = [analysis.threshold(sc, k, r) for r in rho]
            band = analysis.output_band(sc, k, band_from)
            rows.append((sc, k, taus))
            table.add_row(sc.name, str(k), *[f"{t:.3g}" for t in taus],
                          f"[{band.low:.3f}, {band.high:.3f}]", str(analysis.ns_matmuls(k)),
                          f"{analysis.ns_flops(m, n, k) / 1e9:.2f}")
    console.print(table)
    if plot is not None:
        from muonscope.report.figures import plot_ns_maps

        plot_ns_maps([(sc, k) for sc, k, _ in rows], rho=rho[0], path=plot)
        console.print(f"wrote {plot}")


def _csv(value: str | None, cast=str) -> list:
    if not value:
        return []
    try:
        return [cast(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError:
        fail(f"cannot parse {value!r} as a comma-separated list")


@app.command()
def train(
    out: Path = typer.Option(..., "--out", "-o", help="Run directory (run store + checkpoint)."),
    preset: str = typer.Option("d64", "--preset", help="Model size preset (see `muonscope sweep --help`)."),
    optimizer: str = typer.Option("muon", "--optimizer", help="muon (Muon + AdamW) or adamw."),
    steps: int = typer.Option(600, "--steps"),
    batch_size: int = typer.Option(16, "--batch-size"),
    corpus: str = typer.Option("stdlib", "--corpus", help="stdlib, shakespeare, or a file/directory path."),
    seed: int = typer.Option(0, "--seed"),
    lr: float = typer.Option(0.01, "--lr", help="Muon learning rate."),
    adamw_lr: float = typer.Option(0.002, "--adamw-lr"),
    schedule: str = typer.Option("jordan", "--schedule", help="NS schedule for every Muon matrix."),
    ns_steps: int = typer.Option(5, "--ns-steps"),
    monitor_every: int = typer.Option(10, "--monitor-every"),
    eval_every: int = typer.Option(100, "--eval-every"),
    checkpoint_every: int = typer.Option(200, "--checkpoint-every"),
    plan: Path = typer.Option(None, "--plan", help="Plan JSON from `muonscope plan` (per-layer NS)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its checkpoint."),
    threads: int = typer.Option(0, "--threads", help="torch threads (0: leave torch's default)."),
) -> None:
    """Train one tiny GPT with the spectral monitor on; Ctrl-C saves a checkpoint and exits cleanly."""
    import json

    import torch

    from muonscope.experiments.train import TrainConfig
    from muonscope.experiments.train import train as run_train

    if threads:
        torch.set_num_threads(threads)
    plan_dict = None
    if plan is not None:
        try:
            plan_dict = json.loads(plan.read_text())
        except (OSError, ValueError) as exc:
            fail(f"cannot read plan {plan}: {exc}")
    cfg = TrainConfig(preset=preset, optimizer=optimizer, steps=steps, batch_size=batch_size, corpus=corpus,
                      seed=seed, lr=lr, adamw_lr=adamw_lr, schedule=schedule, ns_steps=ns_steps,
                      monitor_every=monitor_every, eval_every=eval_every, checkpoint_every=checkpoint_every,
                      plan=plan_dict)
    summary = run_train(cfg, out, resume=resume, progress=True)
    console.print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in summary.items()})
    if summary["status"] != "complete":
        console.print(f"interrupted at step {summary['steps']}: continue with --resume")
        raise typer.Exit(code=130)


@app.command()
def sweep(
    out: Path = typer.Option(..., "--out", "-o", help="Sweep directory (one run directory per run)."),
    presets: str = typer.Option(None, "--presets", help="Comma-separated presets (default: the sweep presets)."),
    seeds: str = typer.Option("0", "--seeds", help="Comma-separated seeds."),
    adamw: str = typer.Option("", "--adamw", help="Presets that also get an AdamW baseline run."),
    steps: int = typer.Option(600, "--steps", help="Optimizer steps per run."),
    batch_size: int = typer.Option(16, "--batch-size"),
    corpus: str = typer.Option("stdlib", "--corpus"),
    monitor_every: int = typer.Option(10, "--monitor-every"),
    eval_every: int = typer.Option(100, "--eval-every"),
    threads: int = typer.Option(0, "--threads", help="torch threads (0: leave torch's default)."),
) -> None:
    """Train every size preset (resumable: finished runs are skipped, partial ones resumed)."""
    import torch

    from muonscope.experiments.model import PRESETS, SWEEP_PRESETS
    from muonscope.experiments.sweep import plan_sweep, run_sweep
    from muonscope.experiments.train import TrainConfig

    if threads:
        torch.set_num_threads(threads)
    base = TrainConfig(steps=steps, batch_size=batch_size, corpus=corpus, monitor_every=monitor_every,
                       eval_every=eval_every)
    runs = plan_sweep(base, _csv(presets) or SWEEP_PRESETS, _csv(seeds, int) or [0], _csv(adamw))
    rows = run_sweep(runs, out, progress=True, console=console)
    table = Table(title=f"sweep {out} ({len(rows)}/{len(runs)} runs done; presets: {', '.join(PRESETS)})")
    for col in ("run", "model_params", "steps", "status", "final_val_loss", "tokens_per_s"):
        table.add_column(col, justify="left" if col in ("run", "status") else "right")
    for r in rows:
        table.add_row(r["run"], f"{r['model_params']:,}", str(r["steps"]), str(r["status"]),
                      f"{r['final_val_loss']:.4f}" if r["final_val_loss"] is not None else "-",
                      f"{r['tokens_per_s']:,.0f}" if r["tokens_per_s"] else "-")
    console.print(table)


def main() -> None:
    """Console-script entry point: typed errors become one stderr line and exit code 2."""
    try:
        rc = app(standalone_mode=False)
    except MuonscopeError as exc:
        print(f"muonscope: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        print("muonscope: aborted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        # Usage errors from the (possibly vendored) click layer: one line, exit 2.
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            message = exc.format_message()
            if message:
                print(f"muonscope: error: {message}", file=sys.stderr)
            sys.exit(exc.exit_code or 0)
        raise
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
