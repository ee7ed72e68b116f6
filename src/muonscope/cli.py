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
