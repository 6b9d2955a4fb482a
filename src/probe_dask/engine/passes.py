"""One pass over a shard's row blocks: one task per group of blocks, the group sums tree-summed.

The label pass, and the fit and evaluation of a shard read from disk every pass, are made of
these passes (a fit on persisted blocks works on latent ranges instead, ``engine.ranges``).
A pass cuts the blocks into contiguous
groups (one per worker thread, fixed for a whole fit: see :func:`worker_threads`) and
submits one task per group: it runs the kernel on its blocks one after the other and adds
each block's partial into the group's one partial, in block order. The
group partials are then summed in a tree whose fan-in is bounded by ``split_every``
(docs/architecture.md, pitfall 6), and only the final sum travels to the driver. Partial
traffic and partial memory per pass are therefore O(worker threads x P), whatever the
number of blocks (565 blocks of a real shard used to mean 565 dense ``(6, P)`` partials).

Blocks a caller has persisted are summed where they are: each pass sends a group's task to
the worker that holds most of its blocks (``client.who_has``), with
``allow_other_workers=True`` so that the group of a lost worker still runs elsewhere (its
blocks recomputed there). Blocks read from disk
every pass travel as a recipe (the group's culled task graph), computed block by block
inside the group task, so the task holds one block at a time (on the Triton backend, two:
the next block is read and copied to the GPU while the current one computes,
``kernels.streaming``).

The result does not depend on where a group runs: the groups are a function of the number
of blocks and of the number of groups only, each group sums in block order and the tree sums the
groups in order, so a rerun after a worker is lost gives the same bits.

Memory per pass. A worker holds its resident blocks (when persisted) and, per thread, one
block being worked on (read from disk: its CSR and its ``LatentBlock``) and the group's
partial (the fit and evaluation kernels add each block into it, ``out=``; the label pass
adds one block partial at a time); then the group partials it computed until the tree has
summed them, and a tree task up to ``split_every`` partials plus their sum.
The driver holds the final sum only, plus the recipes while submitting (a few hundred
bytes per block).
"""

from __future__ import annotations

import inspect
import time
import uuid
from collections import Counter

import dask
import numpy as np
from dask.delayed import Delayed
from dask.utils import funcname
from distributed import futures_of

from probe_dask import kernels
from probe_dask.engine.workers import worker_slots, worker_table

__all__ = ["latent_blocks", "worker_threads", "block_groups", "broadcast", "run_pass"]


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
    groups = max(1, min(int(groups), int(n_blocks)))
    edges = [(g * n_blocks) // groups for g in range(groups + 1)]
    return [range(a, b) for a, b in zip(edges[:-1], edges[1:])]


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


def _sum_group(kernel, kwargs, n_args, *rest):
    """The group task on persisted blocks: ``rest`` is the kernel's arguments, then the blocks."""
    return _sum_blocks(kernel, rest[:n_args], kwargs, rest[n_args:])


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


def _placement(held, futures, load: Counter, capacity: dict) -> dict:
    """``submit`` keywords sending a group's task to a worker: the one holding most of its
    blocks (``held``: ``client.who_has``) while it has a free thread in this pass, else the
    least loaded worker (its blocks then travel there once and stay as replicas).

    Without the load check a lost worker's blocks, recomputed on a survivor, would pull
    every later pass onto that survivor while its replacement idles. ``load`` counts the
    groups given to each worker so far in this pass and is updated; {} when no worker is
    known (the scheduler then follows the blocks itself).
    """
    if not capacity:
        return {}
    counts = Counter(a for f in futures for a in held.get(f.key, ()) if a in capacity)
    free = [a for a, _ in counts.most_common() if load[a] < capacity[a]]
    worker = free[0] if free else min(capacity, key=lambda a: (load[a] / capacity[a], a))
    load[worker] += 1
    return {"workers": [worker], "allow_other_workers": True}


def _persisted_futures(blocks):
    """The future of every block when all are persisted, else None (read from disk)."""
    futs = [futures_of(b) for b in blocks]
    if all(len(f) == 1 and f[0].key == b.key for f, b in zip(futs, blocks)):
        return [f[0] for f in futs]
    return None


def run_pass(client, blocks, kernel, *args, split_every: int = 4, resources=None,
             groups: int | None = None, **kwargs):
    """Run ``kernel(block, *args, **kwargs)`` on every block and return the summed result.

    Parameters
    ----------
    client : distributed.Client
    blocks : list of Delayed
        Blocks (persisted or not) as made by :func:`latent_blocks`.
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
    persisted = _persisted_futures(blocks)
    held = client.who_has(persisted) if persisted is not None else {}
    capacity = {a: max(1, int(w.get("nthreads") or 1)) for a, w in worker_table(client).items()}
    load = Counter()
    parts = []
    for g, idx in enumerate(ranges):
        key = f"{name}-group-{token}-{g}"
        if persisted is not None:
            mine = [persisted[i] for i in idx]
            parts.append(client.submit(_sum_group, kernel, kwargs, len(args), *args, *mine,
                                       key=key, resources=resources,
                                       **_placement(held, mine, load, capacity)))
        else:
            recipe = _Recipe([blocks[i] for i in idx])
            parts.append(client.submit(_read_and_sum_group, kernel, kwargs, len(args), *args,
                                       recipe, key=key, resources=resources))
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
    try:
        return parts[0].result()
    finally:
        for future in held_futures:
            future.release()
