"""What defines a training run (written to run.json): importable without torch, so command-line
defaults can come from here."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from muonscope.conventions import FAILURE_RHO
from muonscope.errors import ConfigError

ORTHOGONALIZERS = ("ns", "exact", "hybrid", "top-q")
#: Muon lr scaling per rows×cols matrix: "match_rms_adamw" 0.2·√max(m, n) (update RMS 0.2·lr at
#: every width), "original" √max(1, m/n) (update spectral norm ∝ lr·√(m/n), width-independent).
ADJUST_LR_FNS = ("match_rms_adamw", "original")
#: The lr rule of size sweeps (results/lr_check): under "match_rms_adamw" the best lr falls with
#: width (0.02 at d48, 0.01 at d128, <= 0.005 at d288, 300 steps), so wider models train at an
#: effectively higher lr; under "original" the update's spectral norm does not grow with width and
#: the best lr is ≈ 0.02 at every size checked.
SWEEP_LR = 0.02
SWEEP_ADJUST_LR_FN = "original"


@dataclass
class TrainConfig:
    """Everything that defines a training run (written to run.json)."""

    preset: str = "tiny"
    optimizer: str = "muon"  # "muon" (Muon + AdamW) or "adamw"
    steps: int = 600
    batch_size: int = 16
    block_size: int | None = None  # None: the preset's block size
    corpus: str = "stdlib"
    corpus_bytes: int = 8_000_000
    seed: int = 0
    lr: float = 0.01  # Muon lr
    adamw_lr: float = 0.002  # embeddings, head, 1-D params (and every param for optimizer="adamw")
    weight_decay: float = 0.01
    momentum: float = 0.95
    nesterov: bool = False
    schedule: str = "jordan"
    ns_steps: int | str = 5  # or "adaptive": per-matrix steps from the monitored s_q
    orthogonalizer: str = "ns"  # "ns", "exact" (SVD polar factor), "hybrid" (NS + exact correction), "top-q" (oracle)
    target_q: float = 0.5  # adaptive: quantile NS must lift
    rho: float = FAILURE_RHO  # adaptive and hybrid: failure level
    max_steps: int | None = None  # adaptive: most steps (None: twice the schedule's default)
    hybrid_every: int = 100  # hybrid: correct every k-th step ...
    hybrid_bound: float | None = 0.0  # ... and while the bulk NS map's failed share exceeds this
    hybrid_fraction: float = 0.05  # hybrid: bottom share of directions corrected
    hybrid_correction: str = "bottom"  # hybrid: "bottom" (Gram eigendecomposition) or "exact" (SVD)
    oracle_q: float = 1.0  # top-q oracle: directions at descending rank <= ceil(q r) mapped to 1 ...
    oracle_rho: float = 0.0  # ... the rest to oracle_rho * s / s_q
    adjust_lr_fn: str = "match_rms_adamw"
    warmup_steps: int = 20
    monitor_every: int = 10
    monitor_spectrum: str = "svd"  # "svd": exact float64 spectra; "gram": reuse NS's Gram (cheaper)
    quantiles: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)
    eval_every: int = 100
    eval_batches: int = 8
    checkpoint_every: int = 200
    bf16_autocast: bool = False  # fp32 keeps bf16 rounding out of small singular values
    plan: dict | None = field(default=None, repr=False)

    def validate(self) -> TrainConfig:
        if self.optimizer not in ("muon", "adamw"):
            raise ConfigError(f"optimizer must be 'muon' or 'adamw', got {self.optimizer!r}")
        for name in ("steps", "batch_size", "monitor_every", "eval_every", "eval_batches", "checkpoint_every"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if self.adjust_lr_fn not in ADJUST_LR_FNS:
            raise ConfigError(f"adjust_lr_fn must be one of {ADJUST_LR_FNS}, got {self.adjust_lr_fn!r}")
        for name in ("lr", "adamw_lr"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ConfigError(f"{name} must be positive and finite, got {v!r}")
        if self.ns_steps != "adaptive" and (isinstance(self.ns_steps, bool) or not isinstance(self.ns_steps, int)
                                            or self.ns_steps < 1):
            raise ConfigError(f"ns_steps must be a positive integer or 'adaptive', got {self.ns_steps!r}")
        if self.orthogonalizer not in ORTHOGONALIZERS:
            raise ConfigError(f"orthogonalizer must be one of {ORTHOGONALIZERS}, got {self.orthogonalizer!r}")
        from muonscope.experiments.model import get_preset
        from muonscope.laws.design import resolve_schedule

        resolve_schedule(self.schedule)
        if self.optimizer == "muon":
            orthogonalization(self)  # raises ConfigError on bad adaptive/hybrid options
        get_preset(self.preset)
        return self

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["quantiles"] = list(self.quantiles)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown training options: {', '.join(sorted(unknown))}")
        d = dict(d)
        if "quantiles" in d:
            d["quantiles"] = tuple(d["quantiles"])
        return cls(**d).validate()


def same_run(saved: dict, requested: dict) -> bool:
    """True if ``requested`` continues ``saved``: equal except a total ``steps`` not smaller.

    Options missing from ``saved`` (added to TrainConfig later) match their default.
    """
    a, b = dict(saved), dict(requested)
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
    for k in set(b) - set(a):
        if k in defaults and b[k] == defaults[k]:
            a[k] = b[k]
    return a.pop("steps") <= b.pop("steps") and a == b


def orthogonalization(cfg: TrainConfig) -> dict:
    """Muon keyword arguments selecting NS, adaptive steps, exact polar or hybrid correction."""
    from muonscope.optim.adaptive import AdaptiveSteps
    from muonscope.orth.hybrid import HybridNS
    from muonscope.orth.oracle import TopQExact

    if cfg.orthogonalizer == "top-q":
        return {"orthogonalizer": TopQExact(cfg.oracle_q, cfg.oracle_rho), "ns_steps": None}
    if cfg.orthogonalizer == "hybrid":
        steps = None if cfg.ns_steps == "adaptive" else cfg.ns_steps
        orth = HybridNS(cfg.schedule, steps, correction=cfg.hybrid_correction, fraction=cfg.hybrid_fraction,
                        every=cfg.hybrid_every, bound=cfg.hybrid_bound, rho=cfg.rho)
        return {"orthogonalizer": orth, "ns_steps": steps}
    if cfg.ns_steps == "adaptive":
        AdaptiveSteps(cfg.target_q, cfg.rho, cfg.max_steps)  # validates
    return {"orthogonalizer": cfg.orthogonalizer, "ns_steps": cfg.ns_steps, "target_q": cfg.target_q,
            "rho": cfg.rho, "max_steps": cfg.max_steps}
