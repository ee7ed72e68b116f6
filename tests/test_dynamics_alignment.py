"""Frame alignment: the paper's definition against scipy and the current one; the command."""

import json

import numpy as np
import pytest
import torch
from scipy.linalg import subspace_angles

from muonscope.experiments.dynamics import alignment as al
from muonscope.spectra import metrics as M


def _frames(rng, m, k):
    return np.linalg.qr(rng.standard_normal((m, k)))[0]


def test_principal_angles_match_scipy():
    rng = np.random.default_rng(0)
    P, Q = _frames(rng, 9, 3), _frames(rng, 9, 3)
    np.testing.assert_allclose(np.sort(al.principal_angles(P, Q)), np.sort(subspace_angles(P, Q)), atol=1e-10)


def test_paper_definition_zero_for_shared_frames_and_consistent_with_current():
    rng = np.random.default_rng(1)
    U, V = _frames(rng, 8, 5), _frames(rng, 5, 5)
    W = (U * [5.0, 4, 3, 2, 1]) @ V.T
    G = (U * [1.0, 0.9, 0.5, 0.2, 0.1]) @ V.T
    a = al.paper_alignment(W, G, 2)
    assert a["sin_left"] < 1e-7 and a["sin_right"] < 1e-7 and a["cos_left"] == pytest.approx(1.0)
    G2 = rng.standard_normal((8, 5))
    b = al.paper_alignment(W, G2, 3)
    assert np.hypot(b["sin_left"], b["sin_right"]) == pytest.approx(M.frame_alignment(W, G2, 3), rel=1e-9)
    assert 0 < b["sin_left"] <= np.sqrt(3) + 1e-12


def test_random_level_matches_monte_carlo():
    rng = np.random.default_rng(2)
    vals = [M.subspace_sin_theta(_frames(rng, 20, 2), _frames(rng, 20, 2)) ** 2 for _ in range(3000)]
    assert np.sqrt(np.mean(vals)) == pytest.approx(al.random_level(20, 2), rel=0.03)


def test_command_writes_both_definitions(tmp_path):
    from typer.testing import CliRunner

    from muonscope.cli import app

    threads = torch.get_num_threads()
    try:
        r = CliRunner().invoke(app, ["dynamics", "alignment", "-o", str(tmp_path), "--settings", "paper-d6",
                                     "--seeds", "2", "--steps", "60"], catch_exceptions=False)
        bad = CliRunner().invoke(app, ["dynamics", "alignment", "-o", str(tmp_path / "x"), "--settings", "cifar"])
    finally:
        torch.set_num_threads(threads)
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "alignment.json").read_text())
    (st,) = s["settings"]
    assert st["setting"]["rows"] == 6 and st["setting"]["measurements"] == 18 and st["setting"]["rank"] == 2
    assert st["metrics"]["current"]["late_median_mean"] < 1e-6  # square, full rank: full frames coincide
    assert st["random_level_paper"]["left"] == pytest.approx(al.random_level(6, 2))
    assert (tmp_path / "frame_alignment.png").stat().st_size > 10_000
    assert bad.exit_code != 0 and not (tmp_path / "x").exists()
