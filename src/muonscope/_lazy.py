"""Lazy package exports (PEP 562), so importing a torch-free part never imports torch."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def lazy_getattr(package: str, exports: Mapping[str, str],
                 submodules: tuple[str, ...] = ()) -> Callable[[str], object]:
    """A module ``__getattr__`` that imports ``exports[name]`` on first access of ``name``, and
    the subpackage ``package.name`` for a name in ``submodules``."""

    def __getattr__(name: str):
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        if name in submodules:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
