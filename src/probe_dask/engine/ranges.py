"""Latent ranges: the fit's data and solver state cut by latent, each range stepped on its worker.

Every fit cuts the latents into ranges, one per worker thread, about equal in non-zeros
(:func:`range_bounds` of the per-latent counts). Range ``r``'s events are every row's
events of its latents, rows in shard order, either kept in a worker's memory (one
``LatentBlock``, :func:`persist_ranges`) or read from the shard's latent-major layout on
disk every pass (a ``range_data.DiskRange``, :func:`disk_ranges`). Beside them, on the same
worker, a :class:`RangeFit`: the range's label sums, constants and solver state. A pass is
one task per range (:func:`advance_range`): the kernel sums the range's active pairs over
its events and the trust-region step updates them, where both are. Nothing of size P
crosses the network: the driver receives the step's statistics of each range (a few
numbers) and, at the end, the fitted parameters. The first pass, every pair at ``w = 0``,
reads no event (``range_data.sums_at_zero``).

The ranges are independent problems: a pair's sums are its latent's events in row order,
as in a one-block pass, so the result does not depend on the layout or on the number of
ranges, row blocks or workers (the same bits).

Faults. A pass returns a new ``RangeFit`` and leaves the previous one as it was, so a range
lost with its worker is recomputed by the scheduler from its lineage: from its start (the
fit's first state, or the checkpoint it resumed from) through every pass made so far, for
that range only (from disk, its events are read again; in memory, cut again from the
blocks). A resumed range whose checkpoint has been replaced since raises
``checkpoint.CheckpointMoved``, and the fit starts every range again from the file. The
survivor that recomputed a lost worker's ranges holds more ranges than it has threads;
before each pass :func:`place_ranges` moves the extra ones (events or offsets, and state,
once) to the workers with threads to spare, such as the lost worker's replacement.

Memory per process. A worker holds, per range it owns, the range's events in memory
(``8 nnz_r + 8 L_r + n_rows`` bytes) or, from disk, its offsets (``8 L_r``) and, while a
pass reads, two chunks (``range_data``); its label sums and constants (``32 L_r C``); two
states while a pass runs or while the driver streams the previous pass's checkpoint (91
bytes a pair each); the active pairs (28 bytes a pair) and the ``(6, P_r)`` float64 sums;
while ranges are cut in memory, row blocks being sliced, the slices, and a range's slices
plus their join. The driver holds futures, the per-latent counts while it balances the
ranges (``8 L``), and one field of one range while a checkpoint streams.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections import Counter
from dataclasses import dataclass

import numpy as np
from distributed import as_completed, wait

from probe_dask import kernels
from probe_dask.core.datatypes import LabelSums
from probe_dask.core.objective import ProblemConstants
from probe_dask.core.split import even_bounds, weighted_bounds
from probe_dask.core.state import TrustRegionState, init_state
from probe_dask.core.stats import StepStats
from probe_dask.engine.checkpoint import load_range
from probe_dask.engine.range_data import (bytes_read, disk_range, range_fit_sums,
                                          range_label_sums, sums_at_zero)
from probe_dask.engine.workers import worker_capacity, worker_slots
from probe_dask.kernels.step import solver_step

__all__ = ["RangeFit", "resident_bytes", "keeps_in_memory", "range_bounds", "persist_ranges",
           "disk_ranges", "start_range", "advance_range", "range_stats", "range_params",
           "place_ranges", "where_held", "read_ranges", "field_reader", "gather_latents"]


@dataclass
class RangeFit:
    """What a range's owner keeps between passes.

    Parameters
    ----------
    start, stop : int
        The range's latents.
    label_sums : core.datatypes.LabelSums
        Of the range's events (latents renumbered from 0).
    constants : core.objective.ProblemConstants
    state : core.state.TrustRegionState
        Of the range's pairs.
    stats : core.stats.StepStats or None
        The last step's statistics (``solver_step``).
    cost : dict
        What the last pass cost (empty before one): ``work_units`` (pair-events summed),
        ``bytes_read`` (of events, from disk), ``active_latents`` (latents with active pairs),
        ``sums_seconds`` (reading and summing the events, on the worker) and
        ``range_seconds`` (the whole pass of the range).
    """

    start: int
    stop: int
    label_sums: LabelSums
    constants: ProblemConstants
    state: TrustRegionState
    stats: StepStats | None = None
    cost: dict = dataclasses.field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        state = sum(int(getattr(self.state, n).nbytes)
                    for n in self.state.FLOAT_FIELDS + self.state.BOOL_FIELDS)
        # the constants share pos and vpos with the label sums; qx and n0 are (L_r,)
        return int(self.label_sums.nbytes) + state + 16 * (self.stop - self.start)


def range_bounds(n_latents: int, n_ranges: int, count=None) -> list[tuple[int, int]]:
    """Contiguous latent ranges covering ``range(n_latents)``.

    About equal in non-zeros plus latents when ``count`` (non-zeros per latent) is known,
    else in latents; at most ``n_ranges``, each at least one latent.
    """
    n_latents = int(n_latents)
    n = max(1, min(int(n_ranges), n_latents))
    if count is None:
        return even_bounds(n_latents, n)
    count = np.asarray(count, dtype=np.float64)
    # every latent also costs its pairs' step, whatever its events
    return weighted_bounds(count + max(1.0, float(count.mean())), n)


#: Worker bytes per pair of a fit on latent ranges besides the events: two states (91 bytes
#: each: while a pass runs, or while the last one streams to the checkpoint) and the label
#: sums the constants share (32).
RANGE_BYTES_PER_PAIR = 2 * 91 + 32


def resident_bytes(nnz: int, n_rows: int, n_latents: int, n_classes: int,
                   n_ranges: int) -> int:
    """Worker bytes of a fit whose ranges keep their events in memory: every range's
    ``LatentBlock`` (values and rows, latent pointers, labels) and the solver state."""
    events = int(nnz) * 8 + int(n_ranges) * int(n_rows) + (int(n_latents) + int(n_ranges)) * 8
    return events + RANGE_BYTES_PER_PAIR * int(n_latents) * int(n_classes)


def keeps_in_memory(persist, need: int, have: int, fraction: float) -> bool:
    """Whether a fit keeps its ranges' events in worker memory: ``persist`` when it is a
    bool, else (``"auto"``) when they take at most ``fraction`` of the workers' ``have``
    bytes."""
    if isinstance(persist, str):  # "auto", the only string accepted
        return int(need) <= float(fraction) * int(have)
    return bool(persist)


def _latent_counts(block) -> np.ndarray:
    return np.diff(block.latent_ptr)


def _slice(block, start, stop):
    return block.latent_slice(start, stop)


def _join(*parts):
    return kernels.LatentBlock.concat(parts)


def persist_ranges(client, blocks, bounds=None, n_ranges=1) -> tuple[list, list]:
    """One future per range: the events of its latents in every block, joined in row order,
    placed on one worker thread's worker each (a preference: the scheduler moves a range
    whose worker is gone, recomputing it from the blocks). Returns ``(futures, bounds)``.

    Without ``bounds``, ``n_ranges`` ranges about equal in non-zeros (``range_bounds`` of
    the blocks' per-latent counts, summed on the driver as the blocks are read). Every block
    is read once; its slices are cut where it was read and only they travel.
    """
    slots = worker_slots(client)
    token = uuid.uuid4().hex
    block_futures = client.compute(list(blocks))
    if bounds is None:
        count = None
        for future in as_completed([client.submit(_latent_counts, f, pure=False)
                                    for f in block_futures]):
            part = future.result()
            count = part if count is None else count + part
            future.release()
        bounds = range_bounds(len(count), n_ranges, count)
    out = []
    for r, (a, z) in enumerate(bounds):
        parts = [client.submit(_slice, f, a, z, key=f"latent-range-part-{token}-{r}-{i}")
                 for i, f in enumerate(block_futures)]
        placement = ({"workers": [slots[r % len(slots)]], "allow_other_workers": True}
                     if slots else {})
        out.append(client.submit(_join, *parts, key=f"latent-range-{token}-{r}", **placement))
        del parts  # the scheduler keeps them until the join has run, then lets them go
    del block_futures
    return out, list(bounds)


def disk_ranges(client, layout, n_ranges, chunk_nnz=None) -> tuple[list, list]:
    """``(futures, bounds)``: ``n_ranges`` ranges of a latent-major ``layout`` about equal
    in non-zeros, each a ``range_data.DiskRange`` (its offsets; the events stay on disk,
    read in chunks of ``chunk_nnz``), placed on one worker thread's worker each (a task:
    recomputed where it is lost)."""
    bounds = range_bounds(layout.shape[1], n_ranges, np.diff(layout.latent_ptr()))
    slots = worker_slots(client)
    out = [client.submit(disk_range, layout, a, z, chunk_nnz, pure=False,
                         **({"workers": [slots[r % len(slots)]], "allow_other_workers": True}
                            if slots else {}))
           for r, (a, z) in enumerate(bounds)]
    return out, bounds


def _moved(block):
    """A range's events, on the worker this runs on (a copy made by the transfer)."""
    return block


