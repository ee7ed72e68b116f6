"""Fault injection: two writers on one run directory, a full disk in every writer, SIGKILL mid-train.

Disk full is injected at the one place muonscope writes files (``muonscope._atomic``): the file object
it writes through raises ``OSError(ENOSPC)`` once a byte budget is used up, as a full file system
does. Every writer must then raise a typed error naming the path, keep what was written before
(earlier parts, the previous checkpoint or plan) and leave no temporary file.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import muonscope._atomic as atomic_mod
from helpers import run_cli
from muonscope._atomic import atomic_write, created_dirs
from muonscope.errors import ConfigError, MuonscopeError, StoreError
from muonscope.experiments.train import CHECKPOINT, TrainConfig, train
from muonscope.spectra.store import RunLock, RunStore, lock_holder

BASE = dict(preset="tiny", steps=30, batch_size=8, corpus_bytes=300_000, monitor_every=5, eval_every=15,
            checkpoint_every=10, eval_batches=2, bf16_autocast=False)




def temp_files(root: Path) -> list[Path]:
    return [p for p in Path(root).rglob("*") if p.name.startswith(".tmp-")]


class _FullFile:
    """A binary file object that accepts ``budget[0]`` more bytes, then raises ENOSPC."""

    def __init__(self, fh, budget: list[int]) -> None:
        self._fh, self._budget = fh, budget

    def write(self, data) -> int:
        n = len(memoryview(data).cast("B"))
        if n > self._budget[0]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._budget[0] -= n
        return self._fh.write(data)

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()


@pytest.fixture
def disk(monkeypatch):
    """``disk(after_bytes)``: from now on, writes through muonscope._atomic fail with ENOSPC once
    ``after_bytes`` more bytes were written (0: the next write fails)."""
    real_fdopen = os.fdopen
    budget = [float("inf")]

    def fdopen(fd, *args, **kwargs):
        return _FullFile(real_fdopen(fd, *args, **kwargs), budget)

    real_with = atomic_mod.atomic_write_with

    def write_with(path, write, **kw):  # name-only writers (savefig, to_csv): fail like a full disk
        if budget[0] != float("inf"):
            def failing(p):
                write(p)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(p))
            return real_with(path, failing, **kw)
        return real_with(path, write, **kw)

    monkeypatch.setattr(atomic_mod.os, "fdopen", fdopen)
    monkeypatch.setattr(atomic_mod, "atomic_write_with", write_with)

    def fill(after_bytes: int) -> None:
        budget[0] = after_bytes

    return fill


# --- the atomic writer -----------------------------------------------------------------------------
def test_atomic_write_disk_full_keeps_the_old_file_and_no_temp(tmp_path, disk):
    target = tmp_path / "a.json"
    atomic_write(target, b"old content")
    disk(4)
    with pytest.raises(StoreError, match="no space left") as exc:
        atomic_write(target, b"new content, longer than four bytes")
    assert str(target) in str(exc.value) and "\n" not in str(exc.value)
    assert target.read_bytes() == b"old content"
    assert temp_files(tmp_path) == []
    with pytest.raises(StoreError, match="no space left"):  # parents it created are removed again
        atomic_write(tmp_path / "new" / "deeper" / "b.json", b"more than four bytes")
    assert not (tmp_path / "new").exists()


def test_atomic_write_cleans_up_on_interrupt_and_refuses_non_regular_targets(tmp_path):
    target = tmp_path / "b.bin"

    def interrupted(fh):
        fh.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, interrupted)
    assert not target.exists() and temp_files(tmp_path) == []
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    for bad in (tmp_path / "fifo", tmp_path / "dir", Path("/dev/null")):
        with pytest.raises(ConfigError, match="not a regular file|is a directory"):
            atomic_write(bad, b"x")
    assert (tmp_path / "fifo").is_fifo() and (tmp_path / "dir").is_dir()
    assert os.path.exists("/dev/null") and not Path("/dev/null").is_file()
    assert temp_files(tmp_path) == []


def test_simultaneous_writers_never_share_a_temp_name(tmp_path):
    """Many threads replace one file at once: every write succeeds, the result is one whole
    content, and no temporary file remains (each writer has its own mkstemp name)."""
    import threading

    target = tmp_path / "shared.json"
    errors = []

    def writer(i):
        try:
            for _ in range(20):
                atomic_write(target, json.dumps({"writer": i, "pad": "x" * 5000}))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert json.loads(target.read_text())["writer"] in range(6)
    assert temp_files(tmp_path) == []


def test_created_dirs_removes_only_what_it_created(tmp_path):
    (tmp_path / "kept").mkdir()
    with pytest.raises(ConfigError):
        with created_dirs(tmp_path / "kept" / "new" / "deeper") as d:
            (d / "partial.json").write_text("{}")
            raise ConfigError("failed after writing")
    assert (tmp_path / "kept").is_dir() and not (tmp_path / "kept" / "new").exists()


# --- two writers -----------------------------------------------------------------------------------
HOLDER = """
import sys, time
from muonscope.spectra.store import RunLock
RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_second_writer_is_refused_with_the_owners_pid(tmp_path):
    run = tmp_path / "run"
    train(TrainConfig(**{**BASE, "steps": 10}), run, progress=False)
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        assert lock_holder(run).startswith(f"PID {proc.pid}")
        before = sorted(p.name for p in run.rglob("*"))
        with pytest.raises(StoreError, match=f"in use by PID {proc.pid}"):
            train(TrainConfig(**{**BASE, "steps": 20}), run, resume=True, progress=False)
        code, _, err = run_cli("train", "-o", run, "--resume", "--steps", 20)
        assert code == 2 and err.count("\n") == 1 and f"in use by PID {proc.pid}" in err, err
        assert sorted(p.name for p in run.rglob("*")) == before  # nothing written by the refused writer
    finally:
        proc.kill()
        proc.wait(timeout=30)
    # the owner died: its lock is stale (the kernel dropped the flock) and the next writer proceeds
    assert lock_holder(run) is None
    summary = train(TrainConfig(**{**BASE, "steps": 20}), run, resume=True, progress=False)
    assert summary["status"] == "complete" and summary["steps"] == 20
    assert not (run / ".lock").exists()


