"""One-step spectral entropy gain of updates that share the gradient's singular directions.

Spectral entropy H(W) = −Σ pᵢ log pᵢ with pᵢ = σᵢ/Σσⱼ; ∂H/∂σᵢ = −(log pᵢ + H)/Σσ. For an
update W ← W − η·D and distinct nonzero σᵢ(W) with singular pairs (uᵢ, vᵢ), σ̇ᵢ = −uᵢᵀ D vᵢ, so
the first-order entropy gain is

    dH/dη |₀ = Σᵢ (log pᵢ + H)/Σσ · uᵢᵀ D vᵢ.

The family compared: for G = U_G diag(g) V_Gᵀ, D_γ = c_γ U_G diag(g^γ) V_Gᵀ, γ ∈ [0, 1], γ = 0 the
polar factor, γ = 1 the gradient itself; c_γ makes ‖D_γ‖_F = √rank(G) ("frobenius", the norm of
U_G V_Gᵀ) or ‖D_γ‖₂ = 1 ("spectral"). None of them looks at W's spectrum.

Alignment (G = −U_W diag(g) V_Wᵀ: the gradient shares W's singular frames and pushes every σᵢ up)
with g ordered like σ(W) makes the polar update the maximizer among Frobenius-matched profiles
ordered like g: writing aᵢ = −(log pᵢ + H), xᵢ the profile, Σ aᵢxᵢ = r·ā·x̄ + Σ(aᵢ − ā)(xᵢ − x̄);
ā ≥ 0 (since −(1/r)Σ log pᵢ ≥ log r ≥ H), x̄ ≤ 1 with equality only for the flat profile, and the
covariance term is ≤ 0 because a decreases where x increases (Chebyshev's sum inequality).
:func:`run_entropy` checks this numerically and measures what happens when the ordering or the
frames are not aligned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.linalg import expm

from muonscope.errors import ConfigError, ShapeError
from muonscope.spectra import metrics as M

NORMS = ("frobenius", "spectral")


def entropy(W) -> float:
    return float(M.spectral_entropy(np.linalg.svd(np.asarray(W, dtype=np.float64), compute_uv=False)))


def first_order_gain(W, D) -> float:
    """d/dη H(W − η D) at η = 0 (W with distinct nonzero singular values)."""
    W = np.asarray(W, dtype=np.float64)
    D = np.asarray(D, dtype=np.float64)
    if W.shape != D.shape or W.ndim != 2:
        raise ShapeError(f"W and D must be matrices of one shape, got {W.shape} and {D.shape}")
    U, s, Vt = np.linalg.svd(W, full_matrices=False)
    if np.any(s <= 0):
        raise ConfigError("the first-order entropy gain needs W of full rank min(m, n)")
    S = s.sum()
    p = s / S
    H = -np.sum(p * np.log(p))
    sdot = -np.einsum("ir,ij,rj->r", U, D, Vt)
    return float(np.sum(-(np.log(p) + H) / S * sdot))


def finite_gain(W, D, eta: float = 1e-6) -> float:
    """Central difference (H(W − ηD) − H(W + ηD))/(2η): an independent check of the first order."""
    W = np.asarray(W, dtype=np.float64)
    D = np.asarray(D, dtype=np.float64)
    return (entropy(W - eta * D) - entropy(W + eta * D)) / (2 * eta)


def gamma_update(G, gamma: float, norm: str = "frobenius") -> np.ndarray:
    """D_γ = c·U_G diag(g^γ) V_Gᵀ over G's nonzero singular values, c from ``norm``."""
    if norm not in NORMS:
        raise ConfigError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if not (0.0 <= gamma <= 1.0):
        raise ConfigError(f"gamma must lie in [0, 1], got {gamma}")
    U, g, Vt = np.linalg.svd(np.asarray(G, dtype=np.float64), full_matrices=False)
    keep = g > max(G.shape) * np.finfo(np.float64).eps * (g[0] if g.size else 0.0)
    prof = np.where(keep, np.where(keep, g, 1.0) ** gamma, 0.0)
    if not keep.any():
        return np.zeros_like(np.asarray(G, dtype=np.float64))
    c = np.sqrt(keep.sum()) / np.linalg.norm(prof) if norm == "frobenius" else 1.0 / prof.max()
    return (U * (c * prof)) @ Vt


