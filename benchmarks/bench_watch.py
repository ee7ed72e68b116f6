"""Cost of watching a foreign optimizer (torch.optim.Muon + AdamW) with SpectralMonitor at every=10.

Interleaved A/B pairs in one process: each pair runs a block of ``--steps`` training steps without
the monitor and one with it (attached through torch's step hooks), alternating which goes first;
the ratio on/off of each pair's median step time is reported as the median over pairs with its
spread (min–max). On a machine loaded by other processes only such paired ratios mean anything:
both halves of a pair see the same load.

    .venv/bin/python benchmarks/bench_watch.py [--d 128] [--blocks 4] [--pairs 9] [--steps 20]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from muonscope.audit.demo import TinyLM, batches
from muonscope.optim.routing import split_params
from muonscope.spectra.monitor import SpectralMonitor


def _gemm_ratio(n: int = 512) -> float:
    a32 = torch.randn(n, n)
    a16 = a32.bfloat16()
    out = []
    for a in (a16, a32):
        a @ a
        t = time.perf_counter()
        for _ in range(5):
            a @ a
        out.append(time.perf_counter() - t)
    return out[0] / out[1]


def _cpu() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--pairs", type=int, default=9)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--every", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = TinyLM(d=args.d, n_blocks=args.blocks)
    mu, ad = split_params(model)
    opts = [torch.optim.Muon([p for _, p in mu], lr=0.02), torch.optim.AdamW([p for _, p in ad], lr=1e-3)]
    data = batches(8, args.batch)

    def block(monitored: bool) -> float:
        mon = SpectralMonitor(opts[0], every=args.every, model=model) if monitored else None
        times = []
        for i in range(args.steps):
            t = time.perf_counter()
            for o in opts:
                o.zero_grad()
            model(*data[i % len(data)]).backward()
            for o in opts:
                o.step()
            times.append(time.perf_counter() - t)
        if mon is not None:
            mon.close()
        return statistics.median(times) if args.every > args.steps else sum(times) / len(times)

    block(False)  # warm-up
    ratios = []
    for k in range(args.pairs):
        order = (False, True) if k % 2 == 0 else (True, False)
        t = dict(zip(order, (block(m) for m in order), strict=True))
        ratios.append(t[True] / t[False])
    print(f"CPU: {_cpu()}; torch {torch.__version__}; threads 1; bf16/fp32 GEMM time ratio (512^3): {_gemm_ratio():.2f}")
    print(f"model TinyLM d={args.d} blocks={args.blocks} batch={args.batch}x16 tokens; "
          f"{sum(p.numel() for p in model.parameters())} params; {len(mu)} Muon matrices")
    print(f"monitor every={args.every}: mean step time on/off over {args.pairs} interleaved pairs of {args.steps} steps: "
          f"median {statistics.median(ratios):.4f} (min {min(ratios):.4f}, max {max(ratios):.4f})")


if __name__ == "__main__":
    main()
