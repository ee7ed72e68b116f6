"""Scaling laws of spectral records: stabilization, power-law fits, NS schedule design and planner.

Works on tables (pandas DataFrames with the spectral-record columns) and never imports torch, so it
can fit logs written by anyone. Typical use::

    laws = fit_laws(read_runs(["runs/sweep"]))      # or a DataFrame of spectral records
    plan = make_plan(laws, 7e10, criterion=calibrated(), names=names)
    json.dump(plan.to_dict(), open("plan.json", "w"))  # muonscope.Muon(..., plan="plan.json")
"""

from muonscope.laws.criterion import LIFT_MEDIAN, Criterion, calibrated
from muonscope.laws.design import design_schedule, design_steps, optimal_quintic
from muonscope.laws.fit import Laws, fit_laws
from muonscope.laws.io import load_laws, save_laws
from muonscope.laws.planner import (
    LayerChoice,
    Plan,
    choose,
    make_plan,
    names_from_records,
    recipe_table,
)
from muonscope.laws.powerlaw import (
    PowerLawFit,
    Prediction,
    SharedExponentTest,
    fit_power_law,
    shared_exponent_test,
)
from muonscope.laws.stabilize import (
    Stabilization,
    StabilizeSettings,
    detect_stabilization,
    stabilize,
)

__all__ = [
    "LIFT_MEDIAN", "Criterion", "calibrated", "Laws", "LayerChoice", "Plan", "PowerLawFit", "Prediction", "SharedExponentTest", "Stabilization",
    "StabilizeSettings", "choose", "design_schedule", "design_steps", "detect_stabilization",
    "fit_laws", "fit_power_law", "load_laws", "make_plan", "names_from_records", "optimal_quintic",
    "recipe_table", "save_laws", "shared_exponent_test", "stabilize",
]
