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


def _criterion(spec: str, quantile: float, rho: float):
    """``calibrated`` (shipped), ``lift-quantile`` (the original rule with --quantile/--rho) or a JSON path."""
    from muonscope._jsonfile import read_json
    from muonscope.laws.criterion import Criterion, calibrated

    if spec == "calibrated":
        return calibrated()
    if spec == "lift-quantile":
        return Criterion(quantile=quantile, rho=rho)
    path = Path(spec)
    raw = read_json(path, ConfigError, missing=f"criterion {spec!r}: not 'calibrated', 'lift-quantile' or a JSON file")
    return Criterion.from_dict(raw)


def plan_table(plan) -> Table:
    """The plan as a rich table (one row per fitted depth, then one per layer type)."""
    crit = plan.criterion
    statistic = crit.kind == "statistic"
    table = Table(title=f"NS plan for {plan.target_params:.3g} parameters ({plan.level:.0%} prediction intervals)")
    table.caption = (f"criterion: {crit.describe()}. tau: every s >= tau maps to >= {crit.rho:g}; "
                     "J/PE/D: fewest steps of jordan / polar-express / designed that meet the criterion"
                     + ("; the spectrum beyond the largest fitted q is extrapolated" if statistic else ""))
    cols = ["layer", "depth", "alpha", f"s_q{crit.quantile * 100:g} predicted [interval]", "config", "matmuls", "tau"]
    cols += ["stat", "bound"] if statistic else []
    for col in (*cols, "J/PE/D"):
        table.add_column(col, justify="left" if col in ("layer", "config") else "right")
    for c in [*plan.by_depth, *plan.by_type.values()]:
        depth = _fmt_depth(c.rel_depth) if c.rel_depth == c.rel_depth else f"all (d={_fmt_depth(c.worst_depth)})"
        alts = " / ".join("-" if o.steps is None else str(o.steps) for o in c.options)
        p = c.prediction
        row = [c.layer_type, depth, f"{c.alpha:.3f}", f"{p.center:.2g} [{p.low:.2g}, {p.high:.2g}]",
               c.label, "SVD" if c.exact else str(c.matmuls), f"{c.tau:.3g}"]
        row += [f"{c.stat:.3g}", f"{c.bound:.3g}"] if statistic else []
        table.add_row(*row, alts)
    return table


@app.command("plan")
def plan_cmd(
    laws_path: Path = typer.Argument(..., help="Laws JSON from `muonscope fit`."),
    params: list[str] = typer.Option(None, "--params", "-p", help="Target model size(s): 7e10, 70B, 125M, ..."),
    criterion: str = typer.Option("calibrated", "--criterion", help="calibrated (measured on training loss), "
                                  "lift-quantile (tau_rho <= pessimistic s_q) or a criterion JSON file."),
    quantile: float = typer.Option(0.5, "--quantile", "-q", help="lift-quantile: the quantile s_q NS must lift."),
    rho: float = typer.Option(0.1, "--rho", help="lift-quantile: output level a lifted direction must reach."),
    level: float = typer.Option(0.95, "--level", help="Two-sided prediction-interval level."),
    names_from: Path = typer.Option(None, "--names-from", help="Parameter names: a run directory, a JSON "
                                    "{name: [layer_type, rel_depth]} or a text file with one name per line."),
    max_steps: int = typer.Option(16, "--max-steps", help="Largest NS step count considered."),
    out: Path = typer.Option(None, "--out", "-o", help="Plan JSON (several sizes: one file per size, suffixed); "
                             "with --verify: the verification directory."),
    verify: bool = typer.Option(False, "--verify", help="Closed loop: plan each of --presets for its own size, "
                                "train it under the plan and under jordan x5 (paired), refit, plan again."),
    presets: str = typer.Option("d48,d64,d96", "--presets", help="--verify: the presets to train (3 or more)."),
    seeds: str = typer.Option("0", "--seeds", help="--verify: comma-separated seeds."),
    steps: int = typer.Option(600, "--steps", help="--verify: optimizer steps per run."),
    threads: int = typer.Option(1, "--threads", help="--verify: torch threads."),
) -> None:
    """Cheapest NS configuration per layer for a target model size, from fitted laws."""

    from muonscope.laws.io import load_laws
    from muonscope.laws.planner import make_plan

    if max_steps < 1:
        fail("--max-steps must be >= 1")
    if not (0 < level < 1):
        fail("--level must lie in (0, 1)")
    crit = _criterion(criterion, quantile, rho)
    if verify:
        if out is None:
            fail("--verify needs --out DIR for its runs and plans")
        return _verify(load_laws(laws_path), crit, out, _csv(presets), _csv(seeds, int), steps, threads,
                       level=level, max_steps=max_steps)
    if not params:
        fail("give --params (a target size) or --verify")
    sizes = [_parse_size(p) for p in params]
    laws = load_laws(laws_path)
    names = _names_from(names_from) if names_from is not None else None
    for size in sizes:
        plan = make_plan(laws, size, level=level, names=names, max_steps=max_steps, criterion=crit)
        console.print(plan_table(plan))
        if out is not None:
            from muonscope._jsonfile import write_json

            dest = out if len(sizes) == 1 else out.with_name(f"{out.stem}-{size:.3g}".replace("+", "") + out.suffix)
            write_json(dest, plan.to_dict())
            console.print(f"wrote {dest} ({len(plan.params)} named parameters, "
                          f"{len(plan.schedules())} designed schedule(s))")


