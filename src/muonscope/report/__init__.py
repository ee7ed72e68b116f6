"""Figures and reports built from run stores, fitted laws and plans."""
