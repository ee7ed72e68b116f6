"""SpectralMonitor records against float64 SVD and the scalar map."""

import math

import numpy as np
import pytest
import torch

from helpers import matrix_with_spectrum
from muonscope.errors import ConfigError
from muonscope.optim.hooks import OrthEvent
from muonscope.orth import analysis as A
from muonscope.orth.orthogonalizers import ExactPolar, NewtonSchulz
from muonscope.spectra import metrics as M
from muonscope.spectra.monitor import SpectralMonitor, spectrum_record
from muonscope.spectra.store import RunStore

QS = (0.1, 0.25, 0.5, 0.75, 0.9)


class _Handle:
    def __init__(self, hooks, hook):
        self.hooks, self.hook = hooks, hook

    def remove(self):
        self.hooks.remove(self.hook)


class FakeOptimizer:
    """Drives hooks exactly as the optimizer does, for one matrix per call."""

    def __init__(self, names):
        self.param_groups = [{"params": [], "param_names": list(names)}]
        self.hooks = []

    def register_orth_hook(self, hook):
        self.hooks.append(hook)
        return _Handle(self.hooks, hook)

    def orthogonalize(self, name, G, orth, step):
        want = any(h.wants_spectrum(step) for h in self.hooks)
        O, s = orth(G, want_spectrum=want)
        ev = OrthEvent(name=name, param=G, step=step, matrix=G, momentum=G, spectrum=s,
                       orthogonalizer=orth, update=O)
        for h in list(self.hooks):
            h.on_orthogonalize(ev)
        return O


def _reference(G, rho=0.1, schedule="jordan", steps=5):
    sv = torch.linalg.svdvals(G.double()).numpy()
    s = sv / np.linalg.norm(sv)
    ref = {M.quantile_column(q): v for q, v in zip(QS, M.quantiles(s, QS), strict=True)}
    out = A.composed_map(schedule, steps, s)
    ref.update(s_max=s.max(), s_min=s.min(), stable_rank=(s**2).sum() / s.max() ** 2,
               spectral_entropy=M.spectral_entropy(s, normalized=True),
               ns_out_min=out.min(), frac_failed=np.mean(out < rho))
    return ref


@pytest.mark.parametrize("mode,dtype,rtol", [
    ("svd", torch.float32, 1e-5),       # float64 SVD of the matrix: exact up to fp64 round-off
    ("gram", torch.float64, 1e-5),      # Gram reuse with fp64 NS: eigenvalues exact to ~1e-12
])
def test_records_match_float64_svd(rng, mode, dtype, rtol):
    s = torch.logspace(-3, 0, 48, dtype=torch.float64).flip(0)
    G, _, _ = matrix_with_spectrum(s, 48, 96, generator=rng)
    opt = FakeOptimizer(["blocks.3.attn.q.weight"])
    mon = SpectralMonitor(opt, every=1, spectrum=mode, n_blocks=4)
    opt.orthogonalize("blocks.3.attn.q.weight", G.float() if mode == "svd" else G,
                      NewtonSchulz("jordan", 5, dtype=dtype), step=1)
    (rec,) = mon.records
    ref = _reference(G)
    for k, v in ref.items():
        assert rec[k] == pytest.approx(v, rel=rtol), k
    assert rec["layer_type"] == "q" and rec["block"] == 3 and rec["rel_depth"] == 1.0
    assert rec["rows"] == 48 and rec["cols"] == 96 and rec["ns_schedule"] == "jordan" and rec["ns_steps"] == 5


def test_fp32_gram_reuse_accuracy(rng):
    """fp32 Gram: absolute error on s² ≈ 1e-7·‖A‖ (‖A‖ ≤ 1), so s ≥ 0.02 is good to ~1e-3."""
    s = torch.linspace(1.0, 0.05, 64, dtype=torch.float64)
    G, _, _ = matrix_with_spectrum(s, 64, 200, generator=rng)
    opt = FakeOptimizer(["w"])
    mon = SpectralMonitor(opt, every=1)
    opt.orthogonalize("w", G.float(), NewtonSchulz("jordan", 5), step=1)
    rec, ref = mon.records[0], _reference(G)
    for q in QS:
        c = M.quantile_column(q)
        assert rec[c] == pytest.approx(ref[c], rel=2e-3), c


