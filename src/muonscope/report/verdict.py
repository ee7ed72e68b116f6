"""The report's answer: is NS failing, where, what to do, at what cost.

Everything is computed from the run stores (measured spectra), the fitted laws and the planner:

- **Configured NS**: the (schedule, k) that the runs' records claim (the most common one); its
  failure threshold τ_ρ(k) is the smallest s such that every s' ∈ [s, 1] maps to at least ρ.
- **Structural nulls**: per (run, matrix), n₀ = the number of numerically null directions
  (s < ``NULL_LEVEL``, the float32 round-off floor) present at *every* sampled step of the second
  half of training. No NS map can lift s ≈ 1e-9, and no update needs to: such a direction carries
  no gradient signal (e.g. the all-ones direction LayerNorm removes from o and mlp_down). They are
  reported apart and excluded: failed share = max(frac_failed − n₀/r, 0), r = min(rows, cols).
  Stores without a ``null_dirs`` column fall back to ``s_min < NULL_LEVEL`` (n₀ ≤ 1).
- **Now**: the largest measured model, samples in the last quarter of training: mean non-null
  failed share per layer type and block.
- **At a size M**: per (layer type, depth) the laws give s_q(M) = C·M^(−α) and its 95% prediction
  interval; the predicted failed share is the share of levels u ∈ (0, 1] whose predicted quantile
  function s(u) (:func:`~muonscope.laws.criterion.quantile_function`, from all fitted q) the
  configured map sends below ρ. Status, from the tail quantile q_t (the largest fitted level,
  0.9: a share 1 − q_t of the directions lies below it): *fails* when the point prediction
  s_q_t < τ (at least 1 − q_t of the directions fail), *at risk* when only its 95% lower end is
  below τ, *ok* otherwise. Crossing size M* = (C/τ)^(1/α), for q_t and for the report's quantile.
- **What to do**: the planner's plan at each size (its criterion), and its NS cost relative to
  the configured schedule, Σ ns_flops(m, n, k_plan) / Σ ns_flops(m, n, k_conf) over the matrices
  of the largest measured model (NS FLOPs per matrix depend on the shape only through m²n, so the
  ratio carries over to a wider model of the same family).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from muonscope.conventions import FAILURE_RHO, NULL_LEVEL
from muonscope.errors import MuonscopeError

LAYER_ORDER = ("q", "k", "v", "o", "qkv", "mlp_up", "mlp_down", "other")
RESIDUAL_WRITERS = ("o", "mlp_down")  # matrices whose output is added to the residual stream
SHORT = {"jordan": "J", "polar-express": "PE"}


DTYPE_SHORT = {"float32": "fp32", "float64": "fp64", "float16": "fp16", "bfloat16": "bf16"}


def short_label(schedule_name: str | None, steps: int | None) -> str:
    """Compact configuration label: 'J×5', 'PE×4', 'D×11' (designed), 'exact SVD'."""
    if schedule_name is None:
        return "exact SVD"
    name = SHORT.get(schedule_name, "D" if schedule_name.startswith("designed") else schedule_name)
    return f"{name}×{steps}"


def fmt_size(m: float) -> str:
    """Model size in a compact exponent form: 1.49e6, 7e10."""
    mant, exp = f"{float(m):.2e}".split("e")
    mant = mant.rstrip("0").rstrip(".")
    return f"{mant}e{int(exp)}"


def fmt_share(x: float) -> str:
    """A share as a percentage with two significant digits (or '0 %')."""
    if x is None or not math.isfinite(x):
        return "–"
    if x == 0:
        return "0 %"
    p = 100 * x
    return f"{p:.2g} %" if p < 10 else f"{p:.0f} %"


def _order(types) -> list[str]:
    types = list(dict.fromkeys(types))
    return [t for t in LAYER_ORDER if t in types] + sorted(t for t in types if t not in LAYER_ORDER)


def configured_ns(spectra: pd.DataFrame) -> tuple[str, int, bool]:
    """(schedule, steps, recorded): the most common NS configuration claimed by the records;
    ``recorded`` False when the records name none (then Jordan × 5 is assumed)."""
    if {"ns_schedule", "ns_steps"} <= set(spectra.columns):
        s = spectra.dropna(subset=["ns_schedule", "ns_steps"])
        if len(s):
            name, steps = s.groupby(["ns_schedule", "ns_steps"]).size().idxmax()
            return str(name), int(steps), True
    return "jordan", 5, False


def _null_counts(spectra: pd.DataFrame) -> pd.Series | None:
    if "null_dirs" in spectra.columns:
        return spectra["null_dirs"].astype(np.float64)
    if "s_min" in spectra.columns:
        return (spectra["s_min"] < NULL_LEVEL).astype(np.float64)
    return None


def structural_nulls(spectra: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, matrix): r, n_null (null directions present at every sampled step of the
    second half of training) and s_null (median smallest s over those steps when n_null > 0)."""
    cols = ["run_id", "param", "layer_type", "block", "rel_depth", "model_params", "r", "n_null", "s_null"]
    counts = _null_counts(spectra)
    if counts is None or spectra.empty:
        return pd.DataFrame(columns=cols)
    df = spectra.assign(_null=counts.to_numpy(), r=np.minimum(spectra["rows"], spectra["cols"]))
    last = df.groupby("run_id")["step"].transform("max")
    late = df[df["step"] > last / 2]
    g = late.groupby(["run_id", "param"], sort=True)
    out = g.agg(layer_type=("layer_type", "first"), block=("block", "first"), rel_depth=("rel_depth", "first"),
                model_params=("model_params", "first"), r=("r", "first"), n_null=("_null", "min")).reset_index()
    out["n_null"] = out["n_null"].fillna(0).astype(int)
    if "s_min" in late.columns:
        s = g["s_min"].median().reset_index(drop=True)
        out["s_null"] = np.where(out["n_null"] > 0, s.to_numpy(), np.nan)
    else:
        out["s_null"] = np.nan
    return out[cols]


