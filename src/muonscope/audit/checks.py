"""Judging one watched parameter: is its update what the Muon it claims to be would produce?

For a parameter W updated by a Muon-claiming optimizer, with U the applied update (decoupled
weight decay removed, :mod:`muonscope.spectra.watch`) and X the NS input (from the gradient and
momentum buffer), each (out, in) matrix of a view gives:

- deviation d = max_i |ũ_i − p̃_i|·√r between U's normalized spectrum and the claimed NS map applied
  to X's (:func:`~muonscope.spectra.watch.prediction_deviation`; the best of the NS inputs the
  recipe allows). A Muon update has d ≈ 0 (fp32 NS) to 0.05 (bf16 NS); a momentum step d ≈ 0.5–0.8.
- scale ratio ‖U‖_F / (lr · scale(out, in) · ‖p(s_X)‖₂), the declared lr rule
  (:func:`~muonscope.optim.functional.lr_ratio` of the group's ``adjust_lr_fn``) applied to the
  matrix in (out, in) orientation of its true view (``‖NS(X)‖_F = ‖p(s)‖₂``).
- failed share of the momentum spectrum under the claimed map (p(s_i) < ρ).

The declared view is compared with the other ways a > 2-D tensor can be read (one flattened
(out, ∏rest) matrix, or a stack of slices along dim 0), so an expert stack orthogonalized as one
matrix (or a kernel orthogonalized slice by slice) shows as the other view matching.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from muonscope.conventions import FAILURE_RHO
from muonscope.optim.functional import lr_ratio
from muonscope.spectra import watch as W

VIEW_WORDS = {"matrix": "one matrix", "transposed": "one transposed matrix", "flatten": "one flattened matrix",
              "experts": "a stack of matrices along dim 0", "experts_t": "a stack of transposed matrices"}


def candidate_views(declared: str, ndim: int) -> list[str]:
    """The declared view first, then the other readings of a > 2-D tensor."""
    alts = ["flatten", "experts"] if ndim >= 3 else []
    return [declared, *(v for v in alts if v != declared and not (declared == "experts_t" and v == "experts"))]


@dataclass
class StepMeasure:
    """One step of one parameter: per view the worst deviation over its matrices; scale ratios and
    failed shares of the declared view; flatness s_q50/s_max of the update and of the prediction."""

    dev: dict[str, float]
    scale: list[float]
    failed: float
    flat_update: float
    flat_pred: float
    shape: dict[str, tuple[int, int, int]] = field(default_factory=dict)


def _flatness(s: np.ndarray) -> float:
    s = -np.sort(-np.asarray(s, dtype=np.float64))
    return float(s[(s.size - 1) // 2] / s[0]) if s.size and s[0] > 0 else float("nan")


def measure(obs: W.UpdateObservation, declared: str, claim: W.ClaimedNS, mode: str = "gram",
            rho: float = FAILURE_RHO) -> StepMeasure:
    """Deviation per candidate view, scale ratios and failed share for one observation."""
    inputs = W.ns_inputs(obs.group, obs.grad, obs.momentum)
    dev, shape = {}, {}
    scale: list[float] = []
    failed, flat_u, flat_p = 0.0, float("nan"), float("nan")
    adjust = obs.group.get("adjust_lr_fn")
    for view in candidate_views(declared, obs.param.ndim):
        us = W.named_matrices(obs.name, obs.update, view)
        xs = [W.named_matrices(obs.name, x, view) for x in inputs]
        ms = W.named_matrices(obs.name, obs.momentum, view) if obs.momentum is not None else []
        shape[view] = (len(us), int(us[0][2].shape[0]), int(us[0][2].shape[1]))
        worst = 0.0
        for i, (_, _, U) in enumerate(us):
            su = W.normalized_spectrum(U, mode)
            if su.size == 0:
                worst = math.inf
                continue
            best, best_s = math.inf, None
            for x in xs:
                sx = W.normalized_spectrum(x[i][2], mode)
                d = W.prediction_deviation(su, sx, claim) if sx.size == su.size else math.nan
                if d < best:
                    best, best_s = d, sx
            worst = max(worst, best)
            if view == declared and best_s is not None:
                p_norm = float(np.linalg.norm(claim.scalar_map(best_s)))
                expected = obs.lr * lr_ratio(adjust, int(U.shape[0]), int(U.shape[1])) * p_norm
                observed = float(torch.linalg.vector_norm(U.to(torch.float64)))
                if expected > 0:
                    scale.append(observed / expected)
                if i == 0:
                    flat_u, flat_p = _flatness(su), _flatness(claim.scalar_map(best_s))
            if view == declared and ms:
                sm = W.normalized_spectrum(ms[i][2], mode)
                if sm.size:
                    failed = max(failed, float(np.mean(np.asarray(claim.scalar_map(sm)) < rho)))
        dev[view] = worst
    return StepMeasure(dev, scale, failed, flat_u, flat_p, shape)


def elementwise_reason(optimizer, group: dict, state: dict) -> str | None:
    """Why a parameter's optimizer is element-wise (None when it claims to be a Muon)."""
    if group.get("use_muon") is False:
        return f"its {type(optimizer).__name__} group has use_muon=False"
    keys = [k for k in W.ELEMENTWISE_KEYS if isinstance(state.get(k), torch.Tensor)]
    if keys:
        return f"{type(optimizer).__name__} keeps element-wise state ({', '.join(keys)})"
    name = type(optimizer).__name__
    if name in W.COUPLED_WD or name in ("AdamW", "SparseAdam", "Adafactor", "Lion", "LBFGS"):
        return f"it is optimized by {name}"
    return None
