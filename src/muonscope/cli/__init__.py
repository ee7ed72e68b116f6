"""The ``muonscope`` command line: one module per command group, tables as pure functions.

Every command turns a :class:`~muonscope.errors.MuonscopeError` (or a bad argument) into one line on
stderr and exit code 2. Heavy imports (torch, matplotlib) happen inside commands.
"""

from __future__ import annotations

import importlib
import sys

import typer

from muonscope.cli._app import app
from muonscope.errors import MuonscopeError

__all__ = ["app", "main"]
GROUPS = ("ns", "train", "laws", "report", "calibrate", "dynamics", "audit")  # registration order = help order
for _group in GROUPS:
    importlib.import_module(f"muonscope.cli.{_group}")


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "unknown error"


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: typed errors become one stderr line and exit code 2.

    ``argv`` (default ``sys.argv[1:]``) lets tests drive the CLI in-process."""
    try:
        rc = app(args=argv, prog_name="muonscope", standalone_mode=False)
    except MuonscopeError as exc:
        print(f"muonscope: error: {_one_line(exc)}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:  # the environment (disk full, permissions) on a path not routed through _atomic
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"muonscope: error: {where}{_one_line(exc.strerror or exc)}", file=sys.stderr)
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
                if "unexpected extra argument" in message.lower() and any(
                        w in message.lower() for w in ("(true", "(false", "(yes", "(no)", "(1)", "(0)")):
                    message += " (flags take no value: write --resume, or --no-resume for false)"
                print(f"muonscope: error: {_one_line(message)}", file=sys.stderr)
            sys.exit(exc.exit_code or 0)
        raise
    sys.exit(rc if isinstance(rc, int) else 0)

