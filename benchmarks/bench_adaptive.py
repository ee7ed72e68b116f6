"""Step overhead of hybrid correction, exact polar and adaptive steps against fixed Jordan x5.

Workload: tiny-GPT training steps (forward, backward, optimizer step; batch 16 × 128 tokens, fp32)
at the evaluation presets. Each method starts from the seed-0 checkpoint of its evaluation run in
``runs/adaptive-eval`` when there is one (trained weights, momentum, and the controllers' state:
which matrices the hybrid corrects, which steps adaptive chose), else from a fresh model warmed up
for 20 steps. One timed call is 10 consecutive steps, so the hybrid's every-10th-step correction
is included at its true rate.

Side by side in one run, as interleaved A/B pairs (median and 25–75 % spread of t_method / t_jordan5):
- full training step;
- optimizer step alone (same gradients each call: the orthogonalization cost in isolation).
Also printed: the orthogonalization FLOPs per step of each method relative to Jordan x5, from
``optimizer.stats``.

Run: ``.venv/bin/python benchmarks/bench_adaptive.py [--presets d48 d64 d96] [--pairs 7]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_ns import summary  # noqa: E402

from muonscope.experiments.data import load_corpus  # noqa: E402
from muonscope.experiments.model import GPT, get_preset  # noqa: E402
from muonscope.experiments.train import TrainConfig, build_optimizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EVAL = ROOT / "runs" / "adaptive-eval"
METHODS = {
    "jordan5": {},
    "hybrid": {"orthogonalizer": "hybrid", "hybrid_every": 10, "hybrid_bound": 0.0, "hybrid_fraction": 0.05},
    "exact": {"orthogonalizer": "exact"},
    "adaptive": {"ns_steps": "adaptive", "target_q": 0.5, "rho": 0.1},
    "adaptive-q90": {"ns_steps": "adaptive", "target_q": 0.9, "rho": 0.1},
}
STEPS_PER_CALL = 10


class Trainer:
    """A model and its optimizer, from the evaluation checkpoint when present."""

    def __init__(self, method: str, preset: str, corpus) -> None:
        ckpt = EVAL / method / f"{preset}-s0" / "checkpoint.pt"
        if ckpt.exists():
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
            state = {**state, **state.get("extra", {})}  # config and step sit in "extra" in newer files
            cfg = TrainConfig.from_dict(state["config"])
            self.origin = f"checkpoint at step {state['step']}"
        else:
            state, cfg = None, TrainConfig(preset=preset, **METHODS[method])
            self.origin = "fresh, 20 warm-up steps"
        self.model = GPT(get_preset(preset), seed=0)
        self.opt = build_optimizer(self.model, cfg)
        if state is not None:
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["optimizer"])
        for g in self.opt.param_groups:  # constant lr (warmup over)
            g["lr"] = cfg.lr if g.get("use_muon") else cfg.adamw_lr
        gen = torch.Generator().manual_seed(0)
        block = get_preset(preset).block_size
        self.batches = [corpus.get_batch("train", 16, block, gen) for _ in range(STEPS_PER_CALL)]
        if state is None:
            for _ in range(2):
                self.train_call()
        self.train_call()  # leaves gradients for opt_call

    def train_call(self) -> None:
        for x, y in self.batches:
            self.opt.zero_grad(set_to_none=True)
            _, loss = self.model(x, y)
            loss.backward()
            self.opt.step()

    def opt_call(self) -> None:
        for _ in range(STEPS_PER_CALL):
            self.opt.step()

    def flops_per_step(self) -> float:
        before = self.opt.stats["ns_flops"]
        self.opt_call()
        return (self.opt.stats["ns_flops"] - before) / STEPS_PER_CALL


def pairs_ratio(fa, fb, pairs: int) -> list[float]:
    """t_A / t_B of one call each per pair, order alternating (a call is already 10 steps)."""
    fa(), fb()  # warm-up
    out = []
    for i in range(pairs):
        ts = {}
        for name, f in ((("a", fa), ("b", fb)) if i % 2 == 0 else (("b", fb), ("a", fa))):
            t0 = time.perf_counter()
            f()
            ts[name] = time.perf_counter() - t0
        out.append(ts["a"] / ts["b"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["d48", "d64", "d96"])
    ap.add_argument("--methods", nargs="+", default=[m for m in METHODS if m != "jordan5"])
    ap.add_argument("--pairs", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2, help="1 when other jobs share the cores")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    corpus = load_corpus("stdlib", max_bytes=8_000_000)
    print(f"threads {torch.get_num_threads()}, {args.pairs} interleaved pairs of {STEPS_PER_CALL}-step calls; "
          "ratio = t_method / t_jordan5 (median [25%, 75%])")
    for preset in args.presets:
        base = Trainer("jordan5", preset, corpus)
        f0 = base.flops_per_step()
        print(f"\n{preset} (jordan5 from {base.origin}; orthogonalization {f0 / 1e6:.1f} MFLOP/step)")
        for method in args.methods:
            t = Trainer(method, preset, corpus)
            fr = t.flops_per_step() / f0
            step = summary(pairs_ratio(t.train_call, base.train_call, args.pairs))
            opt = summary(pairs_ratio(t.opt_call, base.opt_call, args.pairs))
            print(f"  {method:9s} training step {step[0]:.3f} [{step[1]:.3f}, {step[2]:.3f}]   "
                  f"optimizer step {opt[0]:.3f} [{opt[1]:.3f}, {opt[2]:.3f}]   FLOPs {fr:.3f}   ({t.origin})",
                  flush=True)


if __name__ == "__main__":
    main()
