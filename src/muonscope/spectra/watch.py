"""Watching any optimizer through torch's step hooks: what it did to each matrix, and from what.

On a sampled step the pre-hook copies each watched parameter W (≥ 2 dims) and its gradient G; the
post-hook forms the applied update with decoupled weight decay removed,

    U = W_after − W_before·(1 − lr·wd)     (a Muon step W ← W(1 − lr·wd) − lr·scale·O gives U = −lr·scale·O)

and reads the momentum buffer B from the optimizer's state under the first key of
``momentum_keys`` present (``momentum_buffer``: torch.optim.Muon, Keller Jordan's Muon, SGD;
``momentum``: dion; ``exp_avg``: Adam). Weight decay is taken as coupled (nothing removed) for the
torch optimizers that add it to the gradient (SGD, Adam without ``decoupled_weight_decay``, …).

What the optimizer *claims* to run is read from its param group (:func:`claimed_ns`): a muonscope
group's configured orthogonalizer, ``ns_coefficients``/``ns_steps`` (torch.optim.Muon), else
Keller Jordan's quintic (3.4445, −4.775, 2.0315) × 5. :func:`ns_inputs` lists the NS inputs the
group's recipe allows (Nesterov lerp(G, B, β) or G + βB, and B), so a check can compare the
update's spectrum with what NS would make of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from muonscope.conventions import sampled
from muonscope.errors import ConfigError
from muonscope.orth.analysis import composed_map
from muonscope.orth.schedules import JORDAN, Schedule, get_schedule

MOMENTUM_KEYS = ("momentum_buffer", "momentum", "exp_avg")
ELEMENTWISE_KEYS = ("exp_avg_sq", "variance", "square_avg", "sum", "max_exp_avg_sq")
COUPLED_WD = frozenset({"SGD", "Adam", "Adagrad", "Adamax", "NAdam", "RAdam", "RMSprop", "ASGD", "Rprop"})


@dataclass(frozen=True)
class ClaimedNS:
    """The orthogonalization an optimizer's group says it runs: label and scalar map s ↦ p(s)."""

    schedule: str
    steps: int
    scalar_map: Callable[[np.ndarray], np.ndarray]
    coefficients: tuple | None = None

    def describe(self) -> str:
        if self.coefficients is not None:
            a, b, c = self.coefficients
            return f"{self.schedule} ({a:g}, {b:g}, {c:g})x{self.steps}"
        return f"{self.schedule}x{self.steps}"


def _schedule_claim(sched: Schedule, steps: int) -> ClaimedNS:
    coeffs = sched.coefficients[0] if len(sched.coefficients) == 1 else None
    return ClaimedNS(sched.name, int(steps), lambda s: composed_map(sched, int(steps), s), coeffs)


def claimed_ns(optimizer, group: Mapping, name: str = "") -> ClaimedNS:
    """What ``group`` of ``optimizer`` claims to orthogonalize with (see module docstring)."""
    if "orthogonalizer" in group and "schedule" in group and "ns_dtype" in group:  # a muonscope Muon group
        from muonscope.optim.policy import configured

        owner = getattr(optimizer, "muon", None) or optimizer
        orth, _ = configured(name, dict(group), getattr(owner, "plan", None), {})
        sched, steps = orth.label
        return ClaimedNS(str(sched), int(steps), orth.scalar_map,
                         tuple(group["ns_coefficients"]) if group.get("schedule") is None and sched != "exact" else None)
    if "ns_coefficients" in group:
        coeffs = tuple(float(x) for x in group["ns_coefficients"])
        sched = get_schedule("jordan") if coeffs == JORDAN else Schedule("custom", (coeffs,))
        steps = group.get("ns_steps") or sched.default_steps
        return _schedule_claim(sched, int(steps))
    return _schedule_claim(get_schedule("jordan"), 5)


def decoupled_weight_decay(optimizer, group: Mapping) -> bool:
    """Whether ``group``'s weight decay is W ← W(1 − lr·wd) (AdamW, Muon) rather than added to G."""
    if "decoupled_weight_decay" in group:
        return bool(group["decoupled_weight_decay"])
    return type(optimizer).__name__ not in COUPLED_WD


