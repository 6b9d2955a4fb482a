"""One iteration of the vectorised trust-region Newton solver, for every active pair at once.

:func:`step` turns the six label-free sums of one pass over the non-zero events
(``kernels.fit_sums``) into one damped Newton step of every pair still iterating, in the
steps of docs/solver.md, one function each:

1. :func:`_lagged_ratio` judges the previous step (damping, logit budget, backtrack);
2. and 6. :func:`_stopping_rule` stops the pairs with nothing left to gain;
3. :func:`_damped_newton` tries damped, budget-clipped Newton steps;
4. :func:`_downhill` takes a short step along ``-g`` where no try was acceptable;
   :func:`_backtrack` takes a step that raised F halfway back instead (our departure);
5. :func:`_update` writes the state.

The objective is :mod:`probe_dask.core.objective`, the state
:mod:`probe_dask.core.state`, the constants and why they have their values
:mod:`probe_dask.core.tuning`. Pure numpy: no data access, dask or torch.

Memory per process: :func:`step` holds the int64 ``(P,)`` index of the active pairs and
about 40 float64 temporaries of at most ``CHUNK_PAIRS`` pairs (2**15: about 12 MB, small
enough to stay in cache; 0.38 GB was measured with chunks of 2**20), whatever ``P`` is; the ``(6, P)`` sums and the state it updates in place
are the caller's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from probe_dask.core.objective import newton_decrement, pair_derivatives
from probe_dask.core.stats import StepStats
from probe_dask.core.tuning import (BUDGET_MAX, CHUNK_PAIRS, DELTA, DET_FLOOR, FALLBACK_LENGTH,
                                    LAM_MAX, LAM_MIN, MAX_TRIES, PRED_FLOOR)

__all__ = ["step"]


def step(constants, state, sums) -> StepStats:
    """One trust-region iteration of every active pair (docs/solver.md, steps 1 to 6).

    Parameters
    ----------
    constants : core.objective.ProblemConstants
    state : core.state.TrustRegionState
        Updated in place; ``n_iter`` grows by one.
    sums : array_like of float64, shape (6, P)
        Sums over the non-zero events of the pairs of ``state.active_index()``, in that
        order, at the current ``(b, w)``.

    Returns
    -------
    core.stats.StepStats
        What the step did: pairs stopped, clipped, on the fallback, taken back; the largest
        scaled gradient, decrement and step; the mean damping and loss.
    """
    flat = np.flatnonzero(state.active)
    sums = np.asarray(sums, dtype=np.float64)
    if sums.shape != (6, flat.size):
        raise ValueError(f"sums: shape {sums.shape}; expected (6, {flat.size}) active pairs")
    acc = dict(n_stopped=0, n_clipped=0, n_fallback=0, n_backtracked=0, max_grad=0.0,
               max_decrement=0.0, max_step=0.0, sum_lam=0.0, sum_loss=0.0)
    with np.errstate(all="ignore"):
        for start in range(0, flat.size, CHUNK_PAIRS):
            _step_pairs(constants, state, flat[start:start + CHUNK_PAIRS],
                        sums[:, start:start + CHUNK_PAIRS], acc)
    state.n_iter += 1
    return StepStats.from_totals(n_iter=state.n_iter, active_before=flat.size,
                                 active_after=state.n_active, **acc)


@dataclass
class _Model:
    """Gradient and Hessian of a chunk's pairs in the scaled coordinates ``(b, u = qx w)``."""

    g0: np.ndarray
    g1: np.ndarray
    h0: np.ndarray
    h1: np.ndarray
    h2: np.ndarray


@dataclass
class _Move:
    """What a chunk's pairs do this pass: ``(db, du)`` is subtracted from ``(b, u)``;
    ``step_b, step_u, pred, quad, clipped`` are remembered for the next lagged ratio and
    backtrack; ``loss`` is the F that ratio compares against."""

    db: np.ndarray
    du: np.ndarray
    step_b: np.ndarray
    step_u: np.ndarray
    pred: np.ndarray
    quad: np.ndarray
    clipped: np.ndarray
    loss: np.ndarray


