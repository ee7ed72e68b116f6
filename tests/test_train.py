"""Tiny-preset training, resume, sweep and crash safety (seconds each)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from muonscope.errors import ConfigError, StoreError
from muonscope.experiments.sweep import plan_sweep, run_sweep
from muonscope.experiments.train import CHECKPOINT, TrainConfig, train
from muonscope.spectra.store import RunStore


def load_checkpoint(path):
    return torch.load(path, weights_only=True)


BASE = dict(preset="tiny", steps=30, batch_size=8, corpus_bytes=300_000, monitor_every=5, eval_every=15,
            checkpoint_every=10, eval_batches=2, bf16_autocast=False)


def test_loss_decreases_and_all_24_matrices_recorded(tmp_path):
    summary = train(TrainConfig(**BASE), tmp_path / "run", progress=False)
    assert summary["status"] == "complete" and summary["steps"] == 30
    st = RunStore.open(tmp_path / "run")
    m = st.metrics()
    loss = m[m.name == "train_loss"].sort_values("step").value.to_numpy()
    assert loss[-5:].mean() < loss[:5].mean() - 0.5
    df = st.spectra()
    assert df.param.nunique() == 24
    assert set(df.layer_type) == {"q", "k", "v", "o", "mlp_up", "mlp_down"}
    assert sorted(df.rel_depth.unique()) == [0.25, 0.5, 0.75, 1.0]
    assert sorted(df.step.unique()) == [1, 5, 10, 15, 20, 25, 30]
    assert (df.model_params == st.meta["model_params"]).all()
    assert st.meta["status"] == "complete" and "final_val_loss" in st.meta


def test_resume_is_bit_identical(tmp_path):
    cfg = TrainConfig(**BASE)
    train(cfg, tmp_path / "full", progress=False)
    first = train(cfg, tmp_path / "split", progress=False, stop_after=13)
    assert first["status"] == "interrupted" and first["steps"] == 13
    train(cfg, tmp_path / "split", resume=True, progress=False)
    a = load_checkpoint(tmp_path / "full" / CHECKPOINT)
    b = load_checkpoint(tmp_path / "split" / CHECKPOINT)
    assert a["extra"]["step"] == b["extra"]["step"] == 30
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    sa, sb = RunStore.open(tmp_path / "full").spectra(), RunStore.open(tmp_path / "split").spectra()
    assert len(sa) == len(sb) and not sb.duplicated(["step", "param"]).any()
    assert (sa.s_q50.to_numpy() == sb.s_q50.to_numpy()).all()


def test_sweep_resumes_after_kill_without_duplicates(tmp_path):
    runs = plan_sweep(TrainConfig(**BASE), presets=("tiny",), seeds=(0, 1))
    # Simulate a sweep killed during its second run: run 1 complete, run 2 stopped at step 13.
    run_sweep(runs[:1], tmp_path, progress=False)
    train(runs[1], tmp_path / "tiny-muon-s1", progress=False, stop_after=13)
    rows = run_sweep(runs, tmp_path, progress=False)
    assert [r["status"] for r in rows] == ["complete", "complete"]
    manifest = json.loads((tmp_path / "sweep.json").read_text())
    assert all(e["status"] == "complete" for e in manifest["runs"].values())
    df = RunStore.open(tmp_path / "tiny-muon-s1").spectra()
    assert not df.duplicated(["step", "param"]).any() and df.step.max() == 30


def test_bad_presets_and_corpora(tmp_path):
    with pytest.raises(ConfigError, match="unknown model preset"):
        TrainConfig(preset="huge").validate()
    with pytest.raises(ConfigError):
        train(TrainConfig(**{**BASE, "corpus": str(tmp_path / "missing")}), tmp_path / "r", progress=False)
    with pytest.raises(ConfigError):
        TrainConfig(**{**BASE, "steps": 0}).validate()
    with pytest.raises(ConfigError):
        plan_sweep(TrainConfig(**BASE), presets=())
    train(TrainConfig(**{**BASE, "steps": 2}), tmp_path / "x", progress=False)
    with pytest.raises(StoreError, match="already holds a run"):
        train(TrainConfig(**{**BASE, "steps": 2}), tmp_path / "x", progress=False)
    with pytest.raises(ConfigError, match="different configuration"):
        train(TrainConfig(**{**BASE, "steps": 4, "seed": 9}), tmp_path / "x", resume=True, progress=False)
    with pytest.raises(ConfigError, match="only --steps may grow"):
        train(TrainConfig(**{**BASE, "steps": 1}), tmp_path / "x", resume=True, progress=False)


def test_extending_a_run_equals_training_longer(tmp_path):
    """A finished 13-step run resumed with steps=30 ends where a 30-step run ends."""
    train(TrainConfig(**{**BASE, "steps": 13}), tmp_path / "short", progress=False)
    runs = plan_sweep(TrainConfig(**BASE), presets=("tiny",))
    run_sweep(plan_sweep(TrainConfig(**{**BASE, "steps": 13}), presets=("tiny",)), tmp_path / "sw", progress=False)
    rows = run_sweep(runs, tmp_path / "sw", progress=False)  # same sweep, more steps: extends
    assert rows[0]["steps"] == 30 and rows[0]["status"] == "complete"
    train(TrainConfig(**BASE), tmp_path / "short", resume=True, progress=False)
    train(TrainConfig(**BASE), tmp_path / "long", progress=False)
    a = load_checkpoint(tmp_path / "short" / CHECKPOINT)["model"]
    b = load_checkpoint(tmp_path / "long" / CHECKPOINT)["model"]
    c = load_checkpoint(tmp_path / "sw" / "tiny-muon-s0" / CHECKPOINT)["model"]
    assert all(torch.equal(a[k], b[k]) and torch.equal(a[k], c[k]) for k in a)


KILL_SCRIPT = textwrap.dedent("""
    import sys, torch
    from muonscope.optim import Muon
    from muonscope.spectra.monitor import SpectralMonitor
    from muonscope.spectra.store import RunStore
    torch.manual_seed(0)
    W = [torch.nn.Parameter(torch.randn(16, 24)) for _ in range(3)]
    opt = Muon([(f"blocks.{i}.mlp.up.weight", w) for i, w in enumerate(W)], lr=0.01)
    store = RunStore.create(sys.argv[1], {"model_params": 1152}, flush_rows=6, flush_seconds=1e9)
    mon = SpectralMonitor(opt, every=1, store=store)
    step = 0
    while True:
        for w in W:
            w.grad = torch.randn_like(w)
        opt.step()
        step += 1
        if step % 2 == 0:   # 3 matrices x 2 steps = 6 rows = one flush
            print(step, flush=True)
