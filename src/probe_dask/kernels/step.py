"""The solver step in one compiled loop: :func:`probe_dask.core.solver.step`, fast.

``core.solver.step`` is the readable reference (numpy, one function per step of
docs/solver.md). It costs 0.3 to 0.7 µs per active pair, because each chunk of pairs goes
through ~100 numpy temporaries; at 4.5 M active pairs that is 1 to 3 s per pass in which
the driver computes and every worker waits. :func:`solver_step` runs the same arithmetic pair
by pair in C (``ckernel/step.c``, in the library of the block kernels), in about 0.05 µs
per pair (``benchmarks/bench_step.py``), split over ``threads`` (disjoint pairs, the GIL released). It falls back to the
numpy step when the C kernel is unavailable (no compiler, ``probe-dask.kernels.ckernel``
false).

The two agree to the last bits of libm's ``exp`` / ``log1p`` against numpy's (the tests
hold them to 1e-12 relative on every field, including NaN and infinity where the
reference has them); ``mean_lam`` and ``mean_loss`` are summed in another order.

Memory per process: the int64 index of the active pairs (8 bytes a pair); the state and
the ``(6, P)`` sums are the caller's and are not copied when already float64 and
contiguous.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from probe_dask.core import tuning
from probe_dask.core.solver import step as numpy_step
from probe_dask.core.split import even_bounds
from probe_dask.core.stats import StepStats
from probe_dask.kernels import ckernel

__all__ = ["solver_step", "compiled_step_available"]

#: The totals ``step.c`` accumulates per thread, in its order (``StepStats.from_totals``'s names).
_STATS = ("n_stopped", "n_clipped", "n_fallback", "n_backtracked", "max_grad", "max_decrement",
          "max_step", "sum_lam", "sum_loss")


def compiled_step_available() -> bool:
    """Whether :func:`solver_step` runs the compiled loop (else the numpy reference)."""
    return ckernel.available()


def _constants(k) -> np.ndarray:
    """The scalars ``step.c`` reads, in its ``K_*`` order."""
    return np.array([k.n_rows, k.ridge, k.eps, k.decrement_tol, k.grad_tol, k.budget_growth,
                     float(k.backtrack), k.f_noise, tuning.DELTA, tuning.MAX_TRIES,
                     tuning.LAM_MIN, tuning.LAM_MAX, tuning.DET_FLOOR, tuning.PRED_FLOOR,
                     tuning.FALLBACK_LENGTH, tuning.BUDGET_MAX], dtype=np.float64)


def _address(a: np.ndarray, dtype) -> int:
    # The state's own memory: a copy here would be updated instead of the state.
    if a.dtype != dtype or not a.flags.c_contiguous or not a.flags.writeable:
        raise ValueError(f"state array of dtype {a.dtype}: expected a writable C-contiguous {dtype}")
    return a.ctypes.data


def solver_step(constants, state, sums, *, threads: int = 1) -> StepStats:
    """:func:`core.solver.step` (same parameters, same statistics returned; ``state`` is
    updated in place) as one compiled loop over the pairs, split over ``threads`` threads
    (each releases the GIL)."""
    lib = ckernel.library()
    if lib is None:
        return numpy_step(constants, state, sums)
    flat = np.flatnonzero(state.active)
    sums = np.ascontiguousarray(sums, dtype=np.float64)
    if sums.shape != (6, flat.size):
        raise ValueError(f"sums: shape {sums.shape}; expected (6, {flat.size}) active pairs")
    k = constants
    consts = _constants(k)
    small = [np.ascontiguousarray(a, dtype=np.float64) for a in (k.class_rows, k.b0, k.n0, k.qx)]
    big = [np.ascontiguousarray(a, dtype=np.float64) for a in (k.pos, k.vpos)]
    fields = np.array([_address(getattr(state, n), np.float64) for n in state.FLOAT_FIELDS],
                      dtype=np.uintp)  # double *st[11], in step.c's S_* order
    bools = [_address(getattr(state, n), np.bool_) for n in state.BOOL_FIELDS]
    n_pairs, n_classes = flat.size, state.b.shape[1]
    # a thread's share is worth its start-up from about 4096 pairs
    bounds = even_bounds(n_pairs, min(int(threads), n_pairs // 4096 + 1))
    accs = np.zeros((len(bounds), len(_STATS)))

    def run(j):
        lib.pd_step(*bounds[j], n_pairs, n_classes, flat.ctypes.data,
                    sums.ctypes.data, consts.ctypes.data,
                    *(a.ctypes.data for a in small + big), fields.ctypes.data, *bools,
                    accs[j].ctypes.data)

    if accs.shape[0] == 1:
        run(0)
    else:
        with ThreadPoolExecutor(accs.shape[0]) as pool:
            list(pool.map(run, range(accs.shape[0])))
    state.n_iter += 1
    # the threads' shares: counts and sums add, maxima take the largest
    totals = {name: (col.max(initial=0.0) if name.startswith("max_") else col.sum())
              for name, col in zip(_STATS, accs.T)}
    return StepStats.from_totals(n_iter=state.n_iter, active_before=n_pairs,
                                 active_after=state.n_active, **totals)