def test_second_run_store_writer_process_is_refused(tmp_path):
    """Two processes opening one run store for writing: the second is refused with the first's
    PID (no shared temporary names, no interleaved parts)."""
    script = ("import sys\nfrom muonscope.spectra.store import RunStore\n"
              "try:\n    RunStore.create(sys.argv[1], exist_ok=True)\n    print('opened')\n"
              "except Exception as e:\n    print(type(e).__name__, e)\n")
    with RunStore.create(tmp_path / "r", {"model_params": 10}) as st:
        st.log_metrics(1, loss=1.0)
        r = subprocess.run([sys.executable, "-c", script, str(tmp_path / "r")], capture_output=True, text=True,
                           timeout=120)
        assert r.stdout.startswith("StoreError") and f"in use by PID {os.getpid()}" in r.stdout, r
    r = subprocess.run([sys.executable, "-c", script, str(tmp_path / "r")], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "opened", r  # closed: free again


# --- disk full in each writer ----------------------------------------------------------------------
def test_train_disk_full_is_a_typed_error_with_earlier_parts_intact(tmp_path, disk, monkeypatch):
    run = tmp_path / "run"
    calls = {"n": 0}
    real_save = __import__("muonscope.experiments.train", fromlist=["_save"])._save

    def save(*args, **kwargs):  # the disk fills up after the first checkpoint (step 10)
        real_save(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 1:
            disk(0)

    monkeypatch.setattr("muonscope.experiments.train._save", save)
    with pytest.raises(StoreError, match="no space left") as exc:
        train(TrainConfig(**BASE), run, progress=False)
    assert str(run) in str(exc.value) and "\n" not in str(exc.value)
    assert temp_files(run) == []
    disk(float("inf"))
    store = RunStore.open(run)
    steps = sorted(store.metrics().query("name == 'train_loss'").step)
    assert steps == list(range(1, 11))  # the parts flushed with the first checkpoint
    assert len(store.spectra()) > 0
    assert torch.load(run / CHECKPOINT, weights_only=True)["extra"]["step"] == 10
    # after freeing space, the run resumes from its checkpoint
    summary = train(TrainConfig(**BASE), run, resume=True, progress=False)
    assert summary["status"] == "complete"
    assert sorted(RunStore.open(run).metrics().query("name == 'train_loss'").step) == list(range(1, 31))


def test_train_cli_disk_full_is_one_line(tmp_path, disk):
    disk(0)
    code, out, err = run_cli("train", "-o", tmp_path / "run", "--preset", "tiny", "--steps", 3, "--threads", 1)
    assert code == 2 and err.count("\n") == 1 and "no space left" in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists() or temp_files(tmp_path / "run") == []


@pytest.fixture(scope="module")
def laws_file(tmp_path_factory):
    from muonscope.laws.synthetic import synthetic_records

    root = tmp_path_factory.mktemp("sweep")
    df = synthetic_records([1e6, 4e6, 1.6e7, 6.4e7], steps=np.arange(10, 401, 10), layer_types=("q", "mlp_up"),
                           n_blocks=2, qs=(0.1, 0.5, 0.9), alpha=lambda t, d: 0.25 if d < 1 else 0.6)
    for run_id, g in df.groupby("run_id"):
        with RunStore.create(root / run_id, {"model_params": int(g.model_params.iloc[0])}) as st:
            st.append_spectra(g.to_dict("records"))
    path = root.parent / "laws.json"
    code, _, err = run_cli("fit", root, "-o", path, "--boot", 200)
    assert code == 0, err
    return root, path


def test_fit_and_plan_disk_full(tmp_path, laws_file, disk):
    runs, laws = laws_file
    plan = tmp_path / "plan.json"
    code, _, err = run_cli("plan", laws, "-p", "7e10", "-o", plan)
    assert code == 0, err
    old = plan.read_bytes()
    disk(100)
    code, _, err = run_cli("plan", laws, "-p", "1e12", "-o", plan)
    assert code == 2 and err.count("\n") == 1 and "no space left" in err and str(plan) in err, err
    assert plan.read_bytes() == old  # the previous plan, not a 0-byte file
    code, _, err = run_cli("fit", runs, "-o", tmp_path / "laws.json", "--boot", 200)
    assert code == 2 and "no space left" in err and not (tmp_path / "laws.json").exists(), err
    code, _, err = run_cli("convergence", runs, "-o", tmp_path / "conv", "--boot", 100)
    assert code == 2 and "no space left" in err and not (tmp_path / "conv").exists(), err
    assert temp_files(tmp_path) == [] and temp_files(runs) == []


def test_report_disk_full(tmp_path, laws_file, disk):
    runs, _ = laws_file
    out = tmp_path / "report.html"
    disk(1000)
    code, _, err = run_cli("report", runs, "-o", out)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "no space left" in err, err
    assert not out.exists() and temp_files(tmp_path) == []


def test_store_part_disk_full_keeps_earlier_parts(tmp_path, disk):
    with RunStore.create(tmp_path / "r", {"model_params": 10}, flush_rows=10**9) as st:
        st.log_metrics(1, loss=1.0)
        st.flush()
        disk(0)
        st.log_metrics(2, loss=2.0)
        with pytest.raises(StoreError, match="no space left"):
            st.flush()
        disk(float("inf"))
        st._buffers["metrics"].clear()
    m = RunStore.open(tmp_path / "r").metrics()
    assert list(m.step) == [1] and temp_files(tmp_path) == []


# --- SIGKILL mid-train, then --resume as printed ----------------------------------------------------
def small_corpus(tmp_path: Path) -> str:
    """A 200 kB text corpus (faster to load than the standard library's)."""
    path = tmp_path / "corpus.txt"
    path.write_text(Path(json.__file__).read_text() * 20)
    return str(path)


def test_sigkill_mid_train_then_resume(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "muonscope.cli", "train", "-o", str(run), "--corpus", small_corpus(tmp_path),
           "--preset", "tiny", "--steps", "150", "--monitor-every", "50",
           "--batch-size", "4", "--checkpoint-every", "5", "--eval-every", "200", "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while not (run / CHECKPOINT).exists():
            assert proc.poll() is None and time.monotonic() < deadline, "training did not reach a checkpoint"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (run / ".lock").exists()  # left by the killed owner: stale, not held
    assert lock_holder(run) is None
    saved = torch.load(run / CHECKPOINT, weights_only=True)["extra"]["step"]
    assert 5 <= saved < 150, saved  # killed mid-run
    target = 150
    # exactly the command it prints: the settings (tiny preset, batch 4, ...) come from run.json
    code, out, err = run_cli("train", "-o", run, "--resume")
    assert code == 0, err
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "complete" and meta["steps"] == target and meta["config"]["batch_size"] == 4
    steps = sorted(RunStore.open(run).metrics().query("name == 'train_loss'").step)
    assert steps == list(range(1, target + 1))  # no gaps, no duplicates across the kill
    assert temp_files(run) == []


def test_errors_are_typed(tmp_path):
    """Everything the writers raise for the environment is a MuonscopeError (one CLI line)."""
    (tmp_path / "f").write_text("")
    for call in (lambda: atomic_write(tmp_path / "f" / "x.json", b"{}"),
                 lambda: atomic_write(tmp_path / ("y" * 300), b"{}"),
                 lambda: RunLock(tmp_path / "f").acquire()):
        with pytest.raises(MuonscopeError):
            call()


def test_sigterm_stops_training_like_ctrl_c(tmp_path):
    """SIGTERM (a scheduler's preemption) saves a checkpoint and exits 130 with the resume hint."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "muonscope.cli", "train", "-o", str(run), "--corpus", small_corpus(tmp_path),
           "--preset", "tiny", "--steps", "100000",
           "--batch-size", "4", "--checkpoint-every", "1000", "--eval-every", "1000", "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"})
    try:
        deadline = time.monotonic() + 120
        while not (run / "run.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "training did not start"
            time.sleep(0.05)
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert f"muonscope train -o {run} --resume" in " ".join(out.split())
    step = torch.load(run / CHECKPOINT, weights_only=True)["extra"]["step"]
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "interrupted" and meta["steps"] == step >= 1
    assert not (run / ".lock").exists() and temp_files(run) == []
