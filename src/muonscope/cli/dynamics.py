"""`muonscope dynamics …`: spectral dynamics of Muon at small scale."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from muonscope import validate as V
from muonscope.cli._app import app, console, csv_list, fail, number_list, threads_option

MAX_DIM = 10_000  # rows, columns, measurements of the small dynamics problems
MAX_ENTRIES = 10**8  # measurements x rows x cols: the dense sensing operator (float64: 800 MB)
MAX_SEEDS = 10_000

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


def _dims(**dims) -> None:
    for name, v in dims.items():
        V.count(f"--{name.replace('_', '-')}", v, high=MAX_DIM)


def _dyn_setup(threads: int, out: Path) -> None:
    """Set the (validated) thread count and check ``out`` can be created; nothing is created here:
    commands write inside :func:`muonscope._atomic.created_dirs`, which removes a directory it
    created when the command fails."""
    from muonscope._atomic import check_dir_target

    threads = threads_option("--threads", threads)
    check_dir_target(out, "--out")
    if threads:
        import torch

        torch.set_num_threads(threads)


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
    from muonscope._atomic import created_dirs
    from muonscope.experiments.dynamics.problems import SensingConfig
    from muonscope.experiments.dynamics.sensing import SensingRunConfig, experiment

    _dims(rows=rows, cols=cols, measurements=measurements)
    if rows * cols * measurements > MAX_ENTRIES:
        fail(f"--measurements x --rows x --cols must be at most {MAX_ENTRIES:.0e} (the dense sensing operator), "
             f"got {rows * cols * measurements:.3g}")
    kappa = V.real("--kappa", kappa, low=1.0)
    seeds = V.count("--seeds", seeds, high=MAX_SEEDS)
    steps = V.steps("--steps", steps)
    lr, gd_lr = V.positive("--lr", lr), V.positive("--gd-lr", gd_lr)
    momentum = V.real("--momentum", momentum, low=0.0, high=1.0, high_open=True)
    init_scale = V.nonnegative("--init-scale", init_scale)
    record_every = V.steps("--record-every", record_every)
    cfg = SensingRunConfig(
        problem=SensingConfig(rows=rows, cols=cols, measurements=measurements, kappa=kappa),
        rules=tuple(csv_list(rules)), seeds=tuple(range(seeds)), steps=steps, lr=lr, gd_lr=gd_lr,
        lr_schedule=lr_schedule, momentum=momentum, init=init, init_scale=init_scale, record_every=record_every)
    _dyn_setup(threads, out)
    bar, advance = _dyn_progress(len(cfg.rules) * steps, "sensing")
    with created_dirs(out), bar:
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
    from muonscope._atomic import created_dirs
    from muonscope.experiments.dynamics import nuclear

    seeds = V.count("--seeds", seeds, low=0, high=MAX_SEEDS)
    steps = V.steps("--steps", steps)
    lr = V.positive("--lr", lr)
    momentum = V.real("--momentum", momentum, low=0.0, high=1.0, high_open=True)
    names = csv_list(setting)
    rule_list = csv_list(rules)
    unknown = [n for n in names if n not in nuclear.SETTINGS]
    if not names or unknown:
        fail(f"--setting: unknown setting(s) {', '.join(unknown) or '(none)'}; known: {', '.join(nuclear.SETTINGS)}")
    if not rule_list:
        fail("--rules names no rule")
    _dyn_setup(threads, out)
    if not nuclear.have_cvxpy():
        fail(nuclear.CVXPY_HINT)
    total = len(names) * len(rule_list) * steps
    if sensitivity:
        total += sum(kw.get("steps", 3000) for *_, kw in nuclear.VARIANTS)
    bar, advance = _dyn_progress(total, "nuclear")
    with created_dirs(out), bar:
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
    from muonscope._atomic import created_dirs
    from muonscope.experiments.dynamics.entropy import experiment
    from muonscope.experiments.dynamics.sensing import SensingRunConfig

    V.count("--rows", rows, high=1000)
    V.count("--cols", cols, high=1000)
    instances = V.count("--instances", instances, high=100_000)
    seed = V.seed("--seed", seed)
    _dyn_setup(threads, out)
    sensing_cfg = SensingRunConfig() if sensing_check else None  # the `dynamics sensing` defaults
    bar, advance = _dyn_progress(2 if sensing_check else 1, "entropy")
    with created_dirs(out), bar:
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
    from muonscope._atomic import created_dirs
    from muonscope.experiments.dynamics.noise import experiment

    chains = V.count("--chains", chains, low=2, high=10_000_000)
    trials = V.count("--trials", trials, low=2, high=1_000_000)
    seed = V.seed("--seed", seed)
    _dyn_setup(threads, out)
    bar, advance = _dyn_progress(1, "noise")
    with created_dirs(out), bar:
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


@dynamics_app.command("weight-decay")
def dynamics_weight_decay(
    out: Path = typer.Option(Path("runs/dynamics"), "--out", "-o", help="Output directory (JSON, CSV, PNG)."),
    lambdas: str = typer.Option(None, "--lambdas", help="Comma-separated weight decays > 0 (default: half decades "
                                                         "1e-5 ... 1); lambda = 0 is always run as the baseline."),
    modes: str = typer.Option("coupled,decoupled", "--modes", help="coupled (L2 in the gradient) and/or decoupled."),
    seeds: int = typer.Option(10, "--seeds", help="Paired seeds (0..seeds-1)."),
    steps: int = typer.Option(50_000, "--steps"),
    lr: float = typer.Option(0.01, "--lr", help="Constant Muon lr (exact polar, no momentum)."),
    track_every: int = typer.Option(200, "--track-every", help="Record block masses every k steps (paper: 200)."),
    blocks: int = typer.Option(4, "--blocks", help="K diagonal blocks of the target."),
    block_size: int = typer.Option(5, "--block-size", help="m0: size of each block (W is K*m0 square)."),
    measurements: int = typer.Option(200, "--measurements", "-n"),
    threshold: float = typer.Option(0.5, "--threshold", help="A block is acquired at mass >= threshold/K."),
    name: str = typer.Option("weight_decay", "--name", help="Stem of the output files."),
    threads: int = typer.Option(1, "--threads"),
) -> None:
    """Coupled vs decoupled weight decay under Muon: ATSR against lambda, the phase boundary from the data."""
    from muonscope._atomic import created_dirs
    from muonscope.experiments.dynamics.weight_decay import (
        DEFAULT_LAMBDAS,
        WeightDecayConfig,
        experiment,
    )

    if not name or any(c in name for c in "/\\\0") or name.startswith(".") or len(name.encode()) > 200:
        fail(f"--name must be a plain file stem (at most 200 bytes), got {name!r}")
    seeds = V.count("--seeds", seeds, high=MAX_SEEDS)
    steps = V.steps("--steps", steps)
    track_every = V.steps("--track-every", track_every)
    _dims(blocks=blocks, block_size=block_size, measurements=measurements)
    lr = V.positive("--lr", lr)
    threshold = V.real("--threshold", threshold, low=0.0, high=1.0, low_open=True)
    lams = DEFAULT_LAMBDAS if lambdas is None else tuple(csv_list(lambdas, float, option="--lambdas"))
    cfg = WeightDecayConfig(lambdas=lams, modes=tuple(csv_list(modes)), seeds=tuple(range(seeds)), steps=steps,
                            lr=lr, track_every=track_every, blocks=blocks, block_size=block_size,
                            measurements=measurements, threshold=threshold)  # validates before anything is written
    _dyn_setup(threads, out)
    bar, advance = _dyn_progress(steps, "weight decay")
    from muonscope.experiments.dynamics.figures import plot_weight_decay

    with created_dirs(out):
        with bar:
            s = experiment(cfg, summary_path=out / f"{name}.json", csv_path=out / f"{name}.csv", figure_dir=None,
                           progress=advance)
        fig = plot_weight_decay(s, out / f"{name}_atsr.png")
    for dname, block in s["definitions"].items():
        table = Table(title=f"ATSR ('{dname}') over {seeds} seeds; lambda = 0: {block['baseline']['atsr_mean']:.3g}")
        for col in ("mode", "lambda", "ATSR mean", "95% CI", "ratio to lambda=0", "ratio 95% CI", "never acq.",
                    "at start", "rel. residual"):
            table.add_column(col, justify="left" if col == "mode" else "right")
        for r in block["rows"]:
            table.add_row(r["mode"], f"{r['lambda']:g}", f"{r['atsr_mean']:.3g}",
                          f"[{r['atsr_ci95'][0]:.3g}, {r['atsr_ci95'][1]:.3g}]", f"{r['ratio_to_baseline']:.2f}",
                          f"[{r['ratio_ci95'][0]:.2f}, {r['ratio_ci95'][1]:.2f}]", f"{r['blocks_never_acquired']:.2f}",
                          f"{r['blocks_excluded_at_start']:.2f}", f"{r['final_rel_residual_median']:.3g}")
        console.print(table)
        console.print(f"{dname}: {block['verdict']}", markup=False)
    console.print(f"wrote {out / (name + '.json')}, {out / (name + '.csv')} and {fig}")


@dynamics_app.command("alignment")
def dynamics_alignment(
    out: Path = typer.Option(Path("runs/dynamics"), "--out", "-o", help="Output directory (JSON, PNG)."),
    settings: str = typer.Option("paper-d10,paper-d20,paper-d50,sensing", "--settings",
                                 help="paper-dD (the paper's alignment script at W DxD, n = D^2/2, rank 2) and/or "
                                      "sensing (the `dynamics sensing` defaults)."),
    seeds: int = typer.Option(10, "--seeds"),
    steps: int = typer.Option(0, "--steps", help="Steps per setting (0: 3000 for paper-*, 1000 for sensing)."),
    threads: int = typer.Option(1, "--threads"),
) -> None:
    """||sin Theta||_F between gradient and weight frames: the paper's definition next to the current one."""
    from muonscope._atomic import created_dirs
    from muonscope.experiments.dynamics.alignment import experiment, paper_setting, sensing_setting

    steps = V.steps("--steps", steps, low=0)
    seeds = V.count("--seeds", seeds, high=MAX_SEEDS)
    chosen = []
    for name in csv_list(settings):
        if name == "sensing":
            chosen.append(sensing_setting(steps or 1000))
        elif name.startswith("paper-d") and name[7:].isdigit() and 2 <= int(name[7:]) <= 200:
            chosen.append(paper_setting(int(name[7:]), steps or 3000))
        else:
            fail(f"unknown alignment setting {name!r}; use paper-dD (2 <= D <= 200, e.g. paper-d20) or sensing")
    if not chosen:
        fail("no alignment settings given")
    if seeds < 1:
        fail(f"--seeds must be at least 1, got {seeds}")
    _dyn_setup(threads, out)
    bar, advance = _dyn_progress(sum(s.steps for s in chosen), "alignment")
    with created_dirs(out), bar:
        s = experiment(chosen, range(seeds), summary_path=out / "alignment.json",
                       figure_path=out / "frame_alignment.png", progress=advance)
    table = Table(title=f"||sin Theta||_F after the transient (median over the late half, mean over {seeds} seeds)")
    for col in ("setting", "paper: left", "paper: right", "random (paper)", "current", "k (current)",
                "random (current)", "misalignment", "late share < 0.1"):
        table.add_column(col, justify="left" if col == "setting" else "right")
    for r in s["settings"]:
        m = r["metrics"]
        table.add_row(r["setting"]["name"], f"{m['sin_left']['late_median_mean']:.3f}",
                      f"{m['sin_right']['late_median_mean']:.3f}",
                      f"{r['random_level_paper']['left']:.2f}/{r['random_level_paper']['right']:.2f}",
                      f"{m['current']['late_median_mean']:.3f}", str(r["current_k_late"]),
                      f"{r['random_level_current']:.2f}", f"{m['misalignment']['late_median_mean']:.3f}",
                      f"{r['paper_share_late_below_0.1_both_sides']:.2f}")
    console.print(table)
    console.print(s["verdict"], markup=False)
    console.print(f"wrote {out / 'alignment.json'} and {out / 'frame_alignment.png'}")


