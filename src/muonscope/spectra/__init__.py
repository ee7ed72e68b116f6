"""Spectral measurement: metrics of singular values, the SpectralMonitor, and the run store."""

from muonscope._lazy import lazy_getattr

_LAZY = {
    "SpectralMonitor": "muonscope.spectra.monitor",
    "RunStore": "muonscope.spectra.store",
    "read_runs": "muonscope.spectra.store",
}


__getattr__ = lazy_getattr(__name__, _LAZY)
