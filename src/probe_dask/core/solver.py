"""Vectorised trust-region Newton solver for the ``L * C`` one-dimensional probes.

Each (latent ``l``, class ``c``) pair fits ``p = sigmoid(b + w x_l)`` by minimising the
mean penalised NLL of ``shared/spec/solver.md``. Pure numpy: no data access, dask or torch.
:func:`step` turns the six label-free sums of one pass over the non-zero events
(``kernels.fit_sums``) into one damped Newton step of every pair still iterating; rows
where a latent is zero enter in closed form.

Memory held on the driver (``L`` latents, ``C`` classes, ``P`` active pairs):

- :class:`ProblemConstants`: ``pos``, ``vpos`` float64 ``(L, C)``; ``class_rows``, ``pi``,
  ``b0``, ``baseline_ce`` float64 ``(C,)``; ``count`` int64, ``n0``, ``qx`` float64 ``(L,)``.
- :class:`TrustRegionState`: ``b``, ``w``, ``lam``, ``pred_prev``, ``loss_prev``, ``grad``,
  ``decrement``, ``budget``, ``step_b``, ``step_u``, ``quad_prev`` float64 ``(L, C)``; ``clipped_prev``, ``active``, ``converged`` bool ``(L, C)``.

11 float64 and 3 bool ``(L, C)`` arrays: 91 bytes a pair, 0.45 GB at 32768 x 151.
:func:`step` adds the int64 ``(P,)`` index of the active pairs and about 30 float64
temporaries of at most ``CHUNK_PAIRS`` pairs (0.38 GB peak measured at P = 4.8 M, 2 s),
whatever ``P`` is; the ``(6, P)`` sums it is given are the caller's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from probe_dask.core.blocks import ActivePairs

__all__ = ["ProblemConstants", "PairDerivatives", "TrustRegionState", "init_state", "step",
           "pair_derivatives", "objective", "newton_decrement"]

DELTA = 6.0                      # logit budget of one step, in qx-scaled units (b, qx w)
MAX_TRIES = 5                    # damped solves per pair and iteration
LAM_INIT, LAM_MIN, LAM_MAX = 1e-3, 1e-12, 1e12
DET_FLOOR = 1e-18                # |det| of the damped unscaled Hessian at or below: retry
PRED_FLOOR = 1e-18               # denominator floor of the lagged ratio
FALLBACK_LENGTH = 1e-3 * DELTA   # scaled length of the downhill step of step 4
# Adaptive logit budget (our one departure from solver.md, see BUDGET_GROWTH below).
# solver.md caps every step at DELTA = 6 scaled logits and raises the damping after each
# capped step, so a pair whose optimum lies far out along a flat direction (a rare class
# that never fires among a latent's non-zeros: the optimum w is tens of qx-scaled logits
# away, held only by the ridge) crawls 6 per pass and took 30 to 60 passes on realistic
# data. A capped step whose lagged ratio is >= 0.75 shows the model is good out to the
# cap, so, as in textbook trust-region methods, its budget doubles (up to BUDGET_MAX) and
# its damping is not raised; a step with ratio <= 0.25 halves the budget (never below
# DELTA). BUDGET_GROWTH = 1 restores solver.md exactly.
BUDGET_GROWTH = 2.0
BUDGET_MAX = DELTA * 2.0**10
# Lagged backtracking (our second departure). solver.md takes every step, also one that
# raised F, and only raises the damping for the next one. On rare classes of busy latents
# (h0 ~ pi, damping of the same order) that settles into a 4-cycle -- bad step, damping up,
# good step, damping down, the same bad step -- and the pair never stops (seen on the demo
# data with exact float64 sums). Here a pass that finds F went up (lagged ratio < 0 or NaN)
# takes the pair halfway back to where it came from; that point's F stays the reference and
# the predicted reduction of the half step is known from the stored step and its quadratic
# term, so the next pass judges it as usual. BACKTRACK = False restores solver.md exactly.
BACKTRACK = True
# The lagged ratio can only judge a step whose predicted reduction is larger than what
# rounding does to F. The kernels may evaluate softplus in float32 (solver.md allows
# per-event math in float32), so F carries up to ~2 ulp of float32 per event:
# |dF| <= F32_NOISE * sum(softplus over the non-zeros) / N for two evaluations. A step
# predicted below that is neither judged nor backtracked (its damping and budget stay):
# near the optimum rho is otherwise noise, backtracks fire at random, and the damping is
# pumped to LAM_MAX (seen on the demo data). Set to 0 for exact float64 sums.
F32_NOISE = 4.0 * 2.0**-23
# Stopping rule (solver.md step 6): Newton decrement <= 1e-8 AND scaled gradient <= 1e-7.
# A gradient test alone does not bound what is left to gain: a rare latent whose class never
# fires among its non-zeros has a tiny gradient AND a tiny curvature, so F can still drop by
# more than 1e-6 (the tests reproduce this with the original 1e-6 rule). The undamped
# decrement g^T H^-1 g / 2 (ridge included) estimates the gap itself: gap ~ dec near the
# optimum, ~ 2 dec in the exponential tail of a separable or all-negative direction. It is
# no proof (logistic loss is not self-concordant; while a steep exponential term dies next
# to a flat one it reads low by their ratio of v / qx), hence 100x below the 1e-6 target;
# measured max gap at the tests' stopping points: 2e-8. The provable strong-convexity bound
# |g|^2 / (2 ridge) reads 1e4x high on latents with values ~1e3 (pairs iterate for nothing).
DECREMENT_TOL = 1e-8
GRAD_TOL = 1e-7
CHUNK_PAIRS = 1 << 20            # pairs per vectorised chunk: bounds step() temporaries


def _sigmoid(x):
    e = np.exp(-np.abs(x))       # never overflows, unlike exp(-x) for x << 0
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@dataclass
class ProblemConstants:
    """What does not change across iterations (solver.md symbols in brackets).

    Parameters
    ----------
    n_rows : int
        Rows of the training split [N].
    class_rows, pi, b0, baseline_ce : ndarray of float64, shape (C,)
        Rows of each class [P_c]; prior clamped to ``[eps, 1 - eps]``; its logit [b0_c];
        prior-only cross entropy ``-(pi log pi + (1 - pi) log(1 - pi))``.
    count : ndarray of int64, shape (L,)
        Non-zeros of each latent [n].
    n0, qx : ndarray of float64, shape (L,)
        ``N - n`` [n0]; RMS of each latent's non-zero values (1.0 when empty, >= 1e-6) [qx].
    pos, vpos : ndarray of float64, shape (L, C)
        Positives of ``c`` among the non-zeros of ``l``, and their sum of v [POS, VPOS].
    ridge, eps, decrement_tol, grad_tol : float
    budget_growth : float
        Factor of the adaptive logit budget (1.0: solver.md's fixed budget).
    backtrack : bool
        Take back half of a step that raised F (False: solver.md, every step kept).
    f_noise : float
        Relative rounding of the per-event softplus (see ``F32_NOISE``).
    """

    n_rows: int
    class_rows: np.ndarray
    pi: np.ndarray
    b0: np.ndarray
    baseline_ce: np.ndarray
    count: np.ndarray
    n0: np.ndarray
    qx: np.ndarray
    pos: np.ndarray
    vpos: np.ndarray
    ridge: float = 1e-8
    eps: float = 1e-8
    decrement_tol: float = DECREMENT_TOL
    grad_tol: float = GRAD_TOL
    budget_growth: float = BUDGET_GROWTH
    backtrack: bool = BACKTRACK
    f_noise: float = F32_NOISE

    @classmethod
    def from_label_sums(cls, sums, ridge=1e-8, eps=1e-8, *, decrement_tol=DECREMENT_TOL,
                        grad_tol=GRAD_TOL, budget_growth=BUDGET_GROWTH,
                        backtrack=BACKTRACK, f_noise=F32_NOISE) -> "ProblemConstants":
        """Constants from the label pass: any object with ``n_rows``, ``class_rows`` (C,),
        ``count`` (L,), ``sum_v2`` (L,), ``pos`` and ``vpos`` (L, C), e.g.
        ``kernels.LabelSums``."""
        n_rows = int(sums.n_rows)
        if n_rows <= 0:
            raise ValueError(f"n_rows: found {n_rows}; expected a positive row count")
        class_rows = np.asarray(sums.class_rows, dtype=np.float64)
        count = np.asarray(sums.count, dtype=np.int64)
        sum_v2 = np.asarray(sums.sum_v2, dtype=np.float64)
        pos = np.ascontiguousarray(sums.pos, dtype=np.float64)
        vpos = np.ascontiguousarray(sums.vpos, dtype=np.float64)
        shape = (count.shape[0], class_rows.shape[0])
        if pos.shape != shape or vpos.shape != shape or sum_v2.shape != count.shape:
            raise ValueError(f"pos, vpos: shapes {pos.shape}, {vpos.shape}; expected {shape}")
        pi = np.clip(class_rows / n_rows, eps, 1.0 - eps)
        qx = np.maximum(np.where(count > 0, np.sqrt(sum_v2 / np.maximum(count, 1)), 1.0), 1e-6)
        return cls(n_rows=n_rows, class_rows=class_rows, pi=pi, b0=np.log(pi) - np.log1p(-pi),
                   baseline_ce=-(pi * np.log(pi) + (1.0 - pi) * np.log1p(-pi)),
                   count=count, n0=(n_rows - count).astype(np.float64), qx=qx, pos=pos,
                   vpos=vpos, ridge=float(ridge), eps=float(eps),
                   decrement_tol=float(decrement_tol), grad_tol=float(grad_tol),
                   budget_growth=float(budget_growth), backtrack=bool(backtrack),
                   f_noise=float(f_noise))

    @property
    def shape(self) -> tuple[int, int]:
        """``(L, C)``."""
        return self.pos.shape


@dataclass
class PairDerivatives:
    """Mean-scaled objective ``loss`` (F), gradient ``g0, g1`` (in b, w) and Hessian
    ``h0, h1, h2`` (bb, bw, ww) of a set of pairs, ndarrays of float64."""

    loss: np.ndarray
    g0: np.ndarray
    g1: np.ndarray
    h0: np.ndarray
    h1: np.ndarray
    h2: np.ndarray


def pair_derivatives(constants, latent, cls, b, w, sums) -> PairDerivatives:
    """F, gradient and Hessian (shape (P,) each) of pairs ``latent, cls`` (P,) at ``b, w``
    (P,), from ``sums`` (6, P) over their non-zero events ``[sum mu, sum mu v, sum s,
    sum s v, sum s v^2, sum softplus(eta)]``; zero rows enter in closed form."""
    k = constants
    s_mu, s_muv, s_s, s_sv, s_sv2, s_sp = np.asarray(sums, dtype=np.float64)
    n_rows, ridge = float(k.n_rows), k.ridge
    n0, pc = k.n0[latent], k.class_rows[cls]
    pos, vpos = k.pos[latent, cls], k.vpos[latent, cls]
    mu0 = np.clip(_sigmoid(b), k.eps, 1.0 - k.eps)
    zero_pos = np.clip(pc - pos, 0.0, n0)    # positives among the rows where x_l = 0
    off = b - k.b0[cls]
    with np.errstate(over="ignore", invalid="ignore"):
        data = (s_sp - b * pos - w * vpos + zero_pos * np.logaddexp(0.0, -b)
                + (n0 - zero_pos) * np.logaddexp(0.0, b))
        loss = data / n_rows + 0.5 * ridge * (w * w + off * off)
        return PairDerivatives(loss=loss, g0=(s_mu + n0 * mu0 - pc) / n_rows + ridge * off,
                               g1=(s_muv - vpos) / n_rows + ridge * w,
                               h0=(s_s + n0 * mu0 * (1.0 - mu0)) / n_rows + ridge,
                               h1=s_sv / n_rows, h2=s_sv2 / n_rows + ridge)


def objective(constants, b, w, sums) -> PairDerivatives:
    """F, gradient and Hessian of every pair: ``b, w`` (L, C), ``sums`` (6, L, C) or
    (6, L * C) latent-major; returns (L, C) arrays."""
    n_lat, n_cls = constants.shape
    latent, cls = np.divmod(np.arange(n_lat * n_cls), n_cls)
    sums = np.asarray(sums, dtype=np.float64).reshape(6, -1)
    d = pair_derivatives(constants, latent, cls, np.ravel(b), np.ravel(w), sums)
    return PairDerivatives(*(a.reshape(n_lat, n_cls)
                             for a in (d.loss, d.g0, d.g1, d.h0, d.h1, d.h2)))


def newton_decrement(d: PairDerivatives, qx) -> np.ndarray:
    """Undamped Newton decrement ``g^T H^-1 g / 2`` (ridge included); inf where ``H`` is not
    positive definite or anything is non-finite. Computed in the scaled coordinates
    ``(b, qx w)``: the same number, with a 2x2 determinant conditioned whatever the values'
    scale."""
    with np.errstate(all="ignore"):
        g1, h1, h2 = d.g1 / qx, d.h1 / qx, d.h2 / (qx * qx)
        det = d.h0 * h2 - h1 * h1
        quad = (h2 * d.g0 * d.g0 - 2.0 * h1 * d.g0 * g1 + d.h0 * g1 * g1) / det
        return np.where((det > 0) & np.isfinite(quad), 0.5 * quad, np.inf)


@dataclass
class TrustRegionState:
    """Per-pair solver state; every array has shape (L, C).

    Parameters
    ----------
    b, w, lam : ndarray of float64
        Parameters and damping (in ``[LAM_MIN, LAM_MAX]``).
    pred_prev, loss_prev : ndarray of float64
        Predicted reduction of the last step (NaN: none, the next lagged ratio is skipped);
        F where the last pass evaluated the pair (for a stopped pair: its final F).
    grad, decrement : ndarray of float64
        ``max(|g0|, |g1| / qx)`` and the Newton decrement where last evaluated.
    budget : ndarray of float64
        Logit budget of the next step (scaled units; starts at ``DELTA``).
    step_b, step_u, quad_prev : ndarray of float64
        Last step taken, in scaled coordinates (``b -= step_b``, ``qx w -= step_u``), and
        its quadratic model term ``d^T H d``: what a lagged backtrack needs.
    clipped_prev, active, converged : ndarray of bool
        Last step hit the logit budget; still iterating; met the stopping rule (pairs of
        empty latents count as converged).
    n_iter : int
        Steps taken.
    """

    b: np.ndarray
    w: np.ndarray
    lam: np.ndarray
    pred_prev: np.ndarray
    loss_prev: np.ndarray
    grad: np.ndarray
    decrement: np.ndarray
    budget: np.ndarray
    step_b: np.ndarray
    step_u: np.ndarray
    quad_prev: np.ndarray
    clipped_prev: np.ndarray
    active: np.ndarray
    converged: np.ndarray
    n_iter: int = 0

    FLOAT_FIELDS: ClassVar[tuple] = ("b", "w", "lam", "pred_prev", "loss_prev", "grad",
                                     "decrement", "budget", "step_b", "step_u", "quad_prev")
    BOOL_FIELDS: ClassVar[tuple] = ("clipped_prev", "active", "converged")

    def __post_init__(self):
        # C-contiguous, so that ravel() is a view step() can write through;
        for name in self.FLOAT_FIELDS + self.BOOL_FIELDS:
            dtype = np.float64 if name in self.FLOAT_FIELDS else np.bool_
            # Own, writable copies: a broadcast view (L = 1) is contiguous but read-only.
            value = np.array(getattr(self, name), dtype=dtype, order="C", copy=True)
            if value.ndim != 2 or value.shape != np.shape(self.b):
                raise ValueError(f"{name}: shape {value.shape}; expected {np.shape(self.b)} (L, C)")
            setattr(self, name, value)
        self.n_iter = int(self.n_iter)

    @property
    def n_active(self) -> int:
        """Pairs the next pass must compute."""
        return int(np.count_nonzero(self.active))

    def active_index(self):
        """The active pairs, latent-major, classes ascending: ``latent_ptr`` int64 (L+1,),
        ``classes`` int32 (P,) and ``flat`` int64 (P,), their index in raveled (L, C)."""
        flat = np.flatnonzero(self.active)
        latent_ptr = np.zeros(self.active.shape[0] + 1, dtype=np.int64)
        np.cumsum(np.count_nonzero(self.active, axis=1), out=latent_ptr[1:])
        return latent_ptr, (flat % self.active.shape[1]).astype(np.int32), flat

    def active_pairs(self):
        """The pairs the next pass must compute, as ``kernels.ActivePairs``."""
        latent_ptr, classes, flat = self.active_index()
        return ActivePairs(latent_ptr=latent_ptr, classes=classes,
                           b=self.b.ravel()[flat], w=self.w.ravel()[flat])

    def to_dict(self) -> dict:
        """Copies of every field as plain arrays (``n_iter`` 0-d int64), for ``np.savez``."""
        out = {name: getattr(self, name).copy() for name in self.FLOAT_FIELDS + self.BOOL_FIELDS}
        out["n_iter"] = np.array(self.n_iter, dtype=np.int64)
        return out

    @classmethod
    def from_dict(cls, d) -> "TrustRegionState":
        """Inverse of :meth:`to_dict`; missing or extra keys raise ValueError."""
        names = set(cls.FLOAT_FIELDS + cls.BOOL_FIELDS) | {"n_iter"}
        if set(d) != names:
            raise ValueError(f"state keys: found {sorted(d)}; expected {sorted(names)}")
        return cls(**{k: np.array(v) for k, v in d.items() if k != "n_iter"},
                   n_iter=int(np.asarray(d["n_iter"])))


def init_state(constants) -> TrustRegionState:
    """Every pair at ``(b0_c, 0)``; pairs of empty latents stay there, converged, with
    their closed-form F, gradient and decrement filled in."""
    k, shape = constants, constants.shape
    active = np.broadcast_to((k.count > 0)[:, None], shape).copy()
    st = TrustRegionState(
        b=np.broadcast_to(k.b0, shape), w=np.zeros(shape), lam=np.full(shape, LAM_INIT),
        pred_prev=np.full(shape, np.nan), loss_prev=np.full(shape, np.nan),
        grad=np.full(shape, np.nan), decrement=np.full(shape, np.nan),
        budget=np.full(shape, DELTA), step_b=np.zeros(shape), step_u=np.zeros(shape),
        quad_prev=np.full(shape, np.nan), clipped_prev=np.zeros(shape, bool), active=active,
        converged=~active)
    flat = np.flatnonzero(~active)
    latent, cls = np.divmod(flat, shape[1])
    d = pair_derivatives(k, latent, cls, k.b0[cls], np.zeros(flat.size), np.zeros((6, flat.size)))
    st.loss_prev.ravel()[flat] = d.loss
    st.grad.ravel()[flat] = np.maximum(np.abs(d.g0), np.abs(d.g1) / k.qx[latent])
    st.decrement.ravel()[flat] = newton_decrement(d, k.qx[latent])
    return st


def step(constants, state, sums) -> dict:
    """One trust-region iteration of every active pair (solver.md steps 1 to 6).

    Parameters
    ----------
    constants : ProblemConstants
    state : TrustRegionState
        Updated in place; ``n_iter`` grows by one.
    sums : array_like of float64, shape (6, P)
        Sums over the non-zero events of the pairs of ``state.active_index()``, in that
        order, at the current ``(b, w)``.

    Returns
    -------
    dict
        Plain numbers: ``n_iter``, ``active_before``, ``active_after``, ``n_stopped``,
        ``n_clipped``, ``n_fallback``, ``max_grad`` (scaled), ``max_decrement``,
        ``max_step`` (scaled), ``mean_lam`` (of the pairs that stepped; NaN if none),
        ``mean_loss`` (F of the pairs of this pass).
    """
    flat = np.flatnonzero(state.active)
    sums = np.asarray(sums, dtype=np.float64)
    if sums.shape != (6, flat.size):
        raise ValueError(f"sums: shape {sums.shape}; expected (6, {flat.size}) active pairs")
    acc = dict(n_stopped=0, n_clipped=0, n_fallback=0, n_backtracked=0, max_grad=0.0,
               max_decrement=0.0,
               max_step=0.0, sum_lam=0.0, sum_loss=0.0)
    with np.errstate(all="ignore"):
        for start in range(0, flat.size, CHUNK_PAIRS):
            _step_pairs(constants, state, flat[start:start + CHUNK_PAIRS],
                        sums[:, start:start + CHUNK_PAIRS], acc)
    state.n_iter += 1
    n_moved = flat.size - acc["n_stopped"]
    return dict(n_iter=state.n_iter, active_before=int(flat.size), active_after=state.n_active,
                n_stopped=acc["n_stopped"], n_clipped=acc["n_clipped"],
                n_fallback=acc["n_fallback"], n_backtracked=acc["n_backtracked"],
                max_grad=acc["max_grad"],
                max_decrement=acc["max_decrement"], max_step=acc["max_step"],
                mean_lam=acc["sum_lam"] / n_moved if n_moved else float("nan"),
                mean_loss=acc["sum_loss"] / flat.size if flat.size else float("nan"))


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
    # solver.md tests the unscaled damped determinant, which is qx^2 times this one.
    ok = np.isfinite(pred) & (pred > 0) & (np.abs(det * qx * qx) > DET_FLOOR)
    return db, du, pred, clipped, ok


def _step_pairs(k, st, flat, sums, acc):
    """Steps 1 to 6 for one chunk of active pairs; writes ``st`` in place."""
    latent, cls = np.divmod(flat, st.b.shape[1])
    b, w = st.b.ravel()[flat], st.w.ravel()[flat]
    d = pair_derivatives(k, latent, cls, b, w, sums)
    qx = k.qx[latent]
    g0, g1, h0, h1, h2 = d.g0, d.g1 / qx, d.h0, d.h1 / qx, d.h2 / (qx * qx)
    grad, dec = np.maximum(np.abs(g0), np.abs(g1)), newton_decrement(d, qx)

    # 1. Lagged ratio of the previous step (NaN prediction: first pass or fallback, skip).
    lam, pred_prev = st.lam.ravel()[flat], st.pred_prev.ravel()[flat]
    clipped_prev = st.clipped_prev.ravel()[flat]
    noise = k.f_noise * np.abs(sums[5]) / k.n_rows
    judged = np.isfinite(pred_prev) & (pred_prev > noise)
    rho = (st.loss_prev.ravel()[flat] - d.loss) / np.maximum(pred_prev, PRED_FLOOR)
    budget = st.budget.ravel()[flat]
    good, bad = judged & (rho >= 0.75), judged & ~(rho > 0.25)  # NaN rho counts as bad
    widen = good & clipped_prev & (k.budget_growth > 1.0)
    lam = np.where(good & ~clipped_prev, lam * 0.1, lam)
    lam = np.where(bad | (judged & clipped_prev & ~widen), lam * 10.0, lam)
    lam = np.clip(lam, LAM_MIN, LAM_MAX)
    budget = np.where(widen, np.minimum(budget * k.budget_growth, BUDGET_MAX), budget)
    budget = np.where(bad, np.maximum(budget / k.budget_growth, DELTA), budget)
    # A step that raised F is taken back halfway (see BACKTRACK); no new step this pass.
    back = judged & ~(rho >= 0) if k.backtrack else np.zeros(flat.size, bool)

    # 2 and 6. Pairs with nothing left to gain stop here, take no step, cost no more work.
    stop = ~back & (dec <= k.decrement_tol) & (grad <= k.grad_tol)

    # 3. Damped Newton step, damping x10 per failed try.
    db, du = np.zeros(flat.size), np.zeros(flat.size)
    pred, clipped = np.full(flat.size, np.nan), np.zeros(flat.size, bool)
    todo = np.flatnonzero(~stop & ~back)
    for _ in range(MAX_TRIES):
        if todo.size == 0:
            break
        t_db, t_du, t_pred, t_clip, ok = _damped_step(g0[todo], g1[todo], h0[todo], h1[todo],
                                                      h2[todo], lam[todo], qx[todo],
                                                      budget[todo])
        done = todo[ok]
        db[done], du[done], pred[done], clipped[done] = t_db[ok], t_du[ok], t_pred[ok], t_clip[ok]
        todo = todo[~ok]
        lam[todo] = np.minimum(lam[todo] * 10.0, LAM_MAX)

    # 4. No acceptable step: a short step DOWNHILL along -g (b -= db below), no prediction.
    if todo.size:
        gnorm = np.hypot(g0[todo], g1[todo])
        usable = np.isfinite(gnorm) & (gnorm > 0)
        along = np.where(usable, FALLBACK_LENGTH / np.where(usable, gnorm, 1.0), 0.0)
        db[todo] = np.where(usable, along * g0[todo], 0.0)
        du[todo] = np.where(usable, along * g1[todo], 0.0)

    quad = h0 * db * db + 2.0 * h1 * db * du + h2 * du * du
    step_b, step_u, loss = db, du, d.loss
    if back.any():
        # Halfway back: from the point the step left, the half step is (step / 2), its
        # prediction lin/2 - quad/8 with lin = pred + quad/2, and that point's F stays.
        half_b, half_u = 0.5 * st.step_b.ravel()[flat], 0.5 * st.step_u.ravel()[flat]
        quad_old = st.quad_prev.ravel()[flat]
        db, du = np.where(back, -half_b, db), np.where(back, -half_u, du)
        step_b, step_u = np.where(back, half_b, step_b), np.where(back, half_u, step_u)
        pred = np.where(back, 0.5 * pred_prev + 0.125 * quad_old, pred)
        quad = np.where(back, 0.25 * quad_old, quad)
        loss = np.where(back, st.loss_prev.ravel()[flat], loss)

    # 5. Update, and keep what the next lagged ratio and the outputs need.
    for name, value in (("b", b - db), ("w", w - du / qx), ("lam", lam), ("pred_prev", pred),
                        ("clipped_prev", clipped), ("loss_prev", loss), ("grad", grad),
                        ("budget", budget), ("step_b", step_b), ("step_u", step_u),
                        ("quad_prev", quad),
                        ("decrement", dec), ("active", ~stop), ("converged", stop)):
        getattr(st, name).ravel()[flat] = value

    acc["n_stopped"] += int(np.count_nonzero(stop))
    acc["n_clipped"] += int(np.count_nonzero(clipped))
    acc["n_fallback"] += int(todo.size)
    acc["n_backtracked"] += int(np.count_nonzero(back))
    acc["max_grad"] = max(acc["max_grad"], float(np.nanmax(grad, initial=0.0)))
    acc["max_decrement"] = max(acc["max_decrement"], float(np.nanmax(dec, initial=0.0)))
    acc["max_step"] = max(acc["max_step"], float(np.nanmax(np.hypot(db, du), initial=0.0)))
    acc["sum_lam"] += float(lam[~stop].sum())
    acc["sum_loss"] += float(d.loss.sum())
