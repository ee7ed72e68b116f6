"""Reproducible experiments built on the library: tiny-GPT size sweep, spectral dynamics."""
