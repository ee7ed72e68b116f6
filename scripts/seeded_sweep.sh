#!/usr/bin/env bash
# The seeded CPU size sweep behind results/FINDINGS.md, end to end (2 worker processes, one BLAS
# thread each; every step resumes from checkpoints, so re-running after an interruption continues).
#
#   1. lr check: best Muon lr per size under both lr-scaling rules (300 steps, d48/d128/d288)
#   2. width family: d48 … d224 x seeds 0,1,2 x 1000 steps under the chosen rule
#   3. depth + width family: L4-d48 … L16-d96, seed 0, 1000 steps
#   4. fits (drift-tolerant and strict), exponents over training time, comparisons
#   5. run stores copied into results/ without checkpoints
set -euo pipefail
RUNS=${RUNS:-runs}
RESULTS=${RESULTS:-results}
LR=${LR:-0.02}
RULE=${RULE:-original}
MS=${MUONSCOPE:-.venv/bin/muonscope}

"$MS" sweep -o "$RUNS/lrcheck" --presets d48,d128,d288 --lr 0.005,0.01,0.02 --adjust-lr-fn match_rms_adamw \
    --steps 300 --jobs 2
"$MS" sweep -o "$RUNS/lrcheck" --presets d288,d128,d48 --lr 0.01,0.02,0.04 --adjust-lr-fn original \
    --steps 300 --monitor-every 50 --jobs 2
"$MS" lr-check "$RUNS/lrcheck" -o "$RESULTS/lr_check"

"$MS" sweep -o "$RUNS/seeds" --presets d224,d176,d128,d96,d64,d48 --seeds 0,1,2 --steps 1000 \
    --lr "$LR" --adjust-lr-fn "$RULE" --jobs 2
"$MS" sweep -o "$RUNS/depth" --family depth --presets L16-d96,L12-d80,L8-d64,L4-d48 --steps 1000 \
    --lr "$LR" --adjust-lr-fn "$RULE" --jobs 2

for fam in seeds depth; do
    mkdir -p "$RESULTS/sweep_$fam"
    for run in "$RUNS/$fam"/*/; do
        name=$(basename "$run")
        [ -f "$run/run.json" ] || continue
        rm -rf "$RESULTS/sweep_$fam/$name"
        mkdir -p "$RESULTS/sweep_$fam/$name"
        cp -r "$run/run.json" "$run/spectra" "$run/metrics" "$RESULTS/sweep_$fam/$name/"
    done
    cp "$RUNS/$fam/sweep.json" "$RESULTS/sweep_$fam/"
done

"$MS" fit "$RESULTS/sweep_seeds" -o "$RESULTS/sweep_seeds/laws.json"
"$MS" fit "$RESULTS/sweep_seeds" -o "$RESULTS/sweep_seeds/laws_strict.json" --drift-tolerance -1
"$MS" convergence "$RESULTS/sweep_seeds" -o "$RESULTS/sweep_seeds/convergence" --laws "$RESULTS/sweep_seeds/laws.json"
"$MS" fit "$RESULTS/sweep_depth" -o "$RESULTS/sweep_depth/laws.json"
"$MS" compare "$RESULTS/laws.json" "$RESULTS/sweep_seeds/laws.json" --names single,seeded \
    -o "$RESULTS/sweep_seeds/compare_single_seed.csv"
"$MS" compare "$RESULTS/sweep_seeds/laws_strict.json" "$RESULTS/sweep_seeds/laws.json" --names strict,tolerant \
    -o "$RESULTS/sweep_seeds/compare_strict.csv"
"$MS" compare "$RESULTS/sweep_seeds/laws.json" "$RESULTS/sweep_depth/laws.json" --names width,depth \
    -o "$RESULTS/sweep_depth/compare_width.csv"
