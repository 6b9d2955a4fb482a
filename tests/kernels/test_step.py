"""The compiled solver step (``kernels.step``) against the numpy reference (``core.solver``).

Both steps are fed the same sums, pass after pass, and must leave the same state: every
float field within 1e-8 relative or 1e-15 absolute (they differ only where libm's exp /
log1p and numpy's differ in the last bits, amplified by the cancellation in a Newton
step or in a decrement of 1e-20), the same NaNs
and infinities, and identical masks (active, converged, clipped). The cases cover every
branch of the step: stops, clipped steps, backtracks, downhill fallbacks, NaN sums.
"""

import copy

import numpy as np
import pytest

from probe_dask.core import solver
from probe_dask.core.datatypes import LabelSums
from probe_dask.core.objective import ProblemConstants
from probe_dask.core.state import init_state
from probe_dask.kernels import ckernel
from probe_dask.kernels.step import solver_step
from probe_dask.testing.reference import dense_label_sums, dense_sums, exact_loss, reference_fit
from tests.core.test_solver import edge_case_problem, random_problem

pytestmark = pytest.mark.skipif(not ckernel.available(), reason="C kernel unavailable")

RTOL = 1e-8
ATOL = 1e-15  # decrements of 1e-20 carry cancellation noise; the stopping rule is at 1e-8


def assert_same_state(ref, got):
    for name in ref.FLOAT_FIELDS:
        a, b = getattr(ref, name), getattr(got, name)
        assert np.array_equal(np.isnan(a), np.isnan(b)), name
        assert np.array_equal(np.isinf(a), np.isinf(b)), name
        fin = np.isfinite(a)
        np.testing.assert_allclose(b[fin], a[fin], rtol=RTOL, atol=ATOL, err_msg=name)
    for name in ref.BOOL_FIELDS:
        assert np.array_equal(getattr(ref, name), getattr(got, name)), name
    assert ref.n_iter == got.n_iter


def lockstep(k, state, sums_of, passes, threads=1):
    """Run both steps from copies of ``state`` on the sums ``sums_of(state, flat)``;
    returns the two states and the statistics of both."""
    ref, got = state, copy.deepcopy(state)
    stats = []
    for _ in range(passes):
        _, _, flat = ref.active_index()
        if flat.size == 0:
            break
        sums = sums_of(ref, flat)
        a = solver.step(k, ref, sums)
        b = solver_step(k, got, sums, threads=threads)
        assert_same_state(ref, got)
        a_rec, b_rec = a.as_record(), b.as_record()
        for key in a_rec:
            if key.startswith(("mean_", "max_")):  # floats: as the state's
                np.testing.assert_allclose(b_rec[key], a_rec[key], rtol=RTOL, atol=ATOL,
                                           err_msg=key)
            else:  # counts
                assert b_rec[key] == a_rec[key], key
        stats.append(a)
    return ref, got, stats


@pytest.mark.parametrize("threads", [1, 3])
def test_same_state_as_numpy_step_on_edge_cases(threads):
    X, y, n_cls = edge_case_problem()
    k = ProblemConstants.from_label_sums(dense_label_sums(X, y, n_cls))
    ref, got, stats = lockstep(k, init_state(k), lambda st, flat: dense_sums(X, st.b, st.w)
                               .reshape(6, -1)[:, flat], passes=80, threads=threads)
    assert ref.n_active == 0  # ran to the end: every stop decision was compared
    assert sum(s.n_clipped for s in stats) > 0
    # and it is still the right answer: the reference optimum, within the solver's target
    gap = exact_loss(X, y, n_cls, got.b, got.w) - reference_fit(X, y, n_cls).loss
    assert np.nanmax(gap) < 1e-6


def test_same_state_as_numpy_step_on_random_problems():
    for seed in (1, 2):
        X, y, n_cls = random_problem(seed)
        k = ProblemConstants.from_label_sums(dense_label_sums(X, y, n_cls))
        ref, _, _ = lockstep(k, init_state(k), lambda st, flat: dense_sums(X, st.b, st.w)
                             .reshape(6, -1)[:, flat], passes=80)
        assert ref.n_active == 0


def test_same_state_on_arbitrary_sums_every_branch():
    """Sums that no data could give (negative curvature, F going up, NaN): the branches the
    data above rarely takes (stops are compared there, to the last pair)."""
    rng = np.random.default_rng(0)
    n_lat, n_cls, n_rows = 400, 7, 50_000
    count = rng.integers(0, 500, n_lat)
    count[:10] = 0
    pos = np.minimum(rng.integers(0, 20, (n_lat, n_cls)), count[:, None]).astype(float)
    label_sums = LabelSums(n_rows, rng.integers(1, 5000, n_cls).astype(float), count,
                           count * rng.uniform(0.5, 4, n_lat), pos,
                           pos * rng.uniform(0.1, 3, (n_lat, n_cls)))
    k = ProblemConstants.from_label_sums(label_sums, ridge=1e-6)

    def arbitrary(st, flat):
        sums = rng.normal(size=(6, flat.size)) * rng.uniform(0, 100, flat.size)
        sums[5] = np.abs(sums[5]) + 10.0
        sums[:, rng.random(flat.size) < 0.01] = np.nan
        return sums

    _, _, stats = lockstep(k, init_state(k), arbitrary, passes=6, threads=2)
    for key in ("n_clipped", "n_fallback", "n_backtracked"):
        assert sum(getattr(s, key) for s in stats) > 0, key


def test_sums_of_the_wrong_shape_are_refused():
    X, y, n_cls = edge_case_problem()
    k = ProblemConstants.from_label_sums(dense_label_sums(X, y, n_cls))
    st = init_state(k)
    with pytest.raises(ValueError, match="active pairs"):
        solver_step(k, st, np.zeros((6, st.n_active + 1)))
    assert st.n_iter == 0