def _step_pairs(k, st, flat, sums, acc):
    """Steps 1 to 6 for one chunk of active pairs; writes ``st`` in place."""
    latent, cls = np.divmod(flat, st.b.shape[1])
    b, w = st.b.ravel()[flat], st.w.ravel()[flat]
    d = pair_derivatives(k, latent, cls, b, w, sums)
    qx = k.qx[latent]
    m = _Model(d.g0, d.g1 / qx, d.h0, d.h1 / qx, d.h2 / (qx * qx))
    grad, dec = np.maximum(np.abs(m.g0), np.abs(m.g1)), newton_decrement(d, qx)

    lam, budget, back = _lagged_ratio(k, st, flat, d.loss, sums[5])
    stop = _stopping_rule(k, grad, dec, back)
    db, du, pred, clipped, failed = _damped_newton(m, lam, qx, budget, ~stop & ~back)
    _downhill(m, failed, db, du)
    quad = m.h0 * db * db + 2.0 * m.h1 * db * du + m.h2 * du * du
    move = _Move(db=db, du=du, step_b=db, step_u=du, pred=pred, quad=quad, clipped=clipped,
                 loss=d.loss)
    if back.any():
        move = _backtrack(st, flat, back, move)
    _update(st, flat, b=b - move.db, w=w - move.du / qx, lam=lam, pred_prev=move.pred,
            clipped_prev=move.clipped, loss_prev=move.loss, grad=grad, budget=budget,
            step_b=move.step_b, step_u=move.step_u, quad_prev=move.quad, decrement=dec,
            active=~stop, converged=stop)

    acc["n_stopped"] += int(np.count_nonzero(stop))
    acc["n_clipped"] += int(np.count_nonzero(move.clipped))
    acc["n_fallback"] += int(failed.size)
    acc["n_backtracked"] += int(np.count_nonzero(back))
    acc["max_grad"] = max(acc["max_grad"], float(np.nanmax(grad, initial=0.0)))
    acc["max_decrement"] = max(acc["max_decrement"], float(np.nanmax(dec, initial=0.0)))
    acc["max_step"] = max(acc["max_step"],
                          float(np.nanmax(np.hypot(move.db, move.du), initial=0.0)))
    acc["sum_lam"] += float(lam[~stop].sum())
    acc["sum_loss"] += float(d.loss.sum())


def _lagged_ratio(k, st, flat, loss, softplus_sum):
    """Step 1: judge the previous step by its lagged ratio ``rho`` (actual / predicted
    reduction of F, now that this pass knows F there).

    A prediction that is NaN (first pass, downhill fallback) or below the rounding of F
    (``f_noise``) is not judged. Good steps (``rho >= 0.75``) lower the damping, or widen
    the logit budget when they were clipped by it; bad ones (``rho <= 0.25`` or NaN) raise
    the damping and narrow the budget; a step that raised F is taken back (``back``).

    Returns
    -------
    lam, budget : ndarray of float64, shape (P,)
        Damping and logit budget of this pass's step (fresh arrays).
    back : ndarray of bool, shape (P,)
        Pairs to take halfway back instead of stepping (see ``tuning.BACKTRACK``).
    """
    lam, pred_prev = st.lam.ravel()[flat], st.pred_prev.ravel()[flat]
    clipped_prev = st.clipped_prev.ravel()[flat]
    noise = k.f_noise * np.abs(softplus_sum) / k.n_rows
    judged = np.isfinite(pred_prev) & (pred_prev > noise)
    rho = (st.loss_prev.ravel()[flat] - loss) / np.maximum(pred_prev, PRED_FLOOR)
    budget = st.budget.ravel()[flat]
    good, bad = judged & (rho >= 0.75), judged & ~(rho > 0.25)  # NaN rho counts as bad
    widen = good & clipped_prev & (k.budget_growth > 1.0)
    lam = np.where(good & ~clipped_prev, lam * 0.1, lam)
    lam = np.where(bad | (judged & clipped_prev & ~widen), lam * 10.0, lam)
    lam = np.clip(lam, LAM_MIN, LAM_MAX)
    budget = np.where(widen, np.minimum(budget * k.budget_growth, BUDGET_MAX), budget)
    budget = np.where(bad, np.maximum(budget / k.budget_growth, DELTA), budget)
    back = judged & ~(rho >= 0) if k.backtrack else np.zeros(flat.size, bool)
    return lam, budget, back


