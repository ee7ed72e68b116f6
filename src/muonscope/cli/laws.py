"""`muonscope fit` and `muonscope plan`: power laws across sizes, NS plans (and their closed-loop check)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from muonscope import validate as V
from muonscope._atomic import atomic_write_with, check_dir_target, check_file_target, created_dirs
from muonscope.cli._app import (
    app,
    console,
    csv_list,
    fail,
    fmt_depth,
    number_list,
    set_threads,
    threads_option,
)
from muonscope.conventions import FAILURE_RHO
from muonscope.errors import ConfigError
from muonscope.orth.analysis import RESOLUTION_FLOORS

MAX_BOOT = 100_000  # bootstrap replicates: beyond this a fit takes hours without narrowing anything
MAX_PARAMS = 1e15  # target model size


def check_quantile(option: str, q) -> float:
    """A quantile level in (0, 1]."""
    return V.real(option, q, low=0.0, high=1.0, low_open=True)


def check_boot(option: str, n, low: int = 100) -> int:
    return V.count(option, n, low=low, high=MAX_BOOT)


def fit_table(laws, level: float = 0.95) -> Table:
    """α per quantile for every (layer type, depth) with intervals, R², the flat-shape exponent and
    the shared-exponent test."""
    qs = laws.quantiles
    q_main = 0.5 if 0.5 in qs else qs[len(qs) // 2]
    shared = {(t.layer_type, fmt_depth(t.rel_depth)): t for t in laws.shared}
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
        by_q = {f.q: f for f in laws.fits if f.layer_type == lt and fmt_depth(f.rel_depth) == fmt_depth(d)}
        main_fit = by_q.get(q_main)
        t = shared.get((lt, fmt_depth(d)))
        table.add_row(
            lt, fmt_depth(d), *(f"{by_q[q].alpha:.3f}" if q in by_q else "-" for q in qs),
            f"{main_fit.alpha_ci[0]:.2f}..{main_fit.alpha_ci[1]:.2f}" if main_fit else "-",
            f"{main_fit.alpha_ci_t[0]:.2f}..{main_fit.alpha_ci_t[1]:.2f}" if main_fit else "-",
            f"{main_fit.r2:.3f}" if main_fit else "-",
            f"{main_fit.alpha_flat:.3f}" if main_fit and main_fit.alpha_flat == main_fit.alpha_flat else "-",
            f"{t.p_value:.2g}" if t else "-")
    return table


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
    drift_tolerance: float = typer.Option(0.25, "--drift-tolerance", help="Keep trajectories the burn-in rule "
                                          "flags when |d log s/dt| <= this per 1000 steps (negative: stable only)."),
) -> None:
    """Fit power laws s_q(M) = C*M^(-alpha) per layer type and depth across the runs' model sizes."""
    from muonscope.laws.fit import fit_laws
    from muonscope.laws.stabilize import StabilizeSettings
    from muonscope.spectra.store import read_runs

    level = V.fraction("--level", level)
    n_boot = check_boot("--boot", n_boot)
    seed = V.seed("--seed", seed)
    quantile = [check_quantile("--quantile", q) for q in quantile or []]
    rel_tol = V.positive("--rel-tol", rel_tol)
    drift_tolerance = V.real("--drift-tolerance", drift_tolerance)
    if source is not None and source not in ("ns_input", "momentum", "update"):
        fail(f"--source must be ns_input, momentum or update, got {source!r}")
    check_file_target(out, "--out")
    df = read_runs(runs)
    laws = fit_laws(df, quantile or None, source=source, level=level, n_boot=n_boot, seed=seed,
                    settings=StabilizeSettings(rel_tol=rel_tol, level=level, seed=seed),
                    drift_tolerance=drift_tolerance if drift_tolerance >= 0 else None)
    laws.save(out)
    console.print(fit_table(laws, level))
    stab = laws.stabilization
    n_flag = int((~stab["stable"].astype(bool)).sum())
    excluded = laws.excluded()
    console.print(f"trajectories: {len(stab)}, flagged by the burn-in rule: {n_flag}, kept within the drift "
                  f"tolerance: {n_flag - len(excluded)}, excluded: {len(excluded)}; groups skipped: {len(laws.skipped)}")
    if len(excluded):
        by_run = excluded.groupby("run_id").size().sort_values(ascending=False)
        console.print("  excluded per run: " + ", ".join(f"{r} {n}" for r, n in by_run.head(8).items()))
    for s in laws.skipped[:10]:
        console.print(f"  skipped {s['layer_type']} depth {fmt_depth(s['rel_depth'])} q{s['q']:g}: {s['reason']}")
    console.print(f"wrote {out}")


