"""Newton-Schulz schedules as data.

A schedule is a sequence of odd-quintic coefficients (a, b, c), one per step; step i maps each
normalized singular value s to a·s + b·s³ + c·s⁵. Steps beyond the sequence's length repeat the
last tuple. The input is normalized by ``‖X‖_F · safety``; with ``safety = f > 1`` every tuple
except the last is divided by (f, f³, f⁵) (the Polar Express safety rule), so the composition still
maps [ℓ, 1] where the undamped design intended while tolerating round-off that pushes s above 1.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from muonscope.errors import ScheduleError

Coeffs = tuple[float, float, float]


@dataclass(frozen=True)
class Schedule:
    """A named NS schedule: per-step (a, b, c), input safety factor, repeat-last rule."""

    name: str
    coefficients: tuple[Coeffs, ...]
    safety: float = 1.0
    default_steps: int = 5
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ScheduleError("a schedule needs a non-empty string name")
        coeffs = tuple(self.coefficients) if self.coefficients is not None else ()
        if not coeffs:
            raise ScheduleError(f"schedule {self.name!r} has no coefficient tuples")
        checked = []
        for i, t in enumerate(coeffs):
            try:
                tup = tuple(float(x) for x in t)
            except (TypeError, ValueError) as exc:
                raise ScheduleError(
                    f"schedule {self.name!r}, step {i}: coefficients must be 3 numbers (a, b, c), got {t!r}"
                ) from exc
            if len(tup) != 3:
                raise ScheduleError(
                    f"schedule {self.name!r}, step {i}: expected 3 coefficients (a, b, c), got {len(tup)}"
                )
            if not all(math.isfinite(x) for x in tup):
                raise ScheduleError(f"schedule {self.name!r}, step {i}: non-finite coefficient in {tup}")
            checked.append(tup)
        object.__setattr__(self, "coefficients", tuple(checked))
        if not (math.isfinite(self.safety) and self.safety >= 1.0):
            raise ScheduleError(f"schedule {self.name!r}: safety factor must be finite and >= 1, got {self.safety}")
        if not (isinstance(self.default_steps, int) and self.default_steps >= 1):
            raise ScheduleError(f"schedule {self.name!r}: default_steps must be a positive int")

    def step_coefficients(self, steps: int) -> list[Coeffs]:
        """Effective (a, b, c) for each of ``steps`` steps, safety damping applied."""
        if not isinstance(steps, int) or steps < 0:
            raise ScheduleError(f"steps must be a non-negative int, got {steps!r}")
        n = len(self.coefficients)
        f = self.safety
        out = []
        for i in range(steps):
            a, b, c = self.coefficients[min(i, n - 1)]
            if f != 1.0 and i < n - 1:
                a, b, c = a / f, b / f**3, c / f**5
            out.append((a, b, c))
        return out

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "coefficients": [list(t) for t in self.coefficients],
            "safety": self.safety,
            "default_steps": self.default_steps,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Schedule:
        if not isinstance(d, dict) or "name" not in d or "coefficients" not in d:
            raise ScheduleError(f"a schedule dict needs 'name' and 'coefficients', got {d!r}")
        return cls(
            name=d["name"],
            coefficients=tuple(tuple(t) for t in d["coefficients"]),
            safety=float(d.get("safety", 1.0)),
            default_steps=int(d.get("default_steps", 5)),
            description=d.get("description", ""),
        )


JORDAN: Coeffs = (3.4445, -4.7750, 2.0315)
CLASSICAL: Coeffs = (2.0, -1.5, 0.5)
POLAR_EXPRESS_COEFFS: tuple[Coeffs, ...] = (
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
)
DION5_COEFFS: tuple[Coeffs, ...] = (
    (4.0848, -6.8946, 2.9270),
    (3.9505, -6.3029, 2.6377),
    (3.7418, -5.5913, 2.3037),
    (2.8769, -3.1427, 1.2046),
    (2.8366, -3.0525, 1.2012),
)

_BUILTINS = (
    Schedule("jordan", (JORDAN,), description="Keller Jordan's quintic (3.4445, -4.7750, 2.0315)"),
    Schedule(
        "polar-express",
        POLAR_EXPRESS_COEFFS,
        safety=1.01,
        description="Polar Express minimax schedule for s >= 1e-3 (Amsel et al. 2025), safety 1.01",
    ),
    Schedule("dion5", DION5_COEFFS, description="5-step per-step tuned schedule"),
    Schedule("classical", (CLASSICAL,), description="classical quintic Newton-Schulz (2, -1.5, 0.5)"),
    Schedule(
        "hybrid10",
        (JORDAN,) * 8 + (CLASSICAL,),
        default_steps=10,
        description="8 jordan steps, then classical steps",
    ),
)

_REGISTRY: dict[str, Schedule] = {s.name: s for s in _BUILTINS}
BUILTIN_NAMES = tuple(s.name for s in _BUILTINS)


def register_schedule(schedule: Schedule, *, overwrite: bool = False) -> Schedule:
    """Add ``schedule`` to the registry under its name (built-ins are never replaced)."""
    if not isinstance(schedule, Schedule):
        raise ScheduleError(f"register_schedule expects a Schedule, got {type(schedule).__name__}")
    if schedule.name in BUILTIN_NAMES:
        raise ScheduleError(f"{schedule.name!r} is a built-in schedule and cannot be replaced")
    if schedule.name in _REGISTRY and not overwrite:
        raise ScheduleError(f"schedule {schedule.name!r} is already registered (pass overwrite=True)")
    _REGISTRY[schedule.name] = schedule
    return schedule


def get_schedule(spec: str | Schedule | Sequence[Iterable[float]]) -> Schedule:
    """Resolve a name, a :class:`Schedule`, or a raw sequence of (a, b, c) tuples."""
    if isinstance(spec, Schedule):
        return spec
    if isinstance(spec, str):
        try:
            return _REGISTRY[spec]
        except KeyError:
            raise ScheduleError(
                f"unknown schedule {spec!r}; known: {', '.join(sorted(_REGISTRY))}"
            ) from None
    if isinstance(spec, Sequence) and spec and all(isinstance(x, (int, float)) for x in spec):
        return Schedule("custom", (tuple(spec),))
    if isinstance(spec, Sequence):
        return Schedule("custom", tuple(tuple(t) for t in spec))
    raise ScheduleError(f"cannot interpret {spec!r} as a schedule")


def list_schedules() -> list[Schedule]:
    return list(_REGISTRY.values())