def test_frac_failed_equals_scalar_map_on_true_spectrum(rng):
    s = torch.cat([torch.ones(10), torch.full((10,), 3e-5)]).double()  # half the directions fail
    G, _, _ = matrix_with_spectrum(s, 20, 40, generator=rng)
    opt = FakeOptimizer(["w"])
    mon = SpectralMonitor(opt, every=1, spectrum="svd", rho=0.1)
    opt.orthogonalize("w", G, NewtonSchulz("polar-express", 5, dtype=torch.float64), step=1)
    rec = mon.records[0]
    true_s = (s / s.norm()).numpy()
    out = A.composed_map("polar-express", 5, true_s)
    assert rec["frac_failed"] == pytest.approx(np.mean(out < 0.1)) == pytest.approx(0.5)
    assert rec["ns_out_min"] == pytest.approx(out.min(), rel=1e-6)


def test_exact_orthogonalizer_spectrum_and_fidelity(rng):
    G = torch.randn(16, 24, dtype=torch.float64, generator=rng)
    opt = FakeOptimizer(["w"])
    mon = SpectralMonitor(opt, every=1, fidelity_every=1)
    opt.orthogonalize("w", G, ExactPolar(), step=1)
    rec = mon.records[0]
    assert rec["frac_failed"] == 0.0 and rec["ns_schedule"] == "exact"
    assert rec["fidelity_err"] < 1e-10
    ns = NewtonSchulz("jordan", 5, dtype=torch.float64)
    O = opt.orthogonalize("w", G, ns, step=2)
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    expected = float(torch.linalg.matrix_norm(O - U @ Vh)) / math.sqrt(16)
    assert mon.records[1]["fidelity_err"] == pytest.approx(expected, rel=1e-9)
    assert 0.01 < expected < 0.5  # jordan x5 leaves singular values in about [0.68, 1.2]


def test_sampling_cadence_include_and_store(tmp_path, rng):
    G = torch.randn(8, 12, generator=rng)
    store = RunStore.create(tmp_path / "run", {"model_params": 1234})
    opt = FakeOptimizer(["a.q", "b.k"])
    mon = SpectralMonitor(opt, every=5, store=store, include=r"\.q$", full_spectrum=True)
    orth = NewtonSchulz("jordan", 5)
    for step in range(1, 21):
        opt.orthogonalize("a.q", G, orth, step)
        opt.orthogonalize("b.k", G, orth, step)
    mon.close()
    df = RunStore.open(tmp_path / "run").spectra()
    assert list(df.step) == [1, 5, 10, 15, 20] and set(df.param) == {"a.q"}
    assert (df.model_params == 1234).all() and len(df.spectrum.iloc[0]) == 8
    assert opt.hooks == []  # close() detached the monitor


def test_zero_matrix_is_not_recorded_and_bad_config():
    opt = FakeOptimizer(["w"])
    mon = SpectralMonitor(opt, every=1)
    opt.orthogonalize("w", torch.zeros(4, 6), NewtonSchulz(), step=1)
    assert mon.records == []
    for kw in ({"every": 0}, {"quantiles": (0.0,)}, {"source": "grad"}, {"spectrum": "fast"}, {"rho": 0}):
        with pytest.raises(ConfigError):
            SpectralMonitor(opt, **kw)
    with pytest.raises(ConfigError):
        SpectralMonitor(object())


def test_spectrum_record_closed_forms():
    flat = spectrum_record(np.full(16, 0.25), QS)
    assert flat["stable_rank"] == pytest.approx(16) and flat["spectral_entropy"] == pytest.approx(1.0)
    assert all(flat[M.quantile_column(q)] == 0.25 for q in QS)
    one = spectrum_record(np.array([1.0, 0, 0, 0]), QS)
    assert one["stable_rank"] == 1.0 and one["spectral_entropy"] == pytest.approx(0.0)
    assert math.isclose(one["s_q10"], 1.0) and one["s_q90"] == 0.0


def test_tensorboard_sink(tmp_path, rng):
    pytest.importorskip("tensorboard", reason="the 'tensorboard' extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    opt = FakeOptimizer(["blocks.0.attn.q.weight"])
    mon = SpectralMonitor(opt, every=1, tensorboard=tmp_path / "tb")
    G = torch.randn(8, 16, generator=rng)
    for step in (1, 2, 3):
        opt.orthogonalize("blocks.0.attn.q.weight", G, NewtonSchulz(), step)
    mon.close()
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "spectra/blocks.0.attn.q.weight/s_q50" in tags and "spectra/blocks.0.attn.q.weight/frac_failed" in tags
    events = acc.Scalars("spectra/blocks.0.attn.q.weight/s_q50")
    assert [e.step for e in events] == [1, 2, 3]
    assert events[0].value == pytest.approx(mon.records[0]["s_q50"], rel=1e-6)