@app.command("convergence")
def convergence_cmd(
    runs: list[Path] = typer.Argument(..., help="Run directories, or sweep directories holding runs."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for alpha_over_time.csv, convergence.csv and "
                             "the figure."),
    width: int = typer.Option(200, "--width", help="Window length in steps."),
    every: int = typer.Option(100, "--every", help="Spacing of the window ends in steps."),
    tolerance: float = typer.Option(0.05, "--tolerance", help="|d alpha/dt| per 1000 steps below which an "
                                    "exponent counts as converged."),
    laws_path: Path = typer.Option(None, "--laws", help="Laws JSON to annotate with the verdicts (the planner "
                                   "then lists the unconverged exponents it extrapolates)."),
    n_boot: int = typer.Option(1000, "--boot", help="Bootstrap replicates over sizes and seeds."),
) -> None:
    """Exponents over training time: alpha(t) from windows ending at successive steps, and a
    converged / still-drifting verdict per exponent."""
    from muonscope.laws.convergence import alpha_over_time, convergence_table, verdicts
    from muonscope.laws.io import load_laws
    from muonscope.report.figures import plot_alpha_over_time
    from muonscope.spectra.store import read_runs

    width = V.steps("--width", width)
    every = V.steps("--every", every)
    tolerance = V.positive("--tolerance", tolerance)
    n_boot = check_boot("--boot", n_boot)
    check_dir_target(out, "--out")
    if laws_path is not None:
        check_file_target(laws_path, "--laws")
    laws = load_laws(laws_path) if laws_path is not None else None  # fail before the work
    df = read_runs(runs, meta=("seed",))
    at = alpha_over_time(df, width=width, every=every, n_boot=n_boot)
    conv = convergence_table(at, tolerance=tolerance)
    with created_dirs(out):
        atomic_write_with(out / "alpha_over_time.csv", lambda p: at.to_csv(p, index=False, float_format="%.5g"))
        atomic_write_with(out / "convergence.csv", lambda p: conv.to_csv(p, index=False, float_format="%.5g"))
        atomic_write_with(out / "alpha_over_time.png",
                          lambda p: plot_alpha_over_time(at, path=p, tolerance=tolerance))
    table = Table(title=f"exponent convergence ({conv['n_seeds'].max()} seeds, window {width} steps, "
                        f"tolerance {tolerance:g}/1000 steps)")
    for col in ("q", "exponents", "converged", "median alpha", "median drift/1k"):
        table.add_column(col, justify="right")
    for q, g in conv.groupby("q"):
        table.add_row(f"{q:g}", str(len(g)), str(int(g.converged.sum())), f"{g.alpha.median():.3f}",
                      f"{g.drift_per_1k.median():+.3f}")
    console.print(table)
    if laws is not None:
        laws.convergence = verdicts(conv)
        laws.save(laws_path)
        console.print(f"verdicts written into {laws_path}")
    console.print(f"wrote {out}/alpha_over_time.csv, convergence.csv, alpha_over_time.png")


@app.command("compare")
def compare_cmd(
    first: Path = typer.Argument(..., help="Laws JSON (e.g. the width family)."),
    second: Path = typer.Argument(..., help="Laws JSON to compare with (e.g. the depth family)."),
    names: str = typer.Option("a,b", "--names", help="Two labels for the columns."),
    out: Path = typer.Option(None, "--out", "-o", help="CSV of the side-by-side table."),
) -> None:
    """Exponents of two fits side by side: alpha, intervals, sizes used, and the excess over each
    family's same-shape baseline."""
    from muonscope.laws.compare import compare_exponents
    from muonscope.laws.io import load_laws

    labels = csv_list(names)
    if len(labels) != 2 or labels[0] == labels[1]:
        fail("--names needs two different labels, e.g. width,depth")
    if out is not None:
        check_file_target(out, "--out")
    t = compare_exponents(load_laws(first), load_laws(second), tuple(labels))
    if t.empty:
        fail("the two fits share no (layer type, depth, q) group")
    a, b = labels
    table = Table(title=f"exponents: {a} ({first}) vs {b} ({second}); median by q")
    for col in ("q", "groups", f"alpha {a}", f"alpha {b}", "median delta", f"excess {a}", f"excess {b}", "overlap"):
        table.add_column(col, justify="right")
    for q, g in t.groupby("q"):
        table.add_row(f"{q:g}", str(len(g)), f"{g[f'alpha_{a}'].median():.3f}", f"{g[f'alpha_{b}'].median():.3f}",
                      f"{g.delta.median():+.3f}", f"{g[f'excess_{a}'].median():+.3f}",
                      f"{g[f'excess_{b}'].median():+.3f}", f"{int(g.intervals_overlap.sum())}/{len(g)}")
    console.print(table)
    if out is not None:
        atomic_write_with(out, lambda p: t.to_csv(p, index=False, float_format="%.5g"))
        console.print(f"wrote {out}")


