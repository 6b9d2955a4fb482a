"""Tests of core/stats.py: the statistics of steps over disjoint latent ranges, combined, are
those of one step over all of them; records round-trip with their keys."""

import math

import numpy as np
import pytest

from probe_dask.core import solver
from probe_dask.core.objective import ProblemConstants
from probe_dask.core.state import init_state
from probe_dask.core.stats import StepStats, combine_stats
from probe_dask.testing.reference import dense_label_sums, dense_sums

KEYS = ["n_iter", "active_before", "active_after", "n_stopped", "n_clipped", "n_fallback",
        "n_backtracked", "max_grad", "max_decrement", "max_step", "mean_lam", "mean_loss"]


def problem(seed=3, n=800, n_lat=12, n_cls=4):
    """Latents of very different frequencies and scales, so pairs stop at different passes."""
    rng = np.random.default_rng(seed)
    y = rng.choice(n_cls, size=n, p=[0.5, 0.3, 0.15, 0.05])
    X = np.zeros((n, n_lat))
    for l in range(n_lat):
        rows = rng.choice(n, size=int(rng.integers(1, n // 2)), replace=False)
        X[rows, l] = 10 ** rng.uniform(-1, 2) * rng.lognormal(0.0, 0.5, rows.size) \
            * np.exp(0.8 * rng.normal(0, 1, n_cls)[y[rows]])
    return X, y, n_cls


def stepper(X, y, n_cls):
    """``advance()``: one solver step of ``X``'s latents, on its own state."""
    k = ProblemConstants.from_label_sums(dense_label_sums(X, y, n_cls))
    st = init_state(k)

    def advance():
        _, _, flat = st.active_index()
        return solver.step(k, st, dense_sums(X, st.b, st.w).reshape(6, -1)[:, flat])
    return advance


def test_ranges_combined_are_the_whole_step():
    X, y, n_cls = problem()
    whole = stepper(X, y, n_cls)
    parts = [stepper(X[:, :5], y, n_cls), stepper(X[:, 5:], y, n_cls)]
    seen_stops = 0
    for _ in range(12):
        want = whole()
        got = StepStats.combine([p() for p in parts])
        seen_stops += want.n_stopped
        for key in KEYS:
            a, b = getattr(got, key), getattr(want, key)
            if key.startswith("mean_"):  # a weighted mean: summed in another order
                assert a == pytest.approx(b, rel=1e-12, nan_ok=True), key
            else:  # counts and maxima of the same pairs' numbers
                assert a == b, key
    assert seen_stops > 0  # the weights of mean_lam changed along the way


def test_records_keep_the_telemetry_keys_and_plain_numbers():
    X, y, n_cls = problem()
    stats = stepper(X, y, n_cls)()
    record = stats.as_record()
    assert list(record) == KEYS
    assert all(type(v) in (int, float) for v in record.values())
    assert StepStats.from_record({**record, "n_active": 3, "work_units": 7}) == stats


def test_combine_stats_of_range_records():
    a = StepStats.from_totals(n_iter=4, active_before=10, active_after=6, n_stopped=4,
                              n_clipped=1, n_fallback=0, n_backtracked=2, max_grad=0.5,
                              max_decrement=0.25, max_step=2.0, sum_lam=0.6, sum_loss=5.0)
    b = StepStats.from_totals(n_iter=4, active_before=2, active_after=0, n_stopped=2,
                              n_clipped=0, n_fallback=1, n_backtracked=0, max_grad=1.5,
                              max_decrement=0.125, max_step=1.0, sum_lam=0.0, sum_loss=3.0)
    assert a.mean_lam == pytest.approx(0.1) and a.mean_loss == pytest.approx(0.5)
    assert math.isnan(b.mean_lam)  # no pair of b stepped
    records = [{"n_active": 6, **a.as_record(), "bytes_read": 1},
               {"n_active": 0, **b.as_record(), "bytes_read": 2}]
    got = combine_stats(records)
    assert got == {"n_iter": 4, "active_before": 12, "active_after": 6, "n_stopped": 6,
                   "n_clipped": 1, "n_fallback": 1, "n_backtracked": 2, "max_grad": 1.5,
                   "max_decrement": 0.25, "max_step": 2.0, "mean_lam": pytest.approx(0.1),
                   "mean_loss": pytest.approx(8.0 / 12)}


def test_no_pairs_means_nan_and_no_parts_is_refused():
    empty = StepStats.from_totals(n_iter=1, active_before=0, active_after=0, n_stopped=0,
                                  n_clipped=0, n_fallback=0, n_backtracked=0, max_grad=0.0,
                                  max_decrement=0.0, max_step=0.0, sum_lam=0.0, sum_loss=0.0)
    assert math.isnan(empty.mean_lam) and math.isnan(empty.mean_loss)
    with pytest.raises(ValueError, match="no statistics"):
        StepStats.combine([])
