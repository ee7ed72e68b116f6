"""One report from run stores, answer first: is NS failing, where, what to do, at what cost.

``build_report(runs, "report.html")`` writes a single self-contained HTML file (figures embedded
as base64 PNG); ``fmt="md"`` writes Markdown with the PNGs in a sibling ``<name>_files/``
directory. The first section is the verdict (:mod:`muonscope.report.verdict`): failed share now
without the numerically null (structural) directions, the predicted spectra at each target size
against the failure threshold τ of the configured NS, and the planner's configuration per layer
with its NS cost relative to the configured one. Then the evidence: runs, losses, spectra during
training (τ drawn), NS fidelity, scaling laws, the recipe and the NS maps. Sections the data
cannot support (e.g. fits with fewer than 3 model sizes) say why instead of failing the report.
Long tables are folded (``<details>``).
"""

from __future__ import annotations

import base64
import html
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from muonscope.conventions import FAILURE_RHO, TARGET_SIZES
from muonscope.errors import ConfigError, MuonscopeError
from muonscope.orth.analysis import resolution_floor
from muonscope.report import figures as F
from muonscope.report.verdict import (
    Verdict,
    build_verdict,
    fmt_share,
    fmt_size,
    nonnull_failed,
    structural_nulls,
)

DEFAULT_TARGETS = TARGET_SIZES
Progress = Callable[[str, int, int], None]  # (stage description, stages done, stages in all)


@dataclass(frozen=True)
class Cell:
    """A table cell with a CSS class (HTML) that renders as its text in Markdown."""

    text: str
    cls: str = ""


@dataclass
class Section:
    title: str
    text: str = ""
    figures: list[tuple[Path, str]] = field(default_factory=list)  # (png, caption)
    tables: list[tuple[pd.DataFrame, str]] = field(default_factory=list)
    bullets: list[tuple[str, str]] = field(default_factory=list)  # (bold lead, text)
    notes: list[str] = field(default_factory=list)  # small print after the tables
    details: list[tuple[pd.DataFrame, str]] = field(default_factory=list)  # folded tables (summary line)
    figures_first: bool = False


def _sci(x: float, digits: int = 3) -> str:
    """Short exponent form with ``digits`` significant digits: 2.07e-4, 7e10, 1.5e6."""
    if not math.isfinite(x):
        return "–"
    if x == 0:
        return "0"
    mant, exp = f"{x:.{digits - 1}e}".split("e")
    if "." in mant:
        mant = mant.rstrip("0").rstrip(".")
    return f"{mant}e{int(exp)}"


def _fmt(x) -> str:
    """One number format for every table: integers with thousands separators; floats with 4
    significant digits in [1e-3, 100), whole numbers with separators in [100, 1e6), and a short
    exponent form (2.07e-4, 7e10) outside; missing values as '–'."""
    if isinstance(x, Cell):
        return x.text
    if x is None or x is pd.NA:
        return "–"
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}"
    if isinstance(x, (float, np.floating)):
        if not math.isfinite(x):
            return "–"
        ax = abs(x)
        if ax == 0:
            return "0"
        if ax >= 1e6 or ax < 1e-3:
            return _sci(float(x))
        if ax >= 100:
            return f"{x:,.0f}"
        return f"{x:.4g}"
    return str(x)


def _runs_table(metas: list[dict]) -> pd.DataFrame:
    rows = [{"run": m.get("run_id"), "optimizer": m.get("config", {}).get("optimizer", "?"),
             "M": m.get("model_params"), "seed": m.get("seed"), "steps": m.get("steps"),
             "status": m.get("status"), "final val loss": m.get("final_val_loss", float("nan")),
             "tokens/s": m.get("tokens_per_s", float("nan"))}
            for m in metas]
    return pd.DataFrame(rows).sort_values(["optimizer", "M", "run"]).reset_index(drop=True)


def _exponent_pivot(laws, q: float) -> pd.DataFrame:
    t = laws.exponent_table()
    t = t[np.isclose(t["q"], q)]
    if t.empty:
        return t
    t = t.assign(cell=[f"{a:.2f} [{lo:.2f}, {hi:.2f}]" for a, lo, hi in zip(t.alpha, t.alpha_lo, t.alpha_hi, strict=True)])
    out = t.pivot_table(index="layer_type", columns="rel_depth", values="cell", aggfunc="first")
    out.columns = [f"depth {c:g}" for c in out.columns]
    order = [x for x in F.LAYER_ORDER if x in out.index]
    return out.loc[order].reset_index()


