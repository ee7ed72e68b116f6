"""Training throughput per preset: Muon (+AdamW for embeddings/head/1-D) against AdamW everywhere.

Both optimizers train their own copy of the same model side by side, interleaved in blocks of
``--steps`` steps, ``--repeats`` times; reported: median tokens/s of each and the median of the
per-repeat ratio with its min–max. With ``--sweep DIR`` it also sums the wall time recorded in a
sweep manifest.

    .venv/bin/python benchmarks/bench_train.py [--presets d48 d128 d288] [--threads 2] [--sweep runs/sweep]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch

from muonscope.experiments.data import load_corpus
from muonscope.experiments.model import GPT, SWEEP_PRESETS, get_preset
from muonscope.experiments.train import TrainConfig, build_optimizer


def bench(preset: str, steps: int, repeats: int, corpus, batch: int) -> dict:
    block = min(128, get_preset(preset).block_size)
    setups = {}
    for opt_name in ("muon", "adamw"):
        cfg = dataclasses.replace(TrainConfig(preset=preset), optimizer=opt_name)
        model = GPT(get_preset(preset), seed=0)
        setups[opt_name] = (model, build_optimizer(model, cfg), torch.Generator().manual_seed(0))

    def run(name: str, n: int) -> float:
        model, opt, gen = setups[name]
        t0 = time.perf_counter()
        for _ in range(n):
            x, y = corpus.get_batch("train", batch, block, gen)
            _, loss = model(x, y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return batch * block * n / (time.perf_counter() - t0)

    for name in setups:
        run(name, 2)
    tps = {"muon": [], "adamw": []}
    for _ in range(repeats):
        for name in ("muon", "adamw"):
            tps[name].append(run(name, steps))
    ratios = sorted(m / a for m, a in zip(tps["muon"], tps["adamw"], strict=True))
    return {"preset": preset, "M": GPT(get_preset(preset)).non_embedding_params(),
            "muon": statistics.median(tps["muon"]), "adamw": statistics.median(tps["adamw"]),
            "ratio": (statistics.median(ratios), ratios[0], ratios[-1])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--presets", nargs="+", default=list(SWEEP_PRESETS))
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sweep", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    corpus = load_corpus("stdlib", max_bytes=1_000_000)
    print(f"{args.threads} threads, batch {args.batch}x128, {args.steps} steps x {args.repeats} interleaved repeats, fp32")
    print("| preset | M | Muon tok/s | AdamW tok/s | Muon / AdamW throughput (min–max) |")
    print("|---|---|---|---|---|")
    for p in args.presets:
        r = bench(p, args.steps, args.repeats, corpus, args.batch)
        lo, hi = r["ratio"][1], r["ratio"][2]
        print(f"| {p} | {r['M']:,} | {r['muon']:,.0f} | {r['adamw']:,.0f} | {r['ratio'][0]:.2f} ({lo:.2f}–{hi:.2f}) |")
    if args.sweep is not None:
        runs = json.loads((args.sweep / "sweep.json").read_text())["runs"]
        total = sum(e.get("wall_seconds", 0.0) for e in runs.values())
        print(f"\nsweep {args.sweep}: {len(runs)} runs, total wall time {total / 60:.1f} min")
        for name, e in runs.items():
            print(f"  {name}: {e.get('steps')} steps, {e.get('wall_seconds', 0) / 60:.1f} min, {e.get('status')}")


if __name__ == "__main__":
    main()
