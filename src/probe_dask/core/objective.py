"""The probe objective in closed form: what the solver minimises and evaluation reports.

Each (latent ``l``, class ``c``) pair models ``p = sigmoid(b + w x_l)`` and is fitted by
minimising the mean penalised negative log-likelihood over the ``N`` rows of a split::

    F(b, w) = NLL(b, w) / N + ridge / 2 * (w**2 + (b - b0_c)**2)

Rows where ``x_l = 0`` all have logit ``b``, so they enter in closed form from label counts
(:func:`zero_row_positives`, :func:`mean_nll`); only the non-zero events need a pass over
the data (the six sums of ``kernels.fit_sums``). The class prior, its logit ``b0_c`` and
its cross-entropy (the baseline of probe R) are here too. Each formula exists once: the
solver (:mod:`probe_dask.core.solver`) and evaluation (:mod:`probe_dask.core.metrics`) both
call these functions. Pure numpy.

Memory per process (``L`` latents, ``C`` classes, ``P`` pairs asked for):
:class:`ProblemConstants` holds ``pos``, ``vpos`` float64 ``(L, C)``; ``class_rows``,
``pi``, ``b0``, ``baseline_ce`` float64 ``(C,)``; ``count`` int64, ``n0``, ``qx`` float64
``(L,)`` (about 16 bytes a pair). :func:`pair_derivatives` returns six float64 ``(P,)``
arrays and makes about ten more temporaries of that size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from probe_dask.core.settings import FitSettings
from probe_dask.core.tuning import (BACKTRACK, BUDGET_GROWTH, DECREMENT_TOL, F32_NOISE,
                                    GRAD_TOL)

__all__ = ["ProblemConstants", "pair_derivatives", "objective", "newton_decrement", "sigmoid",
           "baseline_cross_entropy", "zero_row_positives", "mean_nll"]

#: Clamp of the class prior (and of ``sigmoid(b)`` in the Hessian): ``[EPS, 1 - EPS]``.
EPS = 1e-8


def sigmoid(x):
    """``1 / (1 + exp(-x))``, without overflow for any float64 ``x``."""
    e = np.exp(-np.abs(x))       # never overflows, unlike exp(-x) for x << 0
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def class_prior(class_rows, n_rows, eps=EPS):
    """Fraction of rows of each class, clamped to ``[eps, 1 - eps]`` (float64, shape (C,))."""
    return np.clip(np.asarray(class_rows, dtype=np.float64) / max(n_rows, 1), eps, 1.0 - eps)


def prior_cross_entropy(pi):
    """Cross-entropy of a prior alone, ``-(pi log pi + (1 - pi) log(1 - pi))``."""
    return -(pi * np.log(pi) + (1.0 - pi) * np.log1p(-pi))


def baseline_cross_entropy(class_rows, n_rows, eps=EPS):
    """Cross-entropy of each class's clamped prior alone (the baseline of probe R)."""
    return prior_cross_entropy(class_prior(class_rows, n_rows, eps))


def zero_row_positives(class_rows, pos, n0):
    """Positives among the rows where the latent is zero: ``clip(P_c - POS, 0, n0)``.

    Broadcasts: ``class_rows`` of the class, ``pos`` positives among the latent's non-zeros,
    ``n0`` its zero rows.
    """
    return np.clip(class_rows - pos, 0.0, n0)


def mean_nll(softplus_sum, b, w, pos, vpos, zero_pos, n0, n_rows):
    """Mean negative log-likelihood over all ``n_rows`` rows.

    Non-zero events contribute ``sum softplus(eta) - b POS - w VPOS`` (``softplus_sum`` is
    their softplus sum); the ``n0`` zero rows, of which ``zero_pos`` are positives, all have
    logit ``b``: ``zero_pos softplus(-b) + (n0 - zero_pos) softplus(b)``.
    """
    return (softplus_sum - b * pos - w * vpos + zero_pos * np.logaddexp(0.0, -b)
            + (n0 - zero_pos) * np.logaddexp(0.0, b)) / max(n_rows, 1)


@dataclass
class ProblemConstants:
    """What does not change across iterations (docs/solver.md symbols in brackets).

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
        Factor of the adaptive logit budget (1.0: the in-memory solver's fixed budget).
    backtrack : bool
        Take back half of a step that raised F (False: every step kept, as the in-memory solver).
    f_noise : float
        Relative rounding of the per-event softplus (see ``tuning.F32_NOISE``).
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
    ridge: float = FitSettings.ridge
    eps: float = EPS
    decrement_tol: float = DECREMENT_TOL
    grad_tol: float = GRAD_TOL
    budget_growth: float = BUDGET_GROWTH
    backtrack: bool = BACKTRACK
    f_noise: float = F32_NOISE

    @classmethod
    def from_label_sums(cls, sums, ridge=FitSettings.ridge, eps=EPS, *, decrement_tol=DECREMENT_TOL,
                        grad_tol=GRAD_TOL, budget_growth=BUDGET_GROWTH,
                        backtrack=BACKTRACK, f_noise=F32_NOISE) -> "ProblemConstants":
        """Constants from the label pass: any object with ``n_rows``, ``class_rows`` (C,),
        ``count`` (L,), ``sum_v2`` (L,), ``pos`` and ``vpos`` (L, C), e.g.
        ``core.datatypes.LabelSums``."""
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
        pi = class_prior(class_rows, n_rows, eps)
        qx = np.maximum(np.where(count > 0, np.sqrt(sum_v2 / np.maximum(count, 1)), 1.0), 1e-6)
        return cls(n_rows=n_rows, class_rows=class_rows, pi=pi, b0=np.log(pi) - np.log1p(-pi),
                   baseline_ce=prior_cross_entropy(pi),
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
    mu0 = np.clip(sigmoid(b), k.eps, 1.0 - k.eps)
    zero_pos = zero_row_positives(pc, pos, n0)
    off = b - k.b0[cls]
    with np.errstate(over="ignore", invalid="ignore"):
        loss = (mean_nll(s_sp, b, w, pos, vpos, zero_pos, n0, n_rows)
                + 0.5 * ridge * (w * w + off * off))
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
