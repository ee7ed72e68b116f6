"""`muonscope fit` and `muonscope plan` end to end on run directories written through the run store."""

import json
import subprocess
import sys

import numpy as np
import pytest

from muonscope.cli import main
from muonscope.laws import load_laws
from muonscope.laws.synthetic import synthetic_records
from muonscope.spectra.store import RunStore


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run the console entry point in-process: (exit code, stdout, stderr)."""

    def call(*args):
        monkeypatch.setattr(sys, "argv", ["muonscope", *map(str, args)])
        with pytest.raises(SystemExit) as exc:
            main()
        out, err = capsys.readouterr()
        return exc.value.code, out, err

    return call


def one_line_error(result):
    code, out, err = result
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("muonscope: error:"), err
    return lines[0]


def write_sweep(root, sizes):
    df = synthetic_records(sizes, steps=np.arange(10, 401, 10), layer_types=("q", "mlp_up"), n_blocks=2,
                           qs=(0.1, 0.5, 0.9), alpha=lambda t, d: 0.25 if d < 1 else 0.6)
    for run_id, g in df.groupby("run_id"):
        g = g.assign(param=g.param.str.replace(".q.", ".attn.q.").str.replace(".mlp_up.", ".mlp.up."))
        with RunStore.create(root / run_id, {"model_params": int(g.model_params.iloc[0])}) as st:
            st.append_spectra(g.to_dict("records"))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    write_sweep(root, [1e6, 4e6, 1.6e7, 6.4e7])
    return root


@pytest.fixture(scope="module")
def laws_path(sweep, tmp_path_factory):
    """`muonscope fit` through the installed console script (a real subprocess)."""
    path = tmp_path_factory.mktemp("laws") / "laws.json"
    r = subprocess.run([sys.executable, "-m", "muonscope.cli", "fit", str(sweep), "-o", str(path), "--boot", "200"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "mlp_up" in r.stdout and "flagged by the burn-in rule: 0" in r.stdout
    return path


def test_fit_writes_laws(laws_path):
    laws = load_laws(laws_path)
    assert len(laws.fits) == 2 * 2 * 3 and len(laws.runs) == 4
    late = laws.get("mlp_up", 1.0, 0.5)
    assert late.alpha == pytest.approx(0.6, abs=0.05) and late.n_sizes == 4
    assert laws.get("q", 0.5, 0.1).alpha == pytest.approx(0.25, abs=0.05)


def test_plan_from_laws(cli, sweep, laws_path, tmp_path):
    run_dir = sorted(sweep.iterdir())[0]
    out = tmp_path / "plan.json"
    code, stdout, err = cli("plan", laws_path, "-p", "7e10", "--names-from", run_dir, "-o", out)
    assert code == 0, err
    assert "NS plan for 7e+10 parameters" in stdout and "wrote" in stdout
    d = json.loads(out.read_text())
    assert d["format"] == "muonscope.plan/1" and d["target_params"] == 7e10
    assert set(d["params"]) == {"blocks.0.attn.q.weight", "blocks.1.attn.q.weight",
                                "blocks.0.mlp.up.weight", "blocks.1.mlp.up.weight"}
    assert set(d["layer_types"]) == {"q", "mlp_up"} and "default" in d
    # several sizes: one file per size; names from a text file (layer identity from the names)
    names_txt = tmp_path / "names.txt"
    names_txt.write_text("blocks.0.attn.q.weight\nblocks.5.attn.q.weight\nblocks.7.mlp.up.weight\n")
    code, _, err = cli("plan", laws_path, "-p", "1.2e8", "-p", "1T", "--names-from", names_txt, "-o", out,
                       "--criterion", "lift-quantile", "--rho", 0.2)
    assert code == 0, err
    small = json.loads((tmp_path / "plan-1.2e08.json").read_text())
    big = json.loads((tmp_path / "plan-1e12.json").read_text())
    assert small["rho"] == 0.2
    assert set(small["params"]) == {"blocks.0.attn.q.weight", "blocks.5.attn.q.weight", "blocks.7.mlp.up.weight"}
    assert big["params"]["blocks.7.mlp.up.weight"]["steps"] > small["params"]["blocks.7.mlp.up.weight"]["steps"]
    # a JSON mapping {name: [layer_type, rel_depth]}
    names_json = tmp_path / "names.json"
    names_json.write_text(json.dumps({"h.3.attn.c_attn.weight": ["q", 1.0], "x.weight": ["other", None]}))
    code, stdout, err = cli("plan", laws_path, "-p", "70B", "--names-from", names_json, "-o", out)
    assert code == 0, err
    d = json.loads(out.read_text())
    assert d["params"]["h.3.attn.c_attn.weight"]["steps"] == d["layer_types"]["q"]["steps"]
    assert d["params"]["x.weight"]["steps"] == d["default"]["steps"]


def test_fit_errors(cli, tmp_path):
    write_sweep(tmp_path / "two", [1e6, 4e6])
    assert "3 or more model sizes" in one_line_error(cli("fit", tmp_path / "two", "-o", tmp_path / "l.json"))
    assert "does not exist" in one_line_error(cli("fit", tmp_path / "missing", "-o", tmp_path / "l.json"))
    assert "--level" in one_line_error(cli("fit", tmp_path / "two", "-o", tmp_path / "l.json", "--level", 2))


def test_plan_errors(cli, laws_path, tmp_path):
    assert "muonscope fit" in one_line_error(cli("plan", tmp_path / "nope.json", "-p", "7e10"))
    assert "--params" in one_line_error(cli("plan", laws_path, "-p", "lots"))
    assert "--params" in one_line_error(cli("plan", laws_path, "-p", "-5"))
    assert "no fits for q=0.75" in one_line_error(cli("plan", laws_path, "-p", "7e10", "-q", 0.75,
                                                      "--criterion", "lift-quantile"))
    assert "--names-from" in one_line_error(cli("plan", laws_path, "-p", "7e10", "--names-from", tmp_path / "absent"))
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    assert "--names-from" in one_line_error(cli("plan", laws_path, "-p", "7e10", "--names-from", bad))


@pytest.mark.parametrize("content", [
    '{"kind": "magic"}', '{"kind": "statistic", "delta": -1}', '{"kind": "statistic", "delta": NaN}',
    '{"kind": "statistic", "statistic": "vibes"}', '[1, 2]', 'not json',
    '{"kind": "statistic", "overshoot_cap": 0.5}',
])
def test_plan_rejects_malformed_criteria_and_writes_nothing(cli, laws_path, tmp_path, content):
    bad = tmp_path / "criterion.json"
    bad.write_text(content)
    out = tmp_path / "plan.json"
    one_line_error(cli("plan", laws_path, "-p", "7e10", "--criterion", bad, "-o", out))
    assert not out.exists()


def test_plan_states_its_criterion(cli, laws_path, tmp_path):
    crit = tmp_path / "c.json"
    crit.write_text(json.dumps({"kind": "statistic", "statistic": "distortion", "delta": 0.01, "absolute": 0.08,
                                "overshoot_cap": 1.25}))
    out = tmp_path / "plan.json"
    code, stdout, err = cli("plan", laws_path, "-p", "1e9", "--criterion", crit, "-o", out)
    assert code == 0, err
    assert "predicted distortion <= min(distortion(jordan x5) + 0.01, 0.08)" in " ".join(stdout.split())
    d = json.loads(out.read_text())
    assert d["criterion"]["delta"] == 0.01 and d["criterion"]["overshoot_cap"] == 1.25
    code, stdout, _ = cli("plan", laws_path, "-p", "1e9", "--criterion", "lift-quantile")
    assert code == 0 and "lift-quantile" in stdout


def test_fit_finds_runs_at_any_depth(cli, tmp_path):
    write_sweep(tmp_path / "results" / "nested" / "sweep", [1e6, 4e6, 1.6e7])
    out = tmp_path / "laws.json"
    code, _, err = cli("fit", tmp_path / "results", "-o", out, "--boot", "100")
    assert code == 0, err
    assert len(load_laws(out).runs) == 3
    empty = tmp_path / "empty" / "deeper"
    empty.mkdir(parents=True)
    assert "no run directories" in one_line_error(cli("fit", tmp_path / "empty", "-o", out))


def test_fit_table_is_a_pure_function(laws_path):
    from rich.console import Console

    from muonscope.cli.laws import fit_table

    console = Console(width=200, record=True)
    console.print(fit_table(load_laws(laws_path)))
    text = console.export_text()
    assert "mlp_up" in text and "0.6" in text and "4 sizes" in text


def test_convergence_and_compare_commands(cli, sweep, laws_path, tmp_path):
    import shutil

    laws_copy = tmp_path / "laws.json"
    shutil.copy(laws_path, laws_copy)
    code, out, err = cli("convergence", sweep, "-o", tmp_path / "conv", "--laws", laws_copy, "--boot", "100")
    assert code in (0, None), err
    for name in ("alpha_over_time.csv", "convergence.csv", "alpha_over_time.png"):
        assert (tmp_path / "conv" / name).stat().st_size > 0
    assert "exponent convergence" in out
    laws = load_laws(laws_copy)
    assert len(laws.convergence) == 2 * 2 * 3  # layer types × depths × q
    code, out, err = cli("compare", laws_path, laws_copy, "--names", "old,new", "-o", tmp_path / "cmp.csv")
    assert code in (0, None), err
    import pandas as pd

    t = pd.read_csv(tmp_path / "cmp.csv")
    assert len(t) == 12 and (t.delta.abs() < 1e-12).all()  # same fits: no difference
    one_line_error(cli("compare", laws_path, laws_copy, "--names", "x"))
    one_line_error(cli("convergence", sweep, "-o", tmp_path / "c2", "--width", "0"))
    assert not (tmp_path / "c2").exists()


def test_plan_chooses_gram_from_the_target_shapes(cli, laws_path, tmp_path):
    from muonscope.orth import analysis as A

    config = tmp_path / "config.json"  # a Llama-style config: GQA k/v (1024×4096), wide MLP
    config.write_text(json.dumps({"hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32,
                                  "num_key_value_heads": 8, "model_type": "llama"}))
    out = tmp_path / "plan.json"
    code, stdout, err = cli("plan", laws_path, "-p", "8e9", "--shapes-from", config, "--ns-dtype", "float32",
                            "-o", out)
    assert code == 0, err
    assert "(gram)" in stdout
    d = json.loads(out.read_text())
    q, up = d["layer_types"]["q"], d["layer_types"]["mlp_up"]
    assert "orthogonalizer" not in q and q["ns_flops"] == A.ns_flops(4096, 4096, q["steps"])  # square: standard
    assert up["orthogonalizer"] == "gram" and up["restarts"] == list(A.gram_default_restarts("float32", up["steps"]))
    assert up["ns_flops"] == A.gram_ns_cost(14336, 4096, up["steps"], up["restarts"])[0]
    # the same from a {layer_type: [rows, cols]} mapping
    mapping = tmp_path / "shapes.json"
    mapping.write_text(json.dumps({"q": [4096, 4096], "mlp_up": [14336, 4096]}))
    code, _, err = cli("plan", laws_path, "-p", "8e9", "--shapes-from", mapping, "--ns-dtype", "float32", "-o", out)
    assert code == 0, err
    assert json.loads(out.read_text())["layer_types"]["mlp_up"] == up


@pytest.mark.parametrize("content, match", [
    ('{"q": [4096]}', "rows, cols"), ('{"q": [0, 4]}', "rows, cols"), ('{"hidden_size": 64}', "attention heads"),
    ('{"hidden_size": 60, "num_attention_heads": 8}', "multiple of 8 heads"), ('[1]', "JSON object"),
    ('{"hidden_size": -4, "num_attention_heads": 2}', "positive integer"), ("nope", "not valid JSON"),
])
def test_plan_refuses_bad_shapes_and_writes_nothing(cli, laws_path, tmp_path, content, match):
    bad = tmp_path / "shapes.json"
    bad.write_text(content)
    out = tmp_path / "plan.json"
    assert match in one_line_error(cli("plan", laws_path, "-p", "7e10", "--shapes-from", bad, "-o", out))
    assert not out.exists()


def test_plan_shape_option_errors(cli, laws_path, tmp_path):
    assert "no such file" in one_line_error(cli("plan", laws_path, "-p", "7e10", "--shapes-from", tmp_path / "x"))
    good = tmp_path / "s.json"
    good.write_text('{"q": [8, 8]}')
    assert "--ns-dtype" in one_line_error(cli("plan", laws_path, "-p", "7e10", "--shapes-from", good,
                                              "--ns-dtype", "int8"))
    assert "--verify" in one_line_error(cli("plan", laws_path, "--verify", "-o", tmp_path / "v",
                                            "--shapes-from", good))
