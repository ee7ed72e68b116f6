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


def _fmt_depth(d) -> str:
    return "?" if d is None or d != d else f"{d:g}"


@app.command("fit")
def fit_cmd(
    runs: list[Path] = typer.Argument(..., help="Run directories, or sweep directories holding runs."),
    out: Path = typer.Option(..., "--out", "-o", help="Laws JSON to write."),
    quantile: list[float] = typer.Option(None, "--quantile", "-q", help="q level(s) to fit; default: all recorded."),
    source: str = typer.Option(None, "--source", help="ns_input or momentum (default: ns_input when both exist)."),
    rel_tol: float = typer.Option(0.1, "--rel-tol", help="Burn-in tolerance band, relative (0.1 = 10%)."),
    level: float = typer.Option(0.95, "--level", help="Confidence level of the intervals."),
    n_boot: int = typer.Option(2000, "--boot", help="Bootstrap replicates over sizes (and seeds)."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
) -> None:
    """Fit power laws s_q(M) = C*M^(-alpha) per layer type and depth across the runs' model sizes."""
    from muonscope.laws.fit import fit_laws
    from muonscope.laws.stabilize import StabilizeSettings
    from muonscope.spectra.store import read_runs

    if not (0 < level < 1):
        fail("--level must lie in (0, 1)")
    if n_boot < 100:
        fail("--boot must be at least 100")
    df = read_runs(runs)
    laws = fit_laws(df, quantile or None, source=source, level=level, n_boot=n_boot, seed=seed,
                    settings=StabilizeSettings(rel_tol=rel_tol, level=level, seed=seed))
    laws.save(out)
    qs = laws.quantiles
    q_main = 0.5 if 0.5 in qs else qs[len(qs) // 2]
    shared = {(t.layer_type, _fmt_depth(t.rel_depth)): t for t in laws.shared}
    table = Table(title=f"spectral power laws s_q = C*M^-alpha ({len(laws.runs)} runs, "
                        f"{len({r['model_params'] for r in laws.runs})} sizes)")
    table.caption = (f"q*: alpha per quantile; CI (boot: over sizes and seeds; t: classical), R2: q={q_main:g}, "
                     f"{level:.0%}; few sizes make the bootstrap interval too narrow; "
                     "flat: beta/2 for r = min(rows, cols) ~ M^beta (unchanged spectral shape); "
                     "shared p: quantiles share alpha (Bonferroni)")
    for col in ("layer", "depth", *(f"q{q:g}" for q in qs), "CI boot", "CI t", "R2", "flat", "shared p"):
        table.add_column(col, justify="left" if col in ("layer",) else "right")
    keys = sorted({(f.layer_type, f.rel_depth) for f in laws.fits}, key=lambda k: (k[0], k[1] != k[1], k[1]))
    for lt, d in keys:
        by_q = {f.q: f for f in laws.fits if f.layer_type == lt and _fmt_depth(f.rel_depth) == _fmt_depth(d)}
        main_fit = by_q.get(q_main)
        t = shared.get((lt, _fmt_depth(d)))
        table.add_row(
            lt, _fmt_depth(d), *(f"{by_q[q].alpha:.3f}" if q in by_q else "-" for q in qs),
            f"{main_fit.alpha_ci[0]:.2f}..{main_fit.alpha_ci[1]:.2f}" if main_fit else "-",
            f"{main_fit.alpha_ci_t[0]:.2f}..{main_fit.alpha_ci_t[1]:.2f}" if main_fit else "-",
            f"{main_fit.r2:.3f}" if main_fit else "-",
            f"{main_fit.alpha_flat:.3f}" if main_fit and main_fit.alpha_flat == main_fit.alpha_flat else "-",
            f"{t.p_value:.2g}" if t else "-")
    console.print(table)
    stab = laws.stabilization
    n_flag = int((~stab["stable"].astype(bool)).sum())
    console.print(f"trajectories: {len(stab)}, flagged (not stabilized, not fitted): {n_flag}; "
                  f"groups skipped: {len(laws.skipped)}")
    for s in laws.skipped[:10]:
        console.print(f"  skipped {s['layer_type']} depth {_fmt_depth(s['rel_depth'])} q{s['q']:g}: {s['reason']}")
    console.print(f"wrote {out}")


def _parse_size(text: str) -> float:
    units = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}
    t = text.strip().lower().replace("_", "").replace(",", "")
    try:
        value = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        value = float("nan")
    if not (value > 0 and value != float("inf")):
        fail(f"--params must be a positive parameter count like 7e10, 70B or 125M, got {text!r}")
    return value


def _names_from(path: Path) -> dict:
    """{param name: (layer_type, rel_depth)} from a run directory, a JSON mapping or a names file."""
    import json

    if path.is_dir():
        from muonscope.laws.planner import names_from_records
        from muonscope.spectra.store import RunStore

        df = RunStore.open(path).spectra()
        if len(df) == 0:
            fail(f"run {path} holds no spectral records to take parameter names from")
        return names_from_records(df)
    if not path.is_file():
        fail(f"--names-from {path}: no such run directory or file")
    text = path.read_text()
    if path.suffix == ".json":
        try:
            raw = json.loads(text)
            return {str(k): (str(v[0]), float("nan") if v[1] is None else float(v[1])) for k, v in raw.items()}
        except (ValueError, TypeError, IndexError, AttributeError) as exc:
            fail(f"--names-from {path}: expected JSON {{name: [layer_type, rel_depth]}} ({exc})")
    from muonscope.spectra.layers import LayerIndex

    names = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    index = LayerIndex(names)
    return {n: (index(n).layer_type, index(n).rel_depth) for n in names}


@app.command("plan")
def plan_cmd(
    laws_path: Path = typer.Argument(..., help="Laws JSON from `muonscope fit`."),
    params: list[str] = typer.Option(..., "--params", "-p", help="Target model size(s): 7e10, 70B, 125M, ..."),
    quantile: float = typer.Option(0.5, "--quantile", "-q", help="The quantile s_q that NS must lift."),
    rho: float = typer.Option(0.1, "--rho", help="Output level a lifted direction must reach."),
    level: float = typer.Option(0.95, "--level", help="Two-sided prediction-interval level."),
    names_from: Path = typer.Option(None, "--names-from", help="Parameter names: a run directory, a JSON "
                                    "{name: [layer_type, rel_depth]} or a text file with one name per line."),
    max_steps: int = typer.Option(16, "--max-steps", help="Largest NS step count considered."),
    out: Path = typer.Option(None, "--out", "-o", help="Plan JSON (several sizes: one file per size, suffixed)."),
) -> None:
    """Cheapest NS configuration per layer for a target model size, from fitted laws."""
    import json

    from muonscope.laws.io import load_laws
    from muonscope.laws.planner import make_plan

    sizes = [_parse_size(p) for p in params]
    if max_steps < 1:
        fail("--max-steps must be >= 1")
    laws = load_laws(laws_path)
    names = _names_from(names_from) if names_from is not None else None
    for size in sizes:
        plan = make_plan(laws, size, quantile=quantile, rho=rho, level=level, names=names, max_steps=max_steps)
        table = Table(title=f"NS plan for {size:.3g} parameters: lift s_q{quantile * 100:g} "
                            f"(lower end of the {level:.0%} prediction interval) to >= {rho:g}")
        table.caption = ("tau: the config's threshold (every s >= tau maps to >= rho); "
                         "J/PE/D: fewest steps of jordan / polar-express / designed(lower end)")
        for col in ("layer", "depth", "alpha", "s_q predicted [interval]", "config", "matmuls", "tau", "J/PE/D"):
            table.add_column(col, justify="left" if col in ("layer", "config") else "right")
        for c in [*plan.by_depth, *plan.by_type.values()]:
            depth = _fmt_depth(c.rel_depth) if c.rel_depth == c.rel_depth else f"all (d={_fmt_depth(c.worst_depth)})"
            alts = " / ".join("-" if o.steps is None else str(o.steps) for o in c.options)
            p = c.prediction
            table.add_row(c.layer_type, depth, f"{c.alpha:.3f}", f"{p.center:.2g} [{p.low:.2g}, {p.high:.2g}]",
                          f"{c.schedule.name} x{c.steps}", str(c.matmuls), f"{c.tau:.3g}", alts)
        console.print(table)
        if out is not None:
            dest = out if len(sizes) == 1 else out.with_name(f"{out.stem}-{size:.3g}".replace("+", "") + out.suffix)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(json.dumps(plan.to_dict(), indent=1))
            console.print(f"wrote {dest} ({len(plan.params)} named parameters, "
                          f"{len(plan.schedules())} designed schedule(s))")


@app.command()
def report(
    runs: list[Path] = typer.Argument(..., help="Run directories or sweep directories."),
    out: Path = typer.Option(Path("report.html"), "--out", "-o", help="Output file."),
    fmt: str = typer.Option("html", "--format", help="html (one self-contained file) or md (+ PNG folder)."),
    targets: str = typer.Option("1.2e8,7e9,7e10,1e12", "--targets", help="Target model sizes for the NS recipe."),
    quantile: float = typer.Option(0.5, "--quantile", help="The quantile NS must lift."),
    rho: float = typer.Option(0.1, "--rho", help="Failure level."),
) -> None:
    """Report with spectra during training, power-law fits, the NS recipe and loss curves."""
    from muonscope.report.build import build_report

    path = build_report(runs, out, fmt=fmt, targets=_csv(targets, float), quantile=quantile, rho=rho)
    console.print(f"wrote {path}")


@app.command()
def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", "-o", help="Output directory."),
    presets: str = typer.Option("d48,d64,d96,d128", "--presets", help="Sizes of the small sweep."),
    steps: int = typer.Option(300, "--steps", help="Optimizer steps per run."),
    target: str = typer.Option("7e10", "--target", help="Target model size for the plan."),
    threads: int = typer.Option(0, "--threads", help="torch threads (0: leave torch's default)."),
) -> None:
    """The whole loop on a small sweep: train several sizes -> fit laws -> plan NS -> report."""
    sizes = _csv(presets)
    if len(sizes) < 3:
        fail("--presets needs at least 3 sizes: power laws are fitted across model sizes")
    console.rule("1/4 small size sweep (spectral monitor on)")
    sweep(out=out / "sweep", presets=presets, seeds="0", adamw="", steps=steps, batch_size=16,
          corpus="stdlib", monitor_every=10, eval_every=100, threads=threads)
    console.rule("2/4 power laws")
    fit_cmd(runs=[out / "sweep"], out=out / "laws.json", quantile=None, source=None, rel_tol=0.1,
            level=0.95, n_boot=2000, seed=0)
    console.rule(f"3/4 NS plan for {target} parameters")
    plan_cmd(laws_path=out / "laws.json", params=[target], quantile=0.5, rho=0.1, level=0.95,
             names_from=out / "sweep" / f"{sizes[-1]}-muon-s0", max_steps=16, out=out / "plan.json")
    console.rule("4/4 report")
    report(runs=[out / "sweep"], out=out / "report.html", fmt="html", targets=f"1.2e8,7e9,{target},1e12",
           quantile=0.5, rho=0.1)
    console.print(f"report: {(out / 'report.html').resolve()}")


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
