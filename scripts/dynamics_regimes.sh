#!/usr/bin/env bash
# Muon vs AdamW on the tiny GPT (stdlib corpus) and a matched small ViT (scikit-learn digits):
# 2 optimizers x 4 lrs x 3 seeds x 2 tasks = 48 runs of 800 steps, one thread.
# Measured at a smoke size on a busy 2-core machine: ~0.05 CPU-s/step (GPT), ~0.035 CPU-s/step (ViT),
# so ~ (24*800*0.05 + 24*800*0.035) s ~ 27 CPU-minutes, plus evaluation and spectra.
# Resumable: finished runs (runs/regimes/runs/<task>/<opt>-lr<lr>-seed<s>/result.json) are skipped.
# Writes results/dynamics/regimes.json and results/dynamics/regimes.png.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
exec "$PY" -m muonscope.cli dynamics regimes -o runs/regimes --summary-dir results/dynamics \
  --tasks gpt,vit --muon-lrs 0.005,0.01,0.02,0.04 --adamw-lrs 0.001,0.002,0.004,0.008 \
  --seeds 3 --steps 800 --snapshots 8 --preset tiny --corpus stdlib --dataset digits --patch 2 --threads 1 "$@"
