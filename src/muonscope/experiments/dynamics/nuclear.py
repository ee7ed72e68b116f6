"""Where Muon converges in underdetermined sensing, against the minimum-nuclear-norm interpolant.

Muon runs from W₀ = 0 with a cosine-decayed lr until the residual is tiny; its last iterate is
projected onto the interpolants {W : A(W) = y} (the nearest one in Frobenius norm, a change of the
order of the residual) and its nuclear norm ‖W_Muon‖_* is compared with

    min ‖W‖_*  subject to  ⟨Aᵢ, W⟩ = yᵢ  (i = 1…n),

solved with cvxpy (optional extra ``cvxpy``; CLARABEL, SCS as fallback). The solver's value is
bracketed independently: the solver's W projected onto the constraints gives an upper bound
‖W_proj‖_*, and its dual multipliers λ rescaled to ‖Σλᵢ Aᵢ‖₂ = 1 give the lower bound ⟨y, λ⟩
(weak duality: ⟨y, λ⟩ = ⟨W, Σλᵢ Aᵢ⟩ ≤ ‖W‖_*·‖Σλᵢ Aᵢ‖₂ for every interpolant W).

Settings (see results/DYNAMICS.md for how the paper's (p, n, d) are read): W ∈ R^{p×d}, n
measurements, Aᵢ entries N(0, 1)/√p, target of rank min(p, d) with singular values κ…1, κ = 5.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from muonscope.errors import ConfigError
from muonscope.experiments.dynamics.problems import DTYPE, SensingConfig, SensingProblem
from muonscope.experiments.dynamics.steps import Stepper, UpdateRule, lr_at

CVXPY_HINT = "the nuclear-norm minimum needs cvxpy: pip install 'muonscope[cvxpy]'"


@dataclass(frozen=True)
class NuclearSetting:
    name: str
    problem: SensingConfig
    seeds: tuple[int, ...]
    paper: str = ""


SETTINGS = {
    "large": NuclearSetting("large", SensingConfig(rows=50, cols=20, measurements=100, kappa=5.0), (0,),
                            "p=50, d=20: ||W_Muon||_* ~ 20.3 vs min 14.1, ratio 1.44"),
    "small": NuclearSetting("small", SensingConfig(rows=6, cols=10, measurements=6, kappa=5.0),
                            tuple(range(10)), "p=n=6, d=10, 10 seeds: ratio 1.29-2.02, mean 1.59, none at the minimum"),
}


def have_cvxpy() -> bool:
    try:
        import cvxpy  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class NuclearMinimum:
    """The minimum-nuclear-norm interpolant of one problem, bracketed by primal and dual bounds."""

    value: float  # solver's objective
    upper: float  # ‖projected solver solution‖_*
    lower: float  # dual certificate ⟨y, λ⟩ with ‖Σλᵢ Aᵢ‖₂ = 1
    W: np.ndarray
    solver: str
    status: str


def min_nuclear_norm(A: np.ndarray, y: np.ndarray, *, solver: str | None = None) -> NuclearMinimum:
    """min ‖W‖_* s.t. ⟨Aᵢ, W⟩ = yᵢ for A (n, p, d), y (n,), via cvxpy."""
    A = np.asarray(A, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if A.ndim != 3 or y.shape != (A.shape[0],):
        raise ConfigError(f"need A of shape (n, p, d) and y of shape (n,), got {A.shape} and {y.shape}")
    n, p, d = A.shape
    if n >= p * d:
        raise ConfigError("the nuclear-norm minimum over interpolants needs an underdetermined problem")
    try:
        import cvxpy as cp
    except ImportError:
        raise ConfigError(CVXPY_HINT) from None
    Af = A.reshape(n, p * d)
    X = cp.Variable((p, d))
    # cvxpy's vec() is column-major: vec(X)[j*p + i] = X[i, j]; reorder Aᵢ to match.
    Ac = A.transpose(0, 2, 1).reshape(n, p * d)
    cons = [Ac @ cp.vec(X, order="F") == y]
    prob = cp.Problem(cp.Minimize(cp.normNuc(X)), cons)
    tried = [solver] if solver else ["CLARABEL", "SCS"]
    used, last_exc = None, None
    for name in tried:
        if name not in cp.installed_solvers():
            continue
        try:
            prob.solve(solver=name)
        except cp.error.SolverError as exc:  # pragma: no cover - solver-specific
            last_exc = exc
            continue
        if prob.status in ("optimal", "optimal_inaccurate"):
            used = name
            break
    if used is None:
        raise ConfigError(f"no cvxpy solver among {tried} solved the nuclear-norm problem "
                          f"(status {prob.status!r}, {last_exc}); install CLARABEL or SCS")
    W = np.asarray(X.value, dtype=np.float64)
    # primal bound: nearest exact interpolant
    r = Af @ W.ravel() - y
    W_proj = W - (Af.T @ np.linalg.solve(Af @ Af.T, r)).reshape(p, d)
    upper = float(np.linalg.svd(W_proj, compute_uv=False).sum())
    # dual bound from the equality multipliers (sign-agnostic: take the better of ±λ)
    lam = np.asarray(cons[0].dual_value, dtype=np.float64).ravel()
    lower = float("nan")
    if lam.size == n and np.all(np.isfinite(lam)):
        Z = (Af.T @ lam).reshape(p, d)
        op = float(np.linalg.norm(Z, 2))
        if op > 0:
            lower = abs(float(y @ lam)) / op
    return NuclearMinimum(float(prob.value), upper, lower, W_proj, used, prob.status)


def converge(problem: SensingProblem, rule: UpdateRule, *, steps: int = 3000, lr: float = 0.05,
             schedule: str = "cosine", momentum: float = 0.0, nesterov: bool = False, record_every: int = 0,
             progress: Callable[[int], None] | None = None) -> dict:
    """Run ``rule`` from W = 0 on every seed.

    Returns ``W`` (the final iterate projected onto the interpolants), ``rel_residual`` before the
    projection, and with ``record_every`` > 0 the trace ``steps``, ``nuclear`` (S, T) and
    ``residual`` (S, T) of the unprojected iterates.
    """
    if not (isinstance(steps, int) and steps >= 1):
        raise ConfigError(f"steps must be a positive int, got {steps!r}")
    if not (lr > 0):
        raise ConfigError(f"lr must be positive, got {lr}")
    W = torch.zeros(problem.batch, *problem.shape, dtype=DTYPE)
    gen = torch.Generator().manual_seed(int(problem.seeds[0]) + 3_000_000)
    stepper = Stepper(rule, momentum=momentum, nesterov=nesterov, generator=gen)
    rec, nuc, res = [], [], []
    for t in range(steps + 1):
        if record_every and (t % record_every == 0 or t == steps):
            rec.append(t)
            nuc.append(torch.linalg.svdvals(W).sum(-1).numpy())
            res.append(problem.relative_residual(W).numpy())
        if t == steps:
            break
        W, _, _ = stepper.step(W, problem.gradient(W), lr_at(t, steps, lr, schedule))
        if progress is not None:
            progress(1)
    if not torch.isfinite(W).all():
        raise ConfigError(f"{rule.label} diverged: lower the learning rate")
    out = {"W": problem.project(W), "rel_residual": problem.relative_residual(W).numpy()}
    if record_every:
        out.update(steps=np.array(rec), nuclear=np.stack(nuc, axis=1), residual=np.stack(res, axis=1))
    return out


def nuclear_norm(W) -> np.ndarray:
    return torch.linalg.svdvals(torch.as_tensor(np.asarray(W), dtype=DTYPE)).sum(-1).numpy()


def run_setting(setting: NuclearSetting, *, rules: Sequence[str] = ("muon", "muon-ns"), steps: int = 3000,
                lr: float = 0.05, schedule: str = "cosine", momentum: float = 0.0, solver: str | None = None,
                seeds: Sequence[int] | None = None, at_min_tol: float = 1e-3, record_every: int = 0,
                progress: Callable[[int], None] | None = None) -> dict:
    """Nuclear norms of each rule's interpolant, the min-Frobenius one (GD's limit from 0), W*,
    and the cvxpy minimum, per seed, with ratios to the minimum (``traces``: per rule, the
    nuclear norm and residual every ``record_every`` steps, when > 0)."""
    seeds = tuple(setting.seeds if seeds is None else seeds)
    problem = SensingProblem.generate(setting.problem, seeds)
    if not setting.problem.underdetermined:
        raise ConfigError(f"setting {setting.name!r} is not underdetermined")
    finals, traces = {}, {}
    for spec in rules:
        rule = UpdateRule.parse(spec)
        out = converge(problem, rule, steps=steps, lr=lr, schedule=schedule, momentum=momentum,
                       record_every=record_every, progress=progress)
        finals[rule.label] = (nuclear_norm(out["W"]), out["rel_residual"])
        if record_every:
            traces[rule.label] = {k: out[k] for k in ("steps", "nuclear", "residual")}
    mf = nuclear_norm(problem.min_frobenius())
    star = nuclear_norm(problem.W_star)
    rows = []
    for i, seed in enumerate(seeds):
        m = min_nuclear_norm(problem.A[i].numpy(), problem.y[i].numpy(), solver=solver)
        row = {"seed": int(seed), "min_nuclear": m.upper, "min_nuclear_solver": m.value,
               "min_nuclear_dual_lower": m.lower, "solver": m.solver, "status": m.status,
               "min_frobenius_nuclear": float(mf[i]), "target_nuclear": float(star[i]),
               "min_frobenius_ratio": float(mf[i] / m.upper), "target_ratio": float(star[i] / m.upper)}
        for label, (nuc, res) in finals.items():
            row[f"{label}_nuclear"] = float(nuc[i])
            row[f"{label}_ratio"] = float(nuc[i] / m.upper)
            row[f"{label}_rel_residual"] = float(res[i])
        rows.append(row)
    summary = {}
    for label in [*finals, "min_frobenius", "target"]:
        ratios = np.array([r[f"{label}_ratio"] for r in rows])
        summary[label] = {"ratio_mean": float(ratios.mean()), "ratio_min": float(ratios.min()),
                          "ratio_max": float(ratios.max()),
                          "at_minimum": int(np.sum(ratios <= 1 + at_min_tol))}
    return {"setting": setting.name, "paper": setting.paper, "problem": setting.problem.to_dict(),
            "seeds": list(seeds), "steps": steps, "lr": lr, "schedule": schedule, "momentum": momentum,
            "at_min_tol": at_min_tol, "rows": rows, "summary": summary, "traces": traces}


def write_stores(output: dict, out_dir, *, overwrite: bool = False) -> list:
    """One run store per (rule, seed) of a :func:`run_setting` output recorded with traces:
    metrics ``nuclear_norm`` and ``rel_residual`` per recorded step; the cvxpy minimum and the
    final ratio in run.json."""
    from pathlib import Path

    from muonscope.experiments.dynamics import record

    out_dir = Path(out_dir)
    pr = output["problem"]
    paths = []
    for label, tr in output.get("traces", {}).items():
        safe = label.replace("[", "_").replace("]", "").replace(",", "_")
        for i, row in enumerate(output["rows"]):
            seed = row["seed"]
            meta = {"run_id": f"nuclear-{output['setting']}-{safe}-seed{seed}",
                    "model_params": pr["rows"] * pr["cols"],
                    "param_count_rule": "entries of the sensed matrix W (rows*cols)",
                    "config": {k: output[k] for k in ("setting", "problem", "steps", "lr", "schedule", "momentum")}
                    | {"rule": label}, "seed": seed, "experiment": "dynamics.nuclear",
                    "min_nuclear": row["min_nuclear"], "final_ratio": row[f"{label}_ratio"]}
            metrics = []
            for j, step in enumerate(tr["steps"]):
                metrics += record.metric_rows(step, {"nuclear_norm": tr["nuclear"][i, j],
                                                     "rel_residual": tr["residual"][i, j]})
            paths.append(record.write_run(out_dir / f"{output['setting']}-{safe}-seed{seed}", meta, [], metrics,
                                          overwrite=overwrite))
    return paths


def sensitivity(*, seeds: Sequence[int] = tuple(range(10)), solver: str | None = None,
                progress: Callable[[int], None] | None = None) -> list[dict]:
    """Muon's ratio under other readings of the paper's settings and other optimizer settings.

    Each variant changes one thing relative to the default settings (see ``VARIANTS``).
    """
    out = []
    for name, base, changes, run_kw in VARIANTS:
        setting = SETTINGS[base]
        problem = SensingConfig(**{**setting.problem.to_dict(), **changes})
        kw = {"steps": 3000, "lr": 0.05} | run_kw
        res = run_setting(NuclearSetting(name, problem, tuple(seeds)), rules=("muon",), solver=solver,
                          progress=progress, **kw)
        s = res["summary"]
        out.append({"variant": name, "base": base, "problem": problem.to_dict(), **kw,
                    "muon_ratio_mean": s["muon"]["ratio_mean"], "muon_ratio_min": s["muon"]["ratio_min"],
                    "muon_ratio_max": s["muon"]["ratio_max"], "muon_at_minimum": s["muon"]["at_minimum"],
                    "min_frobenius_ratio_mean": s["min_frobenius"]["ratio_mean"],
                    "max_rel_residual": max(r["muon_rel_residual"] for r in res["rows"])})
    return out


VARIANTS: list[tuple[str, str, dict, dict]] = [
    ("small (default)", "small", {}, {}),
    ("small, lr 0.01, 10000 steps", "small", {}, {"lr": 0.01, "steps": 10000}),
    ("small, lr 0.2", "small", {}, {"lr": 0.2}),
    ("small, momentum 0.9", "small", {}, {"momentum": 0.9, "lr": 0.01}),
    ("small, kappa 1 (flat target)", "small", {"kappa": 1.0}, {}),
    ("small, kappa 20", "small", {"kappa": 20.0}, {}),
    ("small read as W 6x6, 10 measurements", "small", {"rows": 6, "cols": 6, "measurements": 10}, {}),
    ("small read as W 10x10, 6 measurements, rank 6", "small", {"rows": 10, "cols": 10, "measurements": 6, "rank": 6}, {}),
    ("large (default), 10 seeds", "large", {}, {}),
    ("large, 50 measurements", "large", {"measurements": 50}, {}),
    ("large, 200 measurements", "large", {"measurements": 200}, {}),
    ("large read as W 20x20, 50 measurements", "large", {"rows": 20, "cols": 20, "measurements": 50}, {}),
]


def experiment(settings: Sequence[str] = ("large", "small"), *, seeds: Sequence[int] | None = None,
               rules: Sequence[str] = ("muon", "muon-ns"), steps: int = 3000, lr: float = 0.05,
               momentum: float = 0.0, solver: str | None = None, record_every: int = 20,
               with_sensitivity: bool = False, out_dir=None, summary_path=None, figure_dir=None,
               overwrite: bool = False, progress: Callable[[int], None] | None = None) -> dict:
    """Run the named settings (and optionally :func:`sensitivity`); write stores, JSON, figure."""
    from pathlib import Path

    from muonscope.experiments.dynamics import figures, record

    if not have_cvxpy():
        raise ConfigError(CVXPY_HINT)
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(SETTINGS)}")
    outputs = [run_setting(SETTINGS[s], rules=rules, steps=steps, lr=lr, momentum=momentum, solver=solver,
                           seeds=seeds, record_every=record_every, progress=progress) for s in settings]
    summary = {"settings": outputs}
    if with_sensitivity:
        summary["sensitivity"] = sensitivity(solver=solver, progress=progress)
    if out_dir is not None:
        summary["stores"] = [str(p) for out in outputs for p in write_stores(out, out_dir, overwrite=overwrite)]
    if figure_dir is not None:
        summary["figures"] = [str(figures.plot_nuclear(outputs, Path(figure_dir) / "nuclear_gap.png"))]
    if summary_path is not None:
        slim = {**summary, "settings": [{k: v for k, v in o.items() if k != "traces"} for o in outputs]}
        record.write_json(summary_path, slim)
    return summary