def parse_size(text: str) -> float:
    units = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}
    t = text.strip().lower().replace("_", "").replace(",", "")
    try:
        value = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        value = float("nan")
    if not (0 < value <= MAX_PARAMS):
        fail(f"--params must be a positive parameter count up to {MAX_PARAMS:.0e} like 7e10, 70B or 125M, "
             f"got {text!r}")
    return value


def read_names(path: Path) -> dict:
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
        fail(f"--names-from {path}: no such run directory or regular file")
    try:
        raw_bytes = path.read_bytes()
    except OSError as exc:
        fail(f"--names-from {path}: cannot read it ({exc.strerror})")
    if b"\0" in raw_bytes:
        fail(f"--names-from {path} is a binary file; expected JSON or one parameter name per line")
    try:
        text = raw_bytes.decode("utf-8")
    except UnicodeDecodeError:
        fail(f"--names-from {path} is not UTF-8 text; expected JSON or one parameter name per line")
    if path.suffix == ".json":
        try:
            raw = json.loads(text)
            return {str(k): (str(v[0]), float("nan") if v[1] is None else float(V.real("rel_depth", v[1])))
                    for k, v in raw.items()}
        except (ValueError, TypeError, IndexError, AttributeError, KeyError) as exc:
            fail(f"--names-from {path}: expected JSON {{name: [layer_type, rel_depth]}} ({exc})")
    from muonscope.spectra.layers import LayerIndex

    names = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if not names:
        fail(f"--names-from {path} lists no parameter names")
    index = LayerIndex(names)
    return {n: (index(n).layer_type, index(n).rel_depth) for n in names}


NS_DTYPES = tuple(RESOLUTION_FLOORS)  # the NS dtypes a plan may be made for


def read_shapes_file(path: Path) -> dict:
    """{layer_type: (rows, cols)} from a Hugging Face config.json or a JSON shape mapping."""
    from muonscope._jsonfile import read_json
    from muonscope.laws.shapes import read_shapes

    raw = read_json(path, ConfigError, missing=f"--shapes-from {path}: no such file")
    try:
        return read_shapes(raw)
    except ConfigError as exc:
        fail(f"--shapes-from {path}: {exc}")


