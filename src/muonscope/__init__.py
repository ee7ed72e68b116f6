"""muonscope: Muon with pluggable orthogonalization, and a view of what NS does to every layer."""

from muonscope._lazy import lazy_getattr

__version__ = "0.1.0"

_LAZY = {
    "Muon": "muonscope.optim",
    "MuonWithAdamW": "muonscope.optim",
    "split_params": "muonscope.optim",
    "SpectralMonitor": "muonscope.spectra",
    "RunStore": "muonscope.spectra",
}


__getattr__ = lazy_getattr(__name__, _LAZY, ("audit", "cli", "experiments", "integrations", "laws", "optim", "orth",
                                             "report", "spectra"))
