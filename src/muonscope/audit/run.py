"""``audit(model, optimizer, batches)``: train a few steps and report silent Muon failures.

Every step is watched (:class:`~muonscope.spectra.watch.StepWatch`). Each hidden matrix that
:func:`~muonscope.optim.routing.split_params` would give Muon is judged (:mod:`.checks`), per
step, then by the median over steps:

- ``elementwise``: its optimizer is element-wise (AdamW state, ``use_muon=False``, SGD…);
- ``not_orthogonalized``: deviation of the update's spectrum from the claimed NS map > ``dev_bound``
  in every candidate view (or a claim of 0 NS steps);
- ``wrong_view``: the declared view deviates but another reading of the tensor matches
  (an expert stack orthogonalized as one flattened matrix, or the reverse);
- ``scale``: ‖U‖ off the declared lr rule by more than a factor ``scale_tol``;
- ``ns_failure``: share of momentum directions NS maps below ρ > ``failed_bound``;
- ``nonfinite`` (any parameter NaN/Inf after a step) and ``frozen`` (a trainable parameter that
  never changed).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from muonscope.audit import checks as C
from muonscope.conventions import FAILURE_RHO
from muonscope.errors import ConfigError
from muonscope.spectra import watch as W

KINDS = ("elementwise", "not_orthogonalized", "wrong_view", "scale", "ns_failure", "nonfinite", "frozen")


@dataclass(frozen=True)
class Finding:
    """One problem with one parameter: ``kind`` (one of KINDS) and a one-line explanation."""

    param: str
    kind: str
    message: str
    value: float | None = None


@dataclass
class AuditReport:
    """Findings plus the measured margins of every judged matrix (median over steps)."""

    findings: list[Finding]
    steps: int
    margins: dict[str, dict] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.findings

    def to_dict(self) -> dict:
        return {"ok": self.ok, "steps": self.steps, "thresholds": self.thresholds,
                "findings": [asdict(f) for f in self.findings], "margins": self.margins}

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), allow_nan=True, **kw)


def default_loss(model: nn.Module, batch):
    """``model(batch)`` (``model(*batch)`` for a tuple/list); its ``.loss`` if it has one."""
    out = model(*batch) if isinstance(batch, (tuple, list)) else model(**batch) if isinstance(batch, Mapping) \
        else model(batch)
    loss = getattr(out, "loss", out)
    if not (isinstance(loss, torch.Tensor) and loss.numel() == 1):
        raise ConfigError("the model's output is not a scalar loss; pass loss_fn=lambda model, batch: ...")
    return loss


def _optimizers(optimizer) -> list:
    opts = list(optimizer) if isinstance(optimizer, (list, tuple)) else [optimizer]
    if not opts:
        raise ConfigError("audit needs an optimizer (or a list of them)")
    for o in opts:
        if not (hasattr(o, "register_step_pre_hook") and hasattr(o, "param_groups") and hasattr(o, "step")):
            raise ConfigError(f"cannot audit a {type(o).__name__}: it has no torch step hooks "
                              "(register_step_pre_hook); pass a torch.optim.Optimizer")
    return opts


def audit(model: nn.Module, optimizer, batches: Iterable, *, loss_fn: Callable | None = None, steps: int = 5,
          views: Mapping[str, str] | None = None, momentum_keys: Sequence[str] = W.MOMENTUM_KEYS,
          dev_bound: float = 0.2, scale_tol: float = 1.3, failed_bound: float = 0.25, rho: float = FAILURE_RHO,
          muon_params=None, adamw_params=None) -> AuditReport:
    """Train ``steps`` steps of ``model`` with ``optimizer`` (one or a list) on ``batches`` (cycled)
    and judge every hidden matrix (see module docstring). The model and optimizer are trained in
    place. ``views`` add to or override ``infer_views(model)``; ``muon_params``/``adamw_params``
    are :func:`split_params`' overrides of which matrices should be Muon's."""
    from muonscope.optim.routing import split_params
    from muonscope.optim.views import infer_views

    if not isinstance(model, nn.Module):
        raise ConfigError(f"audit needs an nn.Module, got {type(model).__name__}")
    opts = _optimizers(optimizer)
    if not (isinstance(steps, int) and steps >= 1):
        raise ConfigError(f"steps must be a positive int, got {steps!r}")
    expected = {n for n, _ in split_params(model, muon=muon_params, adamw=adamw_params).muon}
    if not expected:
        raise ConfigError(f"{type(model).__name__} has no trainable hidden matrix (>= 2-D) to audit")
    it = iter(batches) if batches is not None else iter(())
    first = next(it, None)
    if first is None:
        raise ConfigError("audit got no batches; pass an iterable of at least one batch")
    batch_iter = itertools.cycle(itertools.chain([first], it)) if steps > 1 else iter([first])
    loss_fn = loss_fn or default_loss
    declared = {**infer_views(model), **(views or {})}
    named = {n.replace("_orig_mod.", ""): p for n, p in model.named_parameters()}
    owner = {id(p): (o, g) for o in opts for g in o.param_groups for p in g["params"]}

    measures: dict[str, list[C.StepMeasure]] = {}
    claims: dict[str, W.ClaimedNS] = {}
    elementwise: dict[str, str] = {}

    def on_update(obs: W.UpdateObservation) -> None:
        if obs.name not in expected:
            return
        state = obs.optimizer.state.get(obs.param, {})
        reason = C.elementwise_reason(obs.optimizer, obs.group, state)
        if reason is not None:
            elementwise[obs.name] = reason
            return
        if not torch.isfinite(obs.update).all():
            return
        claim = claims.setdefault(obs.name, W.claimed_ns(obs.optimizer, obs.group, obs.name))
        view = W.view_of(obs.name, obs.param.shape, declared)
        measures.setdefault(obs.name, []).append(C.measure(obs, view, claim, rho=rho))

    watches = []
    try:
        for o in opts:
            if any(p.ndim >= 2 for g in o.param_groups for p in g["params"]):
                watches.append(W.StepWatch(o, on_update, every=1, names=named, momentum_keys=momentum_keys))
        initial = {n: p.detach().clone() for n, p in named.items() if p.requires_grad}
        nonfinite: dict[str, int] = {}
        for step in range(1, steps + 1):
            for o in opts:
                o.zero_grad(set_to_none=True)
            loss = loss_fn(model, next(batch_iter))
            if not (isinstance(loss, torch.Tensor) and loss.numel() == 1):
                raise ConfigError("loss_fn must return a scalar tensor")
            loss.backward()
            for o in opts:
                o.step()
            for n, p in named.items():
                if n not in nonfinite and p.requires_grad and not torch.isfinite(p.detach()).all():
                    nonfinite[n] = step
    finally:
        for w in watches:
            w.remove()

    report = AuditReport([], steps, thresholds={"dev_bound": dev_bound, "scale_tol": scale_tol,
                                                "failed_bound": failed_bound, "rho": rho})
    add = report.findings.append
    for n, s in nonfinite.items():
        add(Finding(n, "nonfinite", f"NaN/Inf in the parameter after step {s}"))
    for n, p0 in initial.items():
        if n not in nonfinite and torch.equal(p0, named[n].detach()):
            where = "it is in no optimizer" if id(named[n]) not in owner else "it got no gradient or a zero lr"
            add(Finding(n, "frozen", f"trainable but unchanged over {steps} steps ({where})"))
    for n in sorted(expected):
        if n in nonfinite:
            continue
        if n in elementwise:
            add(Finding(n, "elementwise", f"hidden matrix {tuple(named[n].shape)} is not orthogonalized: {elementwise[n]}"))
            continue
        ms = measures.get(n)
        if not ms:
            continue
        _judge(n, owner[id(named[n])][1].get("adjust_lr_fn"), ms, claims[n], W.view_of(n, named[n].shape, declared), report,
               dev_bound, scale_tol, failed_bound, rho)
    return report


def _judge(name, adjust, ms: list[C.StepMeasure], claim: W.ClaimedNS, view: str, report: AuditReport,
           dev_bound: float, scale_tol: float, failed_bound: float, rho: float) -> None:
    add = report.findings.append
    dev = {v: float(np.median([m.dev[v] for m in ms])) for v in ms[0].dev}
    scales = [s for m in ms for s in m.scale]
    scale = float(np.exp(np.median(np.log(scales)))) if scales else float("nan")
    failed = float(np.median([m.failed for m in ms]))
    report.margins[name] = {"view": view, "deviation": dev, "scale_ratio": scale, "frac_failed": failed,
                            "claimed": claim.describe()}
    E, rows, cols = ms[0].shape[view]
    what = f"{E} x ({rows}, {cols})" if E > 1 else f"({rows}, {cols})"
    if claim.steps == 0:
        add(Finding(name, "not_orthogonalized", f"the optimizer claims {claim.describe()}: 0 NS steps is momentum SGD"))
        return
    if not dev[view] <= dev_bound:
        better = [v for v, d in dev.items() if v != view and d <= dev_bound]
        if better:
            b = better[0]
            Eb, rb, cb = ms[0].shape[b]
            add(Finding(name, "wrong_view",
                        f"should be orthogonalized as {C.VIEW_WORDS[view]} {what} but the update is orthogonal as "
                        f"{C.VIEW_WORDS[b]} {Eb} x ({rb}, {cb}) (deviation {dev[b]:.3f} vs {dev[view]:.3f})",
                        dev[view]))
            return
        fu = float(np.median([m.flat_update for m in ms]))
        fp = float(np.median([m.flat_pred for m in ms]))
        add(Finding(name, "not_orthogonalized",
                    f"update spectrum is not flat: s_q50/s_max {fu:.3f} where {claim.describe()} from this momentum "
                    f"gives {fp:.3f} (deviation {dev[view]:.2f} > {dev_bound:g})", dev[view]))
        return
    rule = {"match_rms_adamw": "lr x 0.2 sqrt(max(out, in))", "none": "lr"}.get(adjust or "", "lr x sqrt(max(1, out/in))")
    if math.isfinite(scale) and not (1 / scale_tol <= scale <= scale_tol):
        add(Finding(name, "scale",
                    f"update is {scale:.2f}x the declared lr rule ({rule} for {what} in (out, in) "
                    "orientation)", scale))
    if failed > failed_bound:
        add(Finding(name, "ns_failure",
                    f"{failed:.0%} of momentum directions map below {rho:g} under {claim.describe()} "
                    f"(bound {failed_bound:.0%}): NS fails for this layer", failed))