def place_ranges(client, data, fits) -> tuple[list, list[dict]]:
    """Where each range's next pass runs: on the worker holding its state while that worker
    has no more ranges than threads, else on the least loaded worker, where its events are
    copied first (a new future: the old copy is let go). Returns the ranges' events (some
    moved) and the ``submit`` keywords of their passes ({} while no worker is known)."""
    wait(fits)
    capacity = worker_capacity(client)
    if not capacity:
        return list(data), [{} for _ in fits]
    held = client.who_has(fits)
    load, where = Counter(), []
    for fit in fits:
        keep = next((a for a in held.get(fit.key, ()) if load[a] < capacity.get(a, 0)), None)
        where.append(keep)
        if keep is not None:
            load[keep] += 1
    data = list(data)
    for r, worker in enumerate(where):
        if worker is None:
            worker = where[r] = min(capacity, key=lambda a: (load[a] / capacity[a], a))
            load[worker] += 1
            data[r] = client.submit(_moved, data[r], workers=[worker], allow_other_workers=True,
                                    pure=False)
    return data, [{"workers": [a], "allow_other_workers": True} for a in where]


def start_range(data, n_classes, ridge, start, stop, resume=None, device="cpu") -> RangeFit:
    """A range's first ``RangeFit``: its label sums and constants from its own events, and
    every pair at its prior, or, with ``resume = (path, identity, n_iter)``, the stored
    state of its latents (``checkpoint.load_range``). The label sums run on ``device``
    (``kernels.label_sums``: a GPU worker's on its GPU)."""
    label_sums = range_label_sums(data, n_classes, device)
    constants = ProblemConstants.from_label_sums(label_sums, ridge=ridge)
    if resume is None:
        state = init_state(constants)
    else:
        state = load_range(*resume, start, stop)
    return RangeFit(start, stop, label_sums, constants, state)


