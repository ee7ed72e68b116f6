"""The audit catches reproduced real-world Muon failures and stays silent on correct setups."""

import json

import pytest
import torch

import muonscope
from muonscope.audit import demo as D
from muonscope.errors import ConfigError
from muonscope.optim import MuonWithAdamW, split_params


def _torch_muon(model):
    mu, ad = split_params(model)
    return [torch.optim.Muon([p for _, p in mu], lr=0.02, weight_decay=0.1),
            torch.optim.AdamW([p for _, p in ad], lr=1e-3)]


def _reference(model, **switches):
    mu, ad = split_params(model)
    return [D.ReferenceMuon(mu, model, weight_decay=0.05, **switches), torch.optim.AdamW([p for _, p in ad], lr=1e-3)]


def _keller(model):
    muon = pytest.importorskip("muon")
    if not hasattr(muon, "SingleDeviceMuonWithAuxAdam"):
        pytest.skip("a different package named muon")
    mu, ad = split_params(model)
    return muon.SingleDeviceMuonWithAuxAdam([
        {"params": [p for _, p in mu], "use_muon": True, "lr": 0.02, "weight_decay": 0.01},
        {"params": [p for _, p in ad], "use_muon": False, "lr": 1e-3, "betas": (0.9, 0.95), "eps": 1e-10,
         "weight_decay": 0.0}])


def _run(make_model, make_opt, steps=4):
    torch.manual_seed(0)
    model = make_model()
    return muonscope.audit(model, make_opt(model), D.batches(), steps=steps)


CORRECT = {
    "torch.optim.Muon": (D.TinyLM, _torch_muon),
    "muonscope.Muon": (D.TinyLM, lambda m: MuonWithAdamW(m, lr=0.02)),
    "muonscope.Muon/mixed": (D.MixedLM, lambda m: MuonWithAdamW(m, lr=0.02)),
    "reference/mixed": (D.MixedLM, _reference),
    "keller": (D.TinyLM, _keller),
}


@pytest.mark.parametrize("case", sorted(CORRECT))
def test_correct_setups_have_no_findings(case):
    report = _run(*CORRECT[case])
    assert report.ok, [f.message for f in report.findings]
    margins = report.margins.values()
    assert len(report.margins) >= 8
    assert max(m["deviation"][m["view"]] for m in margins) < 0.1  # bound 0.2
    assert all(0.95 < m["scale_ratio"] < 1.05 for m in margins)  # tolerance 1.3


def _kinds(report):
    return {(f.param, f.kind) for f in report.findings}


def test_momentum_sgd_sold_as_muon():
    report = _run(D.TinyLM, lambda m: _reference(m, skip_ns=True))
    hidden = {n for n, _ in split_params(D.TinyLM()).muon}
    assert _kinds(report) == {(n, "not_orthogonalized") for n in hidden}
    assert min(f.value for f in report.findings) > 0.4
    assert "s_q50/s_max" in report.findings[0].message and "3.4445" in report.findings[0].message


def test_zero_ns_steps_claim():
    report = _run(D.TinyLM, lambda m: [torch.optim.Muon([p for _, p in split_params(m).muon], lr=0.02, ns_steps=0),
                                       torch.optim.AdamW([p for _, p in split_params(m).adamw])])
    assert {k for _, k in _kinds(report)} == {"not_orthogonalized"} and len(report.findings) == 12


def test_all_matrices_sent_to_adamw():
    report = _run(D.TinyLM, lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3))
    assert {k for _, k in _kinds(report)} == {"elementwise"} and len(report.findings) == 12
    assert "exp_avg_sq" in report.findings[0].message


def test_flattened_expert_stack():
    report = _run(D.MixedLM, lambda m: _reference(m, flatten_stacks=True))
    assert _kinds(report) == {("blocks.0.moe.experts.gate_up_proj", "wrong_view"),
                              ("blocks.0.moe.experts.down_proj", "wrong_view")}
    assert "one flattened matrix 1 x (4, 512)" in report.findings[1].message or \
        "one flattened matrix 1 x (4, 512)" in report.findings[0].message


def test_lr_scale_from_stored_shape():
    report = _run(D.MixedLM, lambda m: _reference(m, scale_from_storage=True))
    got = {f.param: f.value for f in report.findings}
    assert {f.kind for f in report.findings} == {"scale"}
    assert got["blocks.0.mlp.c_fc.weight"] == pytest.approx(0.5, rel=0.02)  # Conv1D (in, out) read as (out, in)
    assert got["blocks.0.mlp.c_proj.weight"] == pytest.approx(2.0, rel=0.02)
    assert got["blocks.0.conv.weight"] == pytest.approx(2 / (4 / 3) ** 0.5, rel=0.02)  # kernel dims ignored


