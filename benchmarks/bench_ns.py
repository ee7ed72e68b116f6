"""Newton-Schulz speed: throughput against torch.matmul, and bf16 time against torch.optim.Muon's NS.

1. fp32 NS throughput as a fraction of torch.matmul's: for each shape, one A/B pair times our
   5-step Jordan NS and the same 15 products done as plain ``torch.matmul`` calls
   (X Xᵀ, A·A, B·X per step: 4m²n + 2m³ FLOPs per step either way); fraction = t_matmul / t_NS.
2. bf16 5-step Jordan NS, ours (``newton_schulz(..., dtype=torch.bfloat16)``) against the NS inside
   ``torch.optim.Muon`` on the same fp32 input: ratio = t_ours / t_theirs.

Each pair times A and B back to back (alternating which goes first; each timing is the fastest
of repeated calls, the estimate least disturbed by other processes); the table gives the median
ratio over pairs and its 25–75 % spread. Run: ``.venv/bin/python benchmarks/bench_ns.py``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from muonscope.orth.analysis import ns_flops
from muonscope.orth.matrix_ns import newton_schulz


def time_call(fn, min_time: float = 0.2, min_calls: int = 3) -> float:
    """Seconds per call: the fastest of repeated calls over at least ``min_time`` seconds.

    The minimum is the estimate least disturbed by other processes on a shared machine.
    """
    best, n, start = float("inf"), 0, time.perf_counter()
    while n < min_calls or time.perf_counter() - start < min_time:
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
        n += 1
    return best


def ab_pairs(fa, fb, pairs: int = 9, min_time: float = 0.2) -> list[float]:
    """Interleaved A/B timings; returns t_A / t_B per pair (order alternates to cancel drift)."""
    fa(), fb()  # warm-up
    ratios = []
    for i in range(pairs):
        if i % 2 == 0:
            ta, tb = time_call(fa, min_time), time_call(fb, min_time)
        else:
            tb, ta = time_call(fb, min_time), time_call(fa, min_time)
        ratios.append(ta / tb)
    return ratios


def summary(ratios: list[float]) -> tuple[float, float, float]:
    """(median, 25th percentile, 75th percentile)."""
    q = statistics.quantiles(ratios, n=4, method="inclusive")
    return statistics.median(ratios), q[0], q[2]


def matmul_chain(X: torch.Tensor, steps: int) -> torch.Tensor:
    """The products NS does, as plain torch.matmul calls (the throughput reference).

    Operands are a normalized X and its Gram matrices, so values stay O(1) (no overflow or
    denormals that would change the speed of the reference).
    """
    if X.shape[-2] > X.shape[-1]:
        X = X.mT
    X = X / X.norm()
    for _ in range(steps):
        A = torch.matmul(X, X.mT)
        B = torch.matmul(A, A)
        Y = torch.matmul(B, X)
    return Y


def torch_muon_ns(G: torch.Tensor, steps: int = 5) -> torch.Tensor:
    from torch.optim._muon import DEFAULT_A, DEFAULT_B, DEFAULT_C, EPS, _zeropower_via_newtonschulz

    return _zeropower_via_newtonschulz(G, (DEFAULT_A, DEFAULT_B, DEFAULT_C), steps, EPS)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="small shapes only (smoke test)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)

    fp32_shapes = [(512, 512), (1024, 1024), (768, 3072), (2048, 2048)]
    bf16_shapes = [(256, 256), (1024, 1024), (768, 3072)]
    if args.quick:
        fp32_shapes, bf16_shapes = [(128, 128), (96, 384)], [(128, 128)]

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.pairs} interleaved pairs\n")
    print("NS (fp32, jordan, 5 steps) throughput as a fraction of torch.matmul (target >= 0.80)")
    print(f"{'shape':>12} {'GFLOP/s NS':>11} {'GFLOP/s mm':>11} {'fraction':>9} {'[p25, p75]':>16}")
    for m, n in fp32_shapes:
        X = torch.randn(m, n, generator=g)
        ratios = ab_pairs(lambda X=X: matmul_chain(X, 5), lambda X=X: newton_schulz(X, "jordan", 5, dtype=torch.float32),
                          args.pairs)
        med, lo, hi = summary(ratios)
        t_ns = time_call(lambda X=X: newton_schulz(X, "jordan", 5, dtype=torch.float32))
        gf = ns_flops(m, n, 5) / t_ns / 1e9
        print(f"{f'{m}x{n}':>12} {gf:11.1f} {gf / med:11.1f} {med:9.3f} {f'[{lo:.3f}, {hi:.3f}]':>16}")

    print("\nbf16 jordan 5-step NS: ours / torch.optim.Muon's (target <= 1.0)")
    print(f"{'shape':>12} {'ratio':>9} {'[p25, p75]':>16}")
    for m, n in bf16_shapes:
        X = torch.randn(m, n, generator=g)
        ratios = ab_pairs(lambda X=X: newton_schulz(X, "jordan", 5, dtype=torch.bfloat16),
                          lambda X=X: torch_muon_ns(X), args.pairs)
        med, lo, hi = summary(ratios)
        print(f"{f'{m}x{n}':>12} {med:9.3f} {f'[{lo:.3f}, {hi:.3f}]':>16}")


if __name__ == "__main__":
    main()
