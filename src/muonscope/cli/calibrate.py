"""`muonscope calibrate …`: the NS recipe calibrated on training loss."""

from __future__ import annotations

from pathlib import Path

import typer

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

calibrate_app = typer.Typer(help="Calibrate the NS recipe on training loss (oracles, real NS configurations, plans; "
                                   "paired seeds).", no_args_is_help=True)
app.add_typer(calibrate_app, name="calibrate")


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        fail(f"--shard must look like i/n (e.g. 0/2), got {text!r}")
    if not (1 <= n <= 10_000 and 0 <= i < n):
        fail(f"--shard must be i/n with 0 <= i < n <= 10000, got {text!r}")
    return i, n


@calibrate_app.command("run")
def calibrate_run(
    out: Path = typer.Option(..., "--out", "-o", help="Calibration directory (runs.csv, runs/)."),
    presets: str = typer.Option("d64", "--presets", help="Comma-separated size presets."),
    methods: str = typer.Option("grid", "--methods", help="'grid' (references, oracles, real NS configurations) "
                                "or comma-separated names: exact, top0.5-rho0.1, jordan-4, designed-0.001-5, "
                                "plan:path/{preset}.json."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Comma-separated seeds (methods pair up by seed)."),
    steps: int = typer.Option(600, "--steps", help="Optimizer steps per run."),
    shard: str = typer.Option("0/1", "--shard", help="Run every n-th job starting at i (i/n): one process each."),
    budget: float = typer.Option(0.0, "--budget", help="Stop starting new runs after this many seconds (0: none)."),
    runs: Path = typer.Option(None, "--runs", help="Run directories with checkpoints (default: OUT/runs)."),
    full: bool = typer.Option(False, "--full", help="With --methods grid: every oracle (q, rho) and configuration."),
    threads: int = typer.Option(1, "--threads", help="torch threads for this process."),
) -> None:
    """Train the calibration runs of one shard (resumable; finished rows are skipped)."""
    from muonscope._atomic import check_dir_target
    from muonscope.experiments.calibration import grid_methods, run_calibration
    from muonscope.experiments.config import PRESET_NAMES

    threads = threads_option("--threads", threads, zero_ok=False)
    steps = V.steps("--steps", steps)
    budget = V.nonnegative("--budget", budget)
    seed_list = number_list(seeds, "--seeds", V.seed)
    preset_list = csv_list(presets)
    for p in preset_list:
        if p not in PRESET_NAMES:
            fail(f"--presets: unknown model preset {p!r}; choose from {', '.join(PRESET_NAMES)}")
    if not preset_list or not seed_list:
        fail("--presets and --seeds must name at least one preset and one seed")
    shard_ = _parse_shard(shard)
    check_dir_target(out, "--out")
    if runs is not None:
        check_dir_target(runs, "--runs")
    names = grid_methods(full) if methods == "grid" else csv_list(methods)
    if not names:
        fail("--methods names no method")
    set_threads(threads)
    n = run_calibration(out, names, preset_list, seed_list, steps=steps, shard=shard_,
                        runs=runs, budget=budget or None, log=console.print)
    console.print(f"{n} run(s) finished in this call; rows in {out / 'runs.csv'}")


@calibrate_app.command("summarize")
def calibrate_summarize(
    out: Path = typer.Option(..., "--out", "-o", help="Calibration directory holding runs.csv."),
    preset: str = typer.Option("d64", "--preset", help="Preset whose grid sets the criterion."),
    ship: bool = typer.Option(False, "--ship", help="Also make this criterion the one muonscope ships "
                              "(muonscope/laws/calibrated_criterion.json, the planner's default)."),
) -> None:
    """Paired tables, the statistic that predicts the loss, the calibrated criterion and figures."""
    import pandas as pd

    from muonscope.errors import MuonscopeError
    from muonscope.experiments.calibration import CSV_NAME, calibrate, paired, write_summary

    path = out / CSV_NAME
    if not path.is_file():
        fail(f"{path} not found: run `muonscope calibrate run -o {out}` first")
    try:
        df = pd.read_csv(path)
        missing = [c for c in ("method", "preset", "seed", "final_val_loss") if c not in df.columns]
        if missing:
            fail(f"{path} is not a calibration table from `muonscope calibrate run` (no column "
                 f"{', '.join(missing)})")
        cal = calibrate(df, preset)
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        if isinstance(exc, MuonscopeError):
            raise
        fail(f"{path} is not a calibration table from `muonscope calibrate run` ({type(exc).__name__}: "
             f"{str(exc).splitlines()[0] if str(exc) else ''})")
    criterion = write_summary(cal, df, out)
    cols = ["method", "n", "dloss", "dloss_sd", "dloss_t", "token_efficiency", "flops_ratio", "distortion",
            "frac_failed", "frac_failed_50", "ns_out_max_peak"]
    for p in sorted(set(df.preset)):
        for ref in ("exact", "jordan-5"):
            t = paired(df[df.preset == p], ref)
            if not t.empty:
                console.print(f"[bold]{p}: paired against {ref}[/bold]")
                console.print(t[cols].to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    console.print(cal.ranking.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    console.print(f"criterion: {criterion}")
    console.print(f"wrote tables, criterion.json and figures to {out}")
    if ship:
        from importlib import resources

        from muonscope._jsonfile import write_json

        dest = Path(str(resources.files("muonscope.laws").joinpath("calibrated_criterion.json")))
        write_json(dest, criterion)
        console.print(f"wrote {dest}")
