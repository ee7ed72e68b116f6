"""Gram Newton-Schulz against standard NS: accuracy and speed per dtype and restart positions.

For each shape and compute dtype, one input with a log-decaying spectrum (s from 1 down to
``--lo``, Haar-random singular vectors) is orthogonalized by Jordan × 5 in standard form and in
Gram form with several restart sets. Accuracy: the map error ‖O − U p(s) Vᵀ‖_F / ‖U p(s) Vᵀ‖_F
against the exact float64 scalar map p, and the largest output singular value (the map's
maximum is 1.20). Cost: FLOPs of the cost model (:func:`muonscope.orth.analysis.gram_ns_cost`)
over standard NS's, and measured time over standard NS's in the same dtype — interleaved A/B
pairs, order alternating, ``--pairs`` of them, each timing the fastest of ``--calls`` calls;
median and [min, max].

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_gram.py --threads 1 --pairs 7``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch

from muonscope.orth.analysis import composed_map, gram_ns_cost, ns_flops
from muonscope.orth.gram_ns import default_restarts, gram_newton_schulz
from muonscope.orth.matrix_ns import newton_schulz

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def test_matrix(m: int, n: int, lo: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    r = min(m, n)
    s = torch.logspace(np.log10(lo), 0, r, dtype=torch.float64).flip(0)
    s = s / s.norm()
    U, _ = torch.linalg.qr(torch.randn(m, r, dtype=torch.float64, generator=g))
    V, _ = torch.linalg.qr(torch.randn(n, r, dtype=torch.float64, generator=g))
    G = (U * s) @ V.T
    ref = (U * torch.from_numpy(composed_map("jordan", 5, s.numpy()))) @ V.T
    return G.float(), ref


def fastest(fn, calls: int) -> float:
    best = float("inf")
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def ab(fa, fb, pairs: int, calls: int) -> list[float]:
    fa(), fb()
    out = []
    for i in range(pairs):
        if i % 2 == 0:
            ta, tb = fastest(fa, calls), fastest(fb, calls)
        else:
            tb, ta = fastest(fb, calls), fastest(fa, calls)
        out.append(ta / tb)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["768x3072", "512x1024", "768x768"])
    ap.add_argument("--dtypes", nargs="+", default=["bf16", "fp32", "fp16"], choices=list(DTYPES))
    ap.add_argument("--lo", type=float, default=1e-4)
    ap.add_argument("--pairs", type=int, default=7)
    ap.add_argument("--calls", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print("| shape | dtype | implementation | restarts | map error | max output σ | FLOPs / standard | "
          f"time / standard, median [min, max] of {args.pairs} |")
    print("|---|---|---|---|---|---|---|---|")
    for shape in args.shapes:
        m, n = (int(x) for x in shape.lower().split("x"))
        G, ref = test_matrix(m, n, args.lo)

        def err(O, ref=ref):
            O = O.double()
            return float((O - ref).norm() / ref.norm()), float(torch.linalg.matrix_norm(O, ord=2))

        for name in args.dtypes:
            dt = DTYPES[name]

            def std(G=G, dt=dt):
                return newton_schulz(G, "jordan", 5, dtype=dt)

            e, smax = err(std())
            print(f"| {m}×{n} | {name} | standard | – | {e:.2e} | {smax:.3f} | 1.000 | 1 |", flush=True)
            sets = [(), (2,), (1, 3)]
            d = default_restarts(dt, 5)
            if d not in sets:
                sets.append(d)
            for rs in sets:
                def gram(G=G, dt=dt, rs=rs):
                    return gram_newton_schulz(G, "jordan", 5, dtype=dt, restarts=rs)

                e, smax = err(gram())
                fr = gram_ns_cost(m, n, 5, rs)[0] / ns_flops(m, n, 5)
                r = ab(gram, std, args.pairs, args.calls)
                tag = " (default)" if rs == d else ""
                print(f"| {m}×{n} | {name} | Gram | {','.join(map(str, rs)) or 'none'}{tag} | {e:.2e} | {smax:.3f} | "
                      f"{fr:.3f} | {statistics.median(r):.3f} [{min(r):.3f}, {max(r):.3f}] |", flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