def test_nonfinite_frozen_and_json():
    torch.manual_seed(0)
    model = D.TinyLM()
    model.blocks[1].attn.q.weight.data[0, 0] = float("nan")
    opt = MuonWithAdamW(model, lr=0.02, nonfinite="skip")
    frozen = model.blocks[0].attn.k.weight
    for g in opt.param_groups:
        if any(p is frozen for p in g["params"]):
            g["lr"] = 0.0
            g["weight_decay"] = 0.0
    report = muonscope.audit(model, opt, D.batches(), steps=2)
    kinds = _kinds(report)
    assert ("blocks.1.attn.q.weight", "nonfinite") in kinds
    assert ("blocks.0.attn.k.weight", "frozen") in kinds
    data = json.loads(report.to_json())
    assert data["ok"] is False and {"param", "kind", "message", "value"} <= set(data["findings"][0])


def test_bad_input():
    model = D.TinyLM()
    opt = MuonWithAdamW(model, lr=0.02)
    with pytest.raises(ConfigError, match="step hooks"):
        muonscope.audit(model, object(), D.batches())
    with pytest.raises(ConfigError, match="no batches"):
        muonscope.audit(model, opt, [])
    lin = torch.nn.Sequential(torch.nn.Embedding(4, 3))
    with pytest.raises(ConfigError, match="no trainable hidden matrix"):
        muonscope.audit(lin, torch.optim.AdamW(lin.parameters()), [torch.zeros(1, dtype=torch.long)])
    with pytest.raises(ConfigError, match="scalar tensor"):
        muonscope.audit(model, opt, D.batches(), loss_fn=lambda m, b: torch.zeros(2))


def _cli(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "muonscope.cli", "audit", *args], capture_output=True, text=True,
                          timeout=120, env={"OMP_NUM_THREADS": "1", "PATH": ""})


def test_cli_json_and_exit_codes(tmp_path):
    bad = _cli("--demo", "all-adamw", "--steps", "2", "--json", "-", "--fail-on-findings")
    assert bad.returncode == 1, bad.stderr
    data = json.loads(bad.stdout)
    assert data["ok"] is False and {f["kind"] for f in data["findings"]} == {"elementwise"}
    good = _cli("--demo", "torch-muon", "--steps", "2", "--fail-on-findings", "--json", str(tmp_path / "r.json"))
    assert good.returncode == 0 and "no findings" in good.stdout
    assert json.loads((tmp_path / "r.json").read_text())["ok"] is True
    script = tmp_path / "setup.py"
    script.write_text("import torch\nfrom muonscope.audit import demo as D\n"
                      "def build():\n    m, o = D.setup('momentum-sgd')\n    return m, o, D.batches()\n")
    out = _cli("--script", f"{script}:build", "--steps", "2")
    assert out.returncode == 0 and "not_orthogonalized" in out.stdout
    err = _cli("--script", f"{script}:missing")
    assert err.returncode == 2 and err.stderr.count("\n") == 1 and "no function 'missing'" in err.stderr
    assert _cli().returncode == 2


@pytest.mark.parametrize("body, call, what", [
    ("def build():\n    raise ValueError('bad setup')\n", "build", "build() raised ValueError: bad setup"),
    ("raise RuntimeError('at import')\n", "build", "importing it raised RuntimeError: at import"),
    ("import torch\ndef build():\n    m = torch.nn.Linear(4, 4)\n"
     "    def loss_fn(model, batch):\n        return model(batch).sum() / undefined_name\n"
     "    return m, torch.optim.SGD(m.parameters(), lr=0.1), [torch.randn(2, 4)] * 3, loss_fn\n",
     "build", "a training step raised NameError"),
])
def test_cli_script_errors_show_the_scripts_frames_then_one_line(tmp_path, body, call, what):
    script = tmp_path / "setup.py"
    script.write_text(body)
    r = _cli("--script", f"{script}:{call}", "--steps", "2")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[0] == "Traceback (the --script's frames):" and str(script) in lines[1]
    assert lines[-1].startswith("muonscope: error: --script setup.py: ") and what in lines[-1]
    assert "muonscope/" not in r.stderr  # none of the library's frames
