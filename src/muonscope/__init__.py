"""muonscope: Muon with pluggable orthogonalization, and a view of what NS does to every layer."""

__version__ = "0.1.0"

_LAZY = {
    "Muon": "muonscope.optim",
    "MuonWithAdamW": "muonscope.optim",
    "split_params": "muonscope.optim",
    "SpectralMonitor": "muonscope.spectra",
    "RunStore": "muonscope.spectra",
}


def __getattr__(name):
    # Lazy so that torch-free layers (muonscope.laws) never import torch through the package.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'muonscope' has no attribute {name!r}")