def gain_profile(W, G, gammas: Sequence[float], norm: str = "frobenius") -> np.ndarray:
    """First-order entropy gain of D_γ(G) for each γ, from one SVD of W and one of G.

    uᵢᵀ(U_G diag(x) V_Gᵀ)vᵢ = Σⱼ PᵢⱼQᵢⱼxⱼ with P = U_WᵀU_G, Q = V_WᵀV_G, so the gains are
    aᵀ(P∘Q)X for a = (log p + H)/Σσ and the profiles X (one column per γ)."""
    if norm not in NORMS:
        raise ConfigError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    W = np.asarray(W, dtype=np.float64)
    G = np.asarray(G, dtype=np.float64)
    U, s, Vt = np.linalg.svd(W, full_matrices=False)
    if np.any(s <= 0):
        raise ConfigError("the first-order entropy gain needs W of full rank min(m, n)")
    UG, g, VGt = np.linalg.svd(G, full_matrices=False)
    keep = g > max(G.shape) * np.finfo(np.float64).eps * (g[0] if g.size else 0.0)
    UG, g, VGt = UG[:, keep], g[keep], VGt[keep]
    gam = np.asarray(gammas, dtype=np.float64)
    X = g[:, None] ** gam[None, :]
    X = X * (np.sqrt(g.size) / np.linalg.norm(X, axis=0) if norm == "frobenius" else 1.0 / X.max(axis=0))
    p = s / s.sum()
    a = (np.log(p) + float(-np.sum(p * np.log(p)))) / s.sum()
    PQ = (U.T @ UG) * (Vt @ VGt.T)
    return a @ PQ @ X


@dataclass(frozen=True)
class EntropyCase:
    W: np.ndarray
    G: np.ndarray
    label: str