@dynamics_app.command("regimes")
def dynamics_regimes(
    out: Path = typer.Option(Path("runs/regimes"), "--out", "-o", help="Run directory (one result.json per run)."),
    summary_dir: Path = typer.Option(None, "--summary-dir", help="Where regimes.json and regimes.png go (default: OUT)."),
    tasks: str = typer.Option("gpt,vit", "--tasks", help="gpt (tiny GPT on offline text) and/or vit (small ViT)."),
    muon_lrs: str = typer.Option("0.005,0.01,0.02,0.04", "--muon-lrs", help="Muon lr grid (hidden matrices)."),
    adamw_lrs: str = typer.Option("0.001,0.002,0.004,0.008", "--adamw-lrs", help="AdamW lr grid (all parameters)."),
    seeds: int = typer.Option(3, "--seeds"),
    steps: int = typer.Option(300, "--steps", help="Steps per run (matched across optimizers)."),
    snapshots: int = typer.Option(5, "--snapshots", help="Weight-spectrum snapshots after step 0."),
    preset: str = typer.Option("tiny", "--preset", help="GPT preset; the ViT copies its width, depth and heads."),
    corpus: str = typer.Option("stdlib", "--corpus", help="Offline text corpus of the GPT."),
    dataset: str = typer.Option("digits", "--dataset", help="Image data set of the ViT (digits: scikit-learn)."),
    upsample: int = typer.Option(1, "--upsample", help="Integer upsampling of the images."),
    patch: int = typer.Option(2, "--patch", help="ViT patch size."),
    threads: int = typer.Option(1, "--threads"),
) -> None:
    """Muon vs AdamW on a tiny GPT and a matched small ViT: lr sweeps, weight spectra, the reversal verdict."""
    from muonscope.experiments.dynamics.regimes import RegimesConfig, experiment

    seeds = V.count("--seeds", seeds, high=MAX_SEEDS)
    steps = V.steps("--steps", steps)
    snapshots = V.count("--snapshots", snapshots, high=1000)
    upsample = V.count("--upsample", upsample, high=64)
    patch = V.count("--patch", patch, high=1024)
    cfg = RegimesConfig(tasks=tuple(csv_list(tasks)), muon_lrs=tuple(number_list(muon_lrs, "--muon-lrs", V.positive)),
                        adamw_lrs=tuple(number_list(adamw_lrs, "--adamw-lrs", V.positive)), seeds=tuple(range(seeds)), steps=steps,
                        snapshots=snapshots, preset=preset, corpus=corpus, dataset=dataset, upsample=upsample,
                        patch=patch)  # validates everything before anything is written
    _dyn_setup(threads, out)
    if summary_dir is not None:
        from muonscope._atomic import check_dir_target

        check_dir_target(summary_dir, "--summary-dir")
    runs = cfg.runs()
    bar, advance = _dyn_progress(len(runs), "regimes (runs)")
    with bar:
        s = experiment(cfg, out, summary_dir=summary_dir, progress=advance)
    dest = summary_dir or out
    for task, t in s["tasks"].items():
        table = Table(title=f"{task}: final validation loss (mean [95% CI] over {seeds} seeds)")
        for col in ("optimizer", "lr", "val loss", "95% CI", "diverged", "best", "plateau"):
            table.add_column(col, justify="left" if col == "optimizer" else "right")
        for o, res in t["optimizers"].items():
            for r in res["rows"]:
                table.add_row(o, f"{r['lr']:g}", f"{r['mean']:.4f}", f"[{r['ci95'][0]:.4f}, {r['ci95'][1]:.4f}]",
                              str(r["diverged"]), "*" if r["lr"] == res["best_lr"] else "",
                              "yes" if r["lr"] in res["plateau_lrs"] else "")
        console.print(table)
    console.print(s["verdict"], markup=False)
    console.print(f"{s['runs']} runs, {s['cpu_seconds_total'] / 60:.1f} CPU-minutes in total; wrote "
                  f"{dest / 'regimes.json'} and {dest / 'regimes.png'}")