def advance_range(data, fit: RangeFit, device=None, backend="auto", resident=False) -> RangeFit:
    """One solver pass of a range: sums of its active pairs, then one step, on a copy of its
    state (``fit`` stays as it was: the scheduler may recompute from it, and the driver may
    be streaming it to the checkpoint)."""
    began = time.perf_counter()
    pairs = fit.state.active_pairs()
    per_latent = np.diff(pairs.latent_ptr)
    work_units = int(per_latent @ fit.label_sums.count)
    active_latents = int(np.count_nonzero(per_latent))
    if pairs.w.any():
        sums = range_fit_sums(data, pairs, device, backend=backend, resident=resident)
        read = bytes_read(data, pairs)
    else:  # the first pass (every pair at w = 0): closed forms, no event read
        sums, read = sums_at_zero(fit.label_sums, pairs, device, backend), 0
    summed = time.perf_counter()
    del pairs
    state = fit.state.copy()
    stats = solver_step(fit.constants, state, sums)
    cost = {"work_units": work_units, "bytes_read": read, "active_latents": active_latents,
            "sums_seconds": summed - began, "range_seconds": time.perf_counter() - began}
    return dataclasses.replace(fit, state=state, stats=stats, cost=cost)


def range_stats(fit: RangeFit) -> dict:
    """A range's record for the driver: its pairs still active (``n_active``) and in all
    (``n_pairs``), and after a pass, the step's statistics (``StepStats.as_record``)
    and its ``cost``."""
    record = {"n_active": fit.state.n_active, "n_pairs": int(fit.state.active.size)}
    if fit.stats is not None:
        record.update(fit.stats.as_record(), **fit.cost)
    return record


