"""Closed-loop check of an NS plan: plan → train under it → refit → plan again.

Laws fitted under Jordan × 5 need not describe spectra under a cheaper orthogonalizer (directions
NS under-lifts get smaller updates, so the momentum spectrum concentrates further). ``verify_plan``
plans each preset's own size from the given laws, trains it under that plan and under Jordan × 5
with the same seed (paired), refits the laws on the runs made under the plans, and plans again:
the plan is a *fixed point* when every parameter gets the same configuration from the refitted
laws. Runs go through :mod:`muonscope.experiments.calibration` (resumable, claimable, one row each).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from muonscope._jsonfile import write_json
from muonscope.errors import ConfigError
from muonscope.experiments.calibration import CSV_NAME, paired, run_calibration, run_dir
from muonscope.experiments.model import GPT, get_preset
from muonscope.laws.criterion import Criterion
from muonscope.laws.fit import Laws

PLAN_FILE = "plan-{preset}.json"
REFERENCE = "jordan-5"


def muon_names(preset: str) -> dict[str, tuple[str, float]]:
    """{Muon parameter name: (layer_type, rel_depth)} of a tiny-GPT preset (no training needed)."""
    from muonscope.optim.routing import split_params
    from muonscope.spectra.layers import LayerIndex

    model = GPT(get_preset(preset), seed=0)
    names = [n for n, _ in split_params(model).muon]
    index = LayerIndex(names)
    return {n: (index(n).layer_type, index(n).rel_depth) for n in names}


def preset_params(preset: str) -> int:
    return GPT(get_preset(preset), seed=0).non_embedding_params()


def write_plans(laws: Laws, presets, criterion: Criterion, out: Path, **plan_kwargs) -> dict[str, Path]:
    """One plan per preset, for that preset's own size and parameter names."""
    from muonscope.laws.planner import make_plan

    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for p in presets:
        plan = make_plan(laws, preset_params(p), criterion=criterion, names=muon_names(p), **plan_kwargs)
        path = out / PLAN_FILE.format(preset=p)
        write_json(path, plan.to_dict())
        paths[p] = path
    return paths


def plan_configs(path: Path) -> dict[str, str]:
    """{parameter: "schedule xsteps" or "exact"} of a plan file."""
    raw = json.loads(Path(path).read_text())
    return {n: ("exact" if e.get("orthogonalizer") == "exact" else f"{e['schedule']} x{e['steps']}")
            for n, e in raw["params"].items()}


@dataclass
class Verification:
    """Outcome of :func:`verify_plan`."""

    paired: object  # DataFrame: paired Δ val loss of the plan against Jordan × 5, per preset
    changed: dict  # preset → {param: (before, after)} for every parameter whose choice changed
    refit: Laws

    @property
    def fixed_point(self) -> bool:
        return not any(self.changed.values())


def verify_plan(laws: Laws, criterion: Criterion, out, *, presets=("d48", "d64", "d96"), seeds=(0,),
                steps: int = 600, runs=None, log=print, train_options: dict | None = None,
                **plan_kwargs) -> Verification:
    """Plan → train (plan and Jordan × 5, paired by seed) → refit on the plan's runs → plan again.

    ``train_options`` override the calibration runs' TrainConfig; ``plan_kwargs`` go to make_plan."""
    import pandas as pd

    from muonscope.laws.fit import fit_laws
    from muonscope.spectra.store import read_runs

    presets = list(presets)
    if len(set(presets)) < 3:
        raise ConfigError("a closed-loop refit needs runs at 3 or more sizes (presets)")
    out = Path(out)
    runs = Path(runs) if runs is not None else out / "runs"
    plans = write_plans(laws, presets, criterion, out / "plans", **plan_kwargs)
    method = f"plan:{out / 'plans' / PLAN_FILE}"
    run_calibration(out, [method, REFERENCE], presets, seeds, steps=steps, runs=runs, log=log, **(train_options or {}))
    df = pd.read_csv(out / CSV_NAME)
    df = df[df.method.isin([method, REFERENCE]) & df.preset.isin(presets)]
    table = paired(df, REFERENCE)
    refit = fit_laws(read_runs([run_dir(runs, method, p, s) for p in presets for s in seeds]))
    again = write_plans(refit, presets, criterion, out / "replans", **plan_kwargs)
    changed = {}
    for p in presets:
        a, b = plan_configs(plans[p]), plan_configs(again[p])
        changed[p] = {n: (a[n], b.get(n)) for n in a if a[n] != b.get(n)}
    return Verification(table[table.method == method].reset_index(drop=True), changed, refit)