def _stopping_rule(k, grad, dec, back):
    """Steps 2 and 6: pairs with nothing left to gain (Newton decrement and scaled gradient
    both within tolerance) stop here, take no step and cost no more work. A pair being taken
    back does not stop."""
    return ~back & (dec <= k.decrement_tol) & (grad <= k.grad_tol)


def _damped_step(g0, g1, h0, h1, h2, lam, qx, budget):
    """Damped, budget-clipped Newton step in the scaled coordinates ``(b, u = qx w)``."""
    hd0, hd2 = h0 + lam, h2 + lam
    det = hd0 * hd2 - h1 * h1
    db, du = (hd2 * g0 - h1 * g1) / det, (hd0 * g1 - h1 * g0) / det
    norm = np.hypot(db, du)
    clipped = norm > budget
    shrink = np.where(clipped, budget / norm, 1.0)
    db, du = db * shrink, du * shrink
    pred = g0 * db + g1 * du - 0.5 * (h0 * db * db + 2.0 * h1 * db * du + h2 * du * du)
    # docs/solver.md tests the unscaled damped determinant, which is qx^2 times this one.
    ok = np.isfinite(pred) & (pred > 0) & (np.abs(det * qx * qx) > DET_FLOOR)
    return db, du, pred, clipped, ok


def _damped_newton(m, lam, qx, budget, todo):
    """Step 3: up to ``MAX_TRIES`` damped Newton steps of the pairs in ``todo`` (bool),
    the damping x10 after each unacceptable one (``lam`` is raised in place).

    Returns ``db, du, pred, clipped`` (zero / NaN / False where no step was accepted) and
    the index of the pairs still without an acceptable step.
    """
    n = lam.size
    db, du = np.zeros(n), np.zeros(n)
    pred, clipped = np.full(n, np.nan), np.zeros(n, bool)
    todo = np.flatnonzero(todo)
    for _ in range(MAX_TRIES):
        if todo.size == 0:
            break
        t_db, t_du, t_pred, t_clip, ok = _damped_step(m.g0[todo], m.g1[todo], m.h0[todo],
                                                      m.h1[todo], m.h2[todo], lam[todo],
                                                      qx[todo], budget[todo])
        done = todo[ok]
        db[done], du[done], pred[done], clipped[done] = t_db[ok], t_du[ok], t_pred[ok], t_clip[ok]
        todo = todo[~ok]
        lam[todo] = np.minimum(lam[todo] * 10.0, LAM_MAX)
    return db, du, pred, clipped, todo


def _downhill(m, failed, db, du):
    """Step 4: pairs ``failed`` (index) with no acceptable step take a short step DOWNHILL
    along ``-g`` (``FALLBACK_LENGTH``, no prediction); written into ``db, du`` in place."""
    if failed.size:
        gnorm = np.hypot(m.g0[failed], m.g1[failed])
        usable = np.isfinite(gnorm) & (gnorm > 0)
        along = np.where(usable, FALLBACK_LENGTH / np.where(usable, gnorm, 1.0), 0.0)
        db[failed] = np.where(usable, along * m.g0[failed], 0.0)
        du[failed] = np.where(usable, along * m.g1[failed], 0.0)


def _backtrack(st, flat, back, move) -> _Move:
    """Pairs ``back`` (bool) go halfway back instead (see ``tuning.BACKTRACK``).

    From the point the last step left, the half step is ``step / 2``, its prediction
    ``lin / 2 - quad / 8`` with ``lin = pred + quad / 2``, and that point's F stays the
    reference of the next lagged ratio.
    """
    half_b, half_u = 0.5 * st.step_b.ravel()[flat], 0.5 * st.step_u.ravel()[flat]
    quad_old = st.quad_prev.ravel()[flat]
    return _Move(db=np.where(back, -half_b, move.db), du=np.where(back, -half_u, move.du),
                 step_b=np.where(back, half_b, move.step_b),
                 step_u=np.where(back, half_u, move.step_u),
                 pred=np.where(back, 0.5 * st.pred_prev.ravel()[flat] + 0.125 * quad_old,
                               move.pred),
                 quad=np.where(back, 0.25 * quad_old, move.quad), clipped=move.clipped,
                 loss=np.where(back, st.loss_prev.ravel()[flat], move.loss))


def _update(st, flat, **fields):
    """Step 5: write each field's new values of the chunk's pairs into the state."""
    for name, value in fields.items():
        getattr(st, name).ravel()[flat] = value