def nonnull_failed(spectra: pd.DataFrame, nulls: pd.DataFrame) -> pd.Series:
    """Per record: failed share without the matrix's structural nulls, max(frac_failed − n₀/r, 0)."""
    key = nulls.set_index(["run_id", "param"])
    idx = pd.MultiIndex.from_frame(spectra[["run_id", "param"]])
    n0 = key["n_null"].reindex(idx).fillna(0).to_numpy(np.float64) if len(key) else np.zeros(len(spectra))
    r = np.minimum(spectra["rows"], spectra["cols"]).to_numpy(np.float64)
    return pd.Series(np.clip(spectra["frac_failed"].to_numpy(np.float64) - n0 / r, 0.0, None), index=spectra.index)


def null_explanation(layer_type: str) -> str:
    if layer_type in RESIDUAL_WRITERS:
        return ("the all-ones direction LayerNorm removes (the residual stream is read only through "
                "LayerNorms, which subtract the mean, so the gradient of a matrix writing into it is orthogonal "
                "to the all-ones vector)")
    return ("a direction the gradient never reaches (a linear constraint on the layer's inputs or outputs, "
            "e.g. zero-mean LayerNorm outputs or a tied or frozen component)")


@dataclass
class Verdict:
    """Everything the verdict section shows (see the module docstring)."""

    schedule: str
    steps: int
    recorded: bool
    rho: float
    tau: float
    quantile: float
    now_size: float | None
    now: pd.DataFrame  # per (layer_type, block): failed share (non-null), directions per matrix
    now_by_size: pd.DataFrame  # per (layer_type, model size): non-null failed share, late training
    nulls: pd.DataFrame  # per layer type: structural null summary
    predictions: pd.DataFrame  # per (layer_type, rel_depth, size): s_q point/low, status, failed share
    crossings: pd.DataFrame  # per (layer_type, rel_depth): M* where the point law of s_q meets τ
    sizes: list[float] = field(default_factory=list)  # [now_size, *targets]
    choices: dict = field(default_factory=dict)  # size -> {layer_type: (label, short, matmuls)}
    cost: dict = field(default_factory=dict)  # size -> NS FLOPs relative to the configured schedule
    cost_note: dict = field(default_factory=dict)  # size -> note (exact polar in the plan)
    plan_errors: dict = field(default_factory=dict)  # size -> message
    plans: dict = field(default_factory=dict)  # size -> Plan
    unconverged: int | None = None
    criterion_text: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def config_label(self) -> str:
        return f"{self.schedule} × {self.steps}"

    def type_now(self) -> pd.DataFrame:
        """Per layer type: mean non-null failed share, failed directions per matrix, worst block."""
        if self.now.empty:
            return pd.DataFrame(columns=["layer_type", "failed", "per_matrix", "worst_block", "worst_failed"])
        rows = []
        for lt, g in self.now.groupby("layer_type"):
            w = g.loc[g["failed"].idxmax()]
            rows.append({"layer_type": lt, "failed": float(g["failed"].mean()),
                         "per_matrix": float(g["per_matrix"].mean()), "worst_block": int(w["block"]),
                         "worst_failed": float(w["failed"])})
        out = pd.DataFrame(rows)
        return out.set_index("layer_type").loc[_order(out["layer_type"])].reset_index()

    def status(self, layer_type: str, size: float) -> str:
        """Worst status over the depths of a layer type at a size ('fails', 'at risk', 'ok', '')."""
        p = self.predictions
        if p.empty:
            return ""
        s = p[(p["layer_type"] == layer_type) & np.isclose(p["size"], size)]["status"].tolist()
        for k in ("fails", "at risk", "ok"):
            if k in s:
                return k
        return ""

    def failing_at(self, size: float, which: str = "fails") -> list[str]:
        types = _order(self.predictions["layer_type"]) if len(self.predictions) else []
        return [t for t in types if self.status(t, size) == which]


