"""Update directions compared in the dynamics experiments, and the loop step that applies them.

Each rule maps the (momentum) matrix G (…, m, n), r = min(m, n), to a direction D; the optimizer
step is W ← W − lr·D. All rules but ``gd`` move W by a Frobenius distance lr·√r per step (the norm
of a full-rank polar factor UVᵀ), so at equal lr they travel equally far:

- ``muon``: D = polar(G) = UVᵀ (exact, float64 SVD).
- ``muon-ns``: D = NS_k(G), Newton–Schulz with any schedule and step count (float64 here).
- ``gd``: D = G (plain gradient descent; its own lr, default 1/λ_max of the sensing operator).
- ``nmgd``: D = √r·G/‖G‖_F, norm-matched gradient descent: the gradient's direction and spectral
  shape, Muon's step length.
- ``random-orth``: D = ±Q with Q a Haar-random m×n partial isometry (flat spectrum like UVᵀ, but
  singular frames unrelated to G), sign chosen so that ⟨D, G⟩ ≥ 0: a control that isolates "the
  update has a flat spectrum" from "the update uses the gradient's singular directions".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from muonscope.errors import ConfigError
from muonscope.orth import newton_schulz, polar_exact
from muonscope.orth.schedules import get_schedule

RULES = ("muon", "muon-ns", "gd", "nmgd", "random-orth")


@dataclass(frozen=True)
class UpdateRule:
    """A named update direction (see module docstring); ``schedule``/``steps`` only for muon-ns."""

    kind: str
    schedule: str = "jordan"
    steps: int | None = None
    label: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.kind not in RULES:
            raise ConfigError(f"unknown update rule {self.kind!r}; known: {', '.join(RULES)}")
        if self.kind == "muon-ns":
            sched = get_schedule(self.schedule)  # raises ScheduleError for unknown names
            steps = sched.default_steps if self.steps is None else int(self.steps)
            if steps < 1:
                raise ConfigError(f"muon-ns needs at least one NS step, got {steps}")
            object.__setattr__(self, "steps", steps)
        if not self.label:
            name = f"muon-ns[{self.schedule},{self.steps}]" if self.kind == "muon-ns" else self.kind
            object.__setattr__(self, "label", name)

    @classmethod
    def parse(cls, spec: str) -> UpdateRule:
        """``"muon"``, ``"gd"``, ``"nmgd"``, ``"random-orth"`` or ``"muon-ns[:schedule[:steps]]"``."""
        parts = spec.strip().split(":")
        kind = parts[0]
        if kind != "muon-ns":
            if len(parts) > 1:
                raise ConfigError(f"only muon-ns takes ':schedule:steps', got {spec!r}")
            return cls(kind)
        schedule = parts[1] if len(parts) > 1 and parts[1] else "jordan"
        try:
            steps = int(parts[2]) if len(parts) > 2 else None
        except ValueError:
            raise ConfigError(f"NS step count in {spec!r} is not an int") from None
        return cls(kind, schedule, steps)

    @property
    def ns_label(self) -> tuple[str, int]:
        """(ns_schedule, ns_steps) for spectral records."""
        if self.kind == "muon-ns":
            return get_schedule(self.schedule).name, int(self.steps)
        return ("exact", 0) if self.kind == "muon" else ("none", 0)

    def direction(self, G: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The step direction D for G (…, m, n)."""
        if self.kind == "muon":
            return polar_exact(G, dtype=torch.float64)
        if self.kind == "muon-ns":
            return newton_schulz(G, self.schedule, self.steps, dtype=torch.float64, eps=1e-300)
        if self.kind == "gd":
            return G
        r = min(G.shape[-2:])
        if self.kind == "nmgd":
            norm = torch.linalg.matrix_norm(G, keepdim=True)
            return G * (math.sqrt(r) / norm.clamp(min=torch.finfo(G.dtype).tiny))
        return _signed_random_isometry(G, generator)


def _signed_random_isometry(G: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    m, n = G.shape[-2:]
    tall = m >= n
    shape = (*G.shape[:-2], max(m, n), min(m, n))
    Q, R = torch.linalg.qr(torch.randn(shape, generator=generator, dtype=G.dtype))
    Q = Q * torch.sign(torch.diagonal(R, dim1=-2, dim2=-1)).unsqueeze(-2)
    if not tall:
        Q = Q.mT
    sign = torch.sign((Q * G).sum(dim=(-2, -1), keepdim=True))
    return Q * torch.where(sign == 0, torch.ones_like(sign), sign)


def lr_at(step: int, total: int, lr: float, schedule: str) -> float:
    """Learning rate at 0-based ``step`` of ``total``: constant, cosine (to 0) or linear (to 0)."""
    if schedule == "constant":
        return lr
    frac = step / max(total, 1)
    if schedule == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * frac))
    if schedule == "linear":
        return lr * (1.0 - frac)
    raise ConfigError(f"unknown lr schedule {schedule!r}; use constant, cosine or linear")


class Stepper:
    """W ← W − lr·D(B) with momentum B ← βB + G (Nesterov: D applied to G + βB); β = 0 is plain."""

    def __init__(self, rule: UpdateRule, *, momentum: float = 0.0, nesterov: bool = False,
                 generator: torch.Generator | None = None) -> None:
        if not (0.0 <= momentum < 1.0):
            raise ConfigError(f"momentum must lie in [0, 1), got {momentum}")
        self.rule = rule
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.generator = generator
        self.buffer: torch.Tensor | None = None

    def input(self, G: torch.Tensor) -> torch.Tensor:
        """Update the momentum buffer with G; return the matrix the rule is applied to."""
        if self.momentum == 0.0:
            return G
        self.buffer = G.clone() if self.buffer is None else self.buffer.mul_(self.momentum).add_(G)
        return G + self.momentum * self.buffer if self.nesterov else self.buffer

    def step(self, W: torch.Tensor, G: torch.Tensor, lr: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (new W, the rule's input X, the direction D)."""
        X = self.input(G)
        D = self.rule.direction(X, self.generator)
        return W - lr * D, X, D
