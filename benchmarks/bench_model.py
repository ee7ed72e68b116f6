"""Training-step cost of the tiny-GPT presets on CPU, and a sweep plan that fits a time budget.

Per preset it measures, as interleaved pairs (median of ``--repeats``):
  * one training step forward + backward + AdamW step, under bf16 autocast vs in fp32;
  * the Muon extra: Newton–Schulz (Jordan, 5 steps, fp32) on every hidden matrix's gradient;
  * the monitor extra: singular values (fp32 ``svdvals``) of the 24 monitored matrices.
Then it proposes steps per preset so that the whole sweep fits ``--budget-min`` minutes:
every preset gets the same number of steps (so burn-in and stabilization compare across sizes).

    .venv/bin/python benchmarks/bench_model.py                # default sweep presets
    .venv/bin/python benchmarks/bench_model.py --presets tiny d48 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from muonscope.experiments.model import GPT, PRESETS, SWEEP_PRESETS
from muonscope.orth.matrix_ns import newton_schulz


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_preset(name: str, batch: int, block: int, repeats: int, warmup: int) -> dict:
    cfg = PRESETS[name]
    block = min(block, cfg.block_size)
    model = GPT(cfg, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (batch, block), generator=gen)
    y = torch.randint(0, 256, (batch, block), generator=gen)

    def step(bf16: bool):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    params = dict(model.named_parameters())
    hidden = [params[m.name] for m in model.hidden_matrices()]
    monitored = [params[m.name] for m in model.monitored_matrices()]
    grads = [torch.randn(p.shape, generator=gen) for p in hidden]

    def ns():
        for g in grads:
            newton_schulz(g, "jordan", 5, dtype=torch.float32)

    def svd():
        for p in monitored:
            torch.linalg.svdvals(p.detach().float())

    for _ in range(warmup):
        step(True), step(False), ns(), svd()
    bf16, fp32, ns_t, svd_t = [], [], [], []
    for i in range(repeats):  # interleaved; alternate the order to cancel drift
        order = (True, False) if i % 2 == 0 else (False, True)
        for flag in order:
            (bf16 if flag else fp32).append(_time(lambda f=flag: step(f)))
        ns_t.append(_time(ns))
        svd_t.append(_time(svd))
    med = statistics.median
    return {
        "preset": name,
        "M": cfg.non_embedding_params,
        "total": cfg.non_embedding_params + cfg.embedding_params,
        "fp32_s": med(fp32),
        "bf16_s": med(bf16),
        "ns_s": med(ns_t),
        "svd_s": med(svd_t),
        "tokens": batch * block,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=list(SWEEP_PRESETS))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--block", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--budget-min", type=float, default=40.0, help="sweep time budget (minutes)")
    ap.add_argument("--precision", choices=("fp32", "bf16", "best"), default="fp32",
                    help="training precision assumed by the sweep plan")
    ap.add_argument("--monitor-every", type=int, default=10, help="spectra sampled every k steps")
    ap.add_argument("--eval-overhead", type=float, default=0.05, help="validation share of time")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"batch {args.batch}×{args.block} tokens, median of {args.repeats} interleaved repeats")
    rows = [bench_preset(p, args.batch, args.block, args.repeats, args.warmup) for p in args.presets]

    hdr = (f"{'preset':>7} {'M':>9} {'total':>9} {'fp32 ms':>8} {'bf16 ms':>8} {'fp32/bf16':>9} "
           f"{'bf16 tok/s':>10} {'NS ms':>7} {'svd ms':>7} {'Muon step ms':>12}")
    print(hdr)
    print("-" * len(hdr))
    best = []
    for r in rows:
        train_s = {"fp32": r["fp32_s"], "bf16": r["bf16_s"]}.get(args.precision)
        train_s = min(r["bf16_s"], r["fp32_s"]) if train_s is None else train_s
        muon_s = train_s + r["ns_s"] + r["svd_s"] / args.monitor_every
        best.append(muon_s)
        r["muon_s"] = muon_s
        print(f"{r['preset']:>7} {r['M']:>9,} {r['total']:>9,} {1e3 * r['fp32_s']:>8.1f} "
              f"{1e3 * r['bf16_s']:>8.1f} {r['fp32_s'] / r['bf16_s']:>9.2f} "
              f"{r['tokens'] / r['bf16_s']:>10,.0f} {1e3 * r['ns_s']:>7.1f} {1e3 * r['svd_s']:>7.1f} "
              f"{1e3 * muon_s:>12.1f}")
    per_step = sum(best) * (1 + args.eval_overhead)
    steps = int(args.budget_min * 60 / per_step)
    print(f"\nMuon step = {args.precision} training step + NS + svd/{args.monitor_every}")
    print(f"sum over presets of one Muon step (+{args.eval_overhead:.0%} eval): {per_step:.2f} s")
    print(f"equal steps per preset within {args.budget_min:.0f} min: {steps}")
    for s in (600, 800, 1000, 1200):
        per = "  ".join(f"{r['preset']} {s * r['muon_s'] * (1 + args.eval_overhead) / 60:.1f}" for r in rows)
        print(f"  {s} steps each → {s * per_step / 60:.1f} min  ({per})")


if __name__ == "__main__":
    main()
