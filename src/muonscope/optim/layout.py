"""Matching a saved optimizer state to this optimizer's parameters, before anything is loaded.

torch's ``Optimizer.load_state_dict`` pairs saved and current parameters by position only, so a
checkpoint from another parameter order hands one parameter another's momentum, and one with other
shapes fails (or corrupts) at the next ``step()``. :func:`align_state_dict` decides the pairing
first and refuses what does not fit:

* **by name** when both sides carry names (``param_names`` in every group, stored by torch ≥ 2.6
  for named parameters): every current name must be saved in the same group; the saved group's
  parameter ids are reordered to the current order, so torch's positional pairing becomes the
  pairing by name;
* **by position** otherwise: groups must have the same sizes.

Either way every state tensor with ≥ 1 dim (momentum buffers, Adam moments) must have its
parameter's shape. A refusal raises :class:`~muonscope.errors.StateDictMismatchError` naming the
first few differences; the input is never modified.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from muonscope.errors import StateDictMismatchError
from muonscope.optim.views import canonical_name

SHOWN = 5  # differences named in one error message
NAMES_HINT = ("; to pair parameters by position instead, delete 'param_names' from the saved param_groups")


def _list(items: list[str]) -> str:
    return ", ".join(items[:SHOWN]) + (f" (and {len(items) - SHOWN} more)" if len(items) > SHOWN else "")


def _shape(t) -> tuple[int, ...]:
    return tuple(int(s) for s in t.shape)


def _names(group: Mapping, where: str = "") -> list[str] | None:
    """The group's canonical parameter names, None without ``param_names``."""
    names = group.get("param_names")
    if names is None:
        return None
    if (not isinstance(names, (list, tuple)) or len(names) != len(group["params"])
            or not all(isinstance(n, str) for n in names)):
        raise StateDictMismatchError(f"{where}param_names must list one name per parameter, got {names!r}")
    return [canonical_name(n) for n in names]


def saved_groups(state_dict) -> list[dict]:
    """The saved ``param_groups``, checked to be a list of dicts each with a ``params`` list."""
    if not isinstance(state_dict, Mapping):
        raise StateDictMismatchError(f"an optimizer state dict must be a dict, got {type(state_dict).__name__}")
    groups = state_dict.get("param_groups")
    if not isinstance(groups, list) or not all(
            isinstance(g, Mapping) and isinstance(g.get("params"), (list, tuple)) for g in groups):
        raise StateDictMismatchError("not an optimizer state dict: 'param_groups' must be a list of dicts "
                                     "each with a 'params' list")
    state = state_dict.get("state", {})
    if not isinstance(state, Mapping):
        raise StateDictMismatchError("not an optimizer state dict: 'state' must be a dict")
    return [dict(g) for g in groups]


def align_state_dict(state_dict: Mapping, groups: Sequence[Mapping]) -> dict:
    """A copy of ``state_dict`` whose saved parameter ids line up by position with ``groups``
    (the optimizer's current param groups), or :class:`StateDictMismatchError`."""
    saved = saved_groups(state_dict)
    if len(saved) != len(groups):
        raise StateDictMismatchError(
            f"loaded state dict has a different number of parameter groups ({len(saved)} saved, "
            f"{len(groups)} here)")
    saved_names = [_names(g, f"saved group {i}: ") for i, g in enumerate(saved)]
    here_names = [_names(g) for g in groups]
    by_name = all(n is not None for n in saved_names) and all(n is not None for n in here_names)
    if by_name:
        saved = _reorder_by_name(saved, saved_names, here_names, [list(g["param_names"]) for g in groups])
    else:
        sizes = [(i, len(s["params"]), len(g["params"])) for i, (s, g) in enumerate(zip(saved, groups, strict=True))
                 if len(s["params"]) != len(g["params"])]
        if sizes:
            raise StateDictMismatchError(
                "loaded state dict contains a parameter group that doesn't match the size of optimizer's group: "
                + _list([f"group {i}: {a} saved, {b} here" for i, a, b in sizes]))
    _check_shapes(state_dict.get("state", {}) or {}, saved, groups, here_names)
    out = dict(state_dict)
    out["param_groups"] = saved
    return out


def _reorder_by_name(saved: list[dict], saved_names: list[list[str]], here_names: list[list[str]],
                     raw_names: list[list[str]]) -> list[dict]:
    where: dict[str, tuple[int, object]] = {}
    dup: list[str] = []
    for gi, (g, names) in enumerate(zip(saved, saved_names, strict=True)):
        for name, pid in zip(names, g["params"], strict=True):
            if name in where:
                dup.append(repr(name))
            where[name] = (gi, pid)
    if dup:
        raise StateDictMismatchError(f"the saved state names a parameter twice: {_list(dup)}")
    here = [(gi, n) for gi, names in enumerate(here_names) for n in names]
    here_set = {n for _, n in here}
    missing = [repr(n) for _, n in here if n not in where]
    extra = [repr(n) for n in where if n not in here_set]
    moved = [f"{n!r} (group {where[n][0]} saved, {gi} here)" for gi, n in here if n in where and where[n][0] != gi]
    problems = []
    if missing:
        problems.append(f"not in the saved state: {_list(missing)}")
    if extra:
        problems.append(f"saved but not in this optimizer: {_list(extra)}")
    if moved:
        problems.append(f"in another param group: {_list(moved)}")
    if problems:
        raise StateDictMismatchError("the saved optimizer state does not match this optimizer's parameters by "
                                     "name; " + "; ".join(problems) + NAMES_HINT)
    out = []
    for g, names, raw in zip(saved, here_names, raw_names, strict=True):
        g = dict(g)
        g["params"] = [where[n][1] for n in names]
        g["param_names"] = raw  # torch keeps the loaded names: keep this optimizer's
        out.append(g)
    return out


def _check_shapes(state: Mapping, saved: list[dict], groups: Sequence[Mapping],
                  here_names: list[list[str] | None]) -> None:
    bad = []
    for gi, (s, g) in enumerate(zip(saved, groups, strict=True)):
        names = here_names[gi]
        for j, (pid, p) in enumerate(zip(s["params"], g["params"], strict=True)):
            entry = state.get(pid)
            if not isinstance(entry, Mapping):
                continue
            for key, value in entry.items():
                if key == "step" or not isinstance(value, torch.Tensor) or value.ndim == 0:
                    continue
                if _shape(value) != _shape(p):
                    label = repr(names[j]) if names is not None else f"group {gi} param {j}"
                    bad.append(f"{label}: saved {key} {_shape(value)}, parameter {_shape(p)}")
                    break
    if bad:
        raise StateDictMismatchError("the saved optimizer state has other shapes than this optimizer's "
                                     f"parameters: {_list(bad)}; load it into an optimizer over the same model")
