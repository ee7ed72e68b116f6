"""One Muon optimizer step: muonscope.Muon against its peers on GPT-2-small hidden shapes.

Workload: the hidden matrices of ``--layers`` GPT-2-small blocks (d = 768: q, k, v, o 768×768,
MLP up 3072×768 and down 768×3072) with fixed gradients (each optimizer gets its own copy).
Peers: ``torch.optim.Muon``, Keller Jordan's Muon (``pip install muon-optimizer``,
``SingleDeviceMuon``) and dion's Muon (``--dion PATH``: a directory holding the ``dion`` package,
run eagerly: this script sets ``TORCHDYNAMO_DISABLE=1`` before importing torch, so dion's
``torch.compile`` decorators are no-ops). Peers that cannot be imported are reported and skipped.

Two families of comparisons (ratio = t_muonscope / t_peer, < 1 means muonscope is faster):
- out of the box: every optimizer as constructed with only ``lr`` (muonscope: its default NS
  dtype, :func:`muonscope.orth.matrix_ns.default_compute_dtype`; also ``orthogonalizer="auto"``);
- like-for-like: the same map in the same dtype (Jordan × 5, bf16, Nesterov; against dion its own
  default-off ``use_polar_express=False`` path, the "dion5" coefficients × 5 without Nesterov).

Each comparison is a set of interleaved A/B pairs (order alternating, ``--pairs`` ≥ 7), each
timing the fastest of ``--calls`` steps; reported: median ratio and [min, max]. The header gives
the CPU model and the measured bf16/fp32 GEMM throughput ratio of this machine.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_peers.py --threads 1 --layers 2
--pairs 7 --dion /tmp/dionpeer``.
"""

from __future__ import annotations

import os

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # dion's @torch.compile functions run eagerly

import argparse  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

from muonscope.optim import Muon  # noqa: E402
from muonscope.orth.matrix_ns import default_compute_dtype  # noqa: E402


def workload(layers: int, d: int = 768) -> list[tuple[str, tuple[int, int]]]:
    shapes = []
    for i in range(layers):
        shapes += [(f"h.{i}.attn.{k}.weight", (d, d)) for k in "qkvo"]
        shapes += [(f"h.{i}.mlp.c_fc.weight", (4 * d, d)), (f"h.{i}.mlp.c_proj.weight", (d, 4 * d))]
    return shapes


