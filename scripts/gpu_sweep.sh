#!/usr/bin/env bash
# GPU size sweep: the gpu-* presets (8 blocks, head_dim 16, block 256; 1.6M … 32M non-embedding
# parameters, 20x), Muon + AdamW, bf16 autocast, float64 spectra of the 4 tracked blocks every 20
# steps, then the power-law fits and the exponents' convergence over training time. Writes the same
# run-store layout as the CPU sweep (OUT/<preset>-muon-s<seed>/, OUT/sweep.json) plus
# OUT/laws.json and OUT/convergence/.
#
# Sized for one modern datacenter GPU in under 10 minutes: 6 sizes x 1000 steps x 64 x 256 tokens
# (16k tokens/step, 16M tokens per run). Resumable: re-running continues from the checkpoints.
#
#   scripts/gpu_sweep.sh                                  # defaults below
#   OUT=runs/g SEEDS=0,1,2 scripts/gpu_sweep.sh           # three seeds (about 3x the time)
#   PRESETS=tiny STEPS=4 BATCH=2 DEVICE=cpu scripts/gpu_sweep.sh   # the CPU check of the code path
set -euo pipefail
OUT=${OUT:-runs/gpu-sweep}
PRESETS=${PRESETS:-gpu-d128,gpu-d192,gpu-d256,gpu-d320,gpu-d448,gpu-d576}
SEEDS=${SEEDS:-0}
STEPS=${STEPS:-1000}
BATCH=${BATCH:-64}
DEVICE=${DEVICE:-cuda}
EVERY=${EVERY:-20}
MUONSCOPE=${MUONSCOPE:-muonscope}

"$MUONSCOPE" sweep --out "$OUT" --presets "$PRESETS" --seeds "$SEEDS" --steps "$STEPS" --batch-size "$BATCH" \
    --device "$DEVICE" --monitor-every "$EVERY" --eval-every 100
n_sizes=$(tr ',' '\n' <<<"$PRESETS" | wc -l)
if [ "$n_sizes" -ge 3 ]; then
    "$MUONSCOPE" fit "$OUT" -o "$OUT/laws.json"
    "$MUONSCOPE" convergence "$OUT" -o "$OUT/convergence" --laws "$OUT/laws.json" --every 100
fi
