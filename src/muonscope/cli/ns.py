"""`muonscope ns`: thresholds, output bands and cost of NS schedules."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from muonscope import validate as V
from muonscope.cli._app import app, console, fail

MAX_DIM = 10**9


def _parse_shape(shape: str) -> tuple[int, int]:
    try:
        m, n = (int(x) for x in shape.lower().split("x"))
        if not (1 <= m <= MAX_DIM and 1 <= n <= MAX_DIM):
            raise ValueError
    except ValueError:
        fail(f"--shape must look like MxN with integers in 1..{MAX_DIM:.0e} (e.g. 1024x4096), got {shape!r}")
    return m, n


def ns_table(configs, rho, shape: tuple[int, int], band_from: float) -> Table:
    """Thresholds τ_ρ, output band over [band_from, 1], matrix products and FLOPs per (schedule, steps)."""
    from muonscope.orth import analysis

    m, n = shape
    table = Table(title=f"Newton-Schulz scalar maps (s = sigma/||X||_F; FLOPs for {m}x{n})")
    table.add_column("schedule")
    table.add_column("steps", justify="right")
    for r in rho:
        table.add_column(f"tau_{r:g}", justify="right")
    for col in (f"band over [{band_from:g}, 1]", "matmuls", "GFLOPs"):
        table.add_column(col, justify="right")
    for sc, k in configs:
        band = analysis.output_band(sc, k, band_from)
        table.add_row(sc.name, str(k), *[f"{analysis.threshold(sc, k, r):.3g}" for r in rho],
                      f"[{band.low:.3f}, {band.high:.3f}]", str(analysis.ns_matmuls(k)),
                      f"{analysis.ns_flops(m, n, k) / 1e9:.2f}")
    return table


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
    from muonscope.orth.schedules import BUILTIN_NAMES, get_schedule

    m, n = _parse_shape(shape)
    rho = [V.real("--rho", r, low=0.0, high=1.0, low_open=True) for r in rho]
    steps = [V.ns_steps("--steps", k) for k in steps or []]
    band_from = V.real("--band-from", band_from, low=0.0, high=1.0, low_open=True)
    if plot is not None:
        from muonscope._atomic import check_file_target

        check_file_target(plot, "--plot")
    configs = [(sc, k) for sc in (get_schedule(s) for s in (schedule or BUILTIN_NAMES))
               for k in steps or [sc.default_steps]]
    table = ns_table(configs, rho, (m, n), band_from)
    console.print(table)
    if plot is not None:
        from muonscope._atomic import atomic_write_with
        from muonscope.report.figures import plot_ns_maps

        atomic_write_with(plot, lambda p: plot_ns_maps(configs, rho=rho[0], path=p))
        console.print(f"wrote {plot}")