def _haar(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    Q, R = np.linalg.qr(rng.standard_normal((n, k)))
    return Q * np.sign(np.diag(R))


def _rotation(n: int, theta: float, rng: np.random.Generator) -> np.ndarray:
    """exp(θK) for a random skew K with ‖K‖₂ = 1: a rotation by at most θ radians per plane."""
    X = rng.standard_normal((n, n))
    K = X - X.T
    K /= np.linalg.norm(K, 2)
    return expm(theta * K)


def make_case(rows: int, cols: int, rng: np.random.Generator, *, order: str = "co",
              theta: float = 0.0, label: str = "") -> EntropyCase:
    """W with random spectrum and Haar frames; G = −R_U U diag(g) Vᵀ R_Vᵀ with g ordered like σ(W)
    (``order="co"``), reversed (``"anti"``) or unrelated (``"random"``), and frames rotated by θ."""
    r = min(rows, cols)
    w = np.sort(np.exp(rng.uniform(np.log(0.05), 0.0, r)))[::-1]
    g = np.sort(np.exp(rng.uniform(np.log(0.05), 0.0, r)))[::-1]
    if order == "anti":
        g = g[::-1]
    elif order == "random":
        g = rng.permutation(g)
    elif order != "co":
        raise ConfigError(f"order must be co, anti or random, got {order!r}")
    U = _haar(rows, r, rng)
    V = _haar(cols, r, rng)
    W = (U * w) @ V.T
    UG = _rotation(rows, theta, rng) @ U if theta else U
    VG = _rotation(cols, theta, rng) @ V if theta else V
    G = -(UG * g) @ VG.T
    return EntropyCase(W, G, label or f"{order}, theta={theta:g}")


def run_entropy(*, rows: int = 12, cols: int = 8, instances: int = 200,
                thetas: Sequence[float] = (0.0, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 3.0),
                gammas: Sequence[float] = tuple(np.linspace(0.0, 1.0, 21)), norms: Sequence[str] = NORMS,
                seed: int = 0, tol: float = 1e-12) -> dict:
    """How often γ = 0 (polar) maximizes the first-order entropy gain, by alignment regime.

    Regimes: frames shared and g co-ordered with σ(W) (the aligned case), anti-ordered, randomly
    ordered, and co-ordered with frames rotated by θ. Per regime: share of instances whose argmax
    over the γ grid is 0, mean argmax γ, mean relative regret (max gain − polar gain)/|max gain|,
    share of instances where the polar gain is negative, and the measured misalignment of G.
    """
    if instances < 1:
        raise ConfigError("instances must be >= 1")
    gammas = np.asarray(gammas, dtype=np.float64)
    if gammas[0] != 0.0:
        raise ConfigError("the gamma grid must start at 0 (the polar update)")
    regimes = [("aligned co-ordered", "co", 0.0), ("aligned anti-ordered", "anti", 0.0),
               ("aligned random order", "random", 0.0)]
    regimes += [(f"co-ordered, frames rotated {t:g}", "co", float(t)) for t in thetas if t > 0]
    out = {"rows": rows, "cols": cols, "instances": instances, "gammas": gammas.tolist(), "seed": seed,
           "regimes": []}
    for name, order, theta in regimes:
        rng = np.random.default_rng([seed, len(out["regimes"])])
        per_norm = {nm: {"argmax": [], "regret": [], "polar_negative": []} for nm in norms}
        mis, sin_t = [], []
        for _ in range(instances):
            case = make_case(rows, cols, rng, order=order, theta=theta)
            mis.append(M.shared_frame_misalignment(case.W, case.G))
            sin_t.append(M.frame_alignment(case.W, case.G))
            for nm in norms:
                prof = gain_profile(case.W, case.G, gammas, nm)
                k = int(np.argmax(prof))
                best = prof[k]
                if prof[0] >= best - tol * max(abs(best), 1.0):
                    k = 0
                per_norm[nm]["argmax"].append(gammas[k])
                per_norm[nm]["regret"].append((best - prof[0]) / abs(best) if best != 0 else 0.0)
                per_norm[nm]["polar_negative"].append(prof[0] < 0)
        entry = {"regime": name, "order": order, "theta": theta,
                 "misalignment_mean": float(np.mean(mis)), "sin_theta_mean": float(np.mean(sin_t))}
        for nm, d in per_norm.items():
            am = np.array(d["argmax"])
            entry[nm] = {"polar_is_max": float(np.mean(am == 0.0)), "argmax_gamma_mean": float(am.mean()),
                         "regret_mean": float(np.mean(d["regret"])),
                         "polar_gain_negative": float(np.mean(d["polar_negative"]))}
        out["regimes"].append(entry)
    return out


def counterexample(rows: int = 12, cols: int = 8, *, order: str = "co", theta: float = 1.0,
                   norm: str = "frobenius", seed: int = 0, max_tries: int = 1000,
                   gammas: Sequence[float] = tuple(np.linspace(0.0, 1.0, 21))) -> dict:
    """The first instance (by draw order from ``seed``) in a regime where γ = 0 is not the argmax."""
    rng = np.random.default_rng(seed)
    gammas = np.asarray(gammas, dtype=np.float64)
    for i in range(max_tries):
        case = make_case(rows, cols, rng, order=order, theta=theta)
        prof = gain_profile(case.W, case.G, gammas, norm)
        k = int(np.argmax(prof))
        if k > 0 and prof[k] > prof[0] + 1e-9 * abs(prof[k]):
            return {"draw": i, "order": order, "theta": theta, "norm": norm, "gammas": gammas.tolist(),
                    "gains": prof.tolist(), "argmax_gamma": float(gammas[k]),
                    "misalignment": M.shared_frame_misalignment(case.W, case.G),
                    "W_singular_values": np.linalg.svd(case.W, compute_uv=False).tolist(),
                    "case": case}
    raise ConfigError(f"no instance among {max_tries} draws has a non-polar maximizer in this regime")


def sensing_states(cfg=None, *, every: int = 10, gammas: Sequence[float] = tuple(np.linspace(0.0, 1.0, 21)),
                   norm: str = "frobenius", tol: float = 1e-12) -> dict:
    """The γ-profile at the states (Wₜ, Gₜ) that Muon actually visits in matrix sensing.

    Runs exact-polar Muon with the schedule and initialization of ``cfg`` (a
    :class:`~muonscope.experiments.dynamics.sensing.SensingRunConfig`) and, every ``every``
    steps and for every seed, evaluates the first-order entropy gain of D_γ(Gₜ) at Wₜ. Reports,
    per step, the share of seeds whose argmax is γ = 0 and the mean shared-frame misalignment.
    """
    import torch

    from muonscope.experiments.dynamics.problems import SensingProblem
    from muonscope.experiments.dynamics.sensing import SensingRunConfig, initial_weights
    from muonscope.experiments.dynamics.steps import Stepper, UpdateRule, lr_at

    cfg = cfg or SensingRunConfig()
    problem = SensingProblem.generate(cfg.problem, cfg.seeds)
    W = initial_weights(problem, cfg.init, cfg.init_scale)
    stepper = Stepper(UpdateRule("muon"), momentum=cfg.momentum, nesterov=cfg.nesterov)
    gammas = np.asarray(gammas, dtype=np.float64)
    rows = []
    for t in range(cfg.steps + 1):
        G = problem.gradient(W)
        if t % every == 0:
            polar_max, mis, regret, polar_neg = [], [], [], []
            for i in range(problem.batch):
                Wi, Gi = W[i].numpy(), G[i].numpy()
                if np.linalg.svd(Wi, compute_uv=False)[-1] <= 0 or not np.any(Gi):
                    continue
                prof = gain_profile(Wi, Gi, gammas, norm)
                k = int(np.argmax(prof))
                best = prof[k]
                is_max = prof[0] >= best - tol * max(abs(best), 1.0)
                polar_max.append(is_max)
                regret.append(0.0 if is_max else (best - prof[0]) / abs(best))
                polar_neg.append(prof[0] < 0)
                mis.append(M.shared_frame_misalignment(Wi, Gi))
            if polar_max:
                rows.append({"step": t, "polar_is_max": float(np.mean(polar_max)),
                             "regret_mean": float(np.mean(regret)), "polar_gain_negative": float(np.mean(polar_neg)),
                             "misalignment_mean": float(np.mean(mis))})
        if t == cfg.steps:
            break
        W, _, _ = stepper.step(W, G, lr_at(t, cfg.steps, cfg.lr, cfg.lr_schedule))
        if not torch.isfinite(W).all():
            raise ConfigError("Muon diverged in the sensing-state check: lower the learning rate")
    return {"config": cfg.to_dict(), "every": every, "norm": norm, "rows": rows}


def experiment(*, rows: int = 12, cols: int = 8, instances: int = 200, seed: int = 0, sensing_cfg=None,
               sensing_every: int = 10, summary_path=None, figure_dir=None, progress=None) -> dict:
    """Synthetic regimes, two worked examples (aligned: polar wins; misaligned: it does not) and,
    if ``sensing_cfg`` is given, the check at the states Muon visits in matrix sensing."""
    from pathlib import Path

    from muonscope.experiments.dynamics import figures, record

    summary = run_entropy(rows=rows, cols=cols, instances=instances, seed=seed)
    if progress is not None:
        progress(1)
    gammas = np.linspace(0.0, 1.0, 21)
    aligned = make_case(rows, cols, np.random.default_rng([seed, 99]), order="co")
    anti = make_case(rows, cols, np.random.default_rng([seed, 98]), order="anti")
    ce = counterexample(rows, cols, order="co", theta=3.0, seed=seed)
    examples = [("aligned, co-ordered: argmax at 0", gammas, gain_profile(aligned.W, aligned.G, gammas)),
                ("aligned, anti-ordered", gammas, gain_profile(anti.W, anti.G, gammas)),
                (f"frames rotated 3 rad (misalignment {ce['misalignment']:.2f})", gammas, np.array(ce["gains"]))]
    summary["examples"] = [{"label": lab, "gammas": g.tolist(), "gains": np.asarray(v).tolist(),
                            "argmax_gamma": float(g[int(np.argmax(v))])} for lab, g, v in examples]
    summary["counterexample"] = {k: v for k, v in ce.items() if k != "case"}
    if sensing_cfg is not None:
        summary["sensing_states"] = sensing_states(sensing_cfg, every=sensing_every)
        if progress is not None:
            progress(1)
    if figure_dir is not None:
        summary["figures"] = [str(figures.plot_entropy(summary, examples, Path(figure_dir) / "entropy_gain.png"))]
    if summary_path is not None:
        record.write_json(summary_path, summary)
    return summary