def load_criterion(spec: str, quantile: float, rho: float):
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
    from muonscope.orth.analysis import resolution_floor

    crit = plan.criterion
    statistic = crit.kind == "statistic"
    table = Table(title=f"NS plan for {plan.target_params:.3g} parameters ({plan.level:.0%} prediction intervals)")
    table.caption = (f"criterion: {crit.describe()}. tau: every s >= tau maps to >= {crit.rho:g}; "
                     f"(float32)/(float64) after a config: NS dtype that layer needs, since {plan.ns_dtype} NS cannot "
                     f"lift s below {resolution_floor(plan.ns_dtype):g}; "
                     "J/PE/D: fewest steps of jordan / polar-express / designed that meet the criterion"
                     + ("; the spectrum beyond the largest fitted q is extrapolated" if statistic else ""))
    cols = ["layer", "depth", "alpha", f"s_q{plan.quantile * 100:g} predicted [interval]", "config", "matmuls", "tau"]
    cols += ["stat", "bound"] if statistic else []
    for col in (*cols, "J/PE/D"):
        table.add_column(col, justify="left" if col in ("layer", "config") else "right")
    for c in [*plan.by_depth, *plan.by_type.values()]:
        depth = fmt_depth(c.rel_depth) if c.rel_depth == c.rel_depth else f"all (d={fmt_depth(c.worst_depth)})"
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
    rho: float = typer.Option(FAILURE_RHO, "--rho", help="lift-quantile: output level a lifted direction must reach."),
    level: float = typer.Option(0.95, "--level", help="Two-sided prediction-interval level."),
    names_from: Path = typer.Option(None, "--names-from", help="Parameter names: a run directory, a JSON "
                                    "{name: [layer_type, rel_depth]} or a text file with one name per line."),
    max_steps: int = typer.Option(16, "--max-steps", help="Largest NS step count considered."),
    shapes_from: Path = typer.Option(None, "--shapes-from", help="The target's matrix shapes: a Hugging Face "
                                     "config.json or a JSON {layer_type: [rows, cols]}; each layer then gets Gram "
                                     "or standard NS by FLOPs (without it: 'auto' decides per matrix at run time)."),
    ns_dtype: str = typer.Option("bfloat16", "--ns-dtype", help="The NS dtype of the target run: layers that must "
                                 "lift s below its resolution get a wider one; with --shapes-from it also sets Gram "
                                 "NS's restarts and so its cost. bfloat16, float16, float32, float64."),
    out: Path = typer.Option(None, "--out", "-o", help="Plan JSON (several sizes: one file per size, suffixed); "
                             "with --verify: the verification directory."),
    verify: bool = typer.Option(False, "--verify", help="Closed loop: plan each of --presets for its own size, "
                                "train it under the plan and under jordan x5 (paired), refit, plan again."),
    presets: str = typer.Option("d48,d64,d96", "--presets", help="--verify: the presets to train (3 or more)."),
    seeds: str = typer.Option("0", "--seeds", help="--verify: comma-separated seeds."),
    steps: int = typer.Option(600, "--steps", help="--verify: optimizer steps per run."),
    threads: int = typer.Option(1, "--threads", help="--verify: torch threads."),
    runs: Path = typer.Option(None, "--runs", help="--verify: run directories with checkpoints (default: OUT/runs)."),
) -> None:
    """Cheapest NS configuration per layer for a target model size, from fitted laws."""

    from muonscope.laws.io import load_laws
    from muonscope.laws.planner import make_plan

    max_steps = V.ns_steps("--max-steps", max_steps)
    level = V.fraction("--level", level)
    quantile = check_quantile("--quantile", quantile)
    rho = V.real("--rho", rho, low=0.0, high=1.0, low_open=True)
    crit = load_criterion(criterion, quantile, rho)
    if verify:
        if out is None:
            fail("--verify needs --out DIR for its runs and plans")
        if shapes_from is not None:
            fail("--shapes-from applies to --params plans; --verify plans its presets' own matrices")
        steps = V.steps("--steps", steps, low=2)
        threads = threads_option("--threads", threads, zero_ok=False)
        seed_list = number_list(seeds, "--seeds", V.seed)
        preset_list = csv_list(presets)
        from muonscope.experiments.config import PRESET_NAMES

        for p in preset_list:
            if p not in PRESET_NAMES:
                fail(f"--presets: unknown model preset {p!r}; choose from {', '.join(PRESET_NAMES)}")
        check_dir_target(out, "--out")
        if runs is not None:
            check_dir_target(runs, "--runs")
        return _verify(load_laws(laws_path), crit, out, preset_list, seed_list, steps, threads,
                       runs, level=level, max_steps=max_steps)
    if not params:
        fail("give --params (a target size) or --verify")
    sizes = [parse_size(p) for p in params]
    if out is not None:
        for size in sizes:
            check_file_target(_plan_dest(out, size, len(sizes)), "--out")
    if ns_dtype not in NS_DTYPES:
        fail(f"--ns-dtype must be one of {', '.join(NS_DTYPES)}, got {ns_dtype!r}")
    shapes = read_shapes_file(shapes_from) if shapes_from is not None else None
    names = read_names(names_from) if names_from is not None else None
    laws = load_laws(laws_path)
    for size in sizes:
        plan = make_plan(laws, size, level=level, names=names, max_steps=max_steps, criterion=crit,
                         shapes=shapes, ns_dtype=ns_dtype)
        console.print(plan_table(plan))
        if plan.unconverged:
            console.print(f"[yellow]note: {len(plan.unconverged)} exponent(s) this plan extrapolates have not "
                          f"converged over training time (e.g. {', '.join(plan.unconverged[:3])}); the "
                          "recipe for those layers is provisional[/yellow]")
        elif plan.unconverged is None:
            console.print("[dim]exponent convergence not assessed (run `muonscope convergence RUNS --laws "
                          "LAWS`)[/dim]")
        if out is not None:
            from muonscope._jsonfile import write_json

            dest = _plan_dest(out, size, len(sizes))
            write_json(dest, plan.to_dict())
            console.print(f"wrote {dest} ({len(plan.params)} named parameters, "
                          f"{len(plan.schedules())} designed schedule(s))")


def _plan_dest(out: Path, size: float, n_sizes: int) -> Path:
    return out if n_sizes == 1 else out.with_name(f"{out.stem}-{size:.3g}".replace("+", "") + out.suffix)


def _verify(laws, crit, out: Path, presets, seeds, steps, threads, runs, **plan_kwargs) -> None:
    from muonscope.experiments.closed_loop import verify_plan

    set_threads(threads)
    v = verify_plan(laws, crit, out, presets=presets, seeds=seeds or [0], steps=steps, runs=runs,
                    log=console.print, **plan_kwargs)
    console.print(f"criterion: {crit.describe()}")
    cols = ["preset", "n", "dloss", "dloss_sd", "dloss_t", "flops_ratio", "distortion", "frac_failed"]
    console.print(v.paired[cols].to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    for p, ch in v.changed.items():
        console.print(f"{p}: {len(ch)} parameter(s) change after the refit" + "".join(
            f"\n  {n}: {a} -> {b}" for n, (a, b) in sorted(ch.items())))
    console.print(f"fixed point: {'yes' if v.fixed_point else 'no'}; plans, replans and runs.csv in {out}")