def ns_inputs(group: Mapping, grad: torch.Tensor | None, momentum: torch.Tensor | None) -> list[torch.Tensor]:
    """Candidate NS inputs of one step: the group's Nesterov input (lerp(G, B, β) for the "ema"
    form, G + βB for "sum"), then B itself; G alone when there is no momentum buffer."""
    if momentum is None:
        return [grad] if grad is not None else []
    out = []
    beta = float(group.get("momentum", 0.95))
    if grad is not None and group.get("nesterov", True):
        g, b = grad.to(torch.float64), momentum.to(torch.float64)
        out.append(g + beta * b if group.get("momentum_form") == "sum" else torch.lerp(g, b, beta))
    out.append(momentum)
    return out


@dataclass
class UpdateObservation:
    """One watched parameter on one sampled step (tensors are detached copies or state views)."""

    name: str
    param: torch.Tensor
    step: int
    before: torch.Tensor
    update: torch.Tensor  # U = W_after − W_before(1 − lr·wd), float32, parameter-shaped
    grad: torch.Tensor | None  # the gradient as it was before the step
    momentum: torch.Tensor | None  # the momentum buffer after the step
    momentum_key: str | None
    group: dict
    optimizer: object
    lr: float
    weight_decay: float
    decoupled: bool


def param_names(optimizer, model=None, names: Mapping | None = None) -> dict[int, str]:
    """{id(parameter): name} from ``names`` ({name: tensor}), the model, the groups' ``param_names``,
    else ``param{i}`` in group order."""
    out: dict[int, str] = {}
    if names:
        out.update({id(p): str(n) for n, p in names.items()})
    if model is not None:
        for n, p in model.named_parameters():
            out.setdefault(id(p), n.replace("_orig_mod.", ""))
    i = 0
    for g in optimizer.param_groups:
        gnames = g.get("param_names") or ()
        for j, p in enumerate(g["params"]):
            out.setdefault(id(p), str(gnames[j]) if j < len(gnames) else f"param{i}")
            i += 1
    return out


class StepWatch:
    """Calls ``callback(observation)`` for each watched matrix after each sampled optimizer step.

    Args:
        optimizer: any ``torch.optim.Optimizer`` (anything with ``register_step_pre_hook`` and
            ``register_step_post_hook``).
        callback: called with one :class:`UpdateObservation` per parameter that got a gradient.
        every: sample step 1 and every ``every``-th step (the watch counts ``step()`` calls).
        model: a module whose ``named_parameters()`` names the parameters (see :func:`param_names`).
        names: ``{name: tensor}`` naming the parameters (tried before the model; see :func:`param_names`).
        include: predicate on names; None watches every ≥ 2-D parameter.
        momentum_keys: state keys tried in order for the momentum buffer.
        min_ndim: watch parameters with at least this many dims (1 also watches vectors).
    """

    def __init__(self, optimizer, callback: Callable[[UpdateObservation], None], *, every: int = 1,
                 model=None, names: Mapping | None = None, include: Callable[[str], bool] | None = None,
                 momentum_keys: Iterable[str] = MOMENTUM_KEYS, min_ndim: int = 2) -> None:
        if not (hasattr(optimizer, "register_step_pre_hook") and hasattr(optimizer, "register_step_post_hook")
                and hasattr(optimizer, "param_groups")):
            raise ConfigError(f"cannot watch a {type(optimizer).__name__}: it has no torch step hooks "
                              "(register_step_pre_hook/register_step_post_hook); pass a torch.optim.Optimizer")
        if not (isinstance(every, int) and every >= 1):
            raise ConfigError(f"every must be a positive int, got {every!r}")
        self.optimizer, self.callback, self.every = optimizer, callback, every
        self.momentum_keys = tuple(momentum_keys)
        self.names = param_names(optimizer, model, names)
        self.watched = [(g, p) for g in optimizer.param_groups for p in g["params"]
                        if p.ndim >= min_ndim and (include is None or include(self.names[id(p)]))]
        if not self.watched:
            raise ConfigError(f"{type(optimizer).__name__} holds no parameter with >= {min_ndim} dims to watch")
        self.step = 0
        self._snap: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._handles = [optimizer.register_step_pre_hook(self._before),
                         optimizer.register_step_post_hook(self._after)]

    def _before(self, optimizer, args, kwargs) -> None:
        self.step += 1
        self._snap.clear()
        if not sampled(self.step, self.every):
            return
        for _, p in self.watched:
            if p.grad is not None:
                self._snap[id(p)] = (p.detach().clone(), p.grad.detach().clone())

    def momentum_of(self, p) -> tuple[torch.Tensor | None, str | None]:
        state = self.optimizer.state.get(p, {}) if hasattr(self.optimizer.state, "get") else {}
        for key in self.momentum_keys:
            buf = state.get(key)
            if isinstance(buf, torch.Tensor) and buf.shape == p.shape:
                return buf.detach(), key
        return None, None

    def _after(self, optimizer, args, kwargs) -> None:
        if not self._snap:
            return
        for group, p in self.watched:
            snap = self._snap.get(id(p))
            if snap is None:
                continue
            before, grad = snap
            lr, wd = float(group.get("lr", 0.0)), float(group.get("weight_decay", 0.0) or 0.0)
            decoupled = decoupled_weight_decay(optimizer, group)
            kept = before.mul(1 - lr * wd) if decoupled and wd else before
            update = (p.detach() - kept).to(torch.float32)
            buf, key = self.momentum_of(p)
            self.callback(UpdateObservation(
                name=self.names[id(p)], param=p, step=self.step, before=before, update=update, grad=grad,
                momentum=buf, momentum_key=key, group=group, optimizer=optimizer, lr=lr, weight_decay=wd,
                decoupled=decoupled))
        self._snap.clear()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._snap.clear()


