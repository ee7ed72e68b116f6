"""Spectral metrics against closed forms and independent references."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import matrix_with_spectrum
from muonscope.errors import ConfigError, ShapeError
from muonscope.spectra import metrics as M

spectra = st.lists(st.floats(1e-3, 1e3), min_size=1, max_size=40)


# --- existing functions of singular values ---------------------------------------------------------

@pytest.mark.parametrize("r", [2, 3, 7, 64])
def test_flat_spectrum_closed_forms(r):
    s = np.full(r, 0.37)
    assert M.spectral_entropy(s) == pytest.approx(math.log(r), rel=1e-14)
    assert M.spectral_entropy(s, normalized=True) == pytest.approx(1.0, rel=1e-14)
    assert M.effective_rank(s) == pytest.approx(r, rel=1e-13)
    assert M.stable_rank(s) == pytest.approx(r, rel=1e-14)
    assert M.nuclear_frobenius_ratio(s) == pytest.approx(math.sqrt(r), rel=1e-14)


@pytest.mark.parametrize("r", [1, 2, 9])
def test_rank_one_closed_forms(r):
    s = np.zeros(r)
    s[0] = 4.2
    assert M.spectral_entropy(s) == 0.0
    assert M.effective_rank(s) == 1.0
    assert M.stable_rank(s) == 1.0
    assert M.nuclear_frobenius_ratio(s) == 1.0
    if r > 1:
        assert M.spectral_entropy(s, normalized=True) == 0.0
    else:  # one singular value: a flat spectrum by definition
        assert M.spectral_entropy(s, normalized=True) == 1.0


def test_two_level_spectrum_entropy():
    # p = (1/2, 1/4, 1/4): H = 1/2 log 2 + 2 · 1/4 log 4 = 1.5 log 2.
    s = np.array([1.0, 2.0, 1.0])
    assert M.spectral_entropy(s) == pytest.approx(1.5 * math.log(2), rel=1e-14)
    assert M.spectral_entropy(s, normalized=True) == pytest.approx(1.5 * math.log(2) / math.log(3), rel=1e-14)
    assert M.stable_rank(s) == pytest.approx(6 / 4)
    assert M.nuclear_frobenius_ratio(s) == pytest.approx(4 / math.sqrt(6))


def test_metrics_match_matrix_definitions(rng):
    s = torch.tensor([3.0, 1.5, 0.2, 0.01])
    X, _, _ = matrix_with_spectrum(s, 9, 6, generator=rng)
    sv = torch.linalg.svdvals(X).numpy()
    assert M.stable_rank(sv) == pytest.approx(float(torch.linalg.matrix_norm(X) ** 2 / torch.linalg.matrix_norm(X, 2) ** 2), rel=1e-12)
    assert M.nuclear_frobenius_ratio(sv) == pytest.approx(float(torch.linalg.matrix_norm(X, "nuc") / torch.linalg.matrix_norm(X)), rel=1e-12)


def test_quantiles_descending_rank_convention():
    s = np.arange(1.0, 11.0)  # 1..10, any order
    np.random.default_rng(0).shuffle(s)
    # ranks ⌈q·10⌉ = 1, 3, 5, 8, 9 (1-based, descending) → 10, 8, 6, 3, 2
    np.testing.assert_array_equal(M.quantiles(s, [0.1, 0.25, 0.5, 0.75, 0.9]), [10, 8, 6, 3, 2])
    assert M.quantile_column(0.1) == "s_q10" and M.quantile_column(0.25) == "s_q25"


def test_normalize_and_zero_spectrum():
    s = np.array([3.0, 4.0])
    np.testing.assert_allclose(M.normalize(s), [0.6, 0.8])
    z = np.zeros(3)
    assert np.isnan(M.normalize(z)).all()
    assert np.isnan(M.spectral_entropy(z)) and np.isnan(M.stable_rank(z))


@settings(max_examples=60, deadline=None)
@given(spectra, st.floats(1e-3, 1e3))
def test_bounds_and_scale_invariance(s, c):
    s = np.array(s)
    r = len(s)
    h = M.spectral_entropy(s, normalized=True)
    assert -1e-12 <= h <= 1 + 1e-12
    assert 1 - 1e-9 <= M.effective_rank(s) <= r + 1e-9
    assert 1 - 1e-9 <= M.stable_rank(s) <= r + 1e-9
    assert 1 - 1e-9 <= M.nuclear_frobenius_ratio(s) <= math.sqrt(r) + 1e-9
    for f in (M.spectral_entropy, M.stable_rank, M.nuclear_frobenius_ratio):
        assert f(c * s) == pytest.approx(f(s), rel=1e-9, abs=1e-12)


# --- frame alignment -------------------------------------------------------------------------------

def test_frame_alignment_zero_for_shared_frames(rng):
    A, U, V = matrix_with_spectrum([5.0, 3.0, 1.0], 8, 6, generator=rng)
    B = (U * torch.tensor([0.1, 2.0, 7.0], dtype=torch.float64)) @ V.T  # same subspaces, other order
    assert M.frame_alignment(A, B) < 1e-12
    assert M.frame_alignment(A, A, k=2) < 1e-7


def test_frame_alignment_matches_principal_angles(rng):
    A = torch.randn(10, 7, generator=rng, dtype=torch.float64)
    B = torch.randn(10, 7, generator=rng, dtype=torch.float64)
    k = 3
    UA, _, VAt = np.linalg.svd(A.numpy())
    UB, _, VBt = np.linalg.svd(B.numpy())
    left = scipy.linalg.subspace_angles(UA[:, :k], UB[:, :k])
    right = scipy.linalg.subspace_angles(VAt[:k].T, VBt[:k].T)
    expected = math.sqrt(np.sum(np.sin(left) ** 2) + np.sum(np.sin(right) ** 2))
    assert M.frame_alignment(A, B, k=k) == pytest.approx(expected, rel=1e-10)
    # k = min(m, n): the right frame is all of R^7 and contributes nothing
    left7 = scipy.linalg.subspace_angles(UA[:, :7], UB[:, :7])
    assert M.frame_alignment(A, B) == pytest.approx(math.sqrt(np.sum(np.sin(left7) ** 2)), rel=1e-10)


def test_frame_alignment_orthogonal_subspaces():
    A = np.zeros((4, 4))
    A[0, 0], A[1, 1] = 2.0, 1.0
    B = np.zeros((4, 4))
    B[2, 2], B[3, 3] = 2.0, 1.0
    assert M.frame_alignment(A, B, k=2) == pytest.approx(2.0)  # √(2 + 2)
    assert M.subspace_sin_theta(np.eye(4)[:, :2], np.eye(4)[:, 2:]) == pytest.approx(math.sqrt(2))


def test_frame_alignment_bad_input():
    with pytest.raises(ShapeError):
        M.frame_alignment(np.zeros((3, 4)), np.zeros((4, 3)))
    with pytest.raises(ConfigError, match="k must"):
        M.frame_alignment(np.eye(3), np.eye(3), k=4)


def test_shared_frame_misalignment_closed_forms(rng):
    W, U, V = matrix_with_spectrum([4.0, 2.0, 1.0], 6, 5, generator=rng)
    g = torch.tensor([0.3, 1.0, 2.0], dtype=torch.float64)
    G = (U * g) @ V.T
    assert M.shared_frame_misalignment(W, G) < 1e-12
    # off-diagonal energy c on the pair (u₁, v₂): misalignment √(c²/(‖g‖² + c²))
    c = 0.7
    G2 = G + c * torch.outer(U[:, 0], V[:, 1])
    expected = math.sqrt(c**2 / (float(g @ g) + c**2))
    assert M.shared_frame_misalignment(W, G2) == pytest.approx(expected, rel=1e-10)
    assert M.shared_frame_misalignment(W, torch.outer(U[:, 0], V[:, 1])) == pytest.approx(1.0)
    assert np.isnan(M.shared_frame_misalignment(W, torch.zeros_like(W)))
