"""Run store: round trip, resume without duplicates, atomic parts, clear errors."""

import json
import os

import pyarrow.parquet as pq
import pytest

from muonscope.errors import StoreError
from muonscope.spectra.store import RunLock, RunStore, find_runs, lock_holder, read_runs


def _row(step, param="p", value=0.5, **kw):
    return {"step": step, "param": param, "source": "ns_input", "s_q50": value, "model_params": 10, **kw}


def test_round_trip_and_meta(tmp_path):
    st = RunStore.create(tmp_path / "run", {"model_params": 10, "seed": 3, "config": {"lr": 0.01}})
    st.append_spectra([_row(1), _row(1, "q"), _row(2)])
    st.log_metrics(1, train_loss=3.0, lr=0.01)
    st.close()
    r = RunStore.open(tmp_path / "run")
    assert r.meta["seed"] == 3 and r.meta["schema_version"] == 1 and r.run_id == "run"
    assert "torch" in r.meta["versions"] or "numpy" in r.meta["versions"]
    df = r.spectra()
    assert len(df) == 3 and set(df.columns) >= {"run_id", "step", "param", "s_q50"}
    assert (df.run_id == "run").all()
    m = r.metrics()
    assert dict(zip(m.name, m.value, strict=True)) == {"lr": 0.01, "train_loss": 3.0}


def test_buffered_flush_by_rows_and_seconds(tmp_path):
    st = RunStore.create(tmp_path / "r", {}, flush_rows=4, flush_seconds=1e9)
    st.append_spectra([_row(i) for i in range(3)])
    assert len(RunStore.open(tmp_path / "r").spectra()) == 0  # still buffered
    st.append_spectra([_row(3)])
    assert len(RunStore.open(tmp_path / "r").spectra()) == 4
    st2 = RunStore.create(tmp_path / "t", {}, flush_rows=10**9, flush_seconds=0.0)
    st2.append_spectra([_row(0)])
    assert len(RunStore.open(tmp_path / "t").spectra()) == 1


def test_resume_appends_without_duplicates(tmp_path):
    st = RunStore.create(tmp_path / "r", {})
    st.append_spectra([_row(s, value=1.0) for s in range(1, 6)])
    st.close()
    # Resumed from a checkpoint at step 3: steps 4, 5 are recomputed and must replace the old rows.
    st = RunStore.create(tmp_path / "r", {}, exist_ok=True)
    st.append_spectra([_row(s, value=2.0) for s in range(4, 8)])
    st.close()
    df = RunStore.open(tmp_path / "r").spectra()
    assert list(df.step) == [1, 2, 3, 4, 5, 6, 7]
    assert list(df.s_q50) == [1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0]
    with pytest.raises(StoreError, match="already holds a run"):
        RunStore.create(tmp_path / "r", {})


def test_no_temporary_files_left_and_parts_readable(tmp_path):
    st = RunStore.create(tmp_path / "r", {}, flush_rows=1)
    for i in range(5):
        st.append_spectra([_row(i)])
    names = os.listdir(tmp_path / "r" / "spectra")
    assert len(names) == 5 and not any(n.startswith(".tmp-") for n in names)
    for n in names:
        assert pq.read_table(tmp_path / "r" / "spectra" / n).num_rows == 1
    # A stray temporary file from a killed writer is ignored by readers.
    (tmp_path / "r" / "spectra" / ".tmp-part-g0009-r000-000000.parquet").write_bytes(b"partial")
    assert len(RunStore.open(tmp_path / "r").spectra()) == 5


