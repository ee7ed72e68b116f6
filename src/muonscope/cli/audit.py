"""`muonscope audit`: train a few steps and report silent Muon failures (table or JSON)."""

from __future__ import annotations

import importlib.util
import sys
import traceback
from pathlib import Path

import typer
from rich.table import Table

from muonscope.cli._app import app, console, fail


def findings_table(report) -> Table:
    """One row per finding: parameter, kind, explanation."""
    table = Table(title=f"muonscope audit: {len(report.findings)} finding(s) over {report.steps} steps")
    for col in ("parameter", "kind", "explanation"):
        table.add_column(col, overflow="fold")
    for f in report.findings:
        table.add_row(f.param, f.kind, f.message)
    return table


def _in_script(path: Path, what: str, fn, *args, **kwargs):
    """``fn(*args, **kwargs)``; an exception raised in the user's script is shown as its traceback
    through the script's own frames, then one ``muonscope: error:`` line (exit code 2)."""
    from muonscope.errors import MuonscopeError

    try:
        return fn(*args, **kwargs)
    except (MuonscopeError, KeyboardInterrupt):
        raise
    except Exception as exc:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename).resolve() == path]
        if not frames:
            raise
        sys.stderr.write("Traceback (the --script's frames):\n" + "".join(traceback.format_list(frames)))
        fail(f"--script {path.name}: {what} raised {type(exc).__name__}: {exc}")


def _load_script(spec: str):
    """``path.py:function`` → what the function returns: (model, optimizer, batches[, loss_fn]) or a
    dict with those keys."""
    path, _, func = spec.rpartition(":")
    if not path or not func:
        fail(f"--script must look like path/to/file.py:function, got {spec!r}")
    if not Path(path).is_file():
        fail(f"--script: {path} does not exist")
    mod_spec = importlib.util.spec_from_file_location("_muonscope_audit_script", path)
    module = importlib.util.module_from_spec(mod_spec)
    where = Path(path).resolve()
    sys.path.insert(0, str(where.parent))
    try:
        _in_script(where, "importing it", mod_spec.loader.exec_module, module)
    finally:
        sys.path.pop(0)
    fn = getattr(module, func, None)
    if not callable(fn):
        fail(f"--script: {path} has no function {func!r}")
    out = _in_script(where, f"{func}()", fn)
    if isinstance(out, dict):
        if not {"model", "optimizer", "batches"} <= set(out):
            fail(f"--script: {func}() must return model, optimizer and batches (got keys {sorted(out)})")
        return out["model"], out["optimizer"], out["batches"], out.get("loss_fn")
    if not isinstance(out, (tuple, list)) or len(out) not in (3, 4):
        fail(f"--script: {func}() must return (model, optimizer, batches[, loss_fn]) or a dict of them")
    return (*out, None)[:4]


@app.command("audit")
def audit_cmd(
    demo: str = typer.Option(None, "--demo", help="Audit a built-in setup (see --list-demos)."),
    script: str = typer.Option(None, "--script", help="path.py:function returning (model, optimizer, batches[, loss_fn])."),
    steps: int = typer.Option(5, "--steps", help="Training steps to watch."),
    json_out: str = typer.Option(None, "--json", help="Write the report as JSON to this file ('-': stdout)."),
    fail_on_findings: bool = typer.Option(False, "--fail-on-findings", help="Exit with code 1 when there are findings."),
    list_demos: bool = typer.Option(False, "--list-demos", help="List the built-in setups and exit."),
) -> None:
    """Watch any optimizer for silent Muon failures: routing, views, lr scale, NS, NaN, frozen."""
    from muonscope.audit import demo as D

    if list_demos:
        for name, text in D.DEMOS.items():
            console.print(f"{name:20} {text}")
        return
    if (demo is None) == (script is None):
        fail("pass exactly one of --demo NAME or --script path.py:function")
    from muonscope import validate as V

    steps = V.steps("--steps", steps, high=100_000)
    if demo is not None and demo not in D.DEMOS:
        fail(f"unknown demo {demo!r}; demos: {', '.join(D.DEMOS)}")
    if json_out is not None and json_out != "-":
        from muonscope._atomic import check_file_target

        check_file_target(json_out, "--json")
    from muonscope.audit.run import audit

    if demo is not None:
        model, opt = D.setup(demo)
        batches, loss_fn = D.batches(), None
    else:
        model, opt, batches, loss_fn = _load_script(script)
    if demo is not None:
        report = audit(model, opt, batches, loss_fn=loss_fn, steps=steps)
    else:  # the script's model, batches and loss run inside the audit
        report = _in_script(Path(script.rpartition(":")[0]).resolve(), "a training step", audit, model, opt,
                            batches, loss_fn=loss_fn, steps=steps)
    if json_out == "-":
        sys.stdout.write(report.to_json(indent=2) + "\n")
    else:
        if json_out is not None:
            from muonscope._atomic import atomic_write

            atomic_write(json_out, report.to_json(indent=2))
        if report.ok:
            console.print(f"muonscope audit: no findings over {steps} steps ({len(report.margins)} matrices judged)")
        else:
            console.print(findings_table(report))
    if fail_on_findings and not report.ok:
        raise typer.Exit(1)
