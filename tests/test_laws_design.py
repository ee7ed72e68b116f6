"""Minimax odd-quintic design: published Polar Express coefficients, optimality, thresholds."""

import numpy as np
import pytest

from muonscope.errors import ConfigError
from muonscope.laws.design import (
    FIXED_POINT,
    _minimax_lp,
    design_name,
    design_schedule,
    design_steps,
    optimal_quintic,
    round_down_2sig,
)
from muonscope.orth import analysis as A
from muonscope.orth.schedules import POLAR_EXPRESS_COEFFS, Schedule, get_schedule


def poly(c, x):
    a, b, cc = c
    return a * x + b * x**3 + cc * x**5


def test_reproduces_published_polar_express():
    sched = design_schedule(1e-3)
    got = np.array(sched.coefficients)
    ref = np.array(POLAR_EXPRESS_COEFFS)
    assert got.shape == ref.shape == (8, 3)
    # The published tuples carry ~15 digits; the Remez solve agrees to ~1e-10 relative.
    np.testing.assert_allclose(got, ref, rtol=1e-8)
    assert sched.default_steps == 5 and sched.safety == 1.01
    assert A.threshold(sched, 5, 0.1) == pytest.approx(A.threshold("polar-express", 5, 0.1), rel=1e-6)


@pytest.mark.parametrize("l,u", [(1e-3, 1.0), (0.024, 1.0), (0.1, 1.0), (0.5, 1.5), (0.9, 1.1)])
def test_optimal_quintic_equioscillates_and_matches_lp(l, u):
    c = optimal_quintic(l, u)
    x = np.linspace(l, u, 200001)
    err = 1 - poly(c, x)
    E = np.abs(err).max()
    # alternation: 1 − p = +E at l, −E at x₁, +E at x₂, −E at u
    assert err[0] == pytest.approx(E, rel=1e-9) and err[-1] == pytest.approx(-E, rel=1e-9)
    crit = np.sort(np.sqrt(np.roots([5 * c[2], 0, 3 * c[1], 0, c[0]]).real ** 2))
    inner = [r for r in np.unique(np.round(crit, 12)) if l < r < u]
    assert len(inner) == 2
    assert 1 - poly(c, inner[0]) == pytest.approx(-E, rel=1e-9)
    assert 1 - poly(c, inner[1]) == pytest.approx(E, rel=1e-9)
    # an independent solver (LP on a grid) cannot do better
    lp = _minimax_lp(l, u)
    assert E <= np.abs(1 - poly(lp, x)).max() + 1e-9


def test_composition_invariants():
    steps = design_steps(1e-5)
    assert steps[-1].coefficients == FIXED_POINT
    for prev, nxt in zip(steps, steps[1:], strict=False):
        assert nxt.l == pytest.approx(prev.l_out) and nxt.u == pytest.approx(2 - prev.l_out)
    # each designed step maps its interval into [l', 2 − l'], and l' grows
    for st in steps[:-1]:
        x = np.geomspace(st.l, st.u, 20001)
        y = poly(st.coefficients, x)
        assert y.min() == pytest.approx(st.l_out, rel=1e-9) and y.max() <= st.u_out * (1 + 1e-9)
        assert st.l_out > st.l


@pytest.mark.parametrize("ell", [1e-4, 1e-5, 1e-6])
def test_designed_beats_jordan_threshold_at_equal_steps(ell):
    sched = design_schedule(ell)
    for k in range(1, sched.default_steps + 1):
        assert A.threshold(sched, k, 0.1) < A.threshold("jordan", k, 0.1), k
    # and after its default steps it maps [ℓ, 1] into a narrow band around 1 (jordan does not)
    band = A.output_band(sched, sched.default_steps, ell)
    assert 0.85 <= band.low and band.high <= 1.1
    assert A.output_band("jordan", sched.default_steps, ell).low < 0.7


def test_schedule_round_trip_and_names():
    sched = design_schedule(3.7e-5)
    assert sched.name == "designed-3.7e-05" and design_name(1e-5) == "designed-1e-05"
    assert Schedule.from_dict(sched.to_dict()) == sched
    assert get_schedule(sched) is sched
    assert round_down_2sig(3.789e-5) == 3.7e-5 and round_down_2sig(1e-5) == 1e-5
    assert round_down_2sig(0.00099999) == 0.00099


@pytest.mark.parametrize("ell", [0.0, -1e-3, 1.0, 2.0])
def test_bad_lower_bound(ell):
    with pytest.raises(ConfigError, match="ell"):
        design_schedule(ell)


def test_bad_interval():
    with pytest.raises(ConfigError, match="0 < l <= u"):
        optimal_quintic(0.5, 0.1)
