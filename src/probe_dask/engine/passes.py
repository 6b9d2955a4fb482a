"""One pass over a split's row blocks: one task per group of blocks, the group sums tree-summed.

The evaluation of a split that has no latent ranges (the test split, when it is not cut at
the fit's ranges) is one of these passes (a fit works on latent ranges, ``engine.ranges``).
A pass cuts the blocks into contiguous groups (one per worker thread, fixed for a whole
fit: see :func:`worker_threads`) and submits one task per group: it reads its blocks one
after the other (each travels as a recipe, the culled task graph, computed inside the
task) and adds each block's partial into the group's one partial, in block order. The group
partials are then summed in a tree whose fan-in is bounded by ``split_every``
(docs/architecture.md, pitfall 6), and only the final sum travels to the driver. Partial
traffic and partial memory per pass are therefore O(worker threads x P), whatever the
number of blocks. On the Triton backend the next block is read and copied to the GPU while
the current one computes (``kernels.streaming``).

The result does not depend on where a group runs: the groups are a function of the number
of blocks and of the number of groups only, each group sums in block order and the tree sums
the groups in order, so a rerun after a worker is lost gives the same bits.

Memory per pass. A worker holds, per thread, one block being worked on (its CSR and its
``LatentBlock``; two with the Triton kernels) and the group's partial (the kernels add each
block into it, ``out=``; kernels without ``out`` add one block partial at a time); then the
group partials it computed until the tree has summed them, and a tree task up to
``split_every`` partials plus their sum. The driver holds the final sum only, plus the
recipes while submitting (a few hundred bytes per block).
"""

from __future__ import annotations

import inspect
import time
import uuid

import dask
import numpy as np
from dask.delayed import Delayed
from dask.utils import funcname
from distributed import wait

from probe_dask import kernels
from probe_dask.core.split import even_bounds
from probe_dask.engine.workers import worker_slots

__all__ = ["latent_blocks", "worker_threads", "broadcast", "pass_total"]


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


def worker_threads(client) -> int:
    """Worker threads of the cluster now: the groups a pass cuts its blocks into.

    A fit reads it once (``ProbeFitter.worker_threads_``) and keeps it for every pass and
    for the evaluation, so that workers joining or leaving do not change the sums' order.
    0 when no worker has joined yet (an adaptive cluster still starting).
    """
    return len(worker_slots(client))


def block_groups(n_blocks: int, groups: int) -> list[range]:
    """``groups`` contiguous ranges of block indices covering ``range(n_blocks)``, sizes
    differing by at most one (blocks are cut with about equal non-zeros)."""
    return [range(a, b) for a, b in even_bounds(n_blocks, groups)]


def broadcast(client, value, tries: int = 3):
    """``client.scatter(value, broadcast=True)``: one copy on every worker (a pass's pairs),
    scattered again when a worker leaves while it is being replicated.

    The scheduler replicates to the workers it listed a moment before; one that has left
    since (a Slurm job cancelled, a worker killed) fails the whole scatter with a KeyError
    naming its address (seen with ``scancel`` mid-fit). The next try sees the workers as
    they are.
    """
    for attempt in range(tries):
        try:
            return client.scatter(value, broadcast=True, hash=False)
        except (KeyError, OSError):
            if attempt == tries - 1:
                raise
            time.sleep(0.5 * (attempt + 1))


def _accumulate(total, part):
    """``total + part``, in place when both are the same kind of float array (no third copy)."""
    if (isinstance(total, np.ndarray) and isinstance(part, np.ndarray) and total.flags.writeable
            and total.shape == part.shape and total.dtype == part.dtype):
        np.add(total, part, out=total)
        return total
    return total + part


def _takes_out(kernel) -> bool:
    """Whether ``kernel`` adds into an ``out=`` array (``kernels.fit_sums``, ``eval_sums``)."""
    try:
        return "out" in inspect.signature(kernel).parameters
    except (TypeError, ValueError):
        return False


