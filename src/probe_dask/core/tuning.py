"""The trust-region solver's tuning constants, each with the reason for its value.

Plain numbers, no code: :mod:`probe_dask.core.objective` takes the defaults of
``ProblemConstants`` from here, :mod:`probe_dask.core.state` the starting damping and
budget, :mod:`probe_dask.core.solver` everything else. Memory per process: none.

Where a constant departs from the in-memory solver (docs/solver.md), the comment says how,
and which value restores that solver exactly.
"""

from __future__ import annotations

__all__ = ["DELTA", "MAX_TRIES", "LAM_INIT", "LAM_MIN", "LAM_MAX", "DET_FLOOR", "PRED_FLOOR",
           "FALLBACK_LENGTH", "BUDGET_GROWTH", "BUDGET_MAX", "BACKTRACK", "F32_NOISE",
           "DECREMENT_TOL", "GRAD_TOL", "CHUNK_PAIRS"]

DELTA = 6.0                      # logit budget of one step, in qx-scaled units (b, qx w)
MAX_TRIES = 5                    # damped solves per pair and iteration
LAM_INIT, LAM_MIN, LAM_MAX = 1e-3, 1e-12, 1e12
DET_FLOOR = 1e-18                # |det| of the damped unscaled Hessian at or below: retry
PRED_FLOOR = 1e-18               # denominator floor of the lagged ratio
FALLBACK_LENGTH = 1e-3 * DELTA   # scaled length of the downhill step of step 4
# Adaptive logit budget (our first departure, see BUDGET_GROWTH below). The in-memory
# solver caps every step at DELTA = 6 scaled logits and raises the damping after each
# capped step, so a pair whose optimum lies far out along a flat direction (a rare class
# that never fires among a latent's non-zeros: the optimum w is tens of qx-scaled logits
# away, held only by the ridge) crawls 6 per pass and took 30 to 60 passes on realistic
# data. A capped step whose lagged ratio is >= 0.75 shows the model is good out to the
# cap, so, as in textbook trust-region methods, its budget doubles (up to BUDGET_MAX) and
# its damping is not raised; a step with ratio <= 0.25 halves the budget (never below
# DELTA). BUDGET_GROWTH = 1 restores its fixed budget.
BUDGET_GROWTH = 2.0
BUDGET_MAX = DELTA * 2.0**10
# Lagged backtracking (our second departure). The old solver takes every step, also one that
# raised F, and only raises the damping for the next one. On rare classes of busy latents
# (h0 ~ pi, damping of the same order) that settles into a 4-cycle -- bad step, damping up,
# good step, damping down, the same bad step -- and the pair never stops (seen on the demo
# data with exact float64 sums). Here a pass that finds F went up (lagged ratio < 0 or NaN)
# takes the pair halfway back to where it came from; that point's F stays the reference and
# the predicted reduction of the half step is known from the stored step and its quadratic
# term, so the next pass judges it as usual. BACKTRACK = False is the in-memory solver's
# rule (every step kept), the one that cycles.
BACKTRACK = True
# The lagged ratio can only judge a step whose predicted reduction is larger than what
# rounding does to F. The kernels may evaluate softplus in float32 (docs/solver.md allows
# per-event math in float32), so F carries up to ~2 ulp of float32 per event:
# |dF| <= F32_NOISE * sum(softplus over the non-zeros) / N for two evaluations. A step
# predicted below that is neither judged nor backtracked (its damping and budget stay):
# near the optimum rho is otherwise noise, backtracks fire at random, and the damping is
# pumped to LAM_MAX (seen on the demo data). Set to 0 for exact float64 sums.
F32_NOISE = 4.0 * 2.0**-23
# Stopping rule (docs/solver.md step 6): Newton decrement <= 1e-8 AND scaled gradient <= 1e-7.
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
CHUNK_PAIRS = 1 << 15            # pairs per vectorised chunk: ~40 temporaries of 256 KB stay in cache
