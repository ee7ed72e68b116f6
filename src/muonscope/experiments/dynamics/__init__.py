"""Spectral dynamics of Muon at small scale: matrix sensing, nuclear-norm gap, one-step entropy,
noise geometry.

Modules: :mod:`.problems` (the sensing model), :mod:`.steps` (update rules shared by every
experiment), :mod:`.sensing` (trajectories over paired seeds), :mod:`.nuclear` (Muon's interpolant
against the minimum-nuclear-norm one), :mod:`.entropy` (first-order entropy gain of σ^γ updates),
:mod:`.noise` (momentum noise factor, polar-factor noise and critical batch size),
:mod:`.weight_decay` (coupled vs decoupled decay, ATSR), :mod:`.alignment` (gradient–weight
frame alignment, two definitions), :mod:`.regimes` (Muon vs AdamW on the tiny GPT and a matched
ViT, :mod:`.vit`), :mod:`.stats` (paired effect sizes), :mod:`.record` (run-store rows), :mod:`.figures` (plots).
"""
