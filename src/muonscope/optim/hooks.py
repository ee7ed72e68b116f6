"""Orthogonalization hooks: what the optimizer tells observers about each matrix it orthogonalizes.

A hook is any object with ``wants_spectrum(step) -> bool`` (asked once per optimizer step, before
orthogonalizing) and ``on_orthogonalize(event)`` (called once per orthogonalized matrix, on the rank
that orthogonalized it). Hooks must treat the event's tensors as read-only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from muonscope.orth.orthogonalizers import Orthogonalizer


@dataclass
class OrthEvent:
    """One orthogonalized matrix.

    ``matrix`` is the NS input before normalization (momentum or its Nesterov combination,
    one (out, in) matrix of the parameter's view; ``name`` ends in ``"[expert e]"`` for one expert
    of a stack (``expert`` = e) and in ``"[block i]"`` for one row block of a split parameter); ``momentum`` the matching rows of the flattened momentum buffer;
    ``spectrum`` the normalized singular values σ/‖matrix‖_F (float64, descending,
    length min(rows, cols)) when any hook wanted it this step; ``update`` the orthogonalized matrix
    (in the orthogonalizer's compute dtype, e.g. bf16 for bf16 NS).
    """

    name: str
    param: torch.Tensor
    step: int
    matrix: torch.Tensor
    momentum: torch.Tensor
    spectrum: torch.Tensor | None
    orthogonalizer: Orthogonalizer
    update: torch.Tensor
    process_rank: int = 0
    expert: int | None = None


@runtime_checkable
class OrthHook(Protocol):
    def wants_spectrum(self, step: int) -> bool: ...

    def on_orthogonalize(self, event: OrthEvent) -> None: ...
