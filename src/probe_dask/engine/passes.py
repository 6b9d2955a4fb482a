"""One pass over a shard's row blocks: a kernel per block, tree-summed.

The fit and the evaluation are both made of passes. A pass submits one task per row
block (the kernel, on that worker's device) and sums the per-block partials in a tree
whose fan-in is bounded by ``split_every``, so no task holds more than ``split_every``
partials at once (docs/architecture.md, pitfall 6). Only the final sum travels to the driver.

Memory per process: a worker holds its resident blocks (when persisted), one block being
worked on, and up to ``split_every + 1`` partials; the driver holds the final sum.
"""

from __future__ import annotations

import functools
import operator

import dask
from dask.delayed import Delayed

from probe_dask import kernels

__all__ = ["latent_blocks", "run_pass", "tree_sum"]


def _to_latent_block(csr, labels):
    return kernels.LatentBlock.from_csr(csr, labels)


def latent_blocks(X, y) -> list[Delayed]:
    """One delayed ``LatentBlock`` per row block of ``X`` and ``y``.

    Parameters
    ----------
    X : dask.array.Array
        Activations chunked by rows only (chunks are CSR row blocks).
    y : dask.array.Array
        Labels with the same row chunks.
    """
    if len(X.chunks[1]) != 1:
        raise ValueError("X must be chunked by rows only (one chunk across all latents)")
    if X.chunks[0] != y.chunks[0]:
        raise ValueError(f"X and y have different row chunks: {X.chunks[0]} vs {y.chunks[0]}")
    xs = X.to_delayed().ravel()
    ys = y.to_delayed().ravel()
    name = "latent-block-" + dask.base.tokenize(X.name, y.name)
    return [
        dask.delayed(_to_latent_block, pure=True)(xb, yb, dask_key_name=(name, i))
        for i, (xb, yb) in enumerate(zip(xs, ys))
    ]


def _add(*parts):
    return functools.reduce(operator.add, parts)


def tree_sum(parts, split_every: int = 4):
    """Sum delayed partials in a tree of fan-in at most ``split_every``."""
    if not parts:
        raise ValueError("nothing to sum: the shard has no row blocks")
    if split_every < 2:
        raise ValueError(f"split_every must be at least 2, got {split_every}")
    level = 0
    while len(parts) > 1:
        parts = [
            dask.delayed(_add, pure=False)(*parts[i : i + split_every])
            for i in range(0, len(parts), split_every)
        ]
        level += 1
    return parts[0]


def run_pass(client, blocks, kernel, *args, split_every: int = 4, resources=None, **kwargs):
    """Run ``kernel(block, *args, **kwargs)`` on every block and return the summed result.

    Parameters
    ----------
    client : distributed.Client
    blocks : list of Delayed
        Blocks (persisted or not) as made by :func:`latent_blocks`.
    kernel : callable
        Per-block function returning something addable (numpy array, ``LabelSums``).
    *args, **kwargs
        Passed to the kernel; large arguments should be futures (scattered once).
    split_every : int
        Fan-in of the reduction tree.
    resources : dict, optional
        Worker resources every task of the pass requests (e.g. ``{"GPU": 1}``).
    """
    parts = [dask.delayed(kernel, pure=False)(b, *args, **kwargs) for b in blocks]
    total = tree_sum(parts, split_every)
    future = client.compute(total, resources=resources)
    try:
        return future.result()
    finally:
        future.release()