def _block_depths(spectra: pd.DataFrame) -> dict[int, float]:
    d = spectra.dropna(subset=["rel_depth"]).drop_duplicates("block")
    return {int(b): float(r) for b, r in zip(d["block"], d["rel_depth"], strict=True)}


def _now_tables(spectra: pd.DataFrame, nulls: pd.DataFrame):
    if "frac_failed" not in spectra.columns or spectra["frac_failed"].isna().all():
        return None, pd.DataFrame(), pd.DataFrame()
    df = spectra.dropna(subset=["frac_failed"])
    df = df.assign(failed=nonnull_failed(df, nulls), r=np.minimum(df["rows"], df["cols"]))
    last = df.groupby("run_id")["step"].transform("max")
    late = df[df["step"] >= 0.75 * last]
    by_size = (late.groupby(["layer_type", "model_params"])["failed"].mean().reset_index())
    m = float(late["model_params"].max())
    top = late[late["model_params"] == m]
    top = top.assign(per_matrix=top["failed"] * top["r"], s_min=top["s_min"] if "s_min" in top else np.nan)
    now = (top.groupby(["layer_type", "block"])
           .agg(rel_depth=("rel_depth", "first"), failed=("failed", "mean"), per_matrix=("per_matrix", "mean"),
                s_min=("s_min", "median"))
           .reset_index())
    return m, now, by_size


