"""Pluggable orthogonalizers: the object the optimizer calls on each (momentum) matrix.

An orthogonalizer maps G (…, m, n) to an approximation of polar(G) = UVᵀ and can hand back the
normalized spectrum s = σ/‖G‖_F it saw on the way (NS: eigenvalues of its first Gram matrix, one
symmetric eigensolve, no extra products; exact: its SVD). It also knows its own cost and its scalar
map, so fidelity can be computed without touching the matrix again.
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import numpy as np
import torch

from muonscope.errors import ConfigError
from muonscope.orth.analysis import composed_map, ns_flops, ns_matmuls
from muonscope.orth.exact import polar_exact
from muonscope.orth.matrix_ns import newton_schulz
from muonscope.orth.schedules import Schedule, get_schedule


def spectrum_from_gram(gram: torch.Tensor) -> torch.Tensor:
    """Normalized singular values s (…, r), descending, from A = X Xᵀ/‖X‖_F² (eigenvalues s²)."""
    ev = torch.linalg.eigvalsh(gram.to(torch.float64))
    return ev.clamp_(min=0.0).sqrt_().flip(-1)


class Orthogonalizer(abc.ABC):
    """Maps a matrix to (an approximation of) its polar factor."""

    kind: str = "base"

    @abc.abstractmethod
    def __call__(self, G: torch.Tensor, *, want_spectrum: bool = False):
        """Return ``(O, s)``: the update and, if asked, the normalized spectrum (…, r) or None."""

    @abc.abstractmethod
    def flops(self, m: int, n: int) -> int:
        """FLOPs of one call on an m×n matrix."""

    @abc.abstractmethod
    def matmuls(self) -> int:
        """Matrix products of one call (0 when not product-based)."""

    @abc.abstractmethod
    def scalar_map(self, s: np.ndarray) -> np.ndarray:
        """Output singular value for each normalized input singular value ``s``."""

    @property
    def label(self) -> tuple[str, int]:
        """(schedule name, steps) as written to spectral records."""
        return (self.kind, 0)


class NewtonSchulz(Orthogonalizer):
    """``steps`` NS steps of ``schedule`` in compute ``dtype`` (None: bf16 on CUDA, fp32 on CPU)."""

    kind = "ns"

    def __init__(self, schedule: str | Schedule = "jordan", steps: int | None = None, *,
                 dtype: torch.dtype | None = None, eps: float = 1e-7) -> None:
        self.schedule = get_schedule(schedule)
        self.steps = self.schedule.default_steps if steps is None else int(steps)
        if self.steps < 1:
            raise ConfigError(f"NS needs at least 1 step, got {self.steps}")
        self.dtype = dtype
        self.eps = float(eps)

    def __call__(self, G, *, want_spectrum=False):
        if not want_spectrum:
            return newton_schulz(G, self.schedule, self.steps, eps=self.eps, dtype=self.dtype), None
        O, gram = newton_schulz(G, self.schedule, self.steps, eps=self.eps, dtype=self.dtype,
                                return_gram=True)
        return O, spectrum_from_gram(gram)

    def flops(self, m, n):
        return ns_flops(m, n, self.steps)

    def matmuls(self):
        return ns_matmuls(self.steps)

    def scalar_map(self, s):
        return composed_map(self.schedule, self.steps, s)

    @property
    def label(self):
        return (self.schedule.name, self.steps)

    def __repr__(self) -> str:
        return f"NewtonSchulz(schedule={self.schedule.name!r}, steps={self.steps})"


class ExactPolar(Orthogonalizer):
    """Exact polar factor by SVD in ``dtype`` (default float64)."""

    kind = "exact"

    def __init__(self, *, dtype: torch.dtype | None = torch.float64) -> None:
        self.dtype = dtype

    def __call__(self, G, *, want_spectrum=False):
        if want_spectrum:
            return polar_exact(G, dtype=self.dtype, return_singular_values=True)
        return polar_exact(G, dtype=self.dtype), None

    def flops(self, m, n):
        """Estimate: thin SVD ≈ 4r²c + 22r³ (Golub–Van Loan), plus 2r²c for U Vᵀ; r ≤ c."""
        r, c = (m, n) if m <= n else (n, m)
        return 6 * r * r * c + 22 * r**3

    def matmuls(self):
        return 0

    def scalar_map(self, s):
        s = np.asarray(s, dtype=np.float64)
        return (s > 0).astype(np.float64)

    @property
    def label(self):
        return ("exact", 0)

    def __repr__(self) -> str:
        return f"ExactPolar(dtype={self.dtype})"


_FACTORIES: dict[str, Callable[..., Orthogonalizer]] = {}


def register_orthogonalizer(kind: str, factory: Callable[..., Orthogonalizer]) -> None:
    """Make ``make_orthogonalizer(kind, …)`` call ``factory(schedule=, steps=, dtype=, eps=)``."""
    _FACTORIES[kind] = factory


register_orthogonalizer("ns", lambda schedule="jordan", steps=None, dtype=None, eps=1e-7:
                        NewtonSchulz(schedule, steps, dtype=dtype, eps=eps))
register_orthogonalizer("exact", lambda schedule=None, steps=None, dtype=None, eps=None:
                        ExactPolar(dtype=dtype or torch.float64))


def make_orthogonalizer(kind: str | Orthogonalizer = "ns", *, schedule: str | Schedule = "jordan",
                        steps: int | None = None, dtype: torch.dtype | None = None,
                        eps: float = 1e-7) -> Orthogonalizer:
    """Build an orthogonalizer from a kind name ("ns", "exact", or a registered one)."""
    if isinstance(kind, Orthogonalizer):
        return kind
    if kind not in _FACTORIES:
        import muonscope.orth.hybrid  # noqa: F401  (registers the "hybrid" kind)
    try:
        factory = _FACTORIES[kind]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown orthogonalizer {kind!r}; known: {', '.join(sorted(_FACTORIES))}"
        ) from None
    return factory(schedule=schedule, steps=steps, dtype=dtype, eps=eps)
