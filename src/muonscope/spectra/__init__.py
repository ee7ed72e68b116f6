"""Spectral measurement: metrics of singular values, the SpectralMonitor, and the run store."""

_LAZY = {
    "SpectralMonitor": "muonscope.spectra.monitor",
    "RunStore": "muonscope.spectra.store",
    "read_runs": "muonscope.spectra.store",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'muonscope.spectra' has no attribute {name!r}")
