"""Compiling the Triton kernels before a GPU worker's first pass.

Triton compiles a kernel variant on its first launch (about a second each, unmeasured
here); :func:`warm_up` launches each variant a job uses once, on a tiny block, so no pass
waits for the compiler. Called on each worker as it is first asked for its kernel
(``kernels.dispatch.warm_up``, run by ``engine.workers``).

Memory per process: a few hundred bytes of host and device arrays for the call, and
Triton's compiled kernels (kept by triton, a few hundred KB).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from probe_dask.kernels import triton_backend as tb
from probe_dask.kernels.units import DEFAULT_TILE

__all__ = ["warm_up"]


def warm_up(device=None, tile=DEFAULT_TILE) -> float:
    """Compile the fit and eval kernels for ``tile`` on ``device``, before the first pass.

    A GPU worker calls it when it starts, so that no pass waits for Triton's compiler (about
    a second per variant, unmeasured here). The kernels are not specialised on values that
    only move bounds (``triton_jit.NOT_SPECIALIZED``), so these two variants, fit and eval,
    serve every later pass with this tile. Runs both on a block of two latents, one cut
    into two slices (the slice combination's torch ops load too).

    Parameters
    ----------
    device : str or torch.device, optional
        CUDA by default (CPU only under ``TRITON_INTERPRET=1``).
    tile : (int, int)
        ``(event_tile, pair_tile)`` that the passes use.

    Returns
    -------
    float
        Seconds it took.
    """
    t0 = time.perf_counter()
    if not tb.available():
        raise RuntimeError(f"Triton kernels unavailable: {tb.unavailable_reason()}")
    dev = tb._device(device)
    block = _Tiny(np.array([0, 3, 4], np.int64), np.array([0, 1, 0, 1], np.int32),
                  np.array([0.5, -1.0, 2.0, 1.5], np.float32), np.array([0, 1], np.uint8))
    pairs = _TinyPairs(np.array([0, 2, 3], np.int64), np.array([0, 1, 1], np.int32),
                       np.array([0.1, -0.2, 0.3]), np.array([1.0, 0.5, -1.0]))
    db = tb.to_device(block, dev)
    work = tb.plan(db, pairs, tile=tile, n_slices=2, split_events=2)
    tb.fit_sums(db, pairs, work=work)
    tb.eval_sums(db, pairs, work=work)
    return time.perf_counter() - t0


@dataclass
class _Tiny:
    """A block as ``to_device`` reads it (warm_up's; no import of ``core``)."""

    latent_ptr: np.ndarray
    rows: np.ndarray
    values: np.ndarray
    labels: np.ndarray


@dataclass
class _TinyPairs:
    """Pairs as ``plan`` and the kernels read them (warm_up's)."""

    latent_ptr: np.ndarray
    classes: np.ndarray
    b: np.ndarray
    w: np.ndarray
