"""Training checkpoints: model, optimizer, scheduler and RNG state in one file.

Everything saved is tensors and plain Python data, so loading always uses
``torch.load(weights_only=True)`` (no arbitrary unpickling).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from muonscope.errors import ConfigError

FORMAT = "muonscope.checkpoint/1"


def save_checkpoint(path: str | os.PathLike, *, model=None, optimizer=None, scheduler=None,
                    rng: bool = True, **extra) -> Path:
    """Write a checkpoint atomically: a unique temporary file, fsynced, renamed over ``path``, the
    directory fsynced (:func:`muonscope._atomic.atomic_write`); a failed write (disk full) leaves the
    previous checkpoint intact and no temporary file. ``extra`` must be plain data."""
    path = Path(path)
    blob = {"format": FORMAT, "extra": extra}
    if model is not None:
        blob["model"] = model.state_dict()
    if optimizer is not None:
        blob["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        blob["scheduler"] = scheduler.state_dict()
    if rng:
        blob["torch_rng"] = torch.get_rng_state()
    from muonscope._atomic import atomic_write

    return atomic_write(path, lambda fh: torch.save(blob, fh), what="checkpoint")


def load_checkpoint(path: str | os.PathLike, *, model=None, optimizer=None, scheduler=None,
                    rng: bool = True, map_location="cpu") -> dict:
    """Restore what :func:`save_checkpoint` wrote into the given objects; return ``extra``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {str(path)!r} not found")
    try:
        blob = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # unpickling errors have many types
        raise ConfigError(f"checkpoint {str(path)!r} cannot be read safely (weights_only): {exc}") from exc
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ConfigError(f"{str(path)!r} is not a muonscope checkpoint (expected format {FORMAT!r})")
    for key, obj in (("model", model), ("optimizer", optimizer), ("scheduler", scheduler)):
        if obj is None:
            continue
        if key not in blob:
            raise ConfigError(f"checkpoint {str(path)!r} holds no {key} state")
        obj.load_state_dict(blob[key])
    if rng and "torch_rng" in blob:
        torch.set_rng_state(blob["torch_rng"])
    return blob.get("extra", {})