def _verify(laws, crit, out: Path, presets, seeds, steps, threads, **plan_kwargs) -> None:
    import torch

    from muonscope.experiments.closed_loop import verify_plan

    torch.set_num_threads(threads)
    v = verify_plan(laws, crit, out, presets=presets, seeds=seeds or [0], steps=steps, log=console.print,
                    **plan_kwargs)
    console.print(f"criterion: {crit.describe()}")
    cols = ["preset", "n", "dloss", "dloss_sd", "dloss_t", "flops_ratio", "distortion", "frac_failed"]
    console.print(v.paired[cols].to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    for p, ch in v.changed.items():
        console.print(f"{p}: {len(ch)} parameter(s) change after the refit" + "".join(
            f"\n  {n}: {a} -> {b}" for n, (a, b) in sorted(ch.items())))
    console.print(f"fixed point: {'yes' if v.fixed_point else 'no'}; plans, replans and runs.csv in {out}")


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
    plan_cmd(laws_path=out / "laws.json", params=[target], criterion="calibrated", quantile=0.5, rho=0.1,
             level=0.95, names_from=out / "sweep" / f"{sizes[-1]}-muon-s0", max_steps=16, out=out / "plan.json",
             verify=False, presets="", seeds="0", steps=0, threads=0)
    console.rule("4/4 report")
    report(runs=[out / "sweep"], out=out / "report.html", fmt="html", targets=f"1.2e8,7e9,{target},1e12",
           quantile=0.5, rho=0.1)
    console.print(f"report: {(out / 'report.html').resolve()}")


dynamics_app = typer.Typer(help="Spectral dynamics of Muon at small scale (matrix sensing, nuclear-norm gap, "
                                "one-step entropy, noise geometry).", no_args_is_help=True)
app.add_typer(dynamics_app, name="dynamics")


def _dyn_progress(total: int, description: str):
    """A rich progress bar and its advance callback."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeRemainingColumn(), console=console, transient=True)
    task = bar.add_task(description, total=total)
    return bar, (lambda n=1: bar.advance(task, n))


def _dyn_setup(threads: int, out: Path) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)


@dynamics_app.command("sensing")
def dynamics_sensing(
    out: Path = typer.Option(Path("runs/dynamics"), "--out", "-o", help="Output directory (stores, JSON, PNG)."),
    rows: int = typer.Option(50, "--rows", help="p: rows of W."),
    cols: int = typer.Option(20, "--cols", help="d: columns of W."),
    measurements: int = typer.Option(100, "--measurements", "-n", help="n: number of measurements."),
    kappa: float = typer.Option(5.0, "--kappa", help="Target singular values spread linearly from kappa to 1."),
    rules: str = typer.Option("muon,muon-ns,gd,nmgd,random-orth", "--rules",
                              help="Update rules; muon-ns takes :schedule:steps, e.g. muon-ns:polar_express:5."),
    seeds: int = typer.Option(10, "--seeds", help="Number of paired seeds (0..seeds-1)."),
    steps: int = typer.Option(1000, "--steps"),
    lr: float = typer.Option(0.01, "--lr", help="Step of the norm-bounded rules."),
    gd_lr: float = typer.Option(1.0, "--gd-lr", help="Plain GD step in units of 1/lambda_max(AA^T)."),
    lr_schedule: str = typer.Option("cosine", "--lr-schedule", help="constant, cosine or linear."),
    momentum: float = typer.Option(0.0, "--momentum"),
    init: str = typer.Option("powerlaw", "--init", help="zero, gaussian or powerlaw (concentrated spectrum)."),
    init_scale: float = typer.Option(0.1, "--init-scale", help="||W0||_F / ||W*||_F."),
    record_every: int = typer.Option(5, "--record-every"),
    no_stores: bool = typer.Option(False, "--no-stores", help="Skip writing run stores."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing run stores."),
    threads: int = typer.Option(1, "--threads", help="torch threads (small batched SVDs: 1 is fastest)."),
) -> None:
    """Trajectories of loss, normalized spectrum, entropy, stable rank and frame alignment per rule."""
    from muonscope.experiments.dynamics.problems import SensingConfig
    from muonscope.experiments.dynamics.sensing import SensingRunConfig, experiment

    _dyn_setup(threads, out)
    cfg = SensingRunConfig(
        problem=SensingConfig(rows=rows, cols=cols, measurements=measurements, kappa=kappa),
        rules=tuple(_csv(rules)), seeds=tuple(range(seeds)), steps=steps, lr=lr, gd_lr=gd_lr,
        lr_schedule=lr_schedule, momentum=momentum, init=init, init_scale=init_scale, record_every=record_every)
    bar, advance = _dyn_progress(len(cfg.rules) * steps, "sensing")
    with bar:
        s = experiment(cfg, None if no_stores else out / "sensing", summary_path=out / "sensing.json",
                       figure_dir=out, overwrite=overwrite, progress=advance)
    table = Table(title=f"final state over {seeds} seeds (mean); reference {s['reference']}")
    for col in ("rule", "rel. residual", "norm. entropy", "stable rank", "||W||_*/||W||_F", "dist to ref",
                "misalignment (late)"):
        table.add_column(col, justify="left" if col == "rule" else "right")
    from rich.markup import escape

    for label, r in s["rules"].items():
        table.add_row(escape(label), f"{r['final_rel_residual_mean']:.2e}", f"{r['final_entropy_mean']:.4f}",
                      f"{r['final_stable_rank_mean']:.2f}", f"{r['final_nuc_frob_mean']:.3f}",
                      f"{r['rel_dist_to_reference_mean']:.3f}", f"{r['misalignment_late_median']:.3f}")
    console.print(table)
    for e in s["paired"]:
        if e["metric"] in ("final_entropy", "final_stable_rank"):
            console.print(f"{e['a']} - {e['b']} {e['metric']}: {e['mean_diff']:+.4g} "
                          f"[{e['ci95_low']:+.3g}, {e['ci95_high']:+.3g}], d_z={e['d_z']:.2f}, "
                          f"Wilcoxon p={e['wilcoxon_p']:.3g}", markup=False)
    console.print(f"wrote {out / 'sensing.json'} and figures in {out}")


@dynamics_app.command("nuclear")
def dynamics_nuclear(
    out: Path = typer.Option(Path("runs/dynamics"), "--out", "-o", help="Output directory (stores, JSON, PNG)."),
    setting: str = typer.Option("large,small", "--setting", help="large (p=50, d=20) and/or small (p=n=6, d=10)."),
    seeds: int = typer.Option(0, "--seeds", help="Seeds per setting (0: the paper's, 1 for large, 10 for small)."),
    rules: str = typer.Option("muon,muon-ns", "--rules", help="Rules whose interpolant is compared."),
    steps: int = typer.Option(3000, "--steps"),
    lr: float = typer.Option(0.05, "--lr", help="Initial lr (cosine-decayed to 0)."),
    momentum: float = typer.Option(0.0, "--momentum"),
    solver: str = typer.Option(None, "--solver", help="cvxpy solver (default CLARABEL, then SCS)."),
    sensitivity: bool = typer.Option(False, "--sensitivity", help="Also run the readings/optimizer variants."),
    no_stores: bool = typer.Option(False, "--no-stores", help="Skip writing run stores."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing run stores."),
    threads: int = typer.Option(1, "--threads"),
) -> None:
    """||W_Muon||_* against the minimum-nuclear-norm interpolant (cvxpy)."""
    from muonscope.experiments.dynamics import nuclear

    if not nuclear.have_cvxpy():
        fail(nuclear.CVXPY_HINT)
    _dyn_setup(threads, out)
    names = _csv(setting)
    rule_list = _csv(rules)
    total = len(names) * len(rule_list) * steps
    if sensitivity:
        total += sum(kw.get("steps", 3000) for *_, kw in nuclear.VARIANTS)
    bar, advance = _dyn_progress(total, "nuclear")
    with bar:
        s = nuclear.experiment(names, seeds=range(seeds) if seeds else None, rules=rule_list, steps=steps, lr=lr,
                               momentum=momentum, solver=solver, with_sensitivity=sensitivity,
                               out_dir=None if no_stores else out / "nuclear", summary_path=out / "nuclear.json",
                               figure_dir=out, overwrite=overwrite, progress=advance)
    from rich.markup import escape

    table = Table(title="||W||_* / min ||W||_* (cvxpy minimum, dual-certified)")
    for col in ("setting", "W", "seeds", "interpolant", "mean", "min", "max", "at minimum", "paper"):
        table.add_column(col, justify="left" if col in ("setting", "interpolant", "paper") else "right")
    for o in s["settings"]:
        pr = o["problem"]
        for label, v in o["summary"].items():
            table.add_row(o["setting"], f"{pr['rows']}x{pr['cols']}, n={pr['measurements']}", str(len(o["seeds"])),
                          escape(label), f"{v['ratio_mean']:.3f}", f"{v['ratio_min']:.3f}", f"{v['ratio_max']:.3f}",
                          str(v["at_minimum"]), o["paper"] if label == "muon" else "")
    console.print(table)
    for v in s.get("sensitivity", []):
        console.print(f"{v['variant']}: Muon ratio mean {v['muon_ratio_mean']:.3f} "
                      f"[{v['muon_ratio_min']:.3f}, {v['muon_ratio_max']:.3f}], at minimum {v['muon_at_minimum']}",
                      markup=False)
    console.print(f"wrote {out / 'nuclear.json'} and {out / 'nuclear_gap.png'}")


@dynamics_app.command("entropy")
def dynamics_entropy(
    out: Path = typer.Option(Path("runs/dynamics"), "--out", "-o", help="Output directory (JSON, PNG)."),
    rows: int = typer.Option(12, "--rows"),
    cols: int = typer.Option(8, "--cols"),
    instances: int = typer.Option(200, "--instances", help="Random instances per regime."),
    seed: int = typer.Option(0, "--seed"),
    sensing_check: bool = typer.Option(True, "--sensing-check/--no-sensing-check",
                                       help="Also evaluate the states Muon visits in matrix sensing."),
    threads: int = typer.Option(1, "--threads"),
) -> None:
    """When does the polar update (gamma = 0) maximize the first-order entropy gain?"""
    from muonscope.experiments.dynamics.entropy import experiment
    from muonscope.experiments.dynamics.sensing import SensingRunConfig

    _dyn_setup(threads, out)
    sensing_cfg = SensingRunConfig() if sensing_check else None  # the `dynamics sensing` defaults
    bar, advance = _dyn_progress(2 if sensing_check else 1, "entropy")
    with bar:
        s = experiment(rows=rows, cols=cols, instances=instances, seed=seed, sensing_cfg=sensing_cfg,
                       summary_path=out / "entropy.json", figure_dir=out, progress=advance)
    table = Table(title=f"share of {instances} instances ({rows}x{cols}) where polar maximizes dH")
    for col in ("regime", "misalignment", "Frobenius-matched", "spectral-matched", "mean argmax gamma (F)"):
        table.add_column(col, justify="left" if col == "regime" else "right")
    for r in s["regimes"]:
        table.add_row(r["regime"], f"{r['misalignment_mean']:.3f}", f"{r['frobenius']['polar_is_max']:.2f}",
                      f"{r['spectral']['polar_is_max']:.2f}", f"{r['frobenius']['argmax_gamma_mean']:.2f}")
    console.print(table)
    if "sensing_states" in s:
        rows_ = s["sensing_states"]["rows"]
        share = sum(r["polar_is_max"] for r in rows_) / len(rows_)
        mis = sum(r["misalignment_mean"] for r in rows_) / len(rows_)
        console.print(f"matrix-sensing states under Muon: polar is the argmax in {share:.2f} of (state, seed) "
                      f"pairs on average; mean misalignment {mis:.3f}")
    console.print(f"wrote {out / 'entropy.json'} and {out / 'entropy_gain.png'}")


@dynamics_app.command("noise")
def dynamics_noise(
    out: Path = typer.Option(Path("runs/dynamics"), "--out", "-o", help="Output directory (JSON, PNG)."),
    chains: int = typer.Option(20000, "--chains", help="Independent momentum chains per (beta, rho)."),
    trials: int = typer.Option(1000, "--trials", help="Noise draws per batch size."),
    seed: int = typer.Option(0, "--seed"),
    threads: int = typer.Option(1, "--threads"),
) -> None:
    """Momentum noise factor (1-beta)/(1+beta) and the critical batch size of the polar factor."""
    from muonscope.experiments.dynamics.noise import experiment

    _dyn_setup(threads, out)
    bar, advance = _dyn_progress(1, "noise")
    with bar:
        s = experiment(chains=chains, trials=trials, seed=seed, summary_path=out / "noise.json", figure_dir=out)
        advance()
    table = Table(title="momentum noise factor Var(m)/Var(xi)")
    for col in ("beta", "rho", "measured", "predicted", "naive (1-beta)^2", "z"):
        table.add_column(col, justify="right")
    for m in s["momentum"]:
        table.add_row(f"{m['beta']:g}", f"{m['rho']:g}", f"{m['measured']:.5f}", f"{m['predicted']:.5f}",
                      f"{m['naive']:.5f}", f"{m['z']:+.2f}")
    console.print(table)
    table = Table(title="polar-factor noise: B_crit = 2 sigma^2 S(mu)/r against simulation (square G)")
    for col in ("spectrum", "r", "B_crit", "B*NSR at largest B (+- se)", "measured NSR=1 crossing"):
        table.add_column(col, justify="left" if col == "spectrum" else "right")
    for p in s["polar"]:
        last = p["rows"][-1]
        table.add_row(p["spectrum_type"], str(p["r"]), f"{p['B_crit']:.3g}",
                      f"{last['B_times_nsr']:.3g} +- {last['B_times_nsr_stderr']:.2g}", f"{p['measured_crossing']:.3g}")
    console.print(table)
    console.print(f"wrote {out / 'noise.json'} and {out / 'noise_geometry.png'}")


calibrate_app = typer.Typer(help="Calibrate the NS recipe on training loss (oracles, real NS configurations, plans; "
                                   "paired seeds).", no_args_is_help=True)
app.add_typer(calibrate_app, name="calibrate")


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        fail(f"--shard must look like i/n (e.g. 0/2), got {text!r}")
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
    import torch

    from muonscope.experiments.calibration import grid_methods, run_calibration

    torch.set_num_threads(threads)
    names = grid_methods(full) if methods == "grid" else _csv(methods)
    if not names:
        fail("--methods names no method")
    n = run_calibration(out, names, _csv(presets), _csv(seeds, int), steps=steps, shard=_parse_shard(shard),
                        runs=runs, budget=budget or None, log=console.print)
    console.print(f"{n} run(s) finished in this call; rows in {out / 'runs.csv'}")


@calibrate_app.command("summarize")
def calibrate_summarize(
    out: Path = typer.Option(..., "--out", "-o", help="Calibration directory holding runs.csv."),
    preset: str = typer.Option("d64", "--preset", help="Preset whose grid sets the criterion."),
) -> None:
    """Paired tables, the statistic that predicts the loss, the calibrated criterion and figures."""
    import pandas as pd

    from muonscope.experiments.calibration import CSV_NAME, calibrate, paired, write_summary

    path = out / CSV_NAME
    if not path.exists():
        fail(f"{path} not found: run `muonscope calibrate run -o {out}` first")
    df = pd.read_csv(path)
    cal = calibrate(df, preset)
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