def test_errors_name_the_file(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        RunStore.open(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="no run.json"):
        RunStore.open(tmp_path / "empty")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "run.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(StoreError, match="not a muonscope run"):
        RunStore.open(tmp_path / "foreign")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "run.json").write_text("{not json")
    with pytest.raises(StoreError, match="not valid JSON"):
        RunStore.open(tmp_path / "bad")
    st = RunStore.create(tmp_path / "c", {}, flush_rows=1)
    st.append_spectra([_row(1)])
    corrupt = tmp_path / "c" / "spectra" / "part-g0005-r000-000000.parquet"
    corrupt.write_bytes(b"PAR1 garbage")
    with pytest.raises(StoreError, match="part-g0005"):
        RunStore.open(tmp_path / "c").spectra()
    corrupt.unlink()
    (tmp_path / "c" / "spectra" / "notes.txt").write_text("x")
    with pytest.raises(StoreError, match="notes.txt"):
        RunStore.open(tmp_path / "c").spectra()
    with pytest.raises(StoreError, match="read-only"):
        RunStore.open(tmp_path / "c").append_spectra([_row(1)])
    with pytest.raises(StoreError, match="JSON"):
        RunStore.create(tmp_path / "j", {"bad": object()})


def test_several_runs_and_ranks(tmp_path):
    for i, size in enumerate((10, 20)):
        for rank in (0, 1):
            st = RunStore.create(tmp_path / "sweep" / f"run{i}", {"model_params": size}, exist_ok=True,
                                 process_rank=rank)
            st.append_spectra([_row(1, param=f"p{rank}", process_rank=rank)])
            st.close()
    assert len(find_runs([tmp_path / "sweep"])) == 2
    df = read_runs([tmp_path / "sweep"])
    assert len(df) == 4 and set(df.run_id) == {"run0", "run1"}
    with pytest.raises(StoreError):
        read_runs([tmp_path / "nowhere"])
    (tmp_path / "hollow").mkdir()
    with pytest.raises(StoreError, match="no run directories"):
        find_runs([tmp_path / "hollow"])


def test_run_json_fields_are_type_checked(tmp_path):
    for field, value, match in (("schema_version", "1", "schema_version must be an integer"),
                                ("schema_version", 1.5, "schema_version must be an integer"),
                                ("schema_version", 99, "upgrade muonscope"),
                                ("model_params", "big", "model_params must be a number"),
                                ("model_params", -3, "model_params must be an integer >= 1"),
                                ("seed", "zero", "seed must be an integer"),
                                ("run_id", 7, "run_id must be a string"),
                                ("config", [1], "config must be an object")):
        d = tmp_path / f"{field}-{value}"
        d.mkdir()
        meta = {"format": "muonscope.run", "schema_version": 1, "model_params": 10, field: value}
        (d / "run.json").write_text(json.dumps(meta))
        with pytest.raises(StoreError, match=match):
            RunStore.open(d)


def test_parts_leave_no_temporary_files_and_lock_is_exclusive(tmp_path):
    """A writing store holds the run's lock: re-entrant in this process, refused to another one."""
    import socket
    import subprocess
    import sys

    other = ("import sys\nfrom muonscope.spectra.store import RunStore\n"
             "try:\n    RunStore.create(sys.argv[1], exist_ok=True)\nexcept Exception as e:\n    print(e)\n")
    with RunLock(tmp_path / "r") as lock:
        assert lock.held and lock_holder(tmp_path / "r") == f"PID {os.getpid()} on host {socket.gethostname()}"
        with RunStore.create(tmp_path / "r", {"model_params": 10}) as st:  # re-entrant within a process
            st.log_metrics(1, loss=1.0)
            r = subprocess.run([sys.executable, "-c", other, str(tmp_path / "r")], capture_output=True, text=True,
                               timeout=120)
            assert f"is in use by PID {os.getpid()}" in r.stdout, (r.stdout, r.stderr)
        assert lock_holder(tmp_path / "r") is not None  # the outer RunLock still holds it
    assert lock_holder(tmp_path / "r") is None and not (tmp_path / "r" / ".lock").exists()
    assert [p.name for p in (tmp_path / "r").rglob(".tmp-*")] == []
    assert list(RunStore.open(tmp_path / "r").metrics().step) == [1]
