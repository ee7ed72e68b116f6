"""One validation layer for numeric options, shared by the library and the CLI.

Every check returns the normalized value or raises :class:`~muonscope.errors.ConfigError` with one
line that names the option, says what is allowed and shows what was given. Values may be Python
numbers, numeric strings (CLI, JSON) or one-element tensors (``lr``); bools are refused as numbers.
The bounds below exist so that no option can make a command hang or allocate without limit.
"""

from __future__ import annotations

import math
import numbers

from muonscope.errors import ConfigError

MAX_STEPS = 10_000_000          # training / dynamics steps
MAX_NS_STEPS = 100              # Newton-Schulz steps per call (the planner never needs > 20)
MAX_COUNT = 1_000_000           # bootstrap draws, sizes, batch sizes and other counts
MAX_SEED = 2**63 - 1            # what torch.manual_seed accepts
MAX_THREADS = 1024
MAX_NS_COEFFICIENT = 1e4        # |a|, |b|, |c| of one NS step (designed schedules stay below 30)
MAX_LR = 1e6                    # learning rates: an update of that size already swamps any weight


def _as_number(name: str, value) -> float:
    if isinstance(value, bool) or value is None:
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if hasattr(value, "numel") and hasattr(value, "item"):  # a tensor, without importing torch
        if value.numel() != 1:
            raise ConfigError(f"{name} must be a number or a 1-element tensor, got shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise ConfigError(f"{name} must be a number, got {value!r}")


def _num_text(x) -> str:
    """Integers exactly (2**63 - 1 is not 9.22337e+18), other numbers in %g."""
    return str(x) if isinstance(x, numbers.Integral) else f"{x:g}"


def _range_text(low, high, low_open: bool, high_open: bool) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {_num_text(low)}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {_num_text(high)}")
    return " and ".join(parts)


def real(name: str, value, *, low: float | None = None, high: float | None = None,
         low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a finite float in the given range (closed ends unless ``*_open``)."""
    x = _as_number(name, value)
    ok = math.isfinite(x)
    if ok and low is not None:
        ok = x > low if low_open else x >= low
    if ok and high is not None:
        ok = x < high if high_open else x <= high
    if not ok:
        bound = _range_text(low, high, low_open, high_open)
        raise ConfigError(f"{name} must be a finite number{' ' + bound if bound else ''}, got {value!r}")
    return x


def integer(name: str, value, *, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int in [low, high]; integral floats (``1e3``) are accepted, fractions are not."""
    x = _as_number(name, value)
    if not math.isfinite(x) or x != math.floor(x):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    n = int(value) if isinstance(value, numbers.Integral) else int(x)
    if (low is not None and n < low) or (high is not None and n > high):
        raise ConfigError(f"{name} must be an integer {_range_text(low, high, False, False)}, got {value!r}")
    return n


def positive(name: str, value) -> float:
    """A finite float > 0."""
    return real(name, value, low=0.0, low_open=True)


def nonnegative(name: str, value) -> float:
    """A finite float >= 0."""
    return real(name, value, low=0.0)


def fraction(name: str, value, *, open_ends: bool = True) -> float:
    """A finite float in (0, 1) (``open_ends``) or [0, 1]."""
    return real(name, value, low=0.0, high=1.0, low_open=open_ends, high_open=open_ends)


def learning_rate(name: str, value) -> float:
    """A learning rate in [0, MAX_LR] (a number or a 1-element tensor)."""
    return real(name, value, low=0.0, high=MAX_LR)


def ns_coefficients(name: str, coefficients) -> None:
    """Every (a, b, c) of an NS schedule within ±MAX_NS_COEFFICIENT (larger ones overflow the
    iteration, in fp16 even when converted)."""
    for step, abc in enumerate(coefficients):
        for x in abc:
            if not abs(float(x)) <= MAX_NS_COEFFICIENT:
                raise ConfigError(f"{name}: coefficient {x!r} of step {step} exceeds ±{MAX_NS_COEFFICIENT:g}")


def steps(name: str, value, *, low: int = 1, high: int = MAX_STEPS) -> int:
    """A step count in [low, high]."""
    return integer(name, value, low=low, high=high)


def ns_steps(name: str, value) -> int:
    """A Newton-Schulz step count in [1, MAX_NS_STEPS]."""
    return integer(name, value, low=1, high=MAX_NS_STEPS)


def count(name: str, value, *, low: int = 1, high: int = MAX_COUNT) -> int:
    """A count (batch size, bootstrap draws, sizes) in [low, high]."""
    return integer(name, value, low=low, high=high)


def seed(name: str, value) -> int:
    """A seed in [0, 2**63 - 1]."""
    return integer(name, value, low=0, high=MAX_SEED)


def threads(name: str, value) -> int:
    """A thread count in [1, MAX_THREADS]."""
    return integer(name, value, low=1, high=MAX_THREADS)
