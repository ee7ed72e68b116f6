"""Weight decay under Muon: ATSR definitions, the batched run against a one-step reference, errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from muonscope.errors import ConfigError
from muonscope.experiments.dynamics import weight_decay as wd


def test_atsr_follows_the_papers_convention():
    t = np.array([[0, 200, 400, 800], [0, 0, 200, 0], [100, 100, 100, 100], [0, 0, 0, 0]])
    np.testing.assert_allclose(wd.atsr(t), [4.0, 1.0, 1.0, 1.0])


def test_acquisition_times_first_crossing_or_zero():
    steps = np.array([0, 10, 20])
    masses = np.array([[0.0, 0.3], [0.2, 0.1], [0.3, 0.4]])[:, None, :]  # (T, 1, K=2)
    np.testing.assert_array_equal(wd.acquisition_times(steps, masses, 0.25), [[20, 0]])
    np.testing.assert_array_equal(wd.acquisition_times(steps, masses, 0.5), [[0, 0]])


def test_block_masses_against_numpy():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(2, 6, 6, dtype=torch.float64, generator=g)
    got = wd.block_masses(W, 3).numpy()
    for i in range(2):
        A = W[i].numpy()
        total = np.linalg.norm(A, "nuc")
        ref = [np.linalg.norm(A[2 * k:2 * k + 2, 2 * k:2 * k + 2], "nuc") / total for k in range(3)]
        np.testing.assert_allclose(got[i], ref, rtol=1e-12)
    B = torch.block_diag(*[torch.randn(2, 2, dtype=torch.float64, generator=g) for _ in range(3)])
    assert wd.block_masses(B, 3).sum().item() == pytest.approx(1.0)


def test_one_step_matches_an_independent_update():
    cfg = wd.WeightDecayConfig(blocks=2, block_size=3, measurements=10, steps=1, track_every=1, lambdas=(0.5,),
                               seeds=(3,), lr=0.1)
    res = wd.run(cfg)
    prob = wd.BlockProblem(cfg)
    W0, A, y = prob.W0[0].numpy(), prob.A[0].numpy(), prob.y[0].numpy()
    G = ((A @ W0.ravel() - y) @ A / 10).reshape(6, 6)

    def polar(X):
        U, _, Vt = np.linalg.svd(X)
        return U @ Vt

    expect = {"none": W0 - 0.1 * polar(G), "coupled": W0 - 0.1 * polar(G + 0.5 * W0),
              "decoupled": (1 - 0.05) * W0 - 0.1 * polar(G)}
    for c, (mode, _) in enumerate(cfg.cells()):
        assert res.frob[0, c] == pytest.approx(np.linalg.norm(expect[mode]), rel=1e-10)
        assert res.masses.shape == (2, 1, 3, 2)


def test_strong_coupled_decay_prevents_the_fit_and_is_located():
    cfg = wd.WeightDecayConfig(blocks=2, block_size=3, measurements=18, steps=200, track_every=5,
                               lambdas=(1e-4, 1.0), seeds=(0, 1), bootstrap=200)
    s = wd.summarize(wd.run(cfg))
    fit = s["fit_boundary"]
    assert fit["coupled"]["first_lambda"] == 1.0 and fit["decoupled"]["first_lambda"] is None
    assert set(s["definitions"]) == set(wd.DEFINITIONS)
    rows = s["definitions"]["code"]["rows"]
    assert [r["lambda"] for r in rows] == [1e-4, 1.0, 1e-4, 1.0]
    assert all(r["ratio_ci95"][0] <= r["ratio_to_baseline"] <= r["ratio_ci95"][1] for r in rows)


def test_boundary_interpolates_geometrically():
    b = wd.boundary([1e-3, 1e-2, 1e-1], [1.0, 4.0, 8.0], [0.9, 3.0, 7.0], 2.0)
    assert b["first_lambda_interval_above"] == 1e-2
    assert b["interpolated_crossing"] == pytest.approx(10 ** -2.5)


@pytest.mark.parametrize("kw, msg", [({"lambdas": (0.0,)}, "positive"), ({"lambdas": ()}, "empty"),
                                     ({"lambdas": (-1e-3,)}, "positive"), ({"modes": ("l2",)}, "unknown"),
                                     ({"blocks": 1}, "at least 2")])
def test_bad_config(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        wd.WeightDecayConfig(**kw)


def test_cli_writes_summary_and_rejects_bad_lambda(tmp_path):
    from typer.testing import CliRunner

    from muonscope.cli import app

    threads = torch.get_num_threads()
    try:
        r = CliRunner().invoke(app, ["dynamics", "weight-decay", "-o", str(tmp_path), "--seeds", "2", "--steps", "40",
                                     "--track-every", "5", "--lambdas", "1e-2,1", "--blocks", "2", "--block-size", "3",
                                     "-n", "12"], catch_exceptions=False)
    finally:
        torch.set_num_threads(threads)
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "weight_decay.json").read_text())
    assert s["config"]["lambdas"] == [0.01, 1.0] and "verdict" in s["definitions"]["code"]
    assert (tmp_path / "weight_decay_atsr.png").stat().st_size > 10_000
    assert len((tmp_path / "weight_decay.csv").read_text().splitlines()) == 1 + 2 * 5 * 2
    bad = tmp_path / "bad"
    env = {**os.environ, "COLUMNS": "160"}
    p = subprocess.run([sys.executable, "-m", "muonscope.cli", "dynamics", "weight-decay", "-o", str(bad),
                        "--lambdas", "0,1e-2"], capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "positive" in p.stderr
    assert not bad.exists()
