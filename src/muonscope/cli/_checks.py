"""Argument checks of the commands whose modules are thin (``report``, ``demo``): everything is
validated before any output exists."""

from __future__ import annotations

from pathlib import Path

from muonscope import validate as V
from muonscope._atomic import check_dir_target, check_file_target
from muonscope.cli._app import csv_list, fail, threads_option

MAX_PARAMS = 1e15


def target_size(option: str, value) -> float:
    """A target model size: a positive parameter count up to 1e15."""
    return V.real(option, value, low=0.0, high=MAX_PARAMS, low_open=True)


def report_args(out: Path, fmt: str, targets: str, quantile: float, rho: float) -> list[float]:
    """Check `muonscope report`'s options; returns the target sizes."""
    if fmt not in ("html", "md"):
        fail(f"--format must be html or md, got {fmt!r}")
    sizes = [target_size("--targets", t) for t in csv_list(targets, option="--targets")]
    if not sizes:
        fail("--targets names no target size")
    V.real("--quantile", quantile, low=0.0, high=1.0, low_open=True, high_open=True)
    V.real("--rho", rho, low=0.0, high=1.0, low_open=True)
    check_file_target(out, "--out")
    if fmt == "md":
        check_dir_target(out.with_name(out.stem + "_files"), "--out (its _files folder)")
    return sizes


def demo_args(out: Path, presets: list[str], steps: int, threads: int) -> None:
    """Check `muonscope demo`'s options (its --target is parsed by the command itself)."""
    from muonscope.experiments.config import PRESET_NAMES

    for p in presets:
        if p not in PRESET_NAMES:
            fail(f"--presets: unknown model preset {p!r}; choose from {', '.join(PRESET_NAMES)}")
    if len(set(presets)) != len(presets):
        fail("--presets names a size twice")
    V.steps("--steps", steps, low=2)
    threads_option("--threads", threads)
    check_dir_target(out, "--out")
