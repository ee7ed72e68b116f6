"""Gram Newton-Schulz against the exact float64 scalar map, its cost model, and its wiring."""

import warnings

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from helpers import matrix_with_spectrum
from muonscope.errors import ConfigError
from muonscope.optim import Muon
from muonscope.orth import analysis as A
from muonscope.orth.gram_ns import check_restarts, default_restarts, gram_newton_schulz
from muonscope.orth.matrix_ns import newton_schulz
from muonscope.orth.orthogonalizers import (
    AutoNewtonSchulz,
    GramNewtonSchulz,
    NewtonSchulz,
    make_orthogonalizer,
)

SCHEDULES = [("jordan", 5), ("polar-express", 5), ("dion5", 5), ("classical", 5), ("hybrid10", 10), ("jordan", 2)]


def spectrum(kind: str, r: int) -> torch.Tensor:
    """Normalized descending spectra: log-decaying to ``lo``, ill-conditioned, rank-deficient."""
    if kind.startswith("decay"):
        s = torch.logspace(np.log10(float(kind[5:])), 0, r, dtype=torch.float64).flip(0)
    elif kind == "illcond":  # a flat bulk and four directions at 1e-3 … 1e-9
        s = torch.ones(r, dtype=torch.float64)
        s[-4:] = torch.tensor([1e-3, 1e-5, 1e-7, 1e-9], dtype=torch.float64)
    else:  # rank-deficient: half the singular values exactly zero
        s = torch.linspace(1, 0.1, r, dtype=torch.float64)
        s[r // 2:] = 0
    return s / s.norm()


def case(kind, shape, seed=5):
    s = spectrum(kind, min(shape))
    G, U, V = matrix_with_spectrum(s, *shape, generator=torch.Generator().manual_seed(seed))
    return G, U, V, s


def map_error(O, U, V, s, schedule="jordan", steps=5):
    """‖O − U p(s) Vᵀ‖_F / ‖U p(s) Vᵀ‖_F against the exact float64 scalar map p."""
    ref = (U * torch.from_numpy(A.composed_map(schedule, steps, s.numpy()))) @ V.T
    return float((O.double() - ref).norm() / ref.norm())


@pytest.mark.parametrize("schedule,steps", SCHEDULES)
@pytest.mark.parametrize("shape", [(48, 96), (96, 48)])
@pytest.mark.parametrize("restarts", [(), (2,), (1, 3)])
def test_float64_follows_scalar_map(schedule, steps, shape, restarts):
    G, U, V, s = case("decay1e-4", shape)
    O = gram_newton_schulz(G, schedule, steps, dtype=torch.float64, restarts=restarts)
    expected = torch.diag(torch.from_numpy(A.composed_map(schedule, steps, s.numpy())))
    # float64 round-off (1e-16) grows in R by |p'| ≤ a ≈ 3.4 per step without a restart: 1e-10
    # for 5 steps, 1e-8 for 10 (measured 4e-10 for hybrid10 without restarts).
    np.testing.assert_allclose((U.T @ O @ V).numpy(), expected.numpy(), atol=1e-10 if steps <= 5 else 1e-8)


def test_restarting_after_every_step_is_standard_ns():
    # With a restart after every step each step is X ← aX + (bA + cA²)X, the standard iteration.
    for shape in ((64, 160), (160, 64)):
        G = case("decay1e-3", shape)[0].float()
        for dt in (torch.float32, torch.bfloat16):
            torch.testing.assert_close(gram_newton_schulz(G, "jordan", 5, dtype=dt, restarts=range(1, 5)),
                                       newton_schulz(G, "jordan", 5, dtype=dt), rtol=0, atol=0)


KINDS = ["decay1e-2", "decay1e-4", "decay1e-6", "illcond", "rankdef"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(64, 256), (256, 64)])
def test_fp32_accuracy(kind, shape):
    G, U, V, s = case(kind, shape)
    none, default = (map_error(gram_newton_schulz(G.float(), "jordan", 5, dtype=torch.float32, restarts=r), U, V, s)
                     for r in ((), None))
    # fp32 unit round-off 6e-8; R = XXᵀ accumulates it over the steps, amplified by |p'| ≲ a on
    # the smallest directions: measured ≤ 2.6e-4 without restarts and ≤ 4.1e-5 with fp32's default
    # restart after step 4 (standard fp32 NS: ≤ 6e-6). Both ≪ bf16's ~3e-2.
    assert none < 1e-3 and default < 1e-4


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(64, 256), (256, 64)])
def test_bf16_default_restarts_keep_standard_accuracy(kind, shape):
    G, U, V, s = case(kind, shape)
    G = G.float()
    std = map_error(newton_schulz(G, "jordan", 5, dtype=torch.bfloat16), U, V, s)
    gram = map_error(gram_newton_schulz(G, "jordan", 5, dtype=torch.bfloat16), U, V, s)
    # bf16 (8 significant bits, u = 2⁻⁸): standard NS itself is off by 3e-2 … 1.6e-1 relative here (the
    # small and zero directions carry round-off); Gram NS with restarts after steps 2 and 3 is
    # measured within 2x of it on every spectrum here.
    assert gram <= 2.5 * std and gram < 0.25
    O = gram_newton_schulz(G, "jordan", 5, dtype=torch.bfloat16)
    assert float(torch.linalg.matrix_norm(O.double(), ord=2)) < 1.25  # the map's maximum is 1.20


