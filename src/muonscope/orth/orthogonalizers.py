"""Pluggable orthogonalizers: the object the optimizer calls on each (momentum) matrix.

An orthogonalizer maps G (…, m, n) to an approximation of polar(G) = UVᵀ and can hand back the
normalized spectrum s = σ/‖G‖_F it saw on the way (NS: eigenvalues of its first Gram matrix, one
symmetric eigensolve, no extra products; exact: its SVD). It also knows its own cost and its scalar
map, so fidelity can be computed without touching the matrix again.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable

import numpy as np
import torch

from muonscope.errors import ConfigError
from muonscope.orth.analysis import composed_map, gram_ns_cost, gram_pays, ns_flops, ns_matmuls
from muonscope.orth.exact import polar_exact
from muonscope.orth.gram_ns import (
    check_restarts,
    default_restarts,
    gram_compute_dtype,
    gram_newton_schulz,
)
from muonscope.orth.matrix_ns import default_compute_dtype, newton_schulz
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
    """``steps`` NS steps of ``schedule`` in compute ``dtype`` (None: bf16 where bf16 GEMM is fast,
    fp32 elsewhere: :func:`~muonscope.orth.matrix_ns.default_compute_dtype`). Spectra handed back
    come from a Gram matrix formed in fp32 or better."""

    kind = "ns"
    accepts_overwrite = True  # __call__(G, overwrite=True) may normalize G in place

    def __init__(self, schedule: str | Schedule = "jordan", steps: int | None = None, *,
                 dtype: torch.dtype | None = None, eps: float = 1e-7) -> None:
        self.schedule = get_schedule(schedule)
        self.steps = self.schedule.default_steps if steps is None else int(steps)
        if self.steps < 1:
            raise ConfigError(f"NS needs at least 1 step, got {self.steps}")
        self.dtype = dtype
        self.eps = float(eps)

    def compute_dtype(self, device: torch.device | str = "cpu") -> torch.dtype:
        """The dtype NS computes in on ``device``."""
        return self.dtype or default_compute_dtype(device)

    def __call__(self, G, *, want_spectrum=False, overwrite=False):
        kw = dict(eps=self.eps, dtype=self.dtype, overwrite=overwrite)
        if not want_spectrum:
            return newton_schulz(G, self.schedule, self.steps, **kw), None
        O, gram = newton_schulz(G, self.schedule, self.steps, return_gram=True, **kw)
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


class GramNewtonSchulz(NewtonSchulz):
    """``steps`` Gram-NS steps of ``schedule`` (:mod:`muonscope.orth.gram_ns`): the same scalar map
    as :class:`NewtonSchulz` at 4m²n + O(k·m³) FLOPs. ``dtype`` None: fp16 on CUDA, else the NS
    default; ``restarts`` None: the safe default of the compute dtype."""

    kind = "gram"

    def __init__(self, schedule: str | Schedule = "jordan", steps: int | None = None, *,
                 dtype: torch.dtype | None = None, eps: float = 1e-7,
                 restarts: Iterable[int] | None = None) -> None:
        super().__init__(schedule, steps, dtype=dtype, eps=eps)
        self.restarts = check_restarts(restarts, self.steps)
        self._resolved: dict = {}

    def compute_dtype(self, device: torch.device | str = "cpu") -> torch.dtype:
        return self.dtype or gram_compute_dtype(device)

    def restarts_for(self, dtype: torch.dtype) -> tuple[int, ...]:
        """Restart positions used in ``dtype`` (the given ones, else the dtype's safe default)."""
        return default_restarts(dtype, self.steps) if self.restarts is None else self.restarts

    def for_device(self, device: torch.device | str) -> GramNewtonSchulz:
        """This orthogonalizer with dtype and restarts fixed for ``device`` (itself if they are)."""
        if self.dtype is not None and self.restarts is not None:
            return self
        dtype = self.compute_dtype(device)
        got = self._resolved.get(dtype)
        if got is None:
            got = self._resolved[dtype] = GramNewtonSchulz(self.schedule, self.steps, dtype=dtype, eps=self.eps,
                                                           restarts=self.restarts_for(dtype))
        return got

    def __call__(self, G, *, want_spectrum=False, overwrite=False):
        dtype = self.compute_dtype(G.device)
        kw = dict(eps=self.eps, dtype=dtype, restarts=self.restarts_for(dtype), overwrite=overwrite)
        if not want_spectrum:
            return gram_newton_schulz(G, self.schedule, self.steps, **kw), None
        O, gram = gram_newton_schulz(G, self.schedule, self.steps, return_gram=True, **kw)
        return O, spectrum_from_gram(gram)

    def cost(self, m: int, n: int) -> tuple[int, int]:
        """(FLOPs, products) on an m×n matrix, with the restarts of the CPU compute dtype unless fixed."""
        return gram_ns_cost(m, n, self.steps, self.restarts_for(self.compute_dtype("cpu")))

    def flops(self, m, n):
        return self.cost(m, n)[0]

    def matmuls(self):
        return self.cost(1, 1)[1]

    def __repr__(self) -> str:
        return (f"GramNewtonSchulz(schedule={self.schedule.name!r}, steps={self.steps}, "
                f"restarts={self.restarts})")


class AutoNewtonSchulz(NewtonSchulz):
    """Per matrix shape: Gram NS where it costs at most ``max_ratio`` of standard NS's FLOPs with
    the safe restarts of its compute dtype (for 5 steps: aspect n/m ≥ 2.7 in bf16, ≥ 2.2 in fp16
    and fp32, ≥ 2.0 in fp64) or the given ``restarts``, standard NS elsewhere. :meth:`choose`
    names the choice for m×n."""

    kind = "auto"

    def __init__(self, schedule: str | Schedule = "jordan", steps: int | None = None, *,
                 dtype: torch.dtype | None = None, eps: float = 1e-7, max_ratio: float = 0.85,
                 restarts: Iterable[int] | None = None) -> None:
        super().__init__(schedule, steps, dtype=dtype, eps=eps)
        self.max_ratio = float(max_ratio)
        self.standard = NewtonSchulz(self.schedule, self.steps, dtype=dtype, eps=eps)
        self.gram = GramNewtonSchulz(self.schedule, self.steps, dtype=dtype, eps=eps, restarts=restarts)

    def choose(self, m: int, n: int, device: torch.device | str = "cpu") -> NewtonSchulz:
        """The orthogonalizer an m×n matrix on ``device`` gets (Gram one with fixed dtype/restarts)."""
        gram = self.gram.for_device(device)
        if gram_pays(m, n, self.steps, gram.restarts, self.max_ratio):
            return gram
        return self.standard

    def __call__(self, G, *, want_spectrum=False, overwrite=False):
        return self.choose(G.shape[-2], G.shape[-1], G.device)(G, want_spectrum=want_spectrum, overwrite=overwrite)

    def flops(self, m, n):
        return self.choose(m, n).flops(m, n)

    def matmuls(self):
        """Products of the standard path (per shape: ``choose(m, n).matmuls()``)."""
        return self.standard.matmuls()

    def __repr__(self) -> str:
        return f"AutoNewtonSchulz(schedule={self.schedule.name!r}, steps={self.steps}, max_ratio={self.max_ratio})"


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
RESTARTABLE = ("gram", "auto")  # the kinds whose Gram-NS restart positions can be set


def register_orthogonalizer(kind: str, factory: Callable[..., Orthogonalizer]) -> None:
    """Make ``make_orthogonalizer(kind, …)`` call ``factory(schedule=, steps=, dtype=, eps=)``."""
    _FACTORIES[kind] = factory


register_orthogonalizer("ns", lambda schedule="jordan", steps=None, dtype=None, eps=1e-7:
                        NewtonSchulz(schedule, steps, dtype=dtype, eps=eps))
register_orthogonalizer("gram", lambda schedule="jordan", steps=None, dtype=None, eps=1e-7:
                        GramNewtonSchulz(schedule, steps, dtype=dtype, eps=eps))
register_orthogonalizer("auto", lambda schedule="jordan", steps=None, dtype=None, eps=1e-7:
                        AutoNewtonSchulz(schedule, steps, dtype=dtype, eps=eps))
register_orthogonalizer("exact", lambda schedule=None, steps=None, dtype=None, eps=None:  # SVD needs >= fp32
                        ExactPolar(dtype=torch.promote_types(dtype, torch.float32) if dtype else torch.float64))


def make_orthogonalizer(kind: str | Orthogonalizer = "ns", *, schedule: str | Schedule = "jordan",
                        steps: int | None = None, dtype: torch.dtype | None = None,
                        eps: float = 1e-7, restarts: Iterable[int] | None = None) -> Orthogonalizer:
    """Build an orthogonalizer from a kind name ("ns", "gram", "auto", "exact", or a registered one).
    ``restarts`` (Gram-NS restart positions) applies to the kinds that take it: "gram" and "auto"."""
    if isinstance(kind, Orthogonalizer):
        return kind
    if restarts is not None:
        if kind not in RESTARTABLE:
            raise ConfigError(f"restarts apply to Gram NS ({', '.join(RESTARTABLE)}), not to {kind!r}")
        ortho = (GramNewtonSchulz if kind == "gram" else AutoNewtonSchulz)
        return ortho(schedule, steps, dtype=dtype, eps=eps, restarts=restarts)
    if kind not in _FACTORIES:
        import muonscope.orth.hybrid  # noqa: F401  (registers the "hybrid" kind)
    try:
        factory = _FACTORIES[kind]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown orthogonalizer {kind!r}; known: {', '.join(sorted(_FACTORIES))}"
        ) from None
    return factory(schedule=schedule, steps=steps, dtype=dtype, eps=eps)
