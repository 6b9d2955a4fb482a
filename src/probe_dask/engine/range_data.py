"""A latent range's events, kept in worker memory or read from the latent-major layout.

Every fit runs on latent ranges (``engine.ranges``). A range's events are either a
``LatentBlock`` held by its worker (persisted: the shard fits in the workers' memory) or a
:class:`DiskRange`, a few numbers naming its span of the latent-major layout
(``io.latent_major``), read again every pass. The kernels' entry points here take either:
:func:`range_label_sums`, :func:`range_fit_sums` and :func:`range_eval_sums`.

From disk, a pass reads only the latents that still have active pairs, in chunks of whole
latents of at most ``chunk_nnz`` events (the fit's row-block size when a memory plan chose
it, else ``probe-dask.engine.range-chunk-nnz``), each one
span per file and run of consecutive latents. A helper thread reads the next chunk while
the kernel runs on the current one (double-buffered); on GPU workers each chunk then goes
through ``kernels.stream_blocks``. A pair's sums are over its own latent's events only, in
row order, so chunking gives the bits of the whole block.

Memory per call: in memory, the kernel's own; from disk, two chunks (``8 chunk_nnz +
8 L_chunk`` bytes each, the one computing and the one being read) plus the split's labels
(``n_rows`` bytes) and the result (``48 P_r`` or ``24 P_r`` bytes, or the label sums).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from probe_dask import config, kernels
from probe_dask.core.datatypes import ActivePairs, LabelSums, LatentBlock
from probe_dask.io.latent_major import LatentMajorLayout

__all__ = ["DiskRange", "disk_range", "range_label_sums", "range_fit_sums", "range_eval_sums",
           "sums_at_zero",
           "bytes_read"]


@dataclass(frozen=True)
class DiskRange:
    """Latents ``[start, stop)`` of a latent-major layout, read when a pass needs them.

    Parameters
    ----------
    layout : io.latent_major.LatentMajorLayout
    start, stop : int
        The range's latents.
    latent_ptr : ndarray of int64, shape (stop - start + 1,)
        The layout's offsets of those latents (global: into its event files).
    chunk_nnz : int
        Most events a chunk read at once holds (whole latents: one latent with more is a
        chunk of its own).
    """

    layout: LatentMajorLayout
    start: int
    stop: int
    latent_ptr: np.ndarray
    chunk_nnz: int

    @property
    def n_latents(self) -> int:
        return self.stop - self.start

    @property
    def n_rows(self) -> int:
        return int(self.layout.shape[0])

    @property
    def nnz(self) -> int:
        return int(self.latent_ptr[-1] - self.latent_ptr[0])

    @property
    def nbytes(self) -> int:
        """What the scheduler holds for it: the offsets (events stay on disk)."""
        return int(self.latent_ptr.nbytes) + 64


def disk_range(layout: LatentMajorLayout, start: int, stop: int,
               chunk_nnz: int | None = None) -> DiskRange:
    """A range of ``layout`` with its offsets read (a task: recomputed, not lost, with a
    worker); chunks of ``chunk_nnz`` events (default: ``probe-dask.engine.range-chunk-nnz``)."""
    if chunk_nnz is None:
        chunk_nnz = config.get("probe-dask.engine.range-chunk-nnz")
    return DiskRange(layout, int(start), int(stop), layout.latent_ptr(start, stop),
                     max(1, int(chunk_nnz)))


def bytes_read(data, pairs: ActivePairs) -> int:
    """Event bytes a pass over ``pairs`` reads of ``data``: 8 per event of each latent with
    active pairs from disk, 0 in memory."""
    if isinstance(data, LatentBlock):
        return 0
    active = np.diff(pairs.latent_ptr) > 0
    return 8 * int(np.diff(data.latent_ptr)[active].sum())


def _chunks(data: DiskRange, latents: np.ndarray, chunk_nnz: int):
    """Groups of ``latents`` (local, ascending) with at most ``chunk_nnz`` events each
    (a latent with more is a group of its own)."""
    counts = np.diff(data.latent_ptr)[latents]
    groups, first, held = [], 0, 0
    for i, n in enumerate(counts.tolist()):
        if held and held + n > chunk_nnz:
            groups.append(latents[first:i])
            first, held = i, 0
        held += n
    if len(latents):
        groups.append(latents[first:])
    return groups


def _read_chunk(data: DiskRange, latents: np.ndarray, labels: np.ndarray) -> LatentBlock:
    """A ``LatentBlock`` of ``latents`` (local) of ``data``, renumbered from 0."""
    ptr = data.latent_ptr
    counts = ptr[latents + 1] - ptr[latents]
    block_ptr = np.zeros(len(latents) + 1, dtype=np.int64)
    np.cumsum(counts, out=block_ptr[1:])
    # one read per run of consecutive latents
    breaks = np.flatnonzero(np.diff(latents) != 1) + 1
    firsts = np.concatenate(([0], breaks))
    lasts = np.concatenate((breaks, [len(latents)])) - 1
    runs = list(zip(ptr[latents[firsts]].tolist(), ptr[latents[lasts] + 1].tolist()))
    n = int(block_ptr[-1])
    rows, values = np.empty(n, dtype=np.int32), np.empty(n, dtype=np.float32)
    data.layout.read_runs(runs, rows, values)
    return LatentBlock(block_ptr, rows, values, labels)


def _groups(data: DiskRange, latents) -> list:
    return _chunks(data, np.asarray(latents, dtype=np.int64), data.chunk_nnz)


def _read_ahead(data: DiskRange, groups: list, labels: np.ndarray):
    """The chunks of ``groups``, each read by a helper thread while the caller computes
    the previous one."""
    if not groups:
        return
    with ThreadPoolExecutor(1, thread_name_prefix="probe-dask-read") as pool:
        ahead = pool.submit(_read_chunk, data, groups[0], labels)
        for i in range(len(groups)):
            block = ahead.result()
            if i + 1 < len(groups):
                ahead = pool.submit(_read_chunk, data, groups[i + 1], labels)
            yield block
            del block


def _read_in_turn(data: DiskRange, groups: list, labels: np.ndarray):
    for group in groups:
        yield _read_chunk(data, group, labels)


def _blocks(data, latents, labels=None, device=None, backend="c"):
    """``(latents, block)`` of ``data``'s chunks: the whole block once when it is in
    memory, else chunks read from disk one ahead of the caller (on the Triton backend,
    ``kernels.stream_blocks`` reads and copies them to the device one ahead itself)."""
    if isinstance(data, LatentBlock):
        yield np.arange(data.n_latents), data
        return
    labels = data.layout.labels() if labels is None else labels
    groups = _groups(data, latents)
    lazy = _read_in_turn(data, groups, labels)
    streamed = kernels.stream_blocks(lazy, device, backend)
    blocks = streamed if streamed is not lazy else _read_ahead(data, groups, labels)
    yield from zip(groups, blocks)


def _chunk_pairs(pairs: ActivePairs, latents: np.ndarray) -> tuple[ActivePairs, int, int]:
    """The pairs of ``latents`` (ascending, every latent with pairs among them): a slice."""
    p0, p1 = int(pairs.latent_ptr[latents[0]]), int(pairs.latent_ptr[latents[-1] + 1])
    ptr = np.append(pairs.latent_ptr[latents], p1) - p0
    return ActivePairs(ptr, pairs.classes[p0:p1], pairs.b[p0:p1], pairs.w[p0:p1]), p0, p1


def _pair_sums(kernel, rows: int, data, pairs: ActivePairs, device, backend, resident):
    if isinstance(data, LatentBlock):
        return kernel(data, pairs, device, backend=backend, resident=resident)
    out = np.zeros((rows, pairs.n_pairs))
    active = np.flatnonzero(np.diff(pairs.latent_ptr))
    for latents, block in _blocks(data, active, device=device, backend=backend):
        chunk, p0, p1 = _chunk_pairs(pairs, latents)
        out[:, p0:p1] = kernel(block, chunk, device, backend=backend)
    return out


def range_fit_sums(data, pairs: ActivePairs, device=None, backend="auto", resident=False):
    """``kernels.fit_sums`` of a range's active ``pairs`` over its events (``resident``:
    Triton keeps a block in memory on the device)."""
    return _pair_sums(kernels.fit_sums, 6, data, pairs, device, backend, resident)


def sums_at_zero(label_sums: LabelSums, pairs: ActivePairs, device=None,
                 backend="auto") -> np.ndarray:
    """``kernels.fit_sums`` of ``pairs`` that all have ``w = 0``, without their events.

    At ``w = 0`` every event of a pair's latent has ``eta = b``, so each of the six sums is
    a per-pair constant (``mu``, ``s`` or ``softplus`` of ``b``) times the latent's count,
    sum of values or sum of squares, which the label sums hold. The constants are the
    kernel's own (its float32 sigmoid): one event of value 1 per latent. Equal to the
    event-by-event sums up to the order of additions (measured: 2e-15 relative).
    Memory: ``6 x 8 P`` bytes of result, ``48 P`` for the constants and ``24 P`` of
    per-pair latent sums (each product is written into the result: no temporaries).
    """
    n_lat = len(pairs.latent_ptr) - 1
    unit = LatentBlock(np.arange(n_lat + 1, dtype=np.int64), np.zeros(n_lat, dtype=np.int32),
                       np.ones(n_lat, dtype=np.float32), np.zeros(1, dtype=np.uint8))
    mu, _, s, _, _, softplus = kernels.fit_sums(unit, pairs, device, backend=backend)
    per_latent = np.diff(pairs.latent_ptr)
    count = np.repeat(label_sums.count.astype(np.float64), per_latent)
    sum_v = np.repeat(label_sums.vpos.sum(axis=1), per_latent)  # every row has one class
    out = np.empty((6, pairs.n_pairs))  # each product written in place: no temporaries
    np.multiply(count, mu, out=out[0])
    np.multiply(sum_v, mu, out=out[1])
    np.multiply(count, s, out=out[2])
    np.multiply(sum_v, s, out=out[3])
    np.multiply(np.repeat(label_sums.sum_v2, per_latent), s, out=out[4])
    np.multiply(count, softplus, out=out[5])
    return out


def range_eval_sums(data, pairs: ActivePairs, device=None, backend="auto", resident=False):
    """``kernels.eval_sums`` of a range's ``pairs`` over its events."""
    return _pair_sums(kernels.eval_sums, 3, data, pairs, device, backend, resident)


def range_label_sums(data, n_classes: int, device="cpu") -> LabelSums:
    """``kernels.label_sums`` of a range's events (every latent of it), on ``device``."""
    if isinstance(data, LatentBlock):
        return kernels.label_sums(data, n_classes, device)
    n_lat = data.n_latents
    labels = data.layout.labels()
    count = np.diff(data.latent_ptr)
    sum_v2 = np.zeros(n_lat)
    pos, vpos = np.zeros((n_lat, n_classes)), np.zeros((n_lat, n_classes))
    for latents, block in _blocks(data, np.arange(n_lat), labels):
        part = kernels.label_sums(block, n_classes, device)
        sum_v2[latents], pos[latents], vpos[latents] = part.sum_v2, part.pos, part.vpos
    if len(labels) and int(labels.max()) >= n_classes:
        raise ValueError(f"label {int(labels.max())} >= n_classes {n_classes}")
    class_rows = np.bincount(labels, minlength=n_classes).astype(np.int64)
    return LabelSums(len(labels), class_rows, count.astype(np.int64), sum_v2, pos, vpos)