def range_field(fit: RangeFit, name: str) -> np.ndarray:
    """One state field of a range (``(L_r, C)``): what the checkpoint streams."""
    return getattr(fit.state, name)


def range_params(fit: RangeFit) -> tuple:
    """``(b, w, converged)`` of a range's pairs."""
    return fit.state.b, fit.state.w, fit.state.converged


def where_held(client, futures) -> list[dict]:
    """``submit`` keywords sending a task that reads a future to a worker holding it (once
    the futures are done): a range's state is not copied to another worker for a few
    numbers of it. A preference only: where no holder is left, the task runs elsewhere."""
    wait(futures)
    held = client.who_has(futures)
    return [{"workers": list(held[f.key]), "allow_other_workers": True} if held.get(f.key)
            else {} for f in futures]


def read_ranges(client, futures, func, *args, places=None) -> list:
    """``func(value, *args)`` of every future, each computed where the value is held, or
    where ``places`` (``submit`` keywords, one per future) sent it: then the reads are
    queued behind the futures at once, with no round trip to ask where they are."""
    if places is None:
        places = where_held(client, futures)
    reads = [client.submit(func, f, *args, pure=False, **where)
             for f, where in zip(futures, places)]
    return client.gather(reads)


#: Priority of a checkpoint's field reads: ahead of the next pass's task where a worker
#: has one thread (a GPU worker, ``--threads 1``), so the checkpoint of pass n is whole one
#: pass later, not one pass per field later.
FIELD_READ_PRIORITY = 10
STATE_FIELDS = TrustRegionState.FLOAT_FIELDS + TrustRegionState.BOOL_FIELDS


def field_reader(client, fits, names=STATE_FIELDS):
    """``read(name)``: the state field ``name`` of every range, in latent order (what a
    checkpoint streams). At the first ``read``, the reads of every field in ``names`` are
    submitted together, each where its range is held and before queued passes
    (:data:`FIELD_READ_PRIORITY`); a read returns the range's own array (no copy on the
    worker), and the driver takes them one range at a time."""
    futures = {}

    def submit_all():
        places = where_held(client, fits)
        for name in names:
            futures[name] = [client.submit(range_field, fit, name, pure=False,
                                           priority=FIELD_READ_PRIORITY, **where)
                             for fit, where in zip(fits, places)]

    def read(name):
        if not futures:
            submit_all()
        reads = futures.pop(name)
        for i in range(len(reads)):
            yield reads[i].result()
            reads[i].release()
            reads[i] = None  # the driver holds one range's field at a time
    return read


def gather_latents(client, fits, bounds, shape, task, dtypes) -> tuple:
    """``(L, C)`` arrays filled range by range from ``task(fit)`` (a tuple of ``(L_r, C)``
    arrays of the range's latents), one range's result at a time, each computed where the
    range is held."""
    out = tuple(np.empty(shape, dtype=d) for d in dtypes)
    for fit, (a, z), where in zip(fits, bounds, where_held(client, fits)):
        future = client.submit(task, fit, pure=False, **where)
        for whole, part in zip(out, future.result()):
            whole[a:z] = part
        future.release()
    return out
