"""Muon optimizer with per-layer orthogonalization, AdamW routing and distributed sharding."""

from muonscope.optim.hooks import OrthEvent
from muonscope.optim.muon import Muon
from muonscope.optim.plan import Plan, load_plan

__all__ = ["Muon", "OrthEvent", "Plan", "load_plan"]
