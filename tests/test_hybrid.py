"""Hybrid orthogonalizer: NS bulk plus exact correction of the bottom directions (float64 references)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import matrix_with_spectrum
from muonscope.errors import ConfigError, ShapeError
from muonscope.orth.analysis import composed_map
from muonscope.orth.exact import polar_exact
from muonscope.orth.hybrid import HybridNS, bottom_count, correct_bottom
from muonscope.orth.matrix_ns import newton_schulz
from muonscope.orth.orthogonalizers import make_orthogonalizer


def spread(r, lo=1e-6):
    """r distinct singular values log-spaced in [lo, 1], descending, normalized to ‖s‖₂ = 1."""
    s = np.logspace(0, math.log10(lo), r)
    return s / np.linalg.norm(s)


@pytest.mark.parametrize("shape", [(12, 30), (30, 12), (16, 16)])
def test_fraction_one_is_the_exact_polar_factor(shape, rng):
    G = torch.randn(*shape, dtype=torch.float64, generator=rng)
    O, s = HybridNS(fraction=1.0, dtype=torch.float64)(G)
    torch.testing.assert_close(O, polar_exact(G), atol=1e-12, rtol=0)
    ref = torch.linalg.svdvals(G)
    torch.testing.assert_close(s, ref / ref.norm(), atol=1e-12, rtol=0)


@pytest.mark.parametrize("transpose", [False, True])
def test_bottom_correction_matches_svd_reference(transpose, rng):
    m, n, f = 20, 45, 0.2
    # Gram eigenvectors are accurate to ε₆₄·λ_max/gap; with s down to 1e-4 the gap at the edge of
    # the corrected block is ≈ 1e-7, so 1e-9 is a safe tolerance (with s down to 1e-6 it is ≈ 4e-7).
    s = spread(m, lo=1e-4)
    X, U, V = matrix_with_spectrum(s, m, n, generator=rng)
    h = HybridNS("jordan", 5, fraction=f, dtype=torch.float64)
    O, s_out = h(X.mT if transpose else X)
    O = O.mT if transpose else O
    # Reference from the SVD factors: top directions follow the NS scalar map, the bottom
    # ⌈f·m⌉ = 4 reach exactly 1.
    target = composed_map("jordan", 5, s)
    target[-bottom_count(m, f):] = 1.0
    ref = (U * torch.as_tensor(target)) @ V.T
    torch.testing.assert_close(O, ref, atol=1e-9, rtol=0)
    np.testing.assert_allclose(h.scalar_map(s), target, atol=1e-12)
    np.testing.assert_allclose(s_out.numpy(), s, rtol=1e-6, atol=1e-13)
    assert bottom_count(m, f) == 4


def test_exact_correction_returns_polar_and_spectrum(rng):
    G = torch.randn(10, 25, generator=rng)
    O, s = HybridNS(correction="exact")(G)
    torch.testing.assert_close(O, polar_exact(G), atol=1e-6, rtol=0)
    assert s.dtype == torch.float64 and s.shape == (10,)
    assert HybridNS(correction="exact").matmuls() == 0


def test_null_directions_map_to_zero_like_the_partial_isometry(rng):
    s = np.array([0.8, 0.5, 0.3, 1e-3, 0.0, 0.0])
    X, U, V = matrix_with_spectrum(s, 6, 15, generator=rng)  # rank 4
    O, _ = HybridNS(fraction=0.5, dtype=torch.float64)(X)  # corrects the bottom 3: two are null
    sv = torch.linalg.svdvals(O)
    target = composed_map("jordan", 5, s / np.linalg.norm(s))
    target[3] = 1.0
    target[4:] = 0.0
    torch.testing.assert_close(sv, torch.as_tensor(np.sort(target)[::-1].copy()), atol=1e-9, rtol=0)
    O1, _ = HybridNS(fraction=1.0, dtype=torch.float64)(X)
    torch.testing.assert_close(O1, polar_exact(X), atol=1e-9, rtol=0)


def test_batched_call_equals_single_calls(rng):
    G = torch.randn(3, 8, 20, generator=rng)
    h = HybridNS(fraction=0.25)
    O, s = h(G)
    for i in range(3):
        Oi, si = h(G[i])
        torch.testing.assert_close(O[i], Oi, atol=1e-6, rtol=0)
        torch.testing.assert_close(s[i], si)


def test_flops_and_matmuls_hand_count():
    h = HybridNS("jordan", 5, fraction=0.25)
    # m=8, n=20, b=⌈0.25·8⌉=2: NS 5·(4·64·20 + 2·512) = 30720; Gram 2·64·20 = 2560; eigh 9·512 = 4608;
    # 6·b·m·n = 1920; 6·b²·n = 480; 22·b³ = 176.
    assert h.flops(8, 20) == h.flops(20, 8) == 30720 + 2560 + 4608 + 1920 + 480 + 176
    assert h.matmuls() == 15 + 4
    assert HybridNS(correction="exact").flops(8, 20) == make_orthogonalizer("exact").flops(8, 20)


def test_registered_kind_and_label():
    h = make_orthogonalizer("hybrid", schedule="polar-express", steps=4)
    assert isinstance(h, HybridNS) and h.steps == 4 and h.schedule.name == "polar-express"
    assert h.label == ("polar-express+bottom0.05", 4)
    assert h.bulk.label == ("polar-express", 4)


def test_policy_truth_table():
    h = HybridNS(every=5, bound=0.01)
    assert h.corrects(1, None) and h.corrects(10, None) and h.corrects(10, 0.5)
    assert not h.corrects(2, None) and not h.corrects(2, 0.01)
    assert h.corrects(2, 0.0101)
    assert not HybridNS(every=5, bound=None).corrects(3, 0.9)
    s = np.array([0.9, 0.3, 1e-5, 1e-6])  # Jordan x5 lifts s >= 2.07e-4 to >= 0.1
    assert h.bulk_failed_share(s) == 0.5


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(1e-9, 1.0), min_size=1, max_size=40), st.floats(0.01, 1.0))
def test_scalar_map_bottom_ranks_reach_one(values, f):
    s = np.array(values)
    h = HybridNS(fraction=f)
    out = h.scalar_map(s)
    b = bottom_count(s.size, f)
    bottom = np.argsort(s, kind="stable")[:b]
    rest = np.setdiff1d(np.arange(s.size), bottom)
    floor = math.sqrt(s.size * np.finfo(np.float64).eps) * s.max()
    np.testing.assert_array_equal(out[bottom], (s[bottom] > floor).astype(float))
    np.testing.assert_allclose(out[rest], composed_map("jordan", 5, s[rest]))


def test_bad_options_raise_config_error():
    for kw in ({"fraction": 0.0}, {"fraction": 1.5}, {"every": 0}, {"bound": 1.0}, {"rho": 0.0},
               {"correction": "svd"}, {"every": True}):
        with pytest.raises(ConfigError):
            HybridNS(**kw)
    with pytest.raises(ShapeError):
        correct_bottom(torch.zeros(5, 3), torch.zeros(5, 3), 0.5)
    with pytest.raises(ShapeError):
        HybridNS()(torch.zeros(4))


def test_fp32_bottom_correction_is_accurate_on_float32_input(rng):
    # float32 NS input as in training: the corrected directions come from the float64 Gram, so
    # they reach 1 to float32 precision even where NS leaves them near 0.
    s = spread(32, lo=1e-5)
    X, U, V = matrix_with_spectrum(s, 32, 80, generator=rng, dtype=torch.float32)
    O, _ = HybridNS(fraction=0.1)(X)
    out = U.mT @ O.double() @ V  # diag of the output in X's singular frame
    d = torch.diagonal(out)
    assert torch.all((d[-4:] - 1).abs() < 1e-4)
    ns = U.mT @ newton_schulz(X, "jordan", 5).double() @ V
    assert torch.diagonal(ns)[-1] < 0.01  # without correction the weakest stays far below ρ