""")


def test_sigkill_leaves_a_readable_store(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(tmp_path / "run")],
                            stdout=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if int(line) >= 40:
                break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(0.1)
    df = RunStore.open(tmp_path / "run").spectra()
    # every stored row is complete ("expert" is null by design for matrices that are not experts)
    assert not df.drop(columns=["expert"], errors="ignore").isna().any().any()
    steps = sorted(df.step.unique())
    assert steps == list(range(1, steps[-1] + 1))  # a gapless prefix
    assert all((df.step == s).sum() == 3 for s in steps)
    assert steps[-1] >= 40  # lost at most the unflushed buffer after the last reported flush


def test_parallel_sweep_shares_one_job_list(tmp_path):
    """Two worker processes train four runs once each; lr variants get their own run names."""
    from muonscope.experiments.sweep import run_name

    base = TrainConfig(**{**BASE, "steps": 6, "eval_every": 3})
    runs = plan_sweep(base, presets=("tiny",), seeds=(0, 1), lrs=(0.01, 0.02))
    assert [run_name(c) for c in runs] == ["tiny-muon-s0", "tiny-muon-lr0.02-s0", "tiny-muon-s1", "tiny-muon-lr0.02-s1"]
    rows = run_sweep(runs, tmp_path, progress=False, jobs=2, threads=1)
    assert sorted(r["run"] for r in rows) == sorted(run_name(c) for c in runs)
    manifest = json.loads((tmp_path / "sweep.json").read_text())
    assert all(e["status"] == "complete" and e["steps"] == 6 for e in manifest["runs"].values())
    for c in runs:  # each run trained exactly once: one generation of spectra, 6 steps of metrics
        store = RunStore.open(tmp_path / run_name(c))
        assert store.meta["config"]["lr"] == c.lr and store.meta["device"] == "cpu"
        assert not store.spectra().duplicated(["step", "param"]).any()
    again = run_sweep(runs, tmp_path, progress=False, jobs=2, threads=1)  # all complete: nothing retrained
    assert [r["run"] for r in again] == [r["run"] for r in rows]
    from muonscope.experiments.lr_check import best_lrs, lr_check_table

    table = lr_check_table([tmp_path])
    assert len(table) == 4 and set(table.lr) == {0.01, 0.02}
    best = best_lrs(table)
    mean = table.groupby("lr").final_val_loss.mean()
    assert len(best) == 1 and best.best_lr.iloc[0] == mean.idxmin() and bool(best.at_grid_edge.iloc[0])
    with pytest.raises(ConfigError, match="twice"):
        plan_sweep(base, presets=("tiny", "tiny"))
    with pytest.raises(ConfigError, match="jobs"):
        run_sweep(runs, tmp_path, jobs=0)
    with pytest.raises(ConfigError, match="adjust_lr_fn"):
        plan_sweep(base, presets=("tiny",), adjust_lr_fns=("sqrt",))


def test_device_selection_and_guarded_cuda(tmp_path):
    from muonscope.experiments.train import resolve_device

    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")
        with pytest.raises(ConfigError, match="CUDA is not available"):
            train(TrainConfig(**BASE), tmp_path / "g", progress=False, device="cuda")
        assert not (tmp_path / "g").exists()


def test_gpu_sweep_script_runs_its_code_path_on_cpu(tmp_path):
    """scripts/gpu_sweep.sh with a tiny size on the CPU: sweep, fit and convergence, same layout."""
    from pathlib import Path

    from muonscope.experiments.model import GPU_PRESETS, PRESETS

    assert PRESETS[GPU_PRESETS[-1]].non_embedding_params >= 30e6
    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu_sweep.sh"
    exe = Path(sys.executable).with_name("muonscope")
    env = {**os.environ, "OUT": str(tmp_path / "g"), "PRESETS": "tiny", "STEPS": "4", "BATCH": "2",
           "DEVICE": "cpu", "EVERY": "2", "MUONSCOPE": str(exe)}
    proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run,) = [p for p in (tmp_path / "g").iterdir() if p.name.startswith("tiny-muon-")]
    assert (tmp_path / "g" / "laws.json").exists() is False  # one size: no fit
    store = RunStore.open(run)
    assert store.meta["steps"] == 4 and len(store.spectra()) and store.meta["device"] == "cpu"


def test_non_finite_loss_stops_with_a_typed_error_and_marks_the_run(tmp_path):
    from muonscope.errors import NonFiniteError

    cfg = TrainConfig(**{**BASE, "optimizer": "adamw", "adamw_lr": 1e6, "warmup_steps": 1})
    with pytest.raises(NonFiniteError, match="training loss became nan") as exc:
        train(cfg, tmp_path / "run", progress=False)
    assert "adamw_lr 1e+06" in str(exc.value) and "\n" not in str(exc.value)
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["status"] == "diverged"
    assert not (tmp_path / "run" / ".lock").exists()  # the lock is released on every exit


def test_resume_config_comes_from_the_run_and_names_conflicts(tmp_path):
    from muonscope.experiments.train import resume_config

    cfg = TrainConfig(**{**BASE, "steps": 12, "batch_size": 4})
    train(cfg, tmp_path / "run", progress=False)
    got = resume_config(tmp_path / "run", {"steps": 20})
    assert got.preset == "tiny" and got.batch_size == 4 and got.steps == 20
    assert resume_config(tmp_path / "run", {"batch_size": 4}).steps == 12  # repeating a saved value is fine
    with pytest.raises(ConfigError, match=r"batch_size: 4 -> 8; lr: 0.01 -> 0.1"):
        resume_config(tmp_path / "run", {"batch_size": 8, "lr": 0.1})
    with pytest.raises(ConfigError, match=r"steps: 12 -> 5 \(steps may only grow\)"):
        resume_config(tmp_path / "run", {"steps": 5})
    with pytest.raises(StoreError, match="holds no run"):
        resume_config(tmp_path / "nope")
    # library: resume=True starts a missing run (segment-wise callers); require_run=True refuses it
    with pytest.raises(StoreError, match="holds no run"):
        train(cfg, tmp_path / "fresh", resume=True, require_run=True, progress=False)
    assert not (tmp_path / "fresh").exists()


def test_setup_failure_leaves_no_directory(tmp_path):
    bad_plan = {"format": "muonscope.plan/1", "params": {"blocks.0.attn.q.weight": {"orthogonalizer": "nope"}}}
    with pytest.raises(ConfigError):
        train(TrainConfig(**{**BASE, "plan": bad_plan}), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    # the corrected retry is accepted in the same directory
    assert train(TrainConfig(**{**BASE, "steps": 3}), tmp_path / "run", progress=False)["status"] == "complete"


def test_progress_fields_show_val_loss_and_failed_share():
    from muonscope.experiments.train import _progress

    assert _progress.fields(2.5, 1000.0, float("nan"), float("nan")) == {"loss": 2.5, "tps": 1000.0, "val": "-",
                                                                        "failed": "-"}
    f = _progress.fields(2.5, 1000.0, 2.25, 0.125)
    assert f["val"] == "2.250" and f["failed"] == "12.5%"


@pytest.mark.parametrize("field,value", [("steps", 0), ("steps", 10**12), ("batch_size", 10**8), ("seed", 2**64),
                                         ("seed", -1), ("lr", float("inf")), ("ns_steps", 10**8), ("momentum", 1.0),
                                         ("monitor_spectrum", "fft"), ("quantiles", (0.5, 2.0)), ("steps", 5.0),
                                         ("warmup_steps", -1), ("eval_batches", 0)])
def test_config_bounds(field, value):
    with pytest.raises(ConfigError, match=field):
        TrainConfig(**{**BASE, field: value}).validate()
