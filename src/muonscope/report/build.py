"""One report from run stores: spectra during training, fitted laws, the NS recipe, losses.

``build_report(runs, "report.html")`` writes a single self-contained HTML file (figures embedded
as base64 PNG); ``fmt="md"`` writes Markdown with the PNGs in a sibling ``<name>_files/``
directory. Sections that the data cannot support (e.g. fits with fewer than 3 model sizes) say
why instead of failing the whole report.
"""

from __future__ import annotations

import base64
import html
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from muonscope.conventions import FAILURE_RHO, TARGET_SIZES
from muonscope.errors import ConfigError, MuonscopeError
from muonscope.report import figures as F

DEFAULT_TARGETS = TARGET_SIZES


@dataclass
class Section:
    title: str
    text: str = ""
    figures: list[tuple[Path, str]] = field(default_factory=list)  # (png, caption)
    tables: list[tuple[pd.DataFrame, str]] = field(default_factory=list)


def _fmt(x) -> str:
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (float, np.floating)):
        if not math.isfinite(x):
            return "–"
        ax = abs(x)
        if ax >= 1e4 or 0 < ax < 1e-2:
            return f"{x:.3g}"
        if ax >= 100:
            return f"{x:,.0f}"
        return f"{x:.3f}".rstrip("0").rstrip(".")
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}" if abs(int(x)) >= 10000 else str(int(x))
    return "–" if x is None else str(x)


def _runs_table(metas: list[dict]) -> pd.DataFrame:
    rows = [{"run": m.get("run_id"), "optimizer": m.get("config", {}).get("optimizer", "?"),
             "M (non-emb.)": m.get("model_params"), "steps": m.get("steps"), "status": m.get("status"),
             "final val loss": m.get("final_val_loss", float("nan")), "tokens/s": m.get("tokens_per_s", float("nan"))}
            for m in metas]
    return pd.DataFrame(rows).sort_values(["optimizer", "M (non-emb.)"]).reset_index(drop=True)


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


def _fidelity_table(spectra: pd.DataFrame) -> pd.DataFrame:
    late = spectra[spectra.step >= 100] if (spectra.step >= 100).any() else spectra
    cols = [c for c in ("distortion", "frac_failed", "frac_failed_50", "ns_out_max") if c in late]
    out = late.groupby("layer_type")[cols].mean()
    order = [x for x in F.LAYER_ORDER if x in out.index]
    return out.loc[order].reset_index()


def build_sections(run_paths, *, targets=DEFAULT_TARGETS, quantile: float = 0.5, rho: float = FAILURE_RHO,
                   workdir: Path, criterion=None) -> list[Section]:
    """Compute everything the report shows; figures are written into ``workdir``. Plans use
    ``criterion`` (default: the calibrated one)."""
    from muonscope.laws.criterion import calibrated
    from muonscope.laws.fit import fit_laws
    from muonscope.spectra.store import RunStore, find_runs

    paths = find_runs(run_paths)
    stores = [RunStore.open(p) for p in paths]
    frames = [f for f in (s.spectra() for s in stores) if len(f)]
    spectra = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    laws, fit_note = None, ""
    if len(spectra):
        try:
            laws = fit_laws(spectra)
        except MuonscopeError as exc:
            fit_note = f"No power-law fits: {exc}"
    sections = [_runs_section(stores), *_loss_section(stores, workdir)]
    if len(spectra):
        sections += _spectra_sections(spectra, laws, quantile, workdir)
    sections += _laws_section(laws, fit_note, quantile, workdir)
    sections.append(_recipe_section(laws, targets, criterion or calibrated(), rho, workdir))
    return sections


def _runs_section(stores) -> Section:
    metas = [s.meta for s in stores]
    return Section("Runs", f"{len(stores)} run(s). Model size M counts non-embedding parameters "
                   f"({metas[0].get('param_count_rule', 'as recorded in run.json')}). Width/depth rule: "
                   f"{metas[0].get('width_depth_rule', 'not recorded')}.", tables=[(_runs_table(metas), "")])