BAND_KINDS = [*KINDS, "decay1e-12", "inv", "gauss"]


def band_case(kind, shape):
    if kind == "gauss":  # a Gaussian matrix's own spectrum
        G = torch.randn(shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
        U, s, Vh = torch.linalg.svd(G, full_matrices=False)
        return G, U, Vh.T, s / s.norm()
    if kind == "inv":  # s_i ∝ 1/i
        s = 1.0 / torch.arange(1, min(shape) + 1, dtype=torch.float64)
        G, U, V = matrix_with_spectrum(s / s.norm(), *shape, generator=torch.Generator().manual_seed(5))
        return G, U, V, s / s.norm()
    return case(kind, shape)


@pytest.mark.parametrize("schedule,steps", [("jordan", 5), ("polar-express", 5), ("dion5", 5), ("dion5", 8),
                                            ("jordan", 11), ("polar-express", 8)])
@pytest.mark.parametrize("shape", [(64, 256), (256, 64)])
def test_bf16_default_restarts_stay_in_the_maps_band(schedule, steps, shape):
    # Restarting after step 1 (instead of 2) let dion5 x5 reach sigma 2.2 against the map's 1.145 and
    # dion5 x8 overflow (sigma 4e28); after steps 2 and 3 every schedule stays within 4 % of its map's
    # maximum. The map error stays in standard bf16 NS's class: standard ranges from 7e-3 (Gaussian)
    # to 1.35 (Polar Express x8 on a 1e-12 decay); Gram NS measured at most 2·standard + 0.113
    # (Jordan x11 on well-conditioned spectra: 0.16-0.18 against standard's 0.03).
    peak = A.output_band(schedule, steps, 1e-12).high
    for kind in BAND_KINDS:
        G, U, V, s = band_case(kind, shape)
        O = gram_newton_schulz(G.float(), schedule, steps, dtype=torch.bfloat16, guard=False)
        std = map_error(newton_schulz(G.float(), schedule, steps, dtype=torch.bfloat16), U, V, s, schedule, steps)
        assert float(torch.linalg.matrix_norm(O.double(), ord=2)) < 1.04 * peak, kind
        assert map_error(O, U, V, s, schedule, steps) < 2 * std + 0.13, kind


def test_guard_replaces_an_output_that_leaves_the_band():
    # A designed schedule for l = 1e-7 (first step a = 8.2, b = -23, c = 16.5) drives bf16 Gram NS to
    # inf on a decaying spectrum; the guard hands exactly that matrix to standard NS and says so.
    from muonscope.laws.design import design_schedule
    from muonscope.orth.gram_ns import GramFallbackWarning

    sched = design_schedule(1e-7)
    good, *_ = case("illcond", (64, 256))  # stays finite and in the band (measured ||O||_F 7.95, bound 12.2)
    bad, *_ = case("decay1e-4", (64, 256))
    G = torch.stack([good, bad]).float()
    with pytest.warns(GramFallbackWarning, match="1 of 2 matrices"):
        O = gram_newton_schulz(G, sched, sched.default_steps, dtype=torch.bfloat16)
    assert torch.equal(O[1], newton_schulz(G[1], sched, sched.default_steps, dtype=torch.bfloat16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an ordinary input never warns
        gram_newton_schulz(G[:1], "jordan", 5, dtype=torch.bfloat16)


@pytest.mark.parametrize("kind", ["decay1e-2", "decay1e-4", "decay1e-6"])
def test_bf16_without_restarts_blows_up_on_decaying_spectra(kind):
    G, U, V, s = case(kind, (64, 256))
    bad = gram_newton_schulz(G.float(), "jordan", 5, dtype=torch.bfloat16, restarts=(), guard=False)
    good = gram_newton_schulz(G.float(), "jordan", 5, dtype=torch.bfloat16)
    # Why the default restarts exist: R drifts from the Gram matrix of Q·X₀ and the output's
    # singular values leave the map's band [0, 1.2] (measured 1.3-52x the map error).
    assert map_error(bad, U, V, s) > 5 * map_error(good, U, V, s)
    assert float(torch.linalg.matrix_norm(bad.double(), ord=2)) > 1.25


@pytest.mark.parametrize("kind", KINDS)
def test_fp16_published_restart(kind):
    G, U, V, s = case(kind, (64, 256))
    assert default_restarts(torch.float16, 5) == (2,)
    std = map_error(newton_schulz(G.float(), "jordan", 5, dtype=torch.float16), U, V, s)
    gram = map_error(gram_newton_schulz(G.float(), "jordan", 5, dtype=torch.float16), U, V, s)
    # fp16 (11 significant bits, u = 2⁻¹¹): standard 3.6e-3 … 2e-2; the one restart after step 2 keeps
    # Gram NS within 3.5x of it (measured) and below standard bf16's error.
    assert gram <= 4 * std and gram < 0.05


def test_batched_and_leading_dims_match_single_calls():
    Gs = torch.stack([case("decay1e-3", (40, 90), seed=i)[0] for i in range(3)])
    for G in (Gs, Gs.mT.contiguous(), Gs.reshape(3, 1, 40, 90)):
        O = gram_newton_schulz(G, "polar-express", 5, dtype=torch.float64, restarts=(2,))
        flat = G.reshape(-1, *G.shape[-2:])
        for i in range(flat.shape[0]):
            torch.testing.assert_close(O.reshape(flat.shape)[i], gram_newton_schulz(
                flat[i], "polar-express", 5, dtype=torch.float64, restarts=(2,)), rtol=0, atol=1e-12)


@pytest.mark.parametrize("fn", [newton_schulz, gram_newton_schulz])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_huge_entries_give_a_finite_orthogonal_update(fn, dtype):
    # ‖G‖_F overflows fp32 for entries ≈ 1e38 (squares ≈ 1e76): the power-of-two rescaling by
    # max|x| keeps it finite, and being exact it equals the update of the rescaled matrix.
    G = case("decay1e-2", (32, 64))[0].float()
    H = G / G.abs().max() * 3e38  # max|x| = 3e38 < fp32 max 3.4e38
    assert not torch.isfinite(torch.linalg.vector_norm(H))
    huge = fn(H, "jordan", 5, dtype=dtype)
    assert torch.isfinite(huge).all() and huge.abs().max() > 0.1
    scaled = H * 2.0**-128  # what the rescaling does (exactly: 3e38 = 0.88·2¹²⁸)
    torch.testing.assert_close(huge, fn(scaled, "jordan", 5, dtype=dtype), rtol=0, atol=0)
    batched = fn(torch.stack([H, scaled]), "jordan", 5, dtype=dtype)
    torch.testing.assert_close(batched[0], batched[1], rtol=0, atol=0)


def test_zero_and_empty_matrices():
    for G in (torch.zeros(5, 7), torch.zeros(3, 7, 5)):
        assert torch.equal(gram_newton_schulz(G, dtype=torch.float32), torch.zeros_like(G))
    O, gram = gram_newton_schulz(torch.zeros(0, 4), dtype=torch.float32, return_gram=True)
    assert O.shape == (0, 4) and gram.shape == (0, 0)


@pytest.mark.parametrize("fn", [newton_schulz, gram_newton_schulz])
@pytest.mark.parametrize("shape", [(32, 80), (80, 32)])
def test_spectrum_gram_is_fp32_even_in_bf16(fn, shape):
    G, _, _, s = case("decay1e-2", shape)
    _, gram = fn(G.float(), "jordan", 5, dtype=torch.bfloat16, return_gram=True)
    assert gram.dtype == torch.float32 and gram.shape == (32, 32)
    ev = torch.linalg.eigvalsh(gram.double()).flip(0).clamp(min=0).sqrt()
    # fp32 Gram of the fp32 input: eigenvalues s² to ~1e-7 relative to s_max²; a bf16 Gram would
    # be off by ~4e-3 relative (its entries carry 8 bits).
    np.testing.assert_allclose(ev.numpy() ** 2, s.numpy() ** 2, atol=1e-6 * float(s[0]) ** 2)


def count_flops(fn):
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


@pytest.mark.parametrize("shape", [(48, 96), (96, 48), (3, 40, 120), (64, 64)])
@pytest.mark.parametrize("steps,restarts", [(5, ()), (5, (2,)), (5, (1, 3)), (1, ()), (8, (1, 3, 5, 7))])
def test_cost_model_counts_every_product(shape, steps, restarts):
    G = torch.randn(*shape)
    batch = shape[0] if len(shape) == 3 else 1
    m, n = shape[-2:]
    flops, mm = A.gram_ns_cost(m, n, steps, restarts)
    assert count_flops(lambda: gram_newton_schulz(G, "jordan", steps, dtype=torch.float32,
                                                  restarts=restarts)) == batch * flops
    assert count_flops(lambda: newton_schulz(G, "jordan", steps, dtype=torch.float32)) == batch * A.ns_flops(m, n, steps)
    orth = GramNewtonSchulz("jordan", steps, dtype=torch.float32, restarts=restarts)
    assert orth.flops(m, n) == flops and orth.matmuls() == mm


def test_flop_ratio_against_standard_ns():
    # 5 steps, m×4m (the MLP shapes): 0.556 without restarts, 0.667 with (2,), 0.778 with (1, 3);
    # square matrices cost more in Gram form (1.13-1.27x).
    ratio = {r: A.gram_ns_cost(512, 2048, 5, r)[0] / A.ns_flops(512, 2048, 5) for r in ((), (2,), (1, 3))}
    assert [round(ratio[r], 3) for r in ((), (2,), (1, 3))] == [0.556, 0.667, 0.778]
    assert A.gram_ns_cost(512, 512, 5, (1, 3))[0] > A.ns_flops(512, 512, 5)
    assert A.gram_ns_cost(512, 2048, 5, (2, 3)) == A.gram_ns_cost(512, 2048, 5, (1, 3))
    assert A.gram_default_restarts("bfloat16", 5) == (2, 3) and A.gram_default_restarts("float64", 5) == ()
    assert A.gram_default_restarts("float32", 5) == (4,) and A.gram_default_restarts("bfloat16", 10) == (2, 3, 5, 7, 9)
    assert A.gram_default_restarts("float16", 8) == (2, 5) and A.gram_default_restarts("bfloat16", 2) == ()


def test_restarts_are_checked():
    assert check_restarts(None, 5) is None
    assert check_restarts([3, 1, 3, 7], 5) == (1, 3)  # sorted, distinct, after-the-last dropped
    for bad in ([0], [-1], ["a"], [True], [1.5], 3):
        with pytest.raises(ConfigError):
            check_restarts(bad, 5)
    with pytest.raises(ConfigError):
        GramNewtonSchulz("jordan", 5, restarts=[0])


def test_orthogonalizer_kinds_and_auto_choice(monkeypatch):
    g, a = make_orthogonalizer("gram", steps=5), make_orthogonalizer("auto", steps=5)
    assert isinstance(g, GramNewtonSchulz) and g.kind == "gram" and g.label == ("jordan", 5)
    s = np.array([1e-3, 0.1, 1.0])
    np.testing.assert_array_equal(g.scalar_map(s), A.composed_map("jordan", 5, s))
    assert isinstance(a, AutoNewtonSchulz)
    for dev_dtype in (torch.bfloat16, torch.float32):
        auto = AutoNewtonSchulz("jordan", 5, dtype=dev_dtype)
        assert type(auto.choose(768, 768)) is NewtonSchulz  # square: Gram costs more
        wide = auto.choose(768, 3072)
        assert isinstance(wide, GramNewtonSchulz) and wide.restarts == default_restarts(dev_dtype, 5)
        assert auto.choose(3072, 768) is wide
        assert auto.flops(768, 3072) == wide.flops(768, 3072) < A.ns_flops(768, 3072, 5)
    monkeypatch.delenv("MUONSCOPE_NS_DTYPE")  # the suite's fp32 pin would apply to CUDA too
    cuda = AutoNewtonSchulz("jordan", 5).choose(768, 3072, "cuda")
    assert cuda.dtype == torch.float16 and cuda.restarts == (2,)  # fp16 where it is fast (CUDA)
    G = torch.randn(24, 96, dtype=torch.float64)
    torch.testing.assert_close(AutoNewtonSchulz("jordan", 5, dtype=torch.float64)(G)[0],
                               newton_schulz(G, "jordan", 5, dtype=torch.float64), rtol=0, atol=1e-12)


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [("q", (32, 32)), ("up", (128, 32)), ("down", (32, 128)), ("up2", (128, 32))]
    return [(n, torch.nn.Parameter(torch.randn(s, generator=g, dtype=torch.float64))) for n, s in shapes]


def _run(opt, params, steps=3):
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for _, p in params:
            p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
        opt.step()


@pytest.mark.parametrize("kind", ["gram", "auto"])
def test_muon_with_gram_matches_standard_in_float64(kind):
    ref, got = _params(), _params()
    _run(Muon(ref, lr=0.02, ns_dtype=torch.float64), ref)
    opt = Muon(got, lr=0.02, ns_dtype=torch.float64, orthogonalizer=kind)
    _run(opt, got)
    for (_, a), (_, b) in zip(ref, got, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    layers = opt.stats["layers"]
    wide_flops, wide_mm = A.gram_ns_cost(32, 128, 5, ())  # fp64: no restarts
    assert layers["up"]["last_ns_flops"] == wide_flops and layers["up"]["last_ns_matmuls"] == wide_mm
    square = A.ns_flops(32, 32, 5) if kind == "auto" else A.gram_ns_cost(32, 32, 5, ())[0]
    assert layers["q"]["last_ns_flops"] == square
    assert opt.stats["last_ns_flops"] == sum(e["last_ns_flops"] for e in layers.values())


def test_plans_name_gram_and_auto():
    params = _params()
    plan = {"params": {"up": {"schedule": "jordan", "steps": 5, "orthogonalizer": "gram"}},
            "default": {"schedule": "jordan", "steps": 5, "orthogonalizer": "auto"}}
    opt = Muon(params, lr=0.02, ns_dtype=torch.float64, plan=plan)
    _run(opt, params, steps=1)
    layers = opt.stats["layers"]
    assert layers["up"]["last_ns_flops"] == A.gram_ns_cost(128, 32, 5, ())[0]
    assert layers["q"]["last_ns_flops"] == A.ns_flops(32, 32, 5)  # auto: standard on squares
    with pytest.raises(ConfigError, match="unknown orthogonalizer"):
        Muon(_params(), plan={"params": {"q": {"orthogonalizer": "gramm"}}})


def test_planner_chooses_gram_by_flops():
    from muonscope.laws import fit_laws, make_plan
    from muonscope.laws.synthetic import synthetic_records

    recs = synthetic_records([2e6, 8e6, 3.2e7], alpha=lambda lt, d: 0.5, steps=np.arange(10, 201, 10),
                             qs=(0.5,), sigma_step=0.05, sigma_run=0.05, seed=3)
    laws = fit_laws(recs, n_boot=50)
    shapes = {"q": (768, 768), "mlp_up": (3072, 768), "mlp_down": (768, 3072)}
    plan = make_plan(laws, 1.2e8, shapes=shapes, ns_dtype="bfloat16")
    for lt, (m, n) in shapes.items():
        c = plan.by_type[lt]
        if c.exact:
            continue
        restarts = A.gram_default_restarts("bfloat16", c.steps)
        gram, mm = A.gram_ns_cost(m, n, c.steps, restarts)
        pays = gram <= 0.85 * A.ns_flops(m, n, c.steps)
        assert c.orthogonalizer == ("gram" if pays else "ns") and (c.orthogonalizer == "gram") == (lt != "q")
        assert c.ns_flops == (gram if pays else A.ns_flops(m, n, c.steps))
        assert c.matmuls == (mm if pays else A.ns_matmuls(c.steps))
        assert c.config().get("orthogonalizer", "ns") == c.orthogonalizer
        assert c.config().get("restarts") == (list(restarts) if pays else None)
    # The plan's restarts travel with it: run in fp32 (whose default restarts differ), each planned
    # matrix costs exactly what the plan says.
    names = {"blocks.0.q.weight": ("q", 0.0), "blocks.0.mlp_up.weight": ("mlp_up", 0.0),
             "blocks.0.mlp_down.weight": ("mlp_down", 0.0)}
    named = make_plan(laws, 1.2e8, shapes=shapes, ns_dtype="bfloat16", names=names)
    params = [(n, torch.nn.Parameter(torch.randn(shapes[lt]))) for n, (lt, _) in names.items()]
    opt = Muon(params, lr=0.02, ns_dtype=torch.float32, plan=named.to_dict())
    _run(opt, params, steps=1)
    for n in names:
        assert opt.stats["layers"][n]["last_ns_flops"] == named.params[n].ns_flops
    d = plan.to_dict()
    assert d["default"].get("orthogonalizer") == "auto"  # unknown shapes decide at run time
    assert "orthogonalizer" not in make_plan(laws, 1.2e8).by_type["mlp_up"].config()  # no shapes: as before


def test_plan_restarts_are_the_ones_run():
    # float64's default is no restart: a plan's [2] must change the products run, and the update
    # must equal the one of a Gram orthogonalizer built with restarts (2,).
    planned, direct = _params(), _params()
    plan = {"params": {"up": {"schedule": "jordan", "steps": 5, "orthogonalizer": "gram", "restarts": [2]},
                       "down": {"schedule": "jordan", "steps": 5, "orthogonalizer": "auto", "restarts": [2]}}}
    a = Muon(planned, lr=0.02, ns_dtype=torch.float64, plan=plan)
    b = Muon(direct, lr=0.02, ns_dtype=torch.float64,
             orthogonalizer=GramNewtonSchulz("jordan", 5, dtype=torch.float64, restarts=(2,)))
    _run(a, planned, steps=2)
    _run(b, direct, steps=2)
    for (n, p), (_, r) in zip(planned, direct, strict=True):
        if n in ("up", "down"):
            torch.testing.assert_close(p, r, rtol=0, atol=1e-12)
    layers = a.stats["layers"]
    assert layers["up"]["last_ns_flops"] == A.gram_ns_cost(128, 32, 5, (2,))[0] != A.gram_ns_cost(128, 32, 5, ())[0]
    assert layers["down"]["last_ns_flops"] == A.gram_ns_cost(32, 128, 5, (2,))[0]


@pytest.mark.parametrize("entry, match", [
    ({"orthogonalizer": "ns", "restarts": [2]}, "restarts apply to Gram NS"),
    ({"orthogonalizer": "exact", "restarts": [1]}, "restarts apply to Gram NS"),
    ({"orthogonalizer": "gram", "restarts": 2}, "must be a list of step numbers"),
    ({"orthogonalizer": "gram", "restarts": [0]}, "step numbers >= 1"),
    ({"orthogonalizer": "gram", "restarts": ["x"]}, "step numbers >= 1"),
])
def test_bad_plan_restarts_are_refused(entry, match):
    with pytest.raises(ConfigError, match=match):
        Muon(_params(), plan={"params": {"up": entry}})


@pytest.mark.parametrize("kind", ["ns", "gram"])
def test_fp16_ns_in_the_optimizer_survives_large_gradients(kind):
    # fp16 tops out at 6.5e4: inputs are stacked in fp32 and normalized before the cast.
    params = [(n, torch.nn.Parameter(p.detach().float())) for n, p in _params()]
    for _, p in params:
        p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(2)) * 1e6
    before = [p.detach().clone() for _, p in params]
    Muon(params, lr=0.02, ns_dtype=torch.float16, orthogonalizer=kind, momentum=0.0, nesterov=False).step()
    for (_, p), b in zip(params, before, strict=True):
        step = p.detach() - b * (1 - 0.02 * 0.1)
        assert torch.isfinite(step).all() and step.abs().max() > 1e-3


def test_plan_ns_dtype_overrides_the_optimizers_and_exact_never_runs_in_half():
    planned, direct = _params(), _params()
    plan = {"params": {"up": {"schedule": "jordan", "steps": 5, "ns_dtype": "float64"},
                       "q": {"orthogonalizer": "exact"}}}
    a = Muon([(n, torch.nn.Parameter(p.detach().float())) for n, p in planned], lr=0.02,
             ns_dtype=torch.bfloat16, plan=plan)
    b = Muon([(n, torch.nn.Parameter(p.detach().float())) for n, p in direct], lr=0.02, ns_dtype=torch.float64)
    params_a = [(n, p) for g in a.param_groups for n, p in zip(g["param_names"], g["params"], strict=True)]
    params_b = [(n, p) for g in b.param_groups for n, p in zip(g["param_names"], g["params"], strict=True)]
    _run(a, params_a, steps=1)  # the exact polar factor in bf16 would need a bf16 SVD: it runs in fp32
    _run(b, params_b, steps=1)
    up_a, up_b = (dict(p)["up"] for p in (params_a, params_b))
    torch.testing.assert_close(up_a, up_b, rtol=0, atol=1e-6)  # fp64 NS both ways (fp32 parameters)
    with pytest.raises(ConfigError, match="ns_dtype"):
        Muon(_params(), plan={"params": {"up": {"ns_dtype": "int8"}}})
