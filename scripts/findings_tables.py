"""Markdown tables for results/FINDINGS.md from the committed fits (run after scripts/seeded_sweep.sh).

    .venv/bin/python scripts/findings_tables.py [RESULTS]
"""

import sys
from pathlib import Path

import pandas as pd

from muonscope.laws import load_laws
from muonscope.laws.compare import compare_exponents

R = Path(sys.argv[1] if len(sys.argv) > 1 else "results")
TYPES = ["q", "k", "v", "o", "mlp_up", "mlp_down"]


def md(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in df.itertuples(index=False)]
    return "\n".join(lines)


seeded = load_laws(R / "sweep_seeds" / "laws.json")
strict = load_laws(R / "sweep_seeds" / "laws_strict.json")
single = load_laws(R / "laws.json")
conv = pd.read_csv(R / "sweep_seeds" / "convergence" / "convergence.csv")
t = seeded.exponent_table().merge(conv[["layer_type", "rel_depth", "q", "drift_per_1k", "converged",
                                        "alpha_seed_sd"]], on=["layer_type", "rel_depth", "q"], how="left")

for q in (0.1, 0.5, 0.9):
    print(f"\n### alpha of s_{q:g} (95% bootstrap over sizes and seeds; * = still drifting)\n")
    rows = []
    for lt in TYPES:
        row = {"layer": lt}
        for d in (0.25, 0.5, 0.75, 1.0):
            r = t[(t.layer_type == lt) & (t.rel_depth == d) & (t.q == q)]
            row[f"depth {d:g}"] = "-" if r.empty else (
                f"{r.alpha.iloc[0]:.2f} [{r.alpha_lo.iloc[0]:.2f}, {r.alpha_hi.iloc[0]:.2f}]"
                + ("" if bool(r.converged.iloc[0]) else "*"))
        rows.append(row)
    print(md(pd.DataFrame(rows)))

print("\n### by quantile\n")
rows = []
for q, g in t.groupby("q"):
    rows.append({"q": f"{q:g}", "median α": f"{g.alpha.median():.3f}",
                 "range": f"{g.alpha.min():.2f}–{g.alpha.max():.2f}",
                 "median seed sd": f"{g.alpha_seed_sd.median():.3f}", "median R²": f"{g.r2.median():.3f}",
                 "sizes used": f"{g.n_sizes.min()}–{g.n_sizes.max()}", "converged": f"{int(g.converged.sum())}/{len(g)}",
                 "median drift/1000 steps": f"{g.drift_per_1k.median():+.3f}"})
print(md(pd.DataFrame(rows)))

print("\n### single seed (results/laws.json) vs seeded, median over matrices\n")
c = compare_exponents(single, seeded, ("single", "seeded"))
rows = [{"q": f"{q:g}", "single": f"{g.alpha_single.median():.3f}", "seeded": f"{g.alpha_seeded.median():.3f}",
         "median Δ": f"{g.delta.median():+.3f}", "sizes single": f"{g.n_sizes_single.min()}–{g.n_sizes_single.max()}",
         "sizes seeded": f"{g.n_sizes_seeded.min()}–{g.n_sizes_seeded.max()}",
         "intervals overlap": f"{int(g.intervals_overlap.sum())}/{len(g)}"} for q, g in c.groupby("q")]
print(md(pd.DataFrame(rows)))
for lt, d, q in (("mlp_down", 1.0, 0.5), ("k", 0.25, 0.75), ("mlp_down", 1.0, 0.9), ("o", 1.0, 0.5)):
    r = c[(c.layer_type == lt) & (c.rel_depth == d) & (c.q == q)]
    if len(r):
        r = r.iloc[0]
        print(f"- {lt} depth {d:g} s_{q:g}: single {r.alpha_single:.2f} [{r.alpha_lo_single:.2f}, {r.alpha_hi_single:.2f}] "
              f"({r.n_sizes_single} sizes) -> seeded {r.alpha_seeded:.2f} [{r.alpha_lo_seeded:.2f}, "
              f"{r.alpha_hi_seeded:.2f}] ({r.n_sizes_seeded} sizes)")

print("\n### strict burn-in rule vs drift tolerance\n")
ex = strict.excluded()
st = strict.stabilization
rows = []
for m, g in st.groupby("model_params"):
    e = ex[ex.model_params == m]
    rows.append({"M": f"{m / 1e6:.2f}M", "trajectories": len(g), "excluded (strict)": len(e),
                 "excluded (tolerant)": int((seeded.excluded().model_params == m).sum()),
                 "median burn-in step": f"{g.burn_in_step.median():.0f}"})
print(md(pd.DataFrame(rows)))
cs = compare_exponents(strict, seeded, ("strict", "tolerant"))
print(f"\nfits in both: {len(cs)}; |Δα| > 0.05: {int((cs.delta.abs() > 0.05).sum())}; "
      f"fits with fewer sizes under the strict rule: {int((cs.n_sizes_strict < cs.n_sizes_tolerant).sum())}; "
      f"groups the strict rule cannot fit: {len(strict.skipped)}")

print("\n### shared exponent across quantiles\n")
sh = seeded.shared
print(f"accepted for {sum(s.shared for s in sh)} of {len(sh)} matrices")

dpath = R / "sweep_depth" / "laws.json"
if dpath.exists():
    depth = load_laws(dpath)
    cd = compare_exponents(seeded, depth, ("width", "depth"))
    print("\n### width family vs depth+width family (median over layer types; excess = α − α_flat)\n")
    rows = []
    for (q, d), g in cd.groupby(["q", "rel_depth"]):
        rows.append({"q": f"{q:g}", "depth": f"{d:g}", "α width": f"{g.alpha_width.median():.3f}",
                     "α depth": f"{g.alpha_depth.median():.3f}", "α_flat width": f"{g.alpha_flat_width.median():.3f}",
                     "α_flat depth": f"{g.alpha_flat_depth.median():.3f}",
                     "excess width": f"{g.excess_width.median():+.3f}", "excess depth": f"{g.excess_depth.median():+.3f}"})
    print(md(pd.DataFrame(rows)))
    r = cd[(cd.layer_type == "mlp_down") & (cd.rel_depth == 1.0) & (cd.q == 0.5)]
    if len(r):
        print(f"\nlast-block mlp_down s_0.5: width {r.alpha_width.iloc[0]:.2f}, depth family {r.alpha_depth.iloc[0]:.2f} "
              f"[{r.alpha_lo_depth.iloc[0]:.2f}, {r.alpha_hi_depth.iloc[0]:.2f}]")