def _fidelity_table(spectra: pd.DataFrame, nonnull: pd.Series | None) -> pd.DataFrame:
    late = spectra[spectra.step >= 100] if (spectra.step >= 100).any() else spectra
    late = late.assign(failed_nonnull=nonnull.loc[late.index]) if nonnull is not None else late
    cols = [c for c in ("distortion_nonnull", "distortion", "failed_nonnull", "frac_failed", "frac_failed_50",
                        "ns_out_max") if c in late]
    out = late.groupby("layer_type")[cols].mean()
    order = [x for x in F.LAYER_ORDER if x in out.index]
    names = {"distortion_nonnull": "D (non-null)", "distortion": "D (all)", "failed_nonnull": "failed (non-null)",
             "frac_failed": "failed (all)", "frac_failed_50": "p < 0.5 (all)", "ns_out_max": "max p"}
    return out.loc[order].reset_index().rename(columns={"layer_type": "layer", **names})


def _flag_tables(stab: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Flagged (not stabilized) trajectories: counts by reason (the text before ':'), and the list."""
    flagged = stab[~stab["stable"].astype(bool)]
    if flagged.empty:
        return pd.DataFrame(), pd.DataFrame()
    used = flagged["used"].astype(bool) if "used" in flagged else pd.Series(False, index=flagged.index)
    f = flagged.assign(kind=flagged["reason"].astype(str).str.split(":").str[0].str.strip(), _used=used)
    rows = []
    for kind, g in f.groupby("kind", sort=True):
        rows.append({"reason": kind, "trajectories": int(len(g)), "kept at tail value": int(g["_used"].sum()),
                     "excluded from fits": int((~g["_used"]).sum()),
                     "model sizes": ", ".join(fmt_size(m) for m in sorted(g["model_params"].unique()))})
    summary = pd.DataFrame(rows).sort_values("trajectories", ascending=False).reset_index(drop=True)
    cols = [c for c in ("run_id", "param", "q", "model_params", "reason") if c in f]
    detail = f.assign(reason=np.where(f["_used"], "kept: ", "excluded: ") + f["reason"].astype(str))[cols]
    return summary, detail.sort_values(cols[:3]).reset_index(drop=True)


class _Stages:
    def __init__(self, progress: Progress | None, total: int):
        self.progress, self.total, self.done = progress, total, 0

    def __call__(self, description: str) -> None:
        if self.progress is not None:
            self.progress(description, self.done, self.total)
        self.done += 1


def build_sections(run_paths, *, targets=DEFAULT_TARGETS, quantile: float = 0.5, rho: float = FAILURE_RHO,
                   workdir: Path, criterion=None, laws=None, progress: Progress | None = None) -> list[Section]:
    """Compute everything the report shows; figures are written into ``workdir``. Plans use
    ``criterion`` (default: the calibrated one); ``laws`` (a :class:`~muonscope.laws.fit.Laws`)
    replaces fitting the runs' records."""
    from muonscope.laws.criterion import calibrated
    from muonscope.laws.fit import fit_laws
    from muonscope.spectra.store import RunStore, find_runs

    stage = _Stages(progress, 8)
    stage("reading run stores")
    paths = find_runs(run_paths)
    stores = [RunStore.open(p) for p in paths]
    frames = [f for f in (s.spectra() for s in stores) if len(f)]
    spectra = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    stage("fitting power laws" if laws is None else "laws from file")
    fit_note = ""
    if laws is None and len(spectra):
        try:
            laws = fit_laws(spectra)
        except MuonscopeError as exc:
            fit_note = f"No power-law fits: {exc}"
    criterion = criterion or calibrated()
    stage("verdict: failures now, predictions, plans")
    verdict = build_verdict(spectra, laws, targets=targets, criterion=criterion, rho=rho, quantile=quantile) \
        if len(spectra) else None
    sections = []
    if verdict is not None:
        sections.append(_verdict_section(verdict, laws, fit_note, workdir))
    sections.append(_runs_section(stores))
    stage("loss curves")
    sections += _loss_section(stores, workdir)
    if len(spectra):
        stage("spectra during training")
        sections += _spectra_sections(spectra, laws, quantile, verdict, workdir)
    else:
        stage("no spectra")
    stage("scaling laws")
    sections += _laws_section(laws, fit_note, quantile, workdir)
    stage("NS recipe")
    sections.append(_recipe_section(laws, verdict, rho, workdir))
    stage("writing")
    return sections


def _verdict_section(v: Verdict, laws, fit_note: str, workdir: Path) -> Section:
    """The answer: what fails now, what will fail at each size, what to run instead, what it costs."""
    conf = v.config_label
    sec = Section("Verdict: is NS failing, where, what to do, at what cost")
    q_t = float(v.predictions["q"].iloc[0]) if len(v.predictions) else float("nan")
    sec.bullets.append(("NS in these runs:", f"{conf}{'' if v.recorded else ' (assumed)'}; its threshold "
                        f"τ_{v.rho:g} = {_sci(v.tau)}: every direction with normalized singular value s ≥ τ is "
                        f"lifted to ≥ {v.rho:g}, the ones below fail."))
    tn = v.type_now()
    if v.now_size is not None and len(tn):
        fails = tn[tn["failed"] >= 1e-3].sort_values("failed", ascending=False)
        clean = [t for t in tn["layer_type"] if t not in set(fails["layer_type"])]
        if len(fails):
            parts = [f"{r.layer_type} {fmt_share(r.failed)} ({r.per_matrix:.2g} per matrix)"
                     for r in fails.itertuples()]
            w = fails.iloc[0]
            depth = _depth_of(v, w.layer_type, int(w.worst_block))
            text = (f"{', '.join(parts)} of the non-null directions are lifted to < {v.rho:g}"
                    f"{'; ' + ', '.join(clean) + ': none' if clean else ''}. Worst matrix group: {w.layer_type} at "
                    f"depth {depth:g} ({fmt_share(w.worst_failed)}).")
        else:
            text = f"no layer type has ≥ 0.1 % of its non-null directions below τ: {conf} works at this size."
        sec.bullets.append((f"Failing now (M = {fmt_size(v.now_size)}, largest measured, last quarter of training):",
                            text))
    if len(v.nulls):
        groups: dict[str, list] = {}
        for r in v.nulls.itertuples():
            groups.setdefault(r.explanation, []).append(r)
        parts = []
        for why, rs in groups.items():
            counts = ", ".join(f"{r.layer_type} {r.per_matrix} per matrix ({r.matrices} of {r.of} matrices)" for r in rs)
            lo, hi = min(r.s_lo for r in rs), max(r.s_hi for r in rs)
            parts.append(f"{counts}, at s = {_sci(lo, 2)}–{_sci(hi, 2)} through the second half of training: {why}")
        sec.bullets.append(("Numerically null (structural), not failures:",
                            f"{'; '.join(parts)}. They sit below the float32 floor 1e-7, far under τ; no "
                            "orthogonalizer needs to lift them, and every failed share here excludes them."))
    if len(v.predictions):
        parts = []
        n_types = v.predictions["layer_type"].nunique()
        for m in v.sizes[1:] if v.now_size is not None else v.sizes:
            f, r = v.failing_at(m), v.failing_at(m, "at risk")
            names = "all layer types" if len(f) == n_types > 1 else ", ".join(f) or "none"
            parts.append(f"{fmt_size(m)}: {names}" + (f" (at risk: {', '.join(r)})" if r else ""))
        sec.bullets.append((f"Failing at target sizes (with {conf}):",
                            f"{'; '.join(parts)}. A layer fails when its predicted s_{q_t:g} < τ, i.e. "
                            f"≥ {1 - q_t:.0%} of its directions are lifted to < {v.rho:g}; at risk when only the "
                            f"95 % lower end is below τ."))
    elif fit_note:
        sec.bullets.append(("At target sizes:", f"no prediction. {fit_note}"))
    if v.cost:
        costs = ", ".join(f"{_ratio(v.cost[m])} at {fmt_size(m)}{' (now)' if m == v.now_size else ''}"
                          for m in v.sizes if m in v.cost)
        sec.bullets.append(("What to do:", f"run the planner's configuration per layer type (table below). "
                            f"NS FLOPs relative to {conf}: {costs}."))
    if v.unconverged:
        top = max(f.sizes[-1] if f.sizes else 0 for f in laws.fits) if laws is not None else 0
        sec.bullets.append(("Provisional:", f"{v.unconverged} of the exponents the plans extrapolate have not "
                            f"converged over training time, and the targets lie "
                            f"{math.log10(min(v.sizes[1:] or [top]) / max(top, 1)):.1f}–"
                            f"{math.log10(max(v.sizes) / max(top, 1)):.1f} decades beyond the largest measured model."))
    sec.tables.append((_verdict_table(v), ""))
    sec.notes.append(f"Cells per size: status of {conf} there (ok / at risk / fails) and the planner's "
                     "configuration (J = jordan, PE = polar-express, D = minimax schedule designed for that layer's "
                     "predicted lower bound, × steps; fp32 / fp64: NS must run in that dtype there, since bf16 NS "
                     f"cannot lift s below {resolution_floor('bfloat16'):g}). Failed now: measured non-null share (directions per matrix; "
                     f"amber from 1 %, red from {1 - q_t:.0%}). Planner criterion: {v.criterion_text}.")
    sec.notes += [n[0].upper() + n[1:] + "." for n in v.notes]
    for m, msg in v.plan_errors.items():
        sec.notes.append(f"No plan at {fmt_size(m)}: {msg}")
    if v.cost_note:
        counts = sorted({int(msg.split()[0]) for msg in v.cost_note.values()})
        span = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
        sizes = ", ".join(fmt_size(m) for m in v.cost_note)
        sec.notes.append(f"At {sizes} the plan gives {span} matrices the exact polar factor (SVD): no NS FLOP ratio.")
    unfitted = [t for t in _verdict_types(v) if len(v.predictions) and t not in set(v.predictions["layer_type"])]
    if unfitted and laws is not None and laws.fits:
        sec.notes.append(f"No law for {', '.join(unfitted)} (see “Groups not fitted” under Scaling laws): no "
                         "prediction or plan for them.")
    if laws is not None and laws.fits and len(v.predictions):
        sec.figures.append((F.plot_verdict(laws, q=q_t, tau=v.tau, sizes=v.sizes, path=workdir / "verdict.png",
                                           tau_label=conf.replace(" × ", " x")),
                            f"Predicted s_{q_t:g} per layer type and depth against model size, with τ of {conf}"))
        sec.details.append((_depth_table(v), f"By depth: failed now (measured, non-null; directions per matrix); "
                            f"predicted s_{q_t:g} (point [95 % lower]) · share of "
                            f"directions below τ at each size (the spectrum beyond s_{q_t:g} continued along its "
                            f"last slope: it does not see the few weakest directions that fail now), and the size "
                            f"M* where s_{q_t:g} meets τ"))
    if len(v.nulls):
        sec.details.append((v.nulls.drop(columns=["explanation"]).rename(columns={
            "layer_type": "layer", "matrices": "matrices with nulls", "of": "matrices of the type",
            "per_matrix": "null directions per matrix", "s_lo": "smallest s", "s_hi": "largest s"}),
            "Structural null directions by layer type (s: the null direction's normalized singular value)"))
    if len(v.now_by_size):
        t = v.now_by_size.pivot_table(index="layer_type", columns="model_params", values="failed")
        t = t.loc[[x for x in F.LAYER_ORDER if x in t.index]]
        t = t.map(lambda x: Cell(fmt_share(x)))
        t.columns = [f"M = {fmt_size(c)}" for c in t.columns]
        sec.details.append((t.reset_index().rename(columns={"layer_type": "layer"}), "Failed share now (non-null, last quarter of training) at every "
                            "measured size"))
    return sec


def _ratio(x: float) -> str:
    return "–" if not math.isfinite(x) else f"{x:.2f}×"


def _depth_of(v: Verdict, layer_type: str, block: int) -> float:
    g = v.now[(v.now["layer_type"] == layer_type) & (v.now["block"] == block)]
    return float(g["rel_depth"].iloc[0]) if len(g) else float("nan")


_STATUS_CLS = {"fails": "fail", "at risk": "risk", "ok": "ok"}


def _verdict_types(v: Verdict) -> list[str]:
    return [t for t in F.LAYER_ORDER if t in set(v.predictions.get("layer_type", pd.Series(dtype=str)))
            | set(v.now.get("layer_type", pd.Series(dtype=str)))]


def _verdict_table(v: Verdict) -> pd.DataFrame:
    types = _verdict_types(v)
    fitted = set(v.predictions["layer_type"]) if len(v.predictions) else set()
    tn = v.type_now().set_index("layer_type") if len(v.now) else pd.DataFrame()
    nulls = v.nulls.set_index("layer_type") if len(v.nulls) else pd.DataFrame()
    cross = v.crossings
    q_t = float(v.predictions["q"].iloc[0]) if len(v.predictions) else 0.9
    rows = []
    for lt in types:
        row = {"layer": lt}
        if len(tn):
            r = tn.loc[lt] if lt in tn.index else None
            row["failed now"] = Cell("–" if r is None else f"{fmt_share(r.failed)} ({r.per_matrix:.2g})",
                                     "" if r is None else "fail" if r.failed >= 1 - q_t else
                                     "risk" if r.failed >= 0.01 else "ok")
        row["structural nulls"] = (f"{int(nulls.loc[lt, 'per_matrix'])} per matrix" if lt in nulls.index else "–")
        if len(cross):
            c = cross[cross["layer_type"] == lt]
            if len(c):
                w = c.loc[c["m_star"].idxmin()]
                row[f"≥ {1 - q_t:.0%} fail from M ≈"] = ("never (α ≤ 0)" if not math.isfinite(w.m_star) else
                                                        "> 1e15" if w.m_star > 1e15 else
                                                        f"{fmt_size(w.m_star)} (depth {w.rel_depth:g})")
        for m in v.sizes:
            label = f"{fmt_size(m)}{' now' if m == v.now_size else ''}"
            st = v.status(lt, m)
            choice = v.choices.get(m, {}).get(lt)
            text = f"{st or '?'}: {choice[1]}" if choice else (st or ("no law" if fitted else "–"))
            row[label] = Cell(text, _STATUS_CLS.get(st, ""))
        rows.append(row)
    if v.cost:
        row = {"layer": f"NS FLOPs vs {v.config_label.replace(' × ', '×')}"}
        for m in v.sizes:
            row[f"{fmt_size(m)}{' now' if m == v.now_size else ''}"] = _ratio(v.cost.get(m, float("nan")))
        rows.append(row)
    return pd.DataFrame(rows).fillna("")


def _depth_table(v: Verdict) -> pd.DataFrame:
    p = v.predictions
    rows = []
    for (lt, d), g in p.groupby(["layer_type", "rel_depth"], sort=False):
        row = {"layer": lt, "depth": d}
        if len(v.now):
            n = v.now[(v.now["layer_type"] == lt) & np.isclose(v.now["rel_depth"], d)]
            row["failed now"] = Cell(f"{fmt_share(float(n['failed'].mean()))} ({float(n['per_matrix'].mean()):.2g})"
                                     if len(n) else "–")
        for r in g.itertuples():
            row[fmt_size(r.size)] = Cell(f"{_sci(r.s_point)} [{_sci(r.s_low)}] · {fmt_share(r.failed_point)}",
                                         _STATUS_CLS.get(r.status, ""))
        c = v.crossings[(v.crossings["layer_type"] == lt) & np.isclose(v.crossings["rel_depth"], d)]
        m_star = float(c["m_star"].iloc[0]) if len(c) else float("nan")
        row["M*"] = "> 1e15" if m_star > 1e15 else m_star
        rows.append(row)
    out = pd.DataFrame(rows)
    order = {t: i for i, t in enumerate(F.LAYER_ORDER)}
    return out.sort_values(["layer", "depth"], key=lambda s: s.map(order) if s.name == "layer" else s) \
        .reset_index(drop=True)


def _runs_section(stores) -> Section:
    metas = [s.meta for s in stores]
    sizes = sorted({m.get("model_params") for m in metas if m.get("model_params")})
    seeds = sorted({m.get("seed") for m in metas if m.get("seed") is not None})
    rule = metas[0].get("param_count_rule", "as recorded in run.json")
    span = f"{len(sizes)} model size(s), M = {fmt_size(sizes[0])}–{fmt_size(sizes[-1])}" if sizes else "no sizes"
    text = (f"{len(stores)} run(s): {span}, {len(seeds)} seed(s). Model size M: {rule}. Width/depth rule: "
            f"{metas[0].get('width_depth_rule', 'not recorded')}.")
    table = _runs_table(metas)
    sec = Section("Runs", text)
    if len(table) > 10:
        sec.details.append((table, f"All {len(table)} runs"))
    else:
        sec.tables.append((table, ""))
    return sec


def _loss_section(stores, workdir: Path) -> list[Section]:
    curves = {str(s.meta.get("run_id")): met for s in stores if len(met := s.metrics())}
    if not curves:
        return []
    sizes = {str(s.meta.get("run_id")): float(s.meta["model_params"]) for s in stores
             if s.meta.get("model_params") and str(s.meta.get("run_id")) in curves}
    return [Section("Loss", "Training and validation loss of every run, coloured by model size (seeds share the "
                    "colour; AdamW baselines dashed).",
                    figures=[(F.plot_losses(curves, path=workdir / "loss.png",
                                            sizes=sizes if len(sizes) == len(curves) else None), "Loss curves")])]


def _spectra_sections(spectra: pd.DataFrame, laws, quantile: float, verdict: Verdict | None,
                      workdir: Path) -> list[Section]:
    """Quantile trajectories with the detected burn-in and τ, and NS fidelity during training."""
    from muonscope.laws.stabilize import stabilize

    stab = laws.stabilization if laws is not None else stabilize(spectra)
    tau = verdict.tau if verdict is not None else None
    tau_label = verdict.config_label.replace(" × ", " x") if verdict is not None else ""
    depths = sorted(spectra["rel_depth"].dropna().round(3).unique())
    figs = [(F.plot_trajectories(spectra, stab, q=quantile, rel_depth=d, path=workdir / f"traj_q{quantile:g}_d{d:g}.png",
                                 tau=tau, tau_label=tau_label),
             f"s_{quantile:g} trajectories at relative depth {d:g} (red: τ of {tau_label})") for d in depths]
    if quantile != 0.9 and "s_q90" in spectra:
        d = depths[-1]
        figs.append((F.plot_trajectories(spectra, stab, q=0.9, rel_depth=d, path=workdir / f"traj_q0.9_d{d:g}.png",
                                         tau=tau, tau_label=tau_label),
                     f"s_0.9 (a small singular value) at relative depth {d:g}"))
    n_flag = int((~stab["stable"].astype(bool)).sum())
    text = (f"Normalized singular-value quantiles s_q of each monitored momentum matrix during training; one line "
            f"per run (seeds share their size's colour). {len(stab) - n_flag} of {len(stab)} (run, matrix, q) "
            f"trajectories stabilized; the dot marks the detected end of burn-in, the thin horizontal line the "
            f"stabilized value, the red line the NS failure threshold τ.")
    sec = Section("Spectra during training", text, figs)
    summary, detail = _flag_tables(stab)
    if len(summary):
        sec.tables.append((summary, f"{n_flag} trajectories flagged as not stabilized, by reason"))
        sec.details.append((detail, f"The {n_flag} flagged trajectories, one by one"))
    out = [sec]
    if "frac_failed" in spectra:
        nulls = structural_nulls(spectra)
        ok = spectra.dropna(subset=["frac_failed"])
        nonnull = nonnull_failed(ok, nulls) if len(nulls) else None
        fidelity = [(_fidelity_table(ok, nonnull), "Mean over sampled steps after step 100 and over matrices: "
                     "distortion D = mean (1 − p(s))² (without / with the null directions), failed share at ρ "
                     "(without / with them), failed share below 0.5, largest output p(s) (overshoot)")] \
            if "distortion" in spectra else []
        out.append(Section("NS fidelity during training",
                           "Share of directions that the run's NS configuration lifts to less than ρ (scalar map on "
                           "the measured spectrum), without the numerically null (structural) directions.",
                           [(F.plot_failed_share(ok, nonnull=nonnull, path=workdir / "failed.png"), "Failed share")],
                           fidelity))
    return out


def _laws_section(laws, fit_note: str, quantile: float, workdir: Path) -> list[Section]:
    if laws is None or not laws.fits:
        return [Section("Scaling laws", fit_note)] if fit_note else []
    qs = sorted({f.q for f in laws.fits})
    figs = [(F.plot_fits(laws, q=q, path=workdir / f"fits_q{q:g}.png"), f"Power laws for s_{q:g}")
            for q in (quantile, 0.9) if q in qs]
    figs.append((F.plot_exponents(laws, path=workdir / "exponents.png"), "Exponents with 95% bootstrap intervals"))
    tables = [(_exponent_pivot(laws, q), f"α for s_{q:g} by layer type and relative depth: OLS estimate [95% "
               "bootstrap interval]") for q in (quantile, 0.9) if q in qs]
    sec = Section("Scaling laws", "", figs, tables)
    shared = [{"layer_type": t.layer_type, "rel_depth": t.rel_depth, "alphas": ", ".join(f"{a:.2f}" for a in t.alphas),
               "spread": t.spread, "p_value": t.p_value, "shared": t.shared} for t in laws.shared]
    if shared:
        n_shared = sum(s["shared"] for s in shared)
        sec.details.append((pd.DataFrame(shared), f"Do all quantiles of one matrix share one exponent? {n_shared} of "
                            f"{len(shared)} matrices (Bonferroni-combined p-value; shared = p ≥ 0.05)"))
    if laws.skipped:
        sec.tables.append((pd.DataFrame(laws.skipped), "Groups not fitted"))
    r2 = [f.r2 for f in laws.fits]
    sec.text = (f"log s_q = log C − α log M per (layer type, depth, q), {len(laws.fits)} fits over "
                f"{len({s for f in laws.fits for s in f.sizes})} model sizes; median R² = {np.median(r2):.3f}. "
                f"Frobenius normalization alone puts a flat spectrum at 1/√r; with width ∝ √M (fixed depth) an "
                f"unchanged spectral shape gives α = 0.25.")
    return [sec]


def _recipe_section(laws, v: Verdict | None, rho: float, workdir: Path) -> Section:
    """The maps the planner chooses from and, folded, its full plan per size."""
    configured = (v.schedule, v.steps) if v is not None else ("jordan", 5)
    configs = [("polar-express", 5), ("jordan", 8)]
    sec = Section("NS recipe", "")
    criterion_text = ""
    for m, plan in (v.plans.items() if v is not None else ()):
        tab = plan.table()
        tab = tab[tab["rel_depth"].notna()] if tab["rel_depth"].notna().any() else tab
        keep = [c for c in ("layer_type", "rel_depth", "alpha", "s_pred", "s_low", "schedule", "steps", "matmuls",
                            "tau", "stat", "bound") if c in tab and not tab[c].isna().all()]
        sec.details.append((tab[keep].reset_index(drop=True),
                            f"Plan for M = {fmt_size(m)}{' (now)' if m == v.now_size else ''}, per layer type and depth"))
        criterion_text = plan.criterion.describe()
        for c in plan.by_type.values():
            if not c.exact and (c.schedule.name, c.steps) not in {(getattr(s, 'name', s), k) for s, k in configs}:
                configs.append((c.schedule, c.steps))
    fig = F.plot_ns_maps(configs, rho=rho, path=workdir / "ns_maps.png", configured=configured)
    sec.text = (f"The composed NS maps with their thresholds τ_{rho:g}: the configured one, two stronger built-in "
                "ones and every configuration the planner picks in the verdict. The full plans are folded below"
                + (f" (criterion {criterion_text}, evaluated on the pessimistic 95 % lower predictions)."
                   if criterion_text else "."))
    sec.figures.append((fig, "NS scalar maps"))
    return sec


def _cell_html(v) -> str:
    cls = f" class='{v.cls}'" if isinstance(v, Cell) and v.cls else ""
    return f"<td{cls}>{html.escape(_fmt(v))}</td>"


def _table_html(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(_cell_html(v) for v in row) + "</tr>" for row in df.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _table_md(df: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(_fmt(v).replace("|", "/") for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:1.2em auto;padding:0 1em;color:#222;line-height:1.35}
h1{font-size:1.5em;margin:.3em 0}h2{font-size:1.2em;margin:1.2em 0 .4em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.4em 0 1em;font-size:.82em}td,th{border:1px solid #ccc;padding:.2em .45em;text-align:right}
td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}
td.fail{background:#fbd5d5}td.risk{background:#fcebc4}td.ok{background:#dcf2dc}
img{max-width:100%;height:auto;border:1px solid #eee;box-sizing:border-box}figure{margin:.5em 0}figcaption{font-size:.85em;color:#555;margin-bottom:1em}
.caption{font-size:.9em;color:#444;margin:.2em 0}.note{font-size:.82em;color:#555;margin:.2em 0}
ul.verdict{margin:.3em 0 .6em;padding-left:1.2em;font-size:.92em}ul.verdict li{margin:.15em 0}
details{margin:.3em 0 .8em}summary{cursor:pointer;color:#235;font-size:.9em}
li,p,summary{overflow-wrap:anywhere}"""


def _section_html(s: Section, embed: Callable[[Path], str]) -> str:
    parts = [f"<h2>{html.escape(s.title)}</h2>"]
    if s.text:
        parts.append(f"<p>{html.escape(s.text)}</p>")
    if s.bullets:
        parts.append("<ul class='verdict'>" + "".join(f"<li><b>{html.escape(a)}</b> {html.escape(b)}</li>"
                                                       for a, b in s.bullets) + "</ul>")
    for df, cap in s.tables:
        parts.append((f"<p class='caption'>{html.escape(cap)}</p>" if cap else "") + _table_html(df))
    parts += [f"<p class='note'>{html.escape(n)}</p>" for n in s.notes]
    for png, cap in s.figures:
        parts.append(f"<figure><img alt='{html.escape(cap)}' src='{embed(Path(png))}'>"
                     f"<figcaption>{html.escape(cap)}</figcaption></figure>")
    for df, cap in s.details:
        parts.append(f"<details><summary>{html.escape(cap)} ({len(df)} rows)</summary>{_table_html(df)}</details>")
    return "".join(parts)


def _section_md(s: Section, assets: str) -> str:
    parts = [f"## {s.title}\n"]
    if s.text:
        parts.append(f"{s.text}\n")
    if s.bullets:
        parts.append("\n".join(f"- **{a}** {b}" for a, b in s.bullets) + "\n")
    for df, cap in s.tables:
        parts.append((f"*{cap}*\n\n" if cap else "") + _table_md(df) + "\n")
    if s.notes:
        parts.append("\n".join(f"<sub>{n}</sub><br>" for n in s.notes) + "\n")
    for png, cap in s.figures:
        parts.append(f"![{cap}]({assets}/{Path(png).name})\n")
    for df, cap in s.details:
        parts.append(f"<details><summary>{html.escape(cap)} ({len(df)} rows)</summary>\n\n{_table_md(df)}\n\n</details>\n")
    return "\n".join(parts)


def _write(path: Path, text: str) -> None:
    try:
        from muonscope._atomic import atomic_write
    except ImportError:  # pragma: no cover - older trees
        tmp = path.with_name(f".tmp-{path.name}")
        tmp.write_text(text)
        os.replace(tmp, path)
        return
    atomic_write(path, text, what="report file")


def build_report(run_paths, out: str | os.PathLike, *, fmt: str = "html", targets=DEFAULT_TARGETS,
                 quantile: float = 0.5, rho: float = FAILURE_RHO, title: str = "muonscope report", criterion=None,
                 laws=None, progress: Progress | None = None) -> Path:
    """Write the report for ``run_paths`` (run or sweep directories) to ``out``; returns its path.

    ``laws`` (a Laws object or a laws JSON path) replaces fitting the records; ``progress`` is
    called as ``progress(stage, done, total)`` before each stage."""
    if fmt not in ("html", "md"):
        raise ConfigError(f"report format must be 'html' or 'md', got {fmt!r}")
    if laws is not None and not hasattr(laws, "fits"):
        from muonscope.laws.fit import Laws

        laws = Laws.load(laws)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    kw = dict(targets=targets, quantile=quantile, rho=rho, criterion=criterion, laws=laws, progress=progress)
    if fmt == "md":
        assets = out.with_name(out.stem + "_files")
        assets.mkdir(exist_ok=True)
        for old in assets.glob("*.png"):
            old.unlink()
        sections = build_sections(run_paths, workdir=assets, **kw)
        _write(out, f"# {title}\n\n" + "\n".join(_section_md(s, assets.name) for s in sections))
    else:
        with tempfile.TemporaryDirectory() as td:
            sections = build_sections(run_paths, workdir=Path(td), **kw)

            def embed(png: Path) -> str:
                return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()

            body = "".join(_section_html(s, embed) for s in sections)
            _write(out, f"<!doctype html><html lang='en'><head><meta charset='utf-8'><meta name='viewport' "
                        f"content='width=device-width, initial-scale=1'><title>{html.escape(title)}</title>"
                        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>")
    if progress is not None:
        progress("done", 8, 8)  # the eight stages of build_sections
    return out
