"""Resolution floor of NS per compute dtype: the smallest normalized s it still lifts to ρ = 0.1.

Each input (m×n, a flat bulk plus 8 probe directions at a normalized singular value s) is
orthogonalized by Jordan NS with the steps the exact scalar map needs to lift s/``--margin`` to ρ;
a probe counts as lifted when its output singular value (Uᵀ O V, diagonal) reaches ρ. Reported per
dtype and shape: the smallest s at which every probe was lifted, and the largest s at which one was
not. The input is fp32, like a momentum buffer of fp32 parameters, so fp64 NS is bounded by the
input's own rounding. These are the numbers behind ``muonscope.orth.analysis.RESOLUTION_FLOORS``.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_resolution.py`` (about 3 minutes; fp16
is emulated on most CPUs and runs on the small shapes only).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import matrix_with_spectrum  # noqa: E402
from muonscope.orth import analysis as A  # noqa: E402
from muonscope.orth.matrix_ns import newton_schulz  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "fp64": torch.float64}
RHO = 0.1


def lifted_share(m: int, n: int, s0: float, dtype: torch.dtype, margin: float) -> tuple[float, float] | None:
    """(normalized probe s, share of the 8 probes lifted to ρ), or None if no step count lifts it."""
    r = min(m, n)
    s = torch.ones(r, dtype=torch.float64) / float(np.sqrt(r))  # a normalized flat bulk ...
    s[-8:] = s0  # ... and the probes
    s = s / s.norm()
    k = A.steps_to_lift("jordan", float(s[-1]) / margin, RHO, 80)
    if k is None:
        return None
    G, U, V = matrix_with_spectrum(s, m, n, generator=torch.Generator().manual_seed(1))
    out = torch.diagonal(U.T @ newton_schulz(G.float(), "jordan", k, dtype=dtype).double() @ V).numpy()[-8:]
    return float(s[-1]), float(np.mean(out >= RHO))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    ap.add_argument("--shapes", nargs="+", default=["64x256", "256x1024", "512x2048"])
    ap.add_argument("--margin", type=float, default=1.0, help="steps lift s/margin (1: exactly what s needs)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}; Jordan NS on fp32 inputs; probes lifted to rho = {RHO}; margin {args.margin:g}\n")
    print("| dtype | shape | every probe lifted down to | some probe left below rho at |")
    print("|---|---|---|---|")
    for name in args.dtypes:
        for shape in args.shapes:
            m, n = (int(x) for x in shape.lower().split("x"))
            if name == "fp16" and m * n > 256 * 1024:
                continue
            results = [x for e in np.arange(-2, -12.5, -0.5)
                       if (x := lifted_share(m, n, 10.0 ** e, DTYPES[name], args.margin)) is not None]
            ok = [s for s, share in results if share == 1.0]
            bad = [s for s, share in results if share < 1.0]
            print(f"| {name} | {m}×{n} | {min(ok) if ok else float('nan'):.2g} | "
                  f"{max(bad) if bad else float('nan'):.2g} |", flush=True)


if __name__ == "__main__":
    main()
