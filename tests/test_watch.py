"""SpectralMonitor on optimizers muonscope did not build (torch step hooks)."""

import numpy as np
import pytest
import torch

from muonscope.errors import ConfigError
from muonscope.orth.analysis import composed_map
from muonscope.spectra import metrics as M
from muonscope.spectra.monitor import SpectralMonitor
from muonscope.spectra.store import RunStore

QS = (0.1, 0.25, 0.5, 0.75, 0.9)


def _model():
    return torch.nn.Sequential(torch.nn.Linear(24, 40, bias=False), torch.nn.Tanh(), torch.nn.Linear(40, 16, bias=False))


def _train(model, opt, steps, snap=None):
    for _ in range(steps):
        x = torch.randn(96, 24)
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt.step()
        if snap is not None:
            snap.append((before, {n: opt.state[p]["momentum_buffer"].clone() for n, p in model.named_parameters()}))


def _s(X):
    sv = torch.linalg.svdvals(X.double())
    return (sv / sv.norm()).numpy()


def test_torch_muon_momentum_and_update_records(tmp_path):
    model = _model()
    opt = torch.optim.Muon(model.parameters(), lr=0.02, weight_decay=0.1)
    store = RunStore.create(tmp_path / "run", {"model_params": 1})
    mon = SpectralMonitor(opt, every=1, store=store, model=model, full_spectrum=True, keep_records=True)
    snaps = []
    _train(model, opt, 3, snaps)
    mon.close()
    df = store.spectra()
    assert set(df["source"]) == {"momentum", "update"} and len(df) == 3 * 2 * 2
    assert set(df["ns_schedule"]) == {"jordan"} and set(df["ns_steps"]) == {5}
    for rec in mon.records:
        _, moms = snaps[rec["step"] - 1]
        if rec["source"] == "momentum":
            s = _s(moms[rec["param"]])
            ref = M.quantiles(s, QS)
            got = np.array([rec[M.quantile_column(q)] for q in QS])
            np.testing.assert_allclose(got, ref, rtol=1e-5)
            assert rec["frac_failed"] == pytest.approx(np.mean(composed_map("jordan", 5, s) < 0.1))
        else:  # the update's singular values follow the NS map of the Nesterov input (bf16 NS)
            assert rec["ns_pred_dev"] < 0.08
    # the update record is the applied ΔW with decoupled weight decay removed
    before, _ = snaps[-1]
    last = [r for r in mon.records if r["source"] == "update" and r["step"] == 3 and r["param"] == "0.weight"][0]
    U = model[0].weight.detach() - before["0.weight"] * (1 - 0.02 * 0.1)
    np.testing.assert_allclose(last["spectrum"], _s(U), rtol=1e-5, atol=1e-9)
    assert last["frob_norm"] == pytest.approx(float(U.norm()), rel=1e-5)


def test_update_spectrum_matches_the_ns_map_exactly_for_fp32_ns():
    from muonscope.audit.demo import ReferenceMuon

    model = _model()
    opt = ReferenceMuon(model.named_parameters(), model, lr=0.02, weight_decay=0.05)
    mon = SpectralMonitor(opt, every=1, source="update", model=model)
    _train(model, opt, 2)
    assert {r["source"] for r in mon.records} == {"update"}
    assert max(r["ns_pred_dev"] for r in mon.records) < 1e-3


def test_keller_jordan_muon_if_installed():
    muon = pytest.importorskip("muon", reason="muon-optimizer (Keller Jordan's Muon) not installed")
    if not hasattr(muon, "SingleDeviceMuon"):
        pytest.skip("a different package named muon")
    model = _model()
    opt = muon.SingleDeviceMuon(model.parameters(), lr=0.02, weight_decay=0.01)
    mon = SpectralMonitor(opt, every=2, model=model)
    _train(model, opt, 4)
    assert sorted({r["step"] for r in mon.records}) == [1, 2, 4]
    assert max(r["ns_pred_dev"] for r in mon.records if r["source"] == "update") < 0.08


def test_sampling_cadence_and_element_wise_optimizers():
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    mon = SpectralMonitor(opt, every=3, model=model, source="momentum")
    _train(model, opt, 7)
    assert sorted({r["step"] for r in mon.records}) == [1, 3, 6]
    mon.close()
    _train(model, opt, 3)
    assert max(r["step"] for r in mon.records) == 6


def test_bad_input():
    with pytest.raises(ConfigError, match="step hooks"):
        SpectralMonitor(object(), every=1)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))], lr=0.1)
    with pytest.raises(ConfigError, match=">= 2 dims"):
        SpectralMonitor(opt, every=1)
    opt = torch.optim.SGD(_model().parameters(), lr=0.1)
    with pytest.raises(ConfigError, match="'momentum' and/or 'update'"):
        SpectralMonitor(opt, source="ns_input")
