"""Orthogonalization core: NS schedules as data, scalar analysis, matrix NS (standard and Gram),
exact polar.

``schedules`` and ``analysis`` are numpy-only; the torch parts load on first use, so torch-free
layers (``muonscope.laws``) can import the analysis without importing torch.
"""

from muonscope._lazy import lazy_getattr
from muonscope.orth.analysis import (
    composed_map,
    error_table,
    fidelity,
    gram_default_restarts,
    gram_ns_cost,
    ns_flops,
    ns_matmuls,
    output_band,
    steps_to_lift,
    threshold,
)
from muonscope.orth.schedules import Schedule, get_schedule, list_schedules, register_schedule

_LAZY = {
    "newton_schulz": "muonscope.orth.matrix_ns",
    "default_compute_dtype": "muonscope.orth.matrix_ns",
    "gram_newton_schulz": "muonscope.orth.gram_ns",
    "polar_exact": "muonscope.orth.exact",
    "Orthogonalizer": "muonscope.orth.orthogonalizers",
    "NewtonSchulz": "muonscope.orth.orthogonalizers",
    "GramNewtonSchulz": "muonscope.orth.orthogonalizers",
    "AutoNewtonSchulz": "muonscope.orth.orthogonalizers",
    "ExactPolar": "muonscope.orth.orthogonalizers",
    "make_orthogonalizer": "muonscope.orth.orthogonalizers",
    "register_orthogonalizer": "muonscope.orth.orthogonalizers",
    "spectrum_from_gram": "muonscope.orth.orthogonalizers",
}


__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = [
    "Schedule", "get_schedule", "list_schedules", "register_schedule", "composed_map",
    "error_table", "fidelity", "gram_default_restarts", "gram_ns_cost", "ns_flops", "ns_matmuls", "output_band", "steps_to_lift",
    "threshold", *_LAZY,
]