def _loss_section(stores, workdir: Path) -> list[Section]:
    curves = {str(s.meta.get("run_id")): met for s in stores if len(met := s.metrics())}
    if not curves:
        return []
    return [Section("Loss", "Training and validation loss of every run (AdamW baselines dashed).",
                    figures=[(F.plot_losses(curves, path=workdir / "loss.png"), "Loss curves")])]


def _spectra_sections(spectra: pd.DataFrame, laws, quantile: float, workdir: Path) -> list[Section]:
    """Quantile trajectories with the detected burn-in, and NS fidelity during training."""
    from muonscope.laws.stabilize import stabilize

    stab = laws.stabilization if laws is not None else stabilize(spectra)
    depths = sorted(spectra["rel_depth"].dropna().round(3).unique())
    figs = [(F.plot_trajectories(spectra, stab, q=quantile, rel_depth=d, path=workdir / f"traj_q{quantile:g}_d{d:g}.png"),
             f"s_{quantile:g} trajectories at relative depth {d:g}") for d in depths]
    if quantile != 0.9 and "s_q90" in spectra:
        d = depths[-1]
        figs.append((F.plot_trajectories(spectra, stab, q=0.9, rel_depth=d, path=workdir / f"traj_q0.9_d{d:g}.png"),
                     f"s_0.9 (a small singular value) at relative depth {d:g}"))
    unstable = stab[~stab["stable"]]
    text = (f"Normalized singular-value quantiles s_q of each monitored momentum matrix during training. "
            f"{int(stab['stable'].sum())} of {len(stab)} (run, matrix, q) trajectories stabilized; the dot marks "
            f"the detected end of burn-in and the thin horizontal line the stabilized value.")
    tables = []
    if len(unstable):
        reasons = unstable.groupby("reason").size().rename("trajectories").reset_index()
        tables.append((reasons, "Trajectories flagged as not stabilized (not fitted), by reason"))
    out = [Section("Spectra during training", text, figs, tables)]
    if "frac_failed" in spectra:
        fidelity = [(_fidelity_table(spectra), "Mean over sampled steps after step 100 and over matrices: "
                     "distortion D = mean (1 − p(s))², failed shares below 0.1 and 0.5, largest output p(s) "
                     "(overshoot)")] if "distortion" in spectra else []
        out.append(Section("NS fidelity during training",
                           "Share of directions that the run's NS configuration lifts to less than ρ "
                           "(scalar map on the measured spectrum).",
                           [(F.plot_failed_share(spectra, path=workdir / "failed.png"), "Failed share")], fidelity))
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
    shared = [{"layer_type": t.layer_type, "rel_depth": t.rel_depth, "alphas": ", ".join(f"{a:.2f}" for a in t.alphas),
               "spread": t.spread, "p_value": t.p_value, "shared": t.shared} for t in laws.shared]
    if shared:
        tables.append((pd.DataFrame(shared), "Do all quantiles of one matrix share one exponent? "
                       "(Bonferroni-combined p-value; shared = p ≥ 0.05)"))
    if laws.skipped:
        tables.append((pd.DataFrame(laws.skipped), "Groups not fitted"))
    r2 = [f.r2 for f in laws.fits]
    return [Section("Scaling laws", f"log s_q = log C − α log M per (layer type, depth, q), {len(laws.fits)} fits over "
                    f"{len({s for f in laws.fits for s in f.sizes})} model sizes; median R² = {np.median(r2):.3f}. "
                    f"Frobenius normalization alone puts a flat spectrum at 1/√r; with width ∝ √M (fixed depth) an "
                    f"unchanged spectral shape gives α = 0.25.", figs, tables)]