def make_params(layers: int, seed: int = 0) -> list[tuple[str, nn.Parameter]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for name, shape in workload(layers):
        p = nn.Parameter(torch.randn(shape, generator=g) / shape[1] ** 0.5)
        p.grad = torch.randn(shape, generator=g) * 1e-2
        out.append((name, p))
    return out


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    for line in out.splitlines():
        if line.startswith("Model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def gemm_ratio(n: int = 768, k: int = 3072, calls: int = 5) -> tuple[float, float]:
    """(bf16 GFLOP/s, fp32 GFLOP/s) of n×k · k×n products (fastest of ``calls``)."""
    rates = []
    for dt in (torch.bfloat16, torch.float32):
        a, b = torch.randn(n, k).to(dt), torch.randn(k, n).to(dt)
        a @ b
        best = min(_timed(lambda a=a, b=b: a @ b) for _ in range(calls))
        rates.append(2 * n * n * k / best / 1e9)
    return rates[0], rates[1]


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def fastest(fn, calls: int) -> float:
    return min(_timed(fn) for _ in range(calls))


def ab(fa, fb, pairs: int, calls: int) -> list[float]:
    """t_A / t_B over interleaved pairs, order alternating."""
    fa(), fb()  # warm-up (state allocation, first-call kernels)
    out = []
    for i in range(pairs):
        if i % 2 == 0:
            ta, tb = fastest(fa, calls), fastest(fb, calls)
        else:
            tb, ta = fastest(fb, calls), fastest(fa, calls)
        out.append(ta / tb)
    return out


def stepper(opt):
    return lambda: opt.step()


def peers(layers: int, dion_path: str | None):
    """{name: factory(params) -> optimizer} for the importable peers, and notes on the others."""
    found, notes = {}, []
    found["torch.optim.Muon"] = lambda ps, **kw: torch.optim.Muon([p for _, p in ps], lr=0.02, **kw)
    try:
        import muon as kj  # Keller Jordan's package

        found["Keller Jordan Muon"] = lambda ps, **kw: kj.SingleDeviceMuon([p for _, p in ps], lr=0.02, **kw)
    except ImportError as exc:
        notes.append(f"Keller Jordan's Muon skipped: {exc} (pip install muon-optimizer==0.1.0)")
    if dion_path:
        sys.path.insert(0, dion_path)
    try:
        from dion import Muon as DionMuon

        found["dion Muon"] = lambda ps, **kw: DionMuon([p for _, p in ps], lr=0.02, **kw)
    except Exception as exc:  # noqa: BLE001 - any import failure means: not runnable here
        notes.append(f"dion's Muon skipped: {type(exc).__name__}: {exc}")
    return found, notes


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=7)
    ap.add_argument("--calls", type=int, default=2, help="steps per timing (the fastest counts)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dion", default=None, help="directory containing the dion package")
    ap.add_argument("--only", default=None, help="run only comparisons whose label contains this")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    bf, fp = gemm_ratio()
    print(f"CPU: {cpu_model()}; torch {torch.__version__}; {args.threads} thread(s); "
          f"capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"GEMM 768x3072x768: bf16 {bf:.0f} GFLOP/s, fp32 {fp:.0f} GFLOP/s, bf16/fp32 = {bf / fp:.2f}; "
          f"muonscope default NS dtype here: {str(default_compute_dtype('cpu')).removeprefix('torch.')}")
    found, notes = peers(args.layers, args.dion)
    for n in notes:
        print("note:", n)
    base = make_params(args.layers)
    shapes = sorted({tuple(p.shape) for _, p in base})
    print(f"workload: {args.layers} GPT-2-small blocks, {len(base)} matrices, shapes {shapes}")

    def ps():  # a fresh copy, gradients included (deepcopy drops .grad)
        out = []
        for name, p in base:
            q = nn.Parameter(p.detach().clone())
            q.grad = p.grad.clone()
            out.append((name, q))
        return out

    bf16 = dict(ns_dtype=torch.bfloat16, adjust_lr_fn="original")
    rows = [  # (family, label, muonscope kwargs, peer, peer kwargs)
        ("out of the box", "muonscope default / torch.optim.Muon", {}, "torch.optim.Muon", {}),
        ("out of the box", "muonscope orthogonalizer='auto' / torch.optim.Muon", {"orthogonalizer": "auto"},
         "torch.optim.Muon", {}),
        ("out of the box", "muonscope default / Keller Jordan Muon", {}, "Keller Jordan Muon", {}),
        ("out of the box", "muonscope default / dion Muon (Polar Express)", {}, "dion Muon", {}),
        ("like-for-like", "jordan x5 bf16: muonscope / torch.optim.Muon", bf16, "torch.optim.Muon", {}),
        ("like-for-like", "jordan x5 bf16, auto (Gram on MLP): muonscope / torch.optim.Muon",
         {**bf16, "orthogonalizer": "auto"}, "torch.optim.Muon", {}),
        ("like-for-like", "jordan x5 fp32: muonscope / torch.optim.Muon (bf16)", {**bf16, "ns_dtype": torch.float32},
         "torch.optim.Muon", {}),
        ("like-for-like", "jordan x5 bf16: muonscope / Keller Jordan Muon", bf16, "Keller Jordan Muon", {}),
        ("like-for-like", "dion5 x5 bf16, no Nesterov: muonscope / dion Muon",
         {**bf16, "schedule": "dion5", "nesterov": False}, "dion Muon", {"use_polar_express": False}),
    ]
    print(f"\n| comparison | median ratio [min, max] over {args.pairs} pairs | step ms (ours / peer) |")
    print("|---|---|---|")
    family = None
    for fam, label, ours_kw, peer, peer_kw in rows:
        if args.only and args.only not in label:
            continue
        if peer not in found:
            print(f"| {label} | not run: {peer} not importable | |")
            continue
        if fam != family:
            print(f"| **{fam}** | | |")
            family = fam
        ours = Muon(ps(), lr=0.02, **ours_kw)
        theirs = found[peer](ps(), **peer_kw)
        r = ab(stepper(ours), stepper(theirs), args.pairs, args.calls)
        ta, tb = fastest(stepper(ours), args.calls), fastest(stepper(theirs), args.calls)
        print(f"| {label} | {statistics.median(r):.3f} [{min(r):.3f}, {max(r):.3f}] | "
              f"{ta * 1e3:.0f} / {tb * 1e3:.0f} |", flush=True)


if __name__ == "__main__":
    main()
