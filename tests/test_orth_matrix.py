"""Matrix NS and exact polar against float64 SVD and the scalar map."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import matrix_with_spectrum
from muonscope.errors import ConfigError, ShapeError
from muonscope.orth import analysis as A
from muonscope.orth.exact import polar_exact
from muonscope.orth.matrix_ns import default_compute_dtype, newton_schulz
from muonscope.orth.orthogonalizers import ExactPolar, NewtonSchulz, make_orthogonalizer

SCHEDULES = [("jordan", 5), ("polar-express", 5), ("dion5", 5), ("classical", 5), ("hybrid10", 10), ("jordan", 2)]


def _spectrum(r, lo=1e-4):
    s = torch.logspace(np.log10(lo), 0, r, dtype=torch.float64)
    return (s / s.norm()).flip(0)  # descending, like singular values


@pytest.mark.parametrize("schedule,steps", SCHEDULES)
@pytest.mark.parametrize("shape", [(48, 96), (96, 48)])
def test_singular_values_follow_scalar_map_float64(schedule, steps, shape, rng):
    r = min(shape)
    s = _spectrum(r)
    G, U, V = matrix_with_spectrum(s, *shape, generator=rng)
    O = newton_schulz(G, schedule, steps, dtype=torch.float64)
    expected = torch.from_numpy(A.composed_map(schedule, steps, s.numpy()))
    # Same singular vectors, mapped values: O = U diag(p(s)) Vᵀ.
    np.testing.assert_allclose((U.T @ O @ V).numpy(), torch.diag(expected).numpy(), atol=1e-10)


@pytest.mark.parametrize("schedule,steps", SCHEDULES[:3])
def test_fp32_matches_scalar_map(schedule, steps, rng):
    s = _spectrum(64, lo=1e-3)
    G, U, V = matrix_with_spectrum(s, 64, 160, generator=rng)
    O = newton_schulz(G.float(), schedule, steps, dtype=torch.float32).double()
    got = torch.diagonal(U.T @ O @ V)
    expected = torch.from_numpy(A.composed_map(schedule, steps, s.numpy()))
    # fp32 round-off (~6e-8 per op, amplified by |p'| ≲ a^k on small s): 1e-4 relative suffices.
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-4)


def test_bf16_compute_close(rng):
    s = _spectrum(64, lo=1e-2)
    G, U, V = matrix_with_spectrum(s, 64, 128, generator=rng)
    O = newton_schulz(G.float(), "jordan", 5, dtype=torch.bfloat16).double()
    expected = A.composed_map("jordan", 5, s.numpy())
    got = torch.diagonal(U.T @ O @ V).numpy()
    # bf16 has an 8-bit mantissa (eps 7.8e-3); five steps stay within a few percent.
    np.testing.assert_allclose(got, expected, atol=6e-2)
    assert O.dtype == torch.float64


def test_zero_matrix_gives_zeros_not_nan():
    for G in (torch.zeros(5, 7), torch.zeros(3, 5, 7)):
        O = newton_schulz(G)
        assert torch.equal(O, torch.zeros_like(G))
        assert torch.equal(polar_exact(G), torch.zeros_like(G))


def test_gram_eigenvalues_are_squared_normalized_spectrum(rng):
    s = _spectrum(32, lo=1e-2)
    G, _, _ = matrix_with_spectrum(s * 7.5, 32, 80, generator=rng)
    for sched in ("jordan", "polar-express"):
        _, gram = newton_schulz(G, sched, 5, dtype=torch.float64, return_gram=True)
        ev = torch.linalg.eigvalsh(gram).flip(0).sqrt()
        np.testing.assert_allclose(ev.numpy(), s.numpy(), rtol=1e-10)


def test_exact_polar_agrees_with_svd(rng):
    G = torch.randn(40, 70, dtype=torch.float64, generator=rng)
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    np.testing.assert_allclose(polar_exact(G).numpy(), (U @ Vh).numpy(), atol=1e-12)
    O32 = polar_exact(G.float())
    assert O32.dtype == torch.float32
    _, sv = polar_exact(G, return_singular_values=True)
    np.testing.assert_allclose(sv.numpy(), (torch.linalg.svdvals(G) / G.norm()).numpy(), rtol=1e-12)


def test_exact_polar_rank_deficient_is_partial_isometry(rng):
    G, U, V = matrix_with_spectrum([3.0, 1.0, 0.5], 10, 12, generator=rng)
    O = polar_exact(G)
    np.testing.assert_allclose(O.numpy(), (U @ V.T).numpy(), atol=1e-12)
    np.testing.assert_allclose(torch.linalg.svdvals(O)[:4].numpy(), [1, 1, 1, 0], atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    m=st.integers(1, 24),
    n=st.integers(1, 24),
    batch=st.sampled_from([(), (2,), (2, 3)]),
    scale=st.floats(1e-20, 1e20),
    rank=st.integers(0, 24),
    seed=st.integers(0, 2**31 - 1),
)
def test_properties(m, n, batch, scale, rank, seed):
    g = torch.Generator().manual_seed(seed)
    r = min(rank, m, n)
    G = torch.randn(*batch, m, r, dtype=torch.float64, generator=g) @ torch.randn(
        *batch, r, n, dtype=torch.float64, generator=g)
    O = newton_schulz(G, "jordan", 5, dtype=torch.float64)
    assert O.shape == G.shape and torch.isfinite(O).all()
    # Scale invariance: NS sees G/max(‖G‖_F, eps), so scaling changes nothing while ‖G‖_F ≫ eps.
    if G.numel() and torch.linalg.vector_norm(G, dim=(-2, -1)).min() * scale > 1e-3:
        O2 = newton_schulz(G * scale, "jordan", 5, dtype=torch.float64)
        np.testing.assert_allclose(O2.numpy(), O.numpy(), atol=1e-9)
    # Batched = per-matrix.
    if batch:
        flat = G.reshape(-1, m, n)
        ref = torch.stack([newton_schulz(x, "jordan", 5, dtype=torch.float64) for x in flat])
        np.testing.assert_allclose(O.reshape(-1, m, n).numpy(), ref.numpy(), atol=1e-12)
    # Outputs are bounded by the map's band, never above max p on (0, 1].
    assert torch.linalg.matrix_norm(O, ord=2).max() <= 1.21
    if r == 0:
        assert torch.equal(O, torch.zeros_like(O))
    P = polar_exact(G)
    assert P.shape == G.shape and torch.isfinite(P).all()


def test_bad_shapes():
    with pytest.raises(ShapeError):
        newton_schulz(torch.randn(5))
    with pytest.raises(ShapeError):
        polar_exact(torch.randn(5))
    with pytest.raises(ShapeError):
        newton_schulz(torch.randn(3, 3, dtype=torch.complex64))


def test_orthogonalizers(rng):
    s = _spectrum(16, lo=1e-2)
    G, _, _ = matrix_with_spectrum(s, 16, 30, generator=rng)
    ns = NewtonSchulz("jordan", 5, dtype=torch.float64)
    O, sv = ns(G, want_spectrum=True)
    np.testing.assert_allclose(sv.numpy(), s.numpy(), rtol=1e-9)
    assert ns.label == ("jordan", 5) and ns.matmuls() == 15 and ns.flops(16, 30) == A.ns_flops(16, 30, 5)
    ex = make_orthogonalizer("exact")
    assert isinstance(ex, ExactPolar)
    O, sv = ex(G, want_spectrum=True)
    np.testing.assert_allclose(sv.numpy(), s.numpy(), rtol=1e-10)
    with pytest.raises(ConfigError):
        make_orthogonalizer("svd-please")
    with pytest.raises(ConfigError):
        NewtonSchulz("jordan", 0)
    assert default_compute_dtype("cpu") == torch.float32  # the suite pins MUONSCOPE_NS_DTYPE (conftest)


def test_hybrid_kind_is_available_without_importing_it_first():
    import subprocess
    import sys

    code = "from muonscope.orth.orthogonalizers import make_orthogonalizer as m; print(m('hybrid').kind)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "hybrid", r.stderr


@pytest.mark.parametrize("shape", [(3, 0, 5), (3, 5, 0), (0, 4, 5), (2, 3, 0, 4)])
def test_empty_batched_inputs(shape):
    O, gram = newton_schulz(torch.randn(*shape), return_gram=True)
    r = min(shape[-2:])
    assert O.shape == shape and gram.shape == (*shape[:-2], r, r)
