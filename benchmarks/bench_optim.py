"""One Muon step: muonscope.Muon against torch.optim.Muon, and 2 processes against 1.

Workload: the hidden matrices of a 4-layer d=256 GPT (per layer q, k, v, o 256×256, MLP up
1024×256 and down 256×1024) plus one 1024×1024 and one 768×3072 matrix, with fixed gradients.
Config for both: lr 0.02, weight decay 0.1, momentum 0.95 with Nesterov, Jordan coefficients,
5 NS steps, "original" lr adjustment, NS in bf16 (what torch.optim.Muon always uses).

Side by side in one run, as interleaved A/B pairs (median and 25–75 % spread of t_A / t_B):
- muonscope.Muon (same-shape matrices batched into one NS call) / torch.optim.Muon;
- muonscope.Muon with one optimizer per matrix (no batching) / torch.optim.Muon;
- muonscope.Muon with its CPU default fp32 NS / torch.optim.Muon (bf16), for reference.
With ``--distributed``: 2 gloo processes (1 thread each) against 1 process (2 threads), same
workload; each pair times both, and the final parameters are checked equal across ranks.

Run: ``.venv/bin/python benchmarks/bench_optim.py [--distributed]`` (the distributed pairs time a fixed
number of steps, the fastest of them, so both ranks make the same collective calls).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_ns import ab_pairs, summary  # noqa: E402

from muonscope.optim import Muon  # noqa: E402

CONFIG = dict(lr=0.02, weight_decay=0.1, momentum=0.95, nesterov=True, ns_steps=5, adjust_lr_fn="original")


def workload(d: int = 256, layers: int = 4) -> list[tuple[str, tuple[int, int]]]:
    shapes = []
    for i in range(layers):
        shapes += [(f"h.{i}.attn.{k}.weight", (d, d)) for k in "qkvo"]
        shapes += [(f"h.{i}.mlp.up.weight", (4 * d, d)), (f"h.{i}.mlp.down.weight", (d, 4 * d))]
    return shapes + [("extra.square.weight", (1024, 1024)), ("extra.wide.weight", (768, 3072))]


def make_params(seed: int = 0) -> list[tuple[str, nn.Parameter]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for name, shape in workload():
        p = nn.Parameter(torch.randn(shape, generator=g) / shape[1] ** 0.5)
        p.grad = torch.randn(shape, generator=g)
        out.append((name, p))
    return out


def ours(dtype=torch.bfloat16, **kw):
    return Muon(make_params(), ns_dtype=dtype, **CONFIG, **kw)


def theirs():
    return torch.optim.Muon([p for _, p in make_params()], **CONFIG)


class OnePerMatrix:
    """muonscope.Muon without batching: one optimizer per matrix."""

    def __init__(self):
        self.opts = [Muon([np], ns_dtype=torch.bfloat16, **CONFIG) for np in make_params()]

    def step(self):
        for o in self.opts:
            o.step()


def single_process(args) -> None:
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.pairs} interleaved pairs")
    n = len(workload())
    print(f"workload: {n} matrices; NS GFLOP per step: {_flops() / 1e9:.1f}\n")
    rows = [("muonscope (batched, bf16) / torch", ours()),
            ("muonscope (one per matrix, bf16) / torch", OnePerMatrix()),
            ("muonscope (fp32 NS) / torch (bf16 NS)", ours(torch.float32))]
    print(f"{'comparison':<42} {'ratio':>7} {'[p25, p75]':>16} {'t_ours ms':>10} {'t_torch ms':>10}")
    for label, opt in rows:
        ref = theirs()
        times = {}

        def fa(opt=opt, times=times):
            t = time.perf_counter()
            opt.step()
            times.setdefault("a", []).append(time.perf_counter() - t)

        def fb(ref=ref, times=times):
            t = time.perf_counter()
            ref.step()
            times.setdefault("b", []).append(time.perf_counter() - t)

        ratios = ab_pairs(fa, fb, args.pairs, args.min_time)
        med, lo, hi = summary(ratios)
        ta = sorted(times["a"])[len(times["a"]) // 2] * 1e3
        tb = sorted(times["b"])[len(times["b"]) // 2] * 1e3
        print(f"{label:<42} {med:7.3f} {f'[{lo:.3f}, {hi:.3f}]':>16} {ta:10.1f} {tb:10.1f}")


def _flops() -> int:
    from muonscope.orth.analysis import ns_flops

    return sum(ns_flops(m, n, 5) for _, (m, n) in workload())


# --- distributed -------------------------------------------------------------------------------
def _dist_worker(rank: int, world: int, port: int, pairs: int, min_time: float) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    sharded = ours()
    single = ours(distributed=False) if rank == 0 else None

    def step_sharded():
        dist.barrier()
        sharded.step()

    def time_fixed(fn, calls):
        """Fastest of a fixed number of calls (every rank must make the same collective calls)."""
        best = float("inf")
        for _ in range(calls):
            t = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t)
        return best

    calls = max(3, int(min_time / 0.2))

    ratios, t2, t1 = [], [], []
    for i in range(pairs + 1):
        order = ("s", "d") if i % 2 else ("d", "s")
        res = {}
        for which in order:
            if which == "d":
                res["d"] = time_fixed(step_sharded, calls)
                dist.barrier()
            else:
                if rank == 0:
                    torch.set_num_threads(2)
                    res["s"] = time_fixed(single.step, calls)
                    torch.set_num_threads(1)
                dist.barrier()  # rank 1 waits here, idle, while rank 0 runs alone
        if i == 0:
            continue  # warm-up pair
        if rank == 0:
            ratios.append(res["d"] / res["s"])
            t2.append(res["d"])
            t1.append(res["s"])
    # Equality across ranks after the same number of sharded steps.
    flat = torch.cat([p.detach().reshape(-1) for g in sharded.param_groups for p in g["params"]])
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    if rank == 0:
        med, lo, hi = summary(ratios)
        same = all(torch.equal(gathered[0], x) for x in gathered[1:])
        print(f"{'2 processes x 1 thread / 1 process x 2 threads':<48} {med:7.3f} "
              f"{f'[{lo:.3f}, {hi:.3f}]':>16} {sorted(t2)[len(t2) // 2] * 1e3:10.1f} "
              f"{sorted(t1)[len(t1) // 2] * 1e3:10.1f}")
        print(f"parameters bit-identical across ranks: {same}; per-rank NS GFLOP last step: "
              f"{sharded.stats['last_local_ns_flops'] / 1e9:.1f} of {sharded.stats['last_ns_flops'] / 1e9:.1f}")
    dist.barrier()
    dist.destroy_process_group()


def distributed(args) -> None:
    import subprocess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    print(f"torch {torch.__version__}, gloo on 127.0.0.1, {args.pairs} interleaved pairs\n")
    print(f"{'comparison':<48} {'ratio':>7} {'[p25, p75]':>16} {'t_2proc ms':>10} {'t_1proc ms':>10}")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--port", str(port),
           "--pairs", str(args.pairs), "--min-time", str(args.min_time)]
    procs = [subprocess.Popen([*cmd, "--rank", str(r)], env=env) for r in range(2)]
    for p in procs:
        p.wait()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds of repeated steps per timing")
    ap.add_argument("--distributed", action="store_true")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        _dist_worker(args.rank, 2, args.port, args.pairs, args.min_time)
    elif args.distributed:
        distributed(args)
    else:
        single_process(args)


if __name__ == "__main__":
    main()
