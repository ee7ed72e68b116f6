"""Scaling laws of spectral records: stabilization, power-law fits, NS planner (no torch)."""
