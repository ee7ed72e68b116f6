"""What defines a training run (written to run.json): importable without torch, so command-line
defaults can come from here."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from muonscope import validate as V
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
#: Names of the model presets (``experiments.model.PRESETS``, which needs torch), for help texts.
PRESET_NAMES = ("tiny", "d32", "d48", "d64", "d96", "d128", "d176", "d224", "d288", "L4-d48", "L8-d64",
                "L12-d80", "L16-d96", "gpu-d128", "gpu-d192", "gpu-d256", "gpu-d320", "gpu-d448", "gpu-d576")
#: Largest batch size (sequences per step): beyond it one step of the largest preset cannot fit in memory.
MAX_BATCH_SIZE = 65_536
MAX_EVAL_BATCHES = 10_000
MAX_CORPUS_BYTES = 2**34


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
        """Check every option (numeric ones bounded through :mod:`muonscope.validate`, so no value
        can make a run hang or allocate without limit); raises :class:`ConfigError`."""
        if self.optimizer not in ("muon", "adamw"):
            raise ConfigError(f"optimizer must be 'muon' or 'adamw', got {self.optimizer!r}")
        for name in ("steps", "monitor_every", "eval_every", "checkpoint_every", "warmup_steps"):
            _int_field(self, name, lambda n, v: V.steps(n, v, low=0 if n == "warmup_steps" else 1))
        _int_field(self, "batch_size", lambda n, v: V.count(n, v, high=MAX_BATCH_SIZE))
        _int_field(self, "eval_batches", lambda n, v: V.count(n, v, high=MAX_EVAL_BATCHES))
        _int_field(self, "corpus_bytes", lambda n, v: V.count(n, v, high=MAX_CORPUS_BYTES))
        _int_field(self, "seed", V.seed)
        if self.block_size is not None:
            _int_field(self, "block_size", lambda n, v: V.count(n, v, high=1 << 20))
        for name in ("lr", "adamw_lr"):
            _float_field(self, name, V.positive)
        _float_field(self, "weight_decay", V.nonnegative)
        _float_field(self, "momentum", lambda n, v: V.real(n, v, low=0.0, high=1.0, high_open=True))
        for name in ("target_q", "rho", "hybrid_fraction"):
            _float_field(self, name, lambda n, v: V.real(n, v, low=0.0, high=1.0, low_open=True))
        _float_field(self, "oracle_q", lambda n, v: V.real(n, v, low=0.0, high=1.0, low_open=True))
        _float_field(self, "oracle_rho", lambda n, v: V.real(n, v, low=0.0, high=1.0))
        _int_field(self, "hybrid_every", lambda n, v: V.steps(n, v))
        if self.max_steps is not None:
            _int_field(self, "max_steps", V.ns_steps)
        if self.hybrid_bound is not None:
            _float_field(self, "hybrid_bound", lambda n, v: V.real(n, v, low=0.0, high=1.0))
        if not isinstance(self.nesterov, bool) or not isinstance(self.bf16_autocast, bool):
            raise ConfigError(f"nesterov and bf16_autocast must be true or false, got "
                              f"{self.nesterov!r}, {self.bf16_autocast!r}")
        for name in ("preset", "corpus", "schedule", "orthogonalizer", "adjust_lr_fn", "monitor_spectrum",
                     "hybrid_correction"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"{name} must be a string, got {getattr(self, name)!r}")
        try:
            qs = tuple(self.quantiles)
        except TypeError:
            raise ConfigError(f"quantiles must be a list of levels in (0, 1], got {self.quantiles!r}") from None
        if not qs or len(qs) > 1000:
            raise ConfigError(f"quantiles must list 1 to 1000 levels, got {len(qs)}")
        self.quantiles = tuple(V.real("quantiles", q, low=0.0, high=1.0, low_open=True) for q in qs)
        if self.monitor_spectrum not in ("svd", "gram"):
            raise ConfigError(f"monitor_spectrum must be 'svd' or 'gram', got {self.monitor_spectrum!r}")
        if self.hybrid_correction not in ("bottom", "exact"):
            raise ConfigError(f"hybrid_correction must be 'bottom' or 'exact', got {self.hybrid_correction!r}")
        if self.plan is not None and not isinstance(self.plan, dict):
            raise ConfigError(f"plan must be a JSON object (from `muonscope plan`), got {type(self.plan).__name__}")
        if self.adjust_lr_fn not in ADJUST_LR_FNS:
            raise ConfigError(f"adjust_lr_fn must be one of {ADJUST_LR_FNS}, got {self.adjust_lr_fn!r}")
        if self.ns_steps != "adaptive":
            if isinstance(self.ns_steps, str):
                raise ConfigError(f"ns_steps must be a positive integer or 'adaptive', got {self.ns_steps!r}")
            _int_field(self, "ns_steps", V.ns_steps)
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


def _int_field(cfg, name: str, check) -> None:
    v = getattr(cfg, name)
    if isinstance(v, float) or isinstance(v, str):
        raise ConfigError(f"{name} must be an integer, got {v!r}")
    setattr(cfg, name, check(name, v))


def _float_field(cfg, name: str, check) -> None:
    v = getattr(cfg, name)
    if isinstance(v, str):
        raise ConfigError(f"{name} must be a number, got {v!r}")
    setattr(cfg, name, check(name, v))


def config_conflicts(saved: dict, requested: dict) -> list[str]:
    """``name: saved -> requested`` for every option of ``requested`` that a resume of ``saved``
    cannot take (everything but a ``steps`` not smaller must be equal; options missing from
    ``saved`` match their default)."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
    defaults["plan"] = None
    out = []
    for k, new in requested.items():
        old = saved.get(k, defaults.get(k))
        if k == "steps":
            if isinstance(old, int) and isinstance(new, int) and new < old:
                out.append(f"steps: {old} -> {new} (steps may only grow)")
            continue
        if k == "quantiles":
            old, new = list(old or []), list(new or [])
        if old != new:
            out.append(f"{k}: {_show(old)} -> {_show(new)}")
    return out


def _show(v) -> str:
    if isinstance(v, dict):
        return "{...}" if v else "{}"
    return repr(v)


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