def _sum_blocks(kernel, args, kwargs, blocks):
    """The kernel's sum over ``blocks`` (an iterable), in order: the first block's partial
    is the group's, and the next blocks are added into it (``out=``, no second partial)
    or, for kernels without ``out``, added to it one partial at a time."""
    total = None
    into = _takes_out(kernel)
    for block in blocks:
        if total is not None and into:
            kernel(block, *args, out=total, **kwargs)
        else:
            part = kernel(block, *args, **kwargs)
            total = part if total is None else _accumulate(total, part)
            del part  # one partial besides the group's while the next block runs
        del block
    return total


class _Recipe:
    """The culled task graphs of a group's blocks, opaque to the scheduler (not dependencies)."""

    def __init__(self, blocks):
        self.blocks = dask.optimize(*blocks)

    def __iter__(self):
        for d in self.blocks:
            # One block at a time, in this thread: read, convert, then let it go.
            yield d.compute(scheduler="sync")


#: Kernels that take device blocks: blocks read from disk reach them through
#: ``kernels.stream_blocks`` (on a GPU, the next block is copied while one computes).
_STREAMING_KERNELS = (kernels.fit_sums, kernels.eval_sums)


def _read_and_sum_group(kernel, kwargs, n_args, *rest):
    """The group task on blocks read from disk: ``rest`` is the kernel's arguments, then
    the group's ``_Recipe``."""
    blocks = rest[n_args]
    if kernel in _STREAMING_KERNELS:
        blocks = kernels.stream_blocks(blocks, kwargs.get("device"), kwargs.get("backend", "auto"))
    return _sum_blocks(kernel, rest[:n_args], kwargs, blocks)


def _add(*parts):
    """The sum of ``parts`` in one new array (inputs are the scheduler's: never written)."""
    total = parts[0]
    for i, part in enumerate(parts[1:]):
        # the first addition makes the new array, the next ones add into it
        total = total + part if i == 0 else _accumulate(total, part)
    return total


def pass_total(client, blocks, kernel, *args, split_every: int = 4, resources=None,
               groups: int | None = None, **kwargs):
    """Run ``kernel(block, *args, **kwargs)`` on every block; the future of the sum, once
    it is computed (it stays on its worker until the caller reads or releases it).

    Parameters
    ----------
    client : distributed.Client
    blocks : list of Delayed
        Blocks as made by :func:`latent_blocks`, read from disk inside the group tasks.
    kernel : callable
        Per-block function returning something addable (numpy array, ``LabelSums``). Its
        name starts every task key of the pass (``fit_sums-group-...``).
    *args, **kwargs
        Passed to the kernel; large arguments should be futures (scattered once).
    split_every : int
        Fan-in of the reduction tree over the groups.
    resources : dict, optional
        Worker resources every task of the pass requests (e.g. ``{"GPU": 1}``).
    groups : int, optional
        Groups of blocks (tasks) in the pass, at most one per block; default: the
        :func:`worker_threads` now (one group per block while there is no worker).
    """
    if not blocks:
        raise ValueError("nothing to sum: the shard has no row blocks")
    if split_every < 2:
        raise ValueError(f"split_every must be at least 2, got {split_every}")
    ranges = block_groups(len(blocks), groups or worker_threads(client) or len(blocks))
    name, token = funcname(kernel), uuid.uuid4().hex
    parts = [client.submit(_read_and_sum_group, kernel, kwargs, len(args), *args,
                           _Recipe([blocks[i] for i in idx]), key=f"{name}-group-{token}-{g}",
                           resources=resources)
             for g, idx in enumerate(ranges)]
    # Every future of the pass stays referenced until the total has arrived: a group partial
    # the client had let go of cannot be recomputed when the worker holding it dies before
    # the tree consumed it ("already forgotten"). The partials are freed together at the end.
    held_futures = list(parts)
    level = 0
    while len(parts) > 1:
        parts = [client.submit(_add, *parts[i:i + split_every], resources=resources,
                               key=f"{name}-sum-{token}-{level}-{i // split_every}")
                 for i in range(0, len(parts), split_every)]
        held_futures += parts
        level += 1
    total = parts[0]
    try:
        wait(total)
        if total.status == "error":
            total.result()  # raises the pass's error
    finally:
        for future in held_futures[:-1] if held_futures[-1] is total else held_futures:
            future.release()
    return total