def _recipe_section(laws, targets, criterion, rho: float, workdir: Path) -> Section:
    """Per target size the planner's choice per layer type, and the maps it chooses from."""
    from muonscope.laws.planner import make_plan

    ns_configs = [("jordan", 5), ("polar-express", 5), ("jordan", 8)]
    tables = []
    for t in targets if laws is not None and laws.fits else ():
        try:
            plan = make_plan(laws, t, criterion=criterion)
        except MuonscopeError as exc:
            tables.append((pd.DataFrame([{"error": str(exc)}]), f"target {t:.3g}"))
            continue
        tab = plan.table()
        tab = tab[tab["rel_depth"].isna()].drop(columns=["rel_depth"]) if tab["rel_depth"].isna().any() else tab
        tables.append((tab, f"Recipe for a {t:.3g}-parameter model: cheapest configuration per layer type meeting "
                            f"the criterion ({plan.criterion.describe()}; pessimistic 95% lower predictions)"))
        for c in plan.by_type.values():
            if not c.exact and (c.schedule.name, c.steps) not in ns_configs and len(ns_configs) < 8:
                ns_configs.append((c.schedule, c.steps))
    fig = F.plot_ns_maps(ns_configs, rho=rho, path=workdir / "ns_maps.png")
    return Section("NS recipe", f"The composed NS maps with their thresholds τ_{rho:g}, and per target size the "
                   "planner's choice.", [(fig, "NS scalar maps")], tables)


def _table_html(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>" for row in df.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _table_md(df: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(_fmt(v).replace("|", "/") for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.85em}td,th{border:1px solid #ccc;padding:.25em .5em;text-align:right}
th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee}figcaption{font-size:.85em;color:#555;margin-bottom:1.5em}
.caption{font-size:.9em;color:#444;margin:.2em 0}"""


def build_report(run_paths, out: str | os.PathLike, *, fmt: str = "html", targets=DEFAULT_TARGETS,
                 quantile: float = 0.5, rho: float = FAILURE_RHO, title: str = "muonscope report", criterion=None) -> Path:
    """Write the report for ``run_paths`` (run or sweep directories) to ``out``; returns its path."""
    if fmt not in ("html", "md"):
        raise ConfigError(f"report format must be 'html' or 'md', got {fmt!r}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "md":
        assets = out.with_name(out.stem + "_files")
        assets.mkdir(exist_ok=True)
        sections = build_sections(run_paths, targets=targets, quantile=quantile, rho=rho, workdir=assets,
                                  criterion=criterion)
        parts = [f"# {title}\n"]
        for s in sections:
            parts.append(f"## {s.title}\n\n{s.text}\n")
            for df, cap in s.tables:
                parts.append((f"*{cap}*\n\n" if cap else "") + _table_md(df) + "\n")
            for png, cap in s.figures:
                parts.append(f"![{cap}]({assets.name}/{png.name})\n")
        tmp = out.with_name(f".tmp-{out.name}")
        tmp.write_text("\n".join(parts))
        os.replace(tmp, out)
        return out
    with tempfile.TemporaryDirectory() as td:
        sections = build_sections(run_paths, targets=targets, quantile=quantile, rho=rho, workdir=Path(td),
                                      criterion=criterion)
        parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                 f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
        for s in sections:
            parts.append(f"<h2>{html.escape(s.title)}</h2><p>{html.escape(s.text)}</p>")
            for df, cap in s.tables:
                parts.append((f"<p class='caption'>{html.escape(cap)}</p>" if cap else "") + _table_html(df))
            for png, cap in s.figures:
                data = base64.b64encode(Path(png).read_bytes()).decode()
                parts.append(f"<figure><img alt='{html.escape(cap)}' src='data:image/png;base64,{data}'>"
                             f"<figcaption>{html.escape(cap)}</figcaption></figure>")
        parts.append("</body></html>")
        tmp = out.with_name(f".tmp-{out.name}")
        tmp.write_text("".join(parts))
        os.replace(tmp, out)
    return out
