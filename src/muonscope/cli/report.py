"""`muonscope report` and `muonscope demo`."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import typer

from muonscope.cli._app import app, console, csv_list, fail
from muonscope.conventions import FAILURE_RHO, TARGET_SIZES


@app.command()
def report(
    runs: list[Path] = typer.Argument(..., help="Run directories or sweep directories."),
    out: Path = typer.Option(Path("report.html"), "--out", "-o", help="Output file."),
    fmt: str = typer.Option("html", "--format", help="html (one self-contained file) or md (+ PNG folder)."),
    targets: str = typer.Option(",".join(f"{t:g}" for t in TARGET_SIZES), "--targets",
                                help="Target model sizes for the NS recipe."),
    quantile: float = typer.Option(0.5, "--quantile", help="The quantile whose trajectories are drawn."),
    rho: float = typer.Option(FAILURE_RHO, "--rho", help="Failure level drawn on the NS maps."),
    criterion: str = typer.Option("calibrated", "--criterion", help="Planner criterion: calibrated, "
                                  "lift-quantile (with --quantile/--rho) or a criterion JSON file."),
    laws: Path = typer.Option(None, "--laws", help="Laws JSON (from `muonscope fit`) to use instead of fitting "
                              "the runs' records again (keeps its convergence verdicts)."),
) -> None:
    """Report that opens with the verdict (is NS failing, where, what to do, at what cost), then the
    evidence: spectra during training, NS fidelity, power-law fits, the NS recipe and loss curves."""
    from muonscope.cli._checks import report_args
    from muonscope.cli.laws import load_criterion
    from muonscope.laws.fit import Laws
    from muonscope.report.build import build_report

    sizes = report_args(out, fmt, targets, quantile, rho)  # everything checked before any output
    crit = load_criterion(criterion, quantile, rho)
    fitted = Laws.load(laws) if laws is not None else None
    with report_progress() as progress:
        path = build_report(runs, out, fmt=fmt, targets=sizes, quantile=quantile, rho=rho, criterion=crit,
                            laws=fitted, progress=progress)
    console.print(f"wrote {path}")


@contextmanager
def report_progress():
    """A rich progress bar over the report's stages; yields the ``progress(stage, done, total)`` callback."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("[bold]report[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=console, transient=True)
    task = bar.add_task("starting", total=None)

    def progress(stage: str, done: int, total: int) -> None:
        bar.update(task, description=stage, completed=done, total=total)

    with bar:
        yield progress


@app.command()
def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", "-o", help="Output directory."),
    presets: str = typer.Option("d48,d64,d96,d128", "--presets", help="Sizes of the small sweep."),
    steps: int = typer.Option(300, "--steps", help="Optimizer steps per run."),
    target: str = typer.Option("7e10", "--target", help="Target model size for the plan."),
    threads: int = typer.Option(0, "--threads", help="torch threads (0: leave torch's default)."),
) -> None:
    """The whole loop on a small sweep: train several sizes -> fit laws -> plan NS -> report."""
    sizes = csv_list(presets)
    if len(sizes) < 3:
        fail("--presets needs at least 3 sizes: power laws are fitted across model sizes")
    import torch

    from muonscope._jsonfile import write_json
    from muonscope.cli.laws import fit_table, parse_size, plan_table, read_names
    from muonscope.cli.train import sweep_table
    from muonscope.experiments.config import TrainConfig
    from muonscope.experiments.sweep import plan_sweep, run_sweep
    from muonscope.laws.criterion import calibrated
    from muonscope.laws.fit import fit_laws
    from muonscope.laws.planner import make_plan
    from muonscope.report.build import DEFAULT_TARGETS, build_report
    from muonscope.spectra.store import read_runs

    size = parse_size(target)
    from muonscope.cli._checks import demo_args

    demo_args(out, sizes, steps, threads)
    if threads:
        torch.set_num_threads(threads)
    console.rule("1/4 small size sweep (spectral monitor on)")
    runs = plan_sweep(TrainConfig(steps=steps), sizes)
    rows = run_sweep(runs, out / "sweep", progress=True, console=console)
    console.print(sweep_table(rows, len(runs), out / "sweep"))
    console.rule("2/4 power laws")
    laws = fit_laws(read_runs([out / "sweep"]))
    laws.save(out / "laws.json")
    console.print(fit_table(laws))
    console.rule(f"3/4 NS plan for {target} parameters")
    plan = make_plan(laws, size, criterion=calibrated(), names=read_names(out / "sweep" / f"{sizes[-1]}-muon-s0"))
    console.print(plan_table(plan))
    write_json(out / "plan.json", plan.to_dict())
    console.print(f"wrote {out / 'plan.json'} ({len(plan.params)} named parameters, "
                  f"{len(plan.schedules())} designed schedule(s))")
    console.rule("4/4 report")
    with report_progress() as progress:
        build_report([out / "sweep"], out / "report.html", targets=sorted({*DEFAULT_TARGETS, size}), laws=laws,
                     progress=progress)
    console.print(f"report: {(out / 'report.html').resolve()}")
