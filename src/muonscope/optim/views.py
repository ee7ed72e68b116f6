"""Matrix views: how a parameter tensor is read as a batch of (out, in) matrices for NS.

A view maps a parameter W to a stack of matrices M_e (e = 0 … E−1), each in (out, in) orientation:

- ``"matrix"``: 2-D W as stored (``nn.Linear``: (out, in)); E = 1.
- ``"transposed"``: 2-D W stored as (in, out) (Hugging Face ``Conv1D``): M = Wᵀ.
- ``"flatten"``: W of shape (out, *rest) read as (out, ∏rest) (conv kernels); E = 1.
- ``"experts"``: W of shape (E, out, in…) (fused MoE expert stacks: Mixtral, Qwen2/3-MoE,
  OLMoE, DeepSeek-V3 in recent transformers); M_e = W[e] (trailing dims flattened).
- ``"experts_t"``: W of shape (E, in, out) (GPT-OSS, Llama-4 experts); M_e = W[e]ᵀ.

Orthogonalization, the lr scale √max(1, out/in) and row splits (fused QKV ``split=[d, d, d]``)
apply to each M_e. Every view shares storage with W (for a contiguous W), so updates written
into it land in W.

Which view a parameter gets (:func:`resolve`): a declared one (``Muon(views={regex: view})``,
exact names first), else one inferred from its module (:func:`infer_views`, used by
``MuonWithAdamW`` and ``split_params`` users), else from its name and shape: a 3-D parameter
owned by a module called ``experts`` → ``"experts"``; 2-D → ``"matrix"``; ≥ 4-D → ``"flatten"``
(conv kernels). Any other 3-D parameter is ambiguous (a Conv1d kernel (out, in, k) or a batch of
matrices): it is flattened as a kernel with a :class:`MatrixViewWarning` saying how to declare it.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping

import torch
from torch import nn

from muonscope.errors import ConfigError, ShapeError

VIEWS = ("matrix", "transposed", "flatten", "experts", "experts_t")
_EXPERT_NAME = re.compile(r"(?:^|\.)experts\.[^.]+$")
_INPUT_SIDE = ("gate_up_proj", "up_proj", "gate_proj", "w1", "w3", "w13", "fc1", "c_fc")
_OUTPUT_SIDE = ("down_proj", "w2", "fc2", "c_proj")


class MatrixViewWarning(UserWarning):
    """A > 2-D parameter whose matrix view was guessed (declare it with ``views=``)."""


def canonical_name(name: str) -> str:
    """The parameter name without ``torch.compile``'s ``_orig_mod.`` wrapper prefixes."""
    return name.replace("_orig_mod.", "")


def check_view(view: str) -> str:
    if view not in VIEWS:
        raise ConfigError(f"matrix view must be one of {', '.join(VIEWS)}, got {view!r}")
    return view


def matrix_shape(view: str, shape: torch.Size | tuple) -> tuple[int, int, int]:
    """(E, out, in) of a parameter of ``shape`` read through ``view``; ShapeError if it cannot be."""
    shape = tuple(shape)
    need = {"matrix": 2, "transposed": 2, "experts_t": 3}
    if (view in need and len(shape) != need[view]) or (view == "experts" and len(shape) < 3) or (
            view == "flatten" and len(shape) < 2):
        raise ShapeError(f"matrix view {view!r} does not fit a parameter of shape {shape}")
    if view == "matrix":
        return 1, shape[0], shape[1]
    if view == "transposed":
        return 1, shape[1], shape[0]
    if view == "flatten":
        return 1, shape[0], math.prod(shape[1:])
    if view == "experts":
        return shape[0], shape[1], math.prod(shape[2:])
    return shape[0], shape[2], shape[1]


def matrices(t: torch.Tensor, view: str) -> torch.Tensor:
    """``t`` (parameter-shaped) as an (E, out, in) stack sharing its storage where possible."""
    if view == "matrix":
        return t.unsqueeze(0)
    if view == "transposed":
        return t.mT.unsqueeze(0)
    if view == "flatten":
        return t.flatten(1).unsqueeze(0)
    if view == "experts":
        return t if t.ndim == 3 else t.flatten(2)
    return t.mT


def shares_storage(t: torch.Tensor, view: str) -> bool:
    """Whether writing into :func:`matrices` of ``t`` writes into ``t`` (flattening may copy)."""
    return t.is_contiguous() or view in ("matrix", "transposed", "experts_t") or (view == "experts" and t.ndim == 3)


def resolve(name: str, shape: torch.Size | tuple, declared: Mapping[str, str] | None = None) -> str:
    """The view of parameter ``name`` (see module docstring); warns when a 3-D view is guessed."""
    declared = declared or {}
    view = declared.get(name)
    if view is None:
        view = next((v for pat, v in declared.items() if re.search(pat, name)), None)
    if view is None:
        ndim = len(shape)
        if ndim == 2:
            view = "matrix"
        elif ndim == 3 and _EXPERT_NAME.search(name):
            view = "experts"
        elif ndim >= 4:
            view = "flatten"
        else:
            view = "flatten"
            warnings.warn(
                f"parameter {name!r} of shape {tuple(shape)} is read as one flattened (out, in·k) "
                "kernel matrix; if it is a batch of matrices (e.g. MoE experts) declare its view: "
                f"Muon(..., views={{{name!r}: 'experts'}}) (or 'experts_t' for (E, in, out)); "
                "'flatten' silences this warning", MatrixViewWarning, stacklevel=4)
    matrix_shape(check_view(view), shape)
    return view


def _is_conv1d_transposed(mod: nn.Module, p: torch.Tensor) -> bool:
    """Hugging Face ``Conv1D`` (GPT-2, GPT-J…) stores its weight as (in=nx, out=nf)."""
    nf, nx = getattr(mod, "nf", None), getattr(mod, "nx", None)
    return type(mod).__name__ == "Conv1D" and p.ndim == 2 and tuple(p.shape) == (nx, nf)


def _expert_view(mod: nn.Module, pname: str, p: torch.Tensor) -> str:
    """(E, out, in) or (E, in, out): the module's ``is_transposed`` flag if it has one, else its
    hidden size: input-side projections read hidden features, output-side ones write them."""
    flag = getattr(mod, "is_transposed", None)
    if isinstance(flag, bool):
        return "experts_t" if flag else "experts"
    hidden = next((getattr(mod, a) for a in ("hidden_size", "hidden_dim", "d_model")
                   if isinstance(getattr(mod, a, None), int)), None)
    if hidden is not None and p.ndim == 3:
        a, b = p.shape[1], p.shape[2]
        if pname in _INPUT_SIDE and a == hidden != b or pname in _OUTPUT_SIDE and b == hidden != a:
            return "experts_t"
    return "experts"


def infer_views(model: nn.Module) -> dict[str, str]:
    """{parameter name: view} for the parameters whose view the module structure tells:
    ``Conv1D`` weights → "transposed", 3-D parameters of a module named ``experts`` (or any
    module with ``num_experts``) → "experts"/"experts_t", conv kernels → "flatten"."""
    out: dict[str, str] = {}
    seen: set[int] = set()
    for mod_name, mod in model.named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            name = canonical_name(f"{mod_name}.{pname}" if mod_name else pname)
            if _is_conv1d_transposed(mod, p):
                out[name] = "transposed"
            elif p.ndim == 3 and (mod_name.rsplit(".", 1)[-1] == "experts" or hasattr(mod, "num_experts")):
                out[name] = _expert_view(mod, pname, p)
            elif isinstance(mod, nn.modules.conv._ConvNd) and p.ndim >= 3:
                out[name] = "flatten"
    return out
