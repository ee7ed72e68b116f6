"""Fuzzing every CLI verb with bad input: each case must end with exit code 2 and exactly one line on
stderr (``muonscope: error: ...``), no traceback, nothing created or removed in the working
directory, and no output target replaced (a FIFO, /dev/null, a directory where a file is expected).

Cases run in-process (``muonscope.cli.main(argv)``) so the suite stays fast. Classes: numeric
options out of range or of the wrong kind (also drawn by hypothesis), output paths that cannot be
written (parent is a file, name over 255 bytes, target of the wrong kind, device/FIFO targets),
malformed inputs (run.json fields, names files, laws/plan/criterion files, calibration tables) and
resume mistakes (no run, conflicting options).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers import run_cli as run_cli_star
from muonscope.experiments.config import TrainConfig

LONG = "x" * 300  # one path component over NAME_MAX (255 bytes)


# --- harness ---------------------------------------------------------------------------------------
def run_cli(args) -> tuple[int, str, str]:
    return run_cli_star(*args)


def snapshot(root: Path) -> dict:
    """Every entry under ``root``: kind, size and mtime (a replaced or touched target shows)."""
    snap = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st_ = os.lstat(p)
            snap[str(p.relative_to(root))] = (stat.S_IFMT(st_.st_mode), st_.st_size, st_.st_mtime_ns, st_.st_ino)
    return snap


def write_run(path: Path, **overrides) -> Path:
    """A run directory holding only run.json (what validation and resume read first)."""
    path.mkdir(parents=True)
    meta = {"format": "muonscope.run", "schema_version": 1, "run_id": path.name, "model_params": 50_000,
            "preset": "tiny", "seed": 0, "config": TrainConfig(preset="tiny", steps=20).to_dict(),
            "status": "complete"}
    meta.update(overrides)
    (path / "run.json").write_text(json.dumps(meta))
    return path


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """A working directory with every input the cases refer to (created once, never modified)."""
    root = tmp_path_factory.mktemp("fuzz")
    write_run(root / "run")
    write_run(root / "run_schema_str", schema_version="1")
    write_run(root / "run_schema_float", schema_version=1.5)
    write_run(root / "run_schema_future", schema_version=99)
    write_run(root / "run_params_str", model_params="big")
    write_run(root / "run_params_neg", model_params=-5)
    write_run(root / "run_seed_str", seed="zero")
    write_run(root / "run_config_list", config=[1, 2])
    write_run(root / "run_id_num", run_id=7)
    (root / "run_not_json").mkdir()
    (root / "run_not_json" / "run.json").write_text("{not json")
    (root / "run_json_dir").mkdir()
    (root / "run_json_dir" / "run.json").mkdir()
    (root / "run_foreign").mkdir()
    (root / "run_foreign" / "run.json").write_text(json.dumps({"format": "other"}))
    (root / "empty_dir").mkdir()
    (root / "afile").write_text("plain file\n")
    (root / "binary.txt").write_bytes(bytes(range(256)) * 4)
    (root / "latin1.txt").write_bytes("blocks.0.attn.q.weight\ncaf\xe9\n".encode("latin-1"))
    (root / "empty_names.txt").write_text("# nothing\n\n")
    (root / "bad_names.json").write_text(json.dumps({"a": "q"}))
    (root / "garbage.json").write_text("][")
    (root / "list.json").write_text("[1, 2, 3]")
    (root / "laws_foreign.json").write_text(json.dumps({"format": "muonscope.laws/0"}))
    (root / "laws_broken.json").write_text(json.dumps({"format": "muonscope.laws/1", "fits": [{"q": "x"}]}))
    (root / "plan_list.json").write_text("[]")
    (root / "cal").mkdir()
    (root / "cal" / "runs.csv").write_bytes(b"\x00\x01\x02garbage")
    (root / "cal_cols").mkdir()
    (root / "cal_cols" / "runs.csv").write_text("a,b\n1,2\n")
    (root / "outdir").mkdir()
    os.mkfifo(root / "fifo")
    return root


@pytest.fixture
def in_sandbox(sandbox, monkeypatch):
    monkeypatch.chdir(sandbox)
    return sandbox


def assert_rejected(args, root: Path):
    """Exit 2, one stderr line, no traceback, the working tree and /dev/null untouched."""
    before = snapshot(root)
    devnull = os.stat("/dev/null")
    code, out, err = run_cli(args)
    lines = err.strip().splitlines()
    assert code == 2, (args, code, out[-2000:], err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("muonscope: error:"), (args, err)
    assert "Traceback" not in out + err, (args, err)
    after = snapshot(root)
    assert after == before, (args, sorted(set(after) ^ set(before)))
    now = os.stat("/dev/null")
    assert stat.S_ISCHR(now.st_mode) and now.st_ino == devnull.st_ino, args
    return lines[0]


# --- the cases -------------------------------------------------------------------------------------
# Numeric options out of range or of the wrong kind, per verb.
NUMERIC = [
    # ns
    ["ns", "--rho", "inf"], ["ns", "--rho", "nan"], ["ns", "--rho", "0"], ["ns", "--rho", "-1"], ["ns", "--rho", "2"],
    ["ns", "-k", "0"], ["ns", "-k", "-3"], ["ns", "-k", "100000000"], ["ns", "-k", "1e8"], ["ns", "-k", "x"],
    ["ns", "--band-from", "0"], ["ns", "--band-from", "1.5"], ["ns", "--band-from", "nan"],
    ["ns", "--shape", "0x4"], ["ns", "--shape", "3y4"], ["ns", "--shape", "99999999999x2"], ["ns", "-s", "nope"],
    # train
    ["train", "-o", "t", "--steps", "0"], ["train", "-o", "t", "--steps", "-5"],
    ["train", "-o", "t", "--steps", "100000000000"], ["train", "-o", "t", "--steps", "1e9"],
    ["train", "-o", "t", "--batch-size", "0"], ["train", "-o", "t", "--batch-size", "100000000"],
    ["train", "-o", "t", "--seed", str(2**64)], ["train", "-o", "t", "--seed", "-1"],
    ["train", "-o", "t", "--lr", "inf"], ["train", "-o", "t", "--lr", "nan"], ["train", "-o", "t", "--lr", "-0.1"],
    ["train", "-o", "t", "--lr", "0"], ["train", "-o", "t", "--adamw-lr", "inf"],
    ["train", "-o", "t", "--ns-steps", "0"], ["train", "-o", "t", "--ns-steps", "100000000"],
    ["train", "-o", "t", "--monitor-every", "0"], ["train", "-o", "t", "--eval-every", "-1"],
    ["train", "-o", "t", "--checkpoint-every", "0"], ["train", "-o", "t", "--threads", "-1"],
    ["train", "-o", "t", "--threads", "100000"], ["train", "-o", "t", "--preset", "nope"],
    ["train", "-o", "t", "--optimizer", "sgd"], ["train", "-o", "t", "--schedule", "nope"],
    ["train", "-o", "t", "--adjust-lr-fn", "nope"], ["train", "-o", "t", "--device", "tpu"],
    ["train", "-o", "t", "--device", "cuda:9"] if not os.environ.get("CUDA_VISIBLE_DEVICES") else ["train", "-o", "t", "--device", "tpu:0"],
    ["train", "-o", "t", "--corpus", "no/such/corpus/path"], ["train", "-o", "t", "--resume", "true"],
    # sweep
    ["sweep", "-o", "s", "--jobs", "0"], ["sweep", "-o", "s", "--jobs", "100000"], ["sweep", "-o", "s", "--threads", "-1"],
    ["sweep", "-o", "s", "--seeds", "a,b"], ["sweep", "-o", "s", "--seeds", "-1"], ["sweep", "-o", "s", "--seeds", str(2**64)],
    ["sweep", "-o", "s", "--lr", "0.1,-1"], ["sweep", "-o", "s", "--lr", "inf"], ["sweep", "-o", "s", "--steps", "0"],
    ["sweep", "-o", "s", "--batch-size", "10000000"], ["sweep", "-o", "s", "--family", "nope"],
    ["sweep", "-o", "s", "--presets", "d48,nope"], ["sweep", "-o", "s", "--monitor-spectrum", "nope"],
    ["sweep", "-o", "s", "--adjust-lr-fn", "nope"],
    # fit
    ["fit", "run", "-o", "l.json", "--quantile", "2"], ["fit", "run", "-o", "l.json", "--quantile", "0"],
    ["fit", "run", "-o", "l.json", "--quantile", "nan"], ["fit", "run", "-o", "l.json", "--level", "1"],
    ["fit", "run", "-o", "l.json", "--level", "0"], ["fit", "run", "-o", "l.json", "--boot", "5"],
    ["fit", "run", "-o", "l.json", "--boot", "1000000000"], ["fit", "run", "-o", "l.json", "--seed", "-2"],
    ["fit", "run", "-o", "l.json", "--rel-tol", "0"], ["fit", "run", "-o", "l.json", "--rel-tol", "inf"],
    ["fit", "run", "-o", "l.json", "--drift-tolerance", "nan"], ["fit", "run", "-o", "l.json", "--source", "nope"],
    # convergence
    ["convergence", "run", "-o", "c", "--width", "0"], ["convergence", "run", "-o", "c", "--every", "-1"],
    ["convergence", "run", "-o", "c", "--tolerance", "0"], ["convergence", "run", "-o", "c", "--tolerance", "inf"],
    ["convergence", "run", "-o", "c", "--boot", "1"], ["convergence", "run", "-o", "c", "--boot", "10000000000"],
    # compare
    ["compare", "a.json", "b.json", "--names", "a"], ["compare", "a.json", "b.json", "--names", "a,a"],
    # plan
    ["plan", "laws.json", "-p", "-5"], ["plan", "laws.json", "-p", "inf"], ["plan", "laws.json", "-p", "nan"],
    ["plan", "laws.json", "-p", "abc"], ["plan", "laws.json", "-p", "1e30"], ["plan", "laws.json"],
    ["plan", "laws.json", "-p", "7e10", "--level", "1.5"], ["plan", "laws.json", "-p", "7e10", "--max-steps", "0"],
    ["plan", "laws.json", "-p", "7e10", "--max-steps", "1000000000"],
    ["plan", "laws.json", "-p", "7e10", "--quantile", "2"], ["plan", "laws.json", "-p", "7e10", "--rho", "inf"],
    ["plan", "laws.json", "-p", "7e10", "--rho", "0"], ["plan", "laws.json", "--verify"],
    ["plan", "laws.json", "--verify", "-o", "v", "--steps", "1000000000"],
    ["plan", "laws.json", "--verify", "-o", "v", "--steps", "0"],
    ["plan", "laws.json", "--verify", "-o", "v", "--threads", "0"],
    ["plan", "laws.json", "--verify", "-o", "v", "--seeds", "x"],
    ["plan", "laws.json", "--verify", "-o", "v", "--presets", "d48,zzz,d96"],
    ["plan", "laws.json", "-p", "7e10", "--criterion", "no-such-criterion"],
    # report
    ["report", "run", "--quantile", "2"], ["report", "run", "--quantile", "0"], ["report", "run", "--quantile", "1"],
    ["report", "run", "--rho", "inf"], ["report", "run", "--rho", "-1"], ["report", "run", "--targets", "-1"],
    ["report", "run", "--targets", "1e9,-3"], ["report", "run", "--targets", "inf"], ["report", "run", "--targets", "x"],
    ["report", "run", "--targets", ","], ["report", "run", "--format", "pdf"],
    # demo (rejected before the sweep starts)
    ["demo", "-o", "d", "--target", "abc"], ["demo", "-o", "d", "--target", "-1"], ["demo", "-o", "d", "--presets", "d48,d64"],
    ["demo", "-o", "d", "--presets", "d48,d64,nope"], ["demo", "-o", "d", "--presets", "d48,d48,d64"],
    ["demo", "-o", "d", "--steps", "0"], ["demo", "-o", "d", "--steps", "100000000000"], ["demo", "-o", "d", "--threads", "-1"],
    # audit
    ["audit", "--demo", "muonscope", "--steps", "0"], ["audit", "--demo", "muonscope", "--steps", "100000000"],
    ["audit", "--demo", "nope"], ["audit"], ["audit", "--script", "nofile.py:f"], ["audit", "--script", "nocolon"],
    # calibrate
    ["calibrate", "run", "-o", "k", "--steps", "0"], ["calibrate", "run", "-o", "k", "--steps", "100000000000"],
    ["calibrate", "run", "-o", "k", "--threads", "0"], ["calibrate", "run", "-o", "k", "--seeds", "x"],
    ["calibrate", "run", "-o", "k", "--shard", "3/2"], ["calibrate", "run", "-o", "k", "--shard", "a/b"],
    ["calibrate", "run", "-o", "k", "--budget", "-1"], ["calibrate", "run", "-o", "k", "--budget", "nan"],
    ["calibrate", "run", "-o", "k", "--presets", "zzz"], ["calibrate", "run", "-o", "k", "--methods", "nope-method"],
    ["calibrate", "run", "-o", "k", "--methods", ","],
    ["calibrate", "summarize", "-o", "nodir"],
    # dynamics
    ["dynamics", "sensing", "-o", "y", "--rows", "0"], ["dynamics", "sensing", "-o", "y", "--rows", "100000000"],
    ["dynamics", "sensing", "-o", "y", "--rows", "5000", "--cols", "5000", "--measurements", "5000"],
    ["dynamics", "sensing", "-o", "y", "--kappa", "0.5"], ["dynamics", "sensing", "-o", "y", "--kappa", "inf"],
    ["dynamics", "sensing", "-o", "y", "--seeds", "0"], ["dynamics", "sensing", "-o", "y", "--steps", "0"],
    ["dynamics", "sensing", "-o", "y", "--steps", "100000000000"], ["dynamics", "sensing", "-o", "y", "--lr", "nan"],
    ["dynamics", "sensing", "-o", "y", "--momentum", "1"], ["dynamics", "sensing", "-o", "y", "--rules", "nope"],
    ["dynamics", "sensing", "-o", "y", "--init", "nope"], ["dynamics", "sensing", "-o", "y", "--threads", "-1"],
    ["dynamics", "sensing", "-o", "y", "--record-every", "0"], ["dynamics", "sensing", "-o", "y", "--lr-schedule", "x"],
    ["dynamics", "nuclear", "-o", "y", "--steps", "0"], ["dynamics", "nuclear", "-o", "y", "--lr", "-1"],
    ["dynamics", "nuclear", "-o", "y", "--setting", "huge"], ["dynamics", "nuclear", "-o", "y", "--seeds", "-1"],
    ["dynamics", "entropy", "-o", "y", "--rows", "0"], ["dynamics", "entropy", "-o", "y", "--instances", "0"],
    ["dynamics", "entropy", "-o", "y", "--instances", "1000000000"], ["dynamics", "entropy", "-o", "y", "--seed", "-1"],
    ["dynamics", "noise", "-o", "y", "--chains", "1"], ["dynamics", "noise", "-o", "y", "--chains", "100000000000"],
    ["dynamics", "noise", "-o", "y", "--trials", "0"], ["dynamics", "noise", "-o", "y", "--threads", "-4"],
    ["dynamics", "weight-decay", "-o", "y", "--lambdas", "-1"], ["dynamics", "weight-decay", "-o", "y", "--lambdas", "x"],
    ["dynamics", "weight-decay", "-o", "y", "--steps", "0"], ["dynamics", "weight-decay", "-o", "y", "--blocks", "0"],
    ["dynamics", "weight-decay", "-o", "y", "--threshold", "2"], ["dynamics", "weight-decay", "-o", "y", "--name", "a/b"],
    ["dynamics", "weight-decay", "-o", "y", "--name", LONG], ["dynamics", "weight-decay", "-o", "y", "--modes", "x"],
    ["dynamics", "alignment", "-o", "y", "--settings", "paper-d1"], ["dynamics", "alignment", "-o", "y", "--settings", "x"],
    ["dynamics", "alignment", "-o", "y", "--settings", "paper-d100000"], ["dynamics", "alignment", "-o", "y", "--seeds", "0"],
    ["dynamics", "alignment", "-o", "y", "--steps", "-1"],
    ["dynamics", "regimes", "-o", "y", "--seeds", "0"], ["dynamics", "regimes", "-o", "y", "--steps", "0"],
    ["dynamics", "regimes", "-o", "y", "--muon-lrs", "-0.1"], ["dynamics", "regimes", "-o", "y", "--tasks", "nope"],
    ["dynamics", "regimes", "-o", "y", "--preset", "nope"], ["dynamics", "regimes", "-o", "y", "--upsample", "0"],
    # unknown verbs and options
    ["frobnicate"], ["train", "--no-such-option"], ["dynamics", "nope"], ["calibrate", "nope"],
]


def _ids(cases):
    return [" ".join(c)[:60] for c in cases]


@pytest.mark.parametrize("args", NUMERIC, ids=_ids(NUMERIC))
def test_bad_option_values(args, in_sandbox):
    assert_rejected(args, in_sandbox)


# Output paths that cannot be written: {parent is a file, name too long, FIFO, /dev/null, wrong kind}.
def _out_cases():
    file_outs = {  # verbs whose output is a file: (args before the path, option)
        "fit": ["fit", "run", "-o"], "plan": ["plan", "laws.json", "-p", "7e10", "-o"],
        "compare": ["compare", "a.json", "b.json", "-o"], "report": ["report", "run", "-o"],
        "ns --plot": ["ns", "-s", "jordan", "--plot"], "audit --json": ["audit", "--demo", "muonscope", "--json"],
    }
    dir_outs = {
        "train": ["train", "-o"], "sweep": ["sweep", "-o"], "lr-check": ["lr-check", "run", "-o"],
        "convergence": ["convergence", "run", "-o"], "demo": ["demo", "--target", "7e10", "-o"],
        "calibrate run": ["calibrate", "run", "-o"], "sensing": ["dynamics", "sensing", "-o"],
        "entropy": ["dynamics", "entropy", "-o"], "noise": ["dynamics", "noise", "-o"],
        "weight-decay": ["dynamics", "weight-decay", "-o"], "alignment": ["dynamics", "alignment", "-o"],
        "regimes": ["dynamics", "regimes", "-o"], "plan --verify": ["plan", "laws.json", "--verify", "-o"],
    }
    cases = []
    for prefix in file_outs.values():
        for target in ("afile/out.json", f"{LONG}.json", "fifo", "/dev/null", "outdir", f"outdir/{LONG}/x.json"):
            cases.append([*prefix, target])
    for prefix in dir_outs.values():
        for target in ("afile", "afile/sub", LONG, f"new/{LONG}", "fifo", "/dev/null"):
            cases.append([*prefix, target])
    return cases


OUTPUTS = _out_cases()


@pytest.mark.parametrize("args", OUTPUTS, ids=_ids(OUTPUTS))
def test_unwritable_outputs(args, in_sandbox):
    line = assert_rejected(args, in_sandbox)
    target = args[-1]
    assert target[:20] in line, (args, line)  # refused for its output path, before reading any input


# Malformed inputs: run.json fields, names files, laws/plan/criterion files, calibration tables.
INPUTS = [
    ["fit", "run_schema_str", "-o", "l.json"], ["fit", "run_schema_float", "-o", "l.json"],
    ["fit", "run_schema_future", "-o", "l.json"], ["fit", "run_params_str", "-o", "l.json"],
    ["fit", "run_params_neg", "-o", "l.json"], ["fit", "run_seed_str", "-o", "l.json"],
    ["fit", "run_config_list", "-o", "l.json"], ["fit", "run_id_num", "-o", "l.json"],
    ["fit", "run_not_json", "-o", "l.json"], ["fit", "run_json_dir", "-o", "l.json"],
    ["fit", "run_foreign", "-o", "l.json"], ["fit", "empty_dir", "-o", "l.json"], ["fit", "no_such_dir", "-o", "l.json"],
    ["fit", "fifo", "-o", "l.json"], ["report", "run_params_str"], ["report", "run_schema_float"],
    ["convergence", "run_params_str", "-o", "c"], ["lr-check", "run_schema_str", "-o", "c"],
    ["lr-check", "no_such_dir", "-o", "c"],
    ["plan", "run/run.json", "-p", "7e10"], ["plan", "garbage.json", "-p", "7e10"], ["plan", "list.json", "-p", "7e10"],
    ["plan", "laws_foreign.json", "-p", "7e10"], ["plan", "laws_broken.json", "-p", "7e10"],
    ["plan", "fifo", "-p", "7e10"], ["plan", "binary.txt", "-p", "7e10"], ["plan", "no_such.json", "-p", "7e10"],
    ["plan", "laws.json", "-p", "7e10", "--names-from", "binary.txt"],
    ["plan", "laws.json", "-p", "7e10", "--names-from", "latin1.txt"],
    ["plan", "laws.json", "-p", "7e10", "--names-from", "empty_names.txt"],
    ["plan", "laws.json", "-p", "7e10", "--names-from", "bad_names.json"],
    ["plan", "laws.json", "-p", "7e10", "--names-from", "garbage.json"],
    ["plan", "laws.json", "-p", "7e10", "--names-from", "fifo"],
    ["plan", "laws.json", "-p", "7e10", "--names-from", "nothing-here"],
    ["plan", "laws.json", "-p", "7e10", "--criterion", "garbage.json"],
    ["plan", "laws.json", "-p", "7e10", "--criterion", "list.json"],
    ["compare", "garbage.json", "laws_foreign.json"], ["compare", "no_such.json", "list.json"],
    ["convergence", "run", "-o", "c", "--laws", "garbage.json"],
    ["train", "-o", "t", "--plan", "garbage.json"], ["train", "-o", "t", "--plan", "plan_list.json"],
    ["train", "-o", "t", "--plan", "fifo"], ["train", "-o", "t", "--plan", "binary.txt"],
    ["train", "-o", "t", "--plan", "no_such.json"], ["train", "-o", "t", "--corpus", "binary.txt", "--steps", "0"],
    ["calibrate", "summarize", "-o", "cal"], ["calibrate", "summarize", "-o", "cal_cols"],
    ["calibrate", "summarize", "-o", "empty_dir"],
    ["report", "run", "--criterion", "garbage.json"], ["report", "no_such_dir"],
]


@pytest.mark.parametrize("args", INPUTS, ids=_ids(INPUTS))
def test_malformed_inputs(args, in_sandbox):
    assert_rejected(args, in_sandbox)


# Resume mistakes: nothing to resume, a run that cannot take the options given.
RESUME = [
    ["train", "-o", "no_such_run", "--resume"], ["train", "-o", "empty_dir", "--resume"],
    ["train", "-o", "afile", "--resume"], ["train", "-o", "run_not_json", "--resume"],
    ["train", "-o", "run_config_list", "--resume"], ["train", "-o", "run_schema_float", "--resume"],
    ["train", "-o", "run", "--resume", "--preset", "d48"], ["train", "-o", "run", "--resume", "--lr", "0.5"],
    ["train", "-o", "run", "--resume", "--steps", "5"], ["train", "-o", "run", "--resume", "--seed", "3"],
    ["train", "-o", "run", "--resume", "--optimizer", "adamw"], ["train", "-o", "run", "--resume", "--ns-steps", "3"],
    ["train", "-o", "run", "--resume", "--batch-size", "3"], ["train", "-o", "run", "--resume", "--no-bf16", "--bf16"],
    ["train", "-o", "run"],  # a run is there and --resume was not given
]


@pytest.mark.parametrize("args", RESUME, ids=_ids(RESUME))
def test_resume_mistakes(args, in_sandbox):
    assert_rejected(args, in_sandbox)


def test_resume_conflict_names_each_option_old_and_new(in_sandbox):
    line = assert_rejected(["train", "-o", "run", "--resume", "--preset", "d48", "--lr", "0.5"], in_sandbox)
    assert "preset: 'tiny' -> 'd48'" in line and "lr: 0.01 -> 0.5" in line, line
    line = assert_rejected(["train", "-o", "no_such_run", "--resume"], in_sandbox)
    assert "holds no run" in line and "no_such_run" in line, line


# Property-based: any out-of-range number for a bounded option is refused with one line.
BOUNDED = {  # option -> (verb prefix, predicate "value is valid")
    "ns --rho": (["ns", "-s", "jordan", "--rho"], lambda x: 0 < x <= 1),
    "train --lr": (["train", "-o", "t", "--steps", "0", "--lr"], lambda x: False),  # --steps 0 is invalid too
    "fit --level": (["fit", "run", "-o", "fifo", "--level"], lambda x: False),  # the FIFO target is refused
    "report --quantile": (["report", "run", "-o", "fifo", "--quantile"], lambda x: False),
    "plan --rho": (["plan", "laws.json", "-p", "7e10", "--rho"], lambda x: False),  # laws.json does not exist
}
BAD_NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).filter(lambda x: not (0 < x <= 1)),
    st.sampled_from([float("inf"), float("-inf"), float("nan"), -0.0, 1e308, -1e-308, 2.0**64]),
)


@given(option=st.sampled_from(sorted(BOUNDED)), value=BAD_NUMBERS)
def test_bounded_options_property(option, value, sandbox):
    prefix, _ = BOUNDED[option]
    old = os.getcwd()
    os.chdir(sandbox)
    try:
        assert_rejected([*prefix, repr(value) if value == value else "nan"], sandbox)
    finally:
        os.chdir(old)


@given(n=st.one_of(st.integers(max_value=0), st.integers(min_value=101, max_value=2**70)))
def test_ns_steps_property(n, sandbox):
    old = os.getcwd()
    os.chdir(sandbox)
    try:
        assert_rejected(["ns", "-s", "jordan", "-k", str(n)], sandbox)
    finally:
        os.chdir(old)


@given(text=st.text(min_size=1, max_size=12).filter(lambda t: t.strip() != "" and "," not in t))
def test_targets_property(text, sandbox):
    """Any --targets item that is not a positive finite size up to 1e15 is refused."""
    try:
        ok = 0 < float(text) <= 1e15
    except ValueError:
        ok = False
    if ok:
        return
    old = os.getcwd()
    os.chdir(sandbox)
    try:
        assert_rejected(["report", "no_such_dir", "--targets", text], sandbox)
    finally:
        os.chdir(old)


def test_fuzz_case_count():
    """The suite drives every verb (>= 150 explicit cases on top of the property tests)."""
    cases = NUMERIC + OUTPUTS + INPUTS + RESUME
    assert len(cases) >= 150
    verbs = {c[0] if c[0] not in ("dynamics", "calibrate") else " ".join(c[:2]) for c in cases}
    for verb in ("ns", "train", "sweep", "lr-check", "fit", "convergence", "compare", "plan", "report", "demo",
                 "audit", "calibrate run", "calibrate summarize", "dynamics sensing", "dynamics nuclear",
                 "dynamics entropy", "dynamics noise", "dynamics weight-decay", "dynamics alignment",
                 "dynamics regimes"):
        assert verb in verbs, verb


def test_unwritable_parent(tmp_path, monkeypatch):
    """A parent directory without write permission (as root, which ignores permissions, the
    permission check itself is made to deny it)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    write_run(tmp_path / "run")
    ro.chmod(0o500)
    if os.geteuid() == 0:
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p).resolve() == ro else real_access(p, mode, **kw))
    monkeypatch.chdir(tmp_path)
    try:
        for args in (["fit", "run", "-o", "ro/l.json"], ["train", "-o", "ro/t"], ["report", "run", "-o", "ro/r.html"],
                     ["dynamics", "noise", "-o", "ro/n"], ["ns", "--plot", "ro/p.png"], ["sweep", "-o", "ro/s"],
                     ["plan", "laws.json", "-p", "7e10", "-o", "ro/p.json"], ["convergence", "run", "-o", "ro/c"]):
            line = assert_rejected(args, tmp_path)
            assert "permission denied" in line, line
    finally:
        ro.chmod(0o700)


def test_version_and_flag_help():
    code, out, err = run_cli(["--version"])
    assert code == 0 and out.startswith("muonscope "), (out, err)
    code, out, _ = run_cli(["train", "--help"])
    assert code == 0
    assert "<bool>" not in out and "--no-resume" in out
    for preset in ("tiny", "d64", "L16-d96", "gpu-d576"):
        assert preset in out, preset
