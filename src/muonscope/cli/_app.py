"""The typer application, its console and the argument helpers every command group shares."""

from __future__ import annotations

import typer
from rich.console import Console

from muonscope.errors import ConfigError

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


def csv_list(value: str | None, cast=str) -> list:
    if not value:
        return []
    try:
        return [cast(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError:
        fail(f"cannot parse {value!r} as a comma-separated list")


def fmt_depth(d) -> str:
    return "?" if d is None or d != d else f"{d:g}"
