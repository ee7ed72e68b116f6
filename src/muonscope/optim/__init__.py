"""Muon optimizer with per-layer orthogonalization, AdamW routing and distributed sharding."""

from muonscope.optim.checkpoint import load_checkpoint, save_checkpoint
from muonscope.optim.hooks import OrthEvent
from muonscope.optim.muon import Muon
from muonscope.optim.plan import Plan, load_plan
from muonscope.optim.routing import MuonWithAdamW, ParamSplit, split_params

__all__ = ["Muon", "MuonWithAdamW", "OrthEvent", "ParamSplit", "Plan", "load_checkpoint", "load_plan",
           "save_checkpoint", "split_params"]
