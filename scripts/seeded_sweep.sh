#!/usr/bin/env bash
# The seeded CPU size sweep behind results/FINDINGS.md, end to end (2 worker processes, one BLAS
# thread each; every step resumes from checkpoints, so re-running after an interruption continues).
#
#   1. lr check: best Muon lr per size under both lr-scaling rules (300 steps, d48/d128/d288)
#   2. width family: d32 … d176 x seeds 0,1,2 x 1000 steps (batch 8 x 128) under the chosen rule
#   3. depth + width family: L8-d64 … L16-d96, seed 0, same settings (its n_layer = 4 member is
#      the width family's d48 seed 0, the identical model and run)
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

COMMON=(--steps 1000 --batch-size 8 --monitor-every 20 --lr "$LR" --adjust-lr-fn "$RULE" --jobs 2)
"$MS" sweep -o "$RUNS/seeds" --presets d176,d128,d96,d64,d48,d32 --seeds 0,1,2 "${COMMON[@]}"
"$MS" sweep -o "$RUNS/depth" --family depth --presets L16-d96,L12-d80,L8-d64 "${COMMON[@]}"

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
rm -rf "$RESULTS/sweep_depth/d48-muon-lr$LR-$RULE-s0"
cp -r "$RESULTS/sweep_seeds/d48-muon-lr$LR-$RULE-s0" "$RESULTS/sweep_depth/"

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
