"""Cost of the spectral monitor on tiny-GPT training steps, and of one record versus one NS call.

Side by side in one process, interleaved (none / every=10 / every=1 each repeat), median of
repeats. The monitor uses its cheap path (spectrum="gram": eigenvalues of NS's first Gram matrix).

    .venv/bin/python benchmarks/bench_monitor.py [--presets d64 d176] [--repeats 7] [--steps 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from muonscope.experiments.data import load_corpus
from muonscope.experiments.model import GPT, get_preset
from muonscope.experiments.train import TrainConfig, build_optimizer
from muonscope.optim.hooks import OrthEvent
from muonscope.orth.orthogonalizers import NewtonSchulz
from muonscope.spectra.monitor import SpectralMonitor


class _Opt:
    """Holds a model, its optimizer and (maybe) a monitor; runs training steps."""

    def __init__(self, preset: str, every: int | None, corpus, spectrum: str):
        cfg = TrainConfig(preset=preset)
        self.model = GPT(get_preset(preset), seed=0)
        self.opt = build_optimizer(self.model, cfg)
        self.mon = SpectralMonitor(self.opt, every=every, spectrum=spectrum) if every else None
        self.corpus = corpus
        self.gen = torch.Generator().manual_seed(0)
        self.block = min(128, get_preset(preset).block_size)

    def steps(self, n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            x, y = self.corpus.get_batch("train", 16, self.block, self.gen)
            _, loss = self.model(x, y)
            loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        return (time.perf_counter() - t0) / n


def bench_steps(preset: str, repeats: int, steps: int, corpus, spectrum: str) -> dict:
    # steps is a multiple of 10 so every=10 samples the same share of steps in every timing.
    runs = {"none": _Opt(preset, None, corpus, spectrum), "every=10": _Opt(preset, 10, corpus, spectrum),
            "every=1": _Opt(preset, 1, corpus, spectrum)}
    for r in runs.values():
        r.steps(3)
    t = {k: [] for k in runs}
    for _ in range(repeats):
        for k, r in runs.items():
            t[k].append(r.steps(steps))
    base = t["none"]
    out = {"preset": preset, "step_ms": 1000 * statistics.median(base)}
    for k in ("every=10", "every=1"):
        ratios = sorted(a / b for a, b in zip(t[k], base, strict=True))
        out[k] = (statistics.median(ratios), ratios[0], ratios[-1])
    return out


def bench_record(shape: tuple[int, int], repeats: int) -> tuple[float, float, float]:
    """(NS call ms, record ms (eigensolve + statistics), record/NS ratio) for one matrix."""
    G = torch.randn(*shape)
    orth = NewtonSchulz("jordan", 5)

    class _Fake:
        param_groups = [{"param_names": ["blocks.0.mlp.up.weight"]}]

        def register_orth_hook(self, hook):
            return None

    mon = SpectralMonitor(_Fake(), every=1)
    ns_t, rec_t = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        O = orth(G)[0]
        t1 = time.perf_counter()
        O2, s = orth(G, want_spectrum=True)
        t2 = time.perf_counter()
        ev = OrthEvent("blocks.0.mlp.up.weight", G, 1, G, G, s, orth, O2)
        mon.records_from_event(ev)
        t3 = time.perf_counter()
        ns_t.append(t1 - t0)
        rec_t.append((t2 - t1) - (t1 - t0) + (t3 - t2))  # extra cost of the spectrum + the record
    del O
    ns, rec = statistics.median(ns_t), statistics.median(rec_t)
    return 1000 * ns, 1000 * rec, rec / ns


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--presets", nargs="+", default=["d64", "d176"])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--spectrum", default="gram", choices=["gram", "svd"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    corpus = load_corpus("stdlib", max_bytes=1_000_000)
    print(f"monitor overhead, spectrum={args.spectrum}, {args.threads} threads, {args.steps} steps x {args.repeats} repeats")
    print("| preset | step ms (no monitor) | every=10 / none | every=1 / none |")
    print("|---|---|---|---|")
    for p in args.presets:
        r = bench_steps(p, args.repeats, args.steps, corpus, args.spectrum)
        f = lambda v: f"{v[0]:.3f} ({v[1]:.3f}–{v[2]:.3f})"  # noqa: E731
        print(f"| {p} | {r['step_ms']:.1f} | {f(r['every=10'])} | {f(r['every=1'])} |")
    print("\n| matrix | NS jordan x5 ms | record extra ms | record / NS |")
    print("|---|---|---|---|")
    for shape in [(64, 64), (64, 256), (176, 176), (176, 704), (288, 1152), (768, 3072)]:
        ns, rec, ratio = bench_record(shape, max(args.repeats, 5))
        print(f"| {shape[0]}x{shape[1]} | {ns:.2f} | {rec:.2f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
