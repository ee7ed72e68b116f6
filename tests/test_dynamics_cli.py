"""`muonscope dynamics ...`: tiny end-to-end runs and one-line errors."""

import json
import os
import subprocess
import sys

import pytest
import torch

from muonscope.experiments.dynamics.nuclear import have_cvxpy
from muonscope.spectra.store import RunStore, read_runs

CLI = [sys.executable, "-m", "muonscope.cli", "dynamics"]


def run_process(*args):
    """The real entry point (one-line errors, exit codes) in a subprocess."""
    env = {**os.environ, "COLUMNS": "160"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, env=env)


def run(*args):
    """In-process (no interpreter start-up): the happy paths."""
    from typer.testing import CliRunner

    from muonscope.cli import app

    threads = torch.get_num_threads()
    try:
        return CliRunner().invoke(app, ["dynamics", *args], catch_exceptions=False)
    finally:
        torch.set_num_threads(threads)


def test_sensing_command_writes_stores_summary_and_figures(tmp_path):
    r = run("sensing", "-o", str(tmp_path), "--rows", "6", "--cols", "4", "-n", "8", "--seeds", "2", "--steps", "60",
            "--lr", "0.05", "--rules", "muon,gd,nmgd", "--record-every", "20")
    assert r.exit_code == 0, r.output
    assert "muon" in r.output and "nmgd" in r.output
    s = json.loads((tmp_path / "sensing.json").read_text())
    assert set(s["rules"]) == {"muon", "gd", "nmgd"} and s["config"]["problem"]["rows"] == 6
    df = read_runs([tmp_path / "sensing"])
    assert set(df.run_id) == {f"sensing-{k}-seed{i}" for k in ("muon", "gd", "nmgd") for i in (0, 1)}
    assert sorted(df[df.source == "weight"].step.unique()) == [0, 20, 40, 60]
    assert (tmp_path / "sensing_trajectories.png").stat().st_size > 10_000
    assert RunStore.open(tmp_path / "sensing" / "gd-seed1").meta["config"]["rule"] == "gd"
    again = run_process("sensing", "-o", str(tmp_path), "--rows", "6", "--cols", "4", "-n", "8", "--seeds", "2",
                "--steps", "10", "--rules", "muon")
    assert again.returncode == 2 and "already holds a run" in again.stderr  # never silently mixes runs


@pytest.mark.skipif(not have_cvxpy(), reason="cvxpy (optional extra 'cvxpy') is not installed")
def test_nuclear_command(tmp_path):
    r = run("nuclear", "-o", str(tmp_path), "--setting", "small", "--seeds", "2", "--steps", "600", "--rules", "muon")
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "nuclear.json").read_text())
    (out,) = s["settings"]
    assert out["setting"] == "small" and len(out["rows"]) == 2 and out["summary"]["muon"]["at_minimum"] == 0
    assert "traces" not in out
    m = RunStore.open(tmp_path / "nuclear" / "small-muon-seed1").metrics()
    assert set(m.name) == {"nuclear_norm", "rel_residual"}
    assert (tmp_path / "nuclear_gap.png").exists()


def test_entropy_and_noise_commands(tmp_path):
    r = run("entropy", "-o", str(tmp_path), "--instances", "5", "--no-sensing-check")
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "entropy.json").read_text())
    assert s["regimes"][0]["frobenius"]["polar_is_max"] == 1.0 and "sensing_states" not in s
    r = run("noise", "-o", str(tmp_path), "--chains", "2000", "--trials", "10")
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "noise.json").read_text())
    assert len(s["momentum"]) == 18 and s["polar"][0]["spectrum_type"] == "flat"
    assert (tmp_path / "noise_geometry.png").exists() and (tmp_path / "entropy_gain.png").exists()


def test_bad_arguments_one_line_exit_2(tmp_path):
    cases = [["sensing", "-o", str(tmp_path), "--rules", "muon-ns:nope"],
             ["nuclear", "-o", str(tmp_path), "--setting", "huge"]]
    for args in cases:
        r = run_process(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("muonscope: error:"), (args, r.stderr)
