"""One Muon step from two source trees, side by side: does a change to the optimizer slow it down?

Each measurement is a fresh process that imports muonscope from one tree (``--a``, ``--b``: paths
to a ``src`` directory), builds the bench_optim workload (4-layer d=256 GPT hidden matrices plus a
1024² and a 768×3072 matrix, fixed gradients, Jordan × 5, Nesterov) and reports the median time
of ``--steps`` optimizer steps after a warm-up, on 1 thread. Processes run as interleaved pairs in
alternating order (A B, B A, …); the result is the median and 25–75 % spread of t_B / t_A.

Run: ``.venv/bin/python benchmarks/bench_step_ab.py --a /path/to/old/src --b src [--dtype float32]``
(a previous commit's tree: ``git worktree add /tmp/prev <commit>`` then ``--a /tmp/prev/src``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys

CHILD = r"""
import json, statistics, sys, time, torch
torch.set_num_threads(1)
sys.path.insert(0, {bench!r})
from bench_optim import CONFIG, make_params
from muonscope.optim import Muon
opt = Muon(make_params(), ns_dtype=getattr(torch, {dtype!r}), **CONFIG)
for _ in range(3):
    opt.step()
times = []
for _ in range({steps}):
    t0 = time.perf_counter(); opt.step(); times.append(time.perf_counter() - t0)
print(json.dumps(statistics.median(times)))
"""


def measure(src: str, dtype: str, steps: int) -> float:
    env = {**os.environ, "PYTHONPATH": os.path.abspath(src), "OMP_NUM_THREADS": "1"}
    code = CHILD.format(bench=os.path.dirname(os.path.abspath(__file__)), dtype=dtype, steps=steps)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--a", required=True, help="baseline src directory")
    ap.add_argument("--b", default="src", help="candidate src directory")
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--dtype", default="bfloat16")
    args = ap.parse_args()
    ratios, ta, tb = [], [], []
    for i in range(args.pairs):
        order = (("a", args.a), ("b", args.b)) if i % 2 == 0 else (("b", args.b), ("a", args.a))
        t = {k: measure(src, args.dtype, args.steps) for k, src in order}
        ta.append(t["a"])
        tb.append(t["b"])
        ratios.append(t["b"] / t["a"])
    q = statistics.quantiles(ratios, n=4)
    print(f"cpu: {platform.processor() or platform.machine()}; 1 thread; NS dtype {args.dtype}; "
          f"{args.pairs} interleaved pairs of {args.steps}-step medians")
    print(f"t_A median {statistics.median(ta) * 1e3:.1f} ms, t_B median {statistics.median(tb) * 1e3:.1f} ms")
    print(f"t_B / t_A: median {statistics.median(ratios):.3f} [25 %: {q[0]:.3f}, 75 %: {q[2]:.3f}]")


if __name__ == "__main__":
    main()