def normalized_spectrum(X: torch.Tensor, mode: str = "gram") -> np.ndarray:
    """s = σ/‖X‖_F of a 2-D matrix, descending (float64): ``"svd"`` exact; ``"gram"`` from the
    eigenvalues of the smaller Gram matrix (absolute error on s² ≈ 1e-16)."""
    X = X.detach().to(torch.float64)
    if mode == "svd":
        sv = torch.linalg.svdvals(X)
    else:
        A = X @ X.mT if X.shape[0] <= X.shape[1] else X.mT @ X
        sv = torch.linalg.eigvalsh(A).clamp(min=0).sqrt().flip(-1)
    norm = sv.norm()
    if not (norm > 0 and math.isfinite(float(norm))):
        return np.zeros(0)
    return (sv / norm).cpu().numpy()


def view_of(name: str, shape, views: Mapping[str, str] | None = None) -> str:
    """The matrix view a parameter is read through (declared, else inferred without warnings)."""
    import warnings

    from muonscope.optim.views import MatrixViewWarning, resolve

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MatrixViewWarning)
        return resolve(name, tuple(shape), views or {})


def named_matrices(name: str, t: torch.Tensor, view: str) -> list[tuple[str, int | None, torch.Tensor]]:
    """(name, expert index, (out, in) matrix) for each matrix of ``t`` read through ``view``."""
    from muonscope.optim.views import matrices

    stack = matrices(t, view)
    if view in ("experts", "experts_t"):
        return [(f"{name}[expert {e}]", e, stack[e]) for e in range(stack.shape[0])]
    return [(name, None, stack[0])]


def prediction_deviation(s_update: np.ndarray, s_input: np.ndarray, claim: ClaimedNS) -> float:
    """How far an update's spectrum is from what the claimed NS makes of its input's spectrum:
    ‖ũ − p̃‖₂ with ũ = s_update/‖s_update‖ and p̃ = p(s_input)/‖p(s_input)‖, both sorted descending
    (the RMS deviation of the singular values in units of their RMS; 0 for an exact match, at most √2)."""
    p = -np.sort(-np.asarray(claim.scalar_map(np.asarray(s_input, dtype=np.float64)), dtype=np.float64))
    u = -np.sort(-np.asarray(s_update, dtype=np.float64))
    pn, un = np.linalg.norm(p), np.linalg.norm(u)
    if not (pn > 0 and un > 0) or p.shape != u.shape:
        return float("nan")
    return float(np.linalg.norm(u / un - p / pn))