def _null_summary(nulls: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for lt, g in nulls.groupby("layer_type"):
        with_null = g[g["n_null"] > 0]
        if with_null.empty:
            continue
        counts = with_null["n_null"].value_counts()
        rows.append({"layer_type": lt, "matrices": int(len(with_null)), "of": int(len(g)),
                     "per_matrix": int(counts.index[0]), "s_lo": float(with_null["s_null"].min()),
                     "s_hi": float(with_null["s_null"].max()), "explanation": null_explanation(str(lt))})
    out = pd.DataFrame(rows, columns=["layer_type", "matrices", "of", "per_matrix", "s_lo", "s_hi", "explanation"])
    return out.set_index("layer_type").loc[_order(out["layer_type"])].reset_index() if len(out) else out


def _predictions(laws, sizes: Sequence[float], schedule: str, steps: int, rho: float, tau: float,
                 quantile: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    from muonscope.laws.criterion import quantile_function
    from muonscope.laws.fit import same_depth
    from muonscope.orth.analysis import composed_map

    rows, cross = [], []
    q_tail = max(f.q for f in laws.fits)
    for f in laws.select(q=q_tail):
        group = [g for g in laws.fits if g.layer_type == f.layer_type and same_depth(g.rel_depth, f.rel_depth)]
        mid = next((g for g in group if math.isclose(g.q, quantile)), None)
        for m in sizes:
            pred = f.predict(m, 0.95)
            status = "fails" if pred.center < tau else "at risk" if pred.low < tau else "ok"
            shares = {}
            for kind in ("center", "low"):
                spec = quantile_function([g.q for g in group], [getattr(g.predict(m, 0.95), kind) for g in group])
                shares[kind] = float(np.mean(composed_map(schedule, steps, spec) < rho))
            rows.append({"layer_type": f.layer_type, "rel_depth": f.rel_depth, "size": float(m), "q": q_tail,
                         "s_point": pred.center, "s_low": pred.low, "status": status,
                         "s_mid": mid.predict(m, 0.95).center if mid else float("nan"),
                         "failed_point": shares["center"], "failed_low": shares["low"]})

        def crossing(g) -> float:
            return math.exp((g.log_c - math.log(tau)) / g.alpha) if g is not None and g.alpha > 0 else math.inf

        cross.append({"layer_type": f.layer_type, "rel_depth": f.rel_depth, "alpha": f.alpha, "m_star": crossing(f),
                      "m_star_mid": crossing(mid), "largest_measured": max(f.sizes)})
    return pd.DataFrame(rows), pd.DataFrame(cross)


def _plans(laws, sizes, criterion, spectra: pd.DataFrame, steps_conf: int, v: Verdict) -> None:
    from muonscope.laws.planner import base_name, make_plan, names_from_records
    from muonscope.orth.analysis import ns_flops

    top = spectra[spectra["model_params"] == spectra["model_params"].max()]
    one = top[top["run_id"] == sorted(top["run_id"].unique())[0]]
    names = names_from_records(one)
    shapes = one.drop_duplicates("param")[["param", "rows", "cols"]]
    for m in sizes:
        try:
            plan = make_plan(laws, m, criterion=criterion, names=names)
        except MuonscopeError as exc:
            v.plan_errors[m] = str(exc)
            continue
        v.plans[m] = plan
        v.criterion_text = plan.criterion.describe()
        if plan.unconverged is not None:
            v.unconverged = len(plan.unconverged)
        v.choices[m] = {lt: (c.label, short_label(None if c.exact else c.schedule.name, c.steps)
                             + (f" {DTYPE_SHORT.get(c.ns_dtype, c.ns_dtype)}" if c.ns_dtype else ""), c.matmuls)
                        for lt, c in plan.by_type.items()}
        num = den = 0.0
        exact = 0
        for p, rows, cols in shapes.itertuples(index=False):
            c = plan.params.get(base_name(p))
            if c is None:
                continue
            den += ns_flops(int(rows), int(cols), steps_conf)
            if c.exact:
                exact += 1
            else:
                num += ns_flops(int(rows), int(cols), c.steps)
        v.cost[m] = num / den if den and not exact else float("nan")
        if exact:
            v.cost_note[m] = f"{exact} matrices need the exact polar factor (SVD), not costed in NS products"


def build_verdict(spectra: pd.DataFrame, laws, *, targets: Sequence[float], criterion=None,
                  rho: float = FAILURE_RHO, quantile: float = 0.5) -> Verdict:
    """The verdict from measured spectra (``spectra``, records of all runs) and fitted ``laws``
    (None when they could not be fitted: then only the measured part is filled in)."""
    from muonscope.orth.analysis import threshold

    spectra = spectra[spectra["source"] == "ns_input"] if "source" in spectra.columns and \
        (spectra["source"] == "ns_input").any() else spectra
    schedule, steps, recorded = configured_ns(spectra)
    tau = float(threshold(schedule, steps, rho))
    nulls = structural_nulls(spectra)
    now_size, now, by_size = _now_tables(spectra, nulls)
    v = Verdict(schedule, steps, recorded, float(rho), tau, float(quantile), now_size, now, by_size,
                _null_summary(nulls), pd.DataFrame(), pd.DataFrame())
    if not recorded:
        v.notes.append("the records name no NS configuration: jordan × 5 assumed")
    if "null_dirs" not in spectra.columns:
        v.notes.append("these stores predate the null-direction count: structural nulls are detected from "
                       "s_min < 1e-7 (at most one per matrix)")
    if now.empty:
        v.notes.append("the records carry no failed share (frac_failed): nothing measured about failures now")
    size0 = [now_size] if now_size else ([float(spectra["model_params"].max())] if len(spectra) else [])
    v.sizes = [*size0, *[float(t) for t in targets if not size0 or not math.isclose(t, size0[0])]]
    if laws is not None and laws.fits:
        if not laws.select(q=quantile):
            quantile = min((f.q for f in laws.fits), key=lambda q: abs(q - quantile))
            v.quantile = quantile
        v.predictions, v.crossings = _predictions(laws, v.sizes, schedule, steps, rho, tau, quantile)
        if criterion is not None:
            _plans(laws, v.sizes, criterion, spectra, steps, v)
    return v


__all__ = ["Verdict", "build_verdict", "configured_ns", "structural_nulls", "nonnull_failed", "short_label",
           "fmt_size", "fmt_share", "null_explanation"]
