"""The typer application, its console and the argument helpers every command group shares."""

from __future__ import annotations

import typer
from rich.console import Console

from muonscope import validate
from muonscope.errors import ConfigError


def _hide_flag_type() -> None:
    """Flags take no value: show ``--resume`` in help, not ``--resume <bool>``."""
    try:
        from typer.core import TyperOption
    except ImportError:  # pragma: no cover - other typer layouts
        return
    original = TyperOption.display_type_rich
    if getattr(original, "_muonscope", False):
        return

    def display_type_rich(self, ctx):
        if getattr(self, "is_flag", False) and not self.metavar:
            return None
        return original(self, ctx)

    display_type_rich._muonscope = True
    TyperOption.display_type_rich = display_type_rich


_hide_flag_type()

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


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("muonscope")
        except PackageNotFoundError:  # pragma: no cover - running from a source tree
            v = "unknown"
        typer.echo(f"muonscope {v}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Muon with pluggable orthogonalization, and a view of what Newton-Schulz does to every layer."""


def fail(message: str) -> None:
    """Abort the command: ``main`` prints one line on stderr and exits with code 2."""
    raise ConfigError(message)


def csv_list(value: str | None, cast=str, *, option: str | None = None) -> list:
    """Items of a comma-separated list, each passed through ``cast`` (a type or a checker taking
    ``(text)``; a :class:`ConfigError` from it propagates)."""
    if not value:
        return []
    try:
        return [cast(v.strip()) for v in value.split(",") if v.strip()]
    except (ValueError, TypeError, OverflowError) as exc:
        if isinstance(exc, ConfigError):
            raise
        fail(f"{option + ': ' if option else ''}cannot parse {value!r} as a comma-separated list")


def number_list(value: str | None, option: str, check) -> list:
    """A comma-separated list of numbers, each checked by ``check(option, item)`` from
    :mod:`muonscope.validate` (e.g. ``validate.positive``)."""
    return [check(option, v) for v in csv_list(value, option=option)]


MAX_LIST = 10_000


def checked(option: str, value, check, *args, **kwargs):
    """``check(option, value, ...)`` from :mod:`muonscope.validate`; the error names ``option``."""
    return check(option, value, *args, **kwargs)


def threads_option(option: str, value: int, *, zero_ok: bool = True) -> int:
    """A torch thread count: 1..MAX_THREADS (0: leave torch's default, where ``zero_ok``)."""
    return validate.integer(option, value, low=0 if zero_ok else 1, high=validate.MAX_THREADS)


def set_threads(n: int) -> None:
    """``torch.set_num_threads(n)`` for n > 0 (n is already validated)."""
    if n:
        import torch

        torch.set_num_threads(n)


def fmt_depth(d) -> str:
    return "?" if d is None or d != d else f"{d:g}"
