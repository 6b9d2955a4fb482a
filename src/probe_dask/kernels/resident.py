"""Blocks resident on the GPU: a worker's device copies of its persisted blocks, kept between passes.

A persisted block is the same host ``LatentBlock`` object in every pass, so the device copy
(:func:`probe_dask.kernels.triton_backend.to_device`, which keeps the block's work units
once planned) and the work list of its last pairs
(:func:`~probe_dask.kernels.triton_backend.plan`) are cached per process, keyed by the
identity of the host block. Re-planning when pairs stop is O(L) host work (the units are
the block's; the kernel reads the pairs' offsets), so it is done whenever they change. A ``weakref.finalize`` on the host block drops its entry when
the block is dropped (a released persisted block frees its device copy), and the cache is
bounded by a share of the device's memory (``probe-dask.kernels.gpu-resident-fraction``),
least recently used first out. A pass over resident blocks then moves only the active
pairs' ``(b, w)`` to the device and the sums back. Blocks read from disk every pass are
not cached: they are copied for the call and freed (``resident=False``).

Memory per process: the cached device copies, at most ``gpu-resident-fraction`` of the
device's memory (``8 nnz + n_rows`` bytes each, plus ``8 (L + 1)`` host bytes of offsets
and ``24 U + 8 S + 16 (L + 1)`` device bytes of units and pairs' offsets, see
``triton_backend``); a few hundred bytes of bookkeeping per entry.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict

import psutil
import torch

from probe_dask import config
from probe_dask.kernels import triton_backend as tb

__all__ = ["DeviceBlockCache", "device_cache", "resident_sums", "device_memory"]


def device_memory(device: torch.device) -> int:
    """Bytes of memory of ``device`` (a CUDA GPU's total; on CPU, under the interpreter, the
    machine's)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return int(psutil.virtual_memory().total)


def _work_bytes(work) -> int:
    return 0 if work is None else work.nbytes


class _Entry:
    __slots__ = ("block", "work", "nbytes", "finalizer")

    def __init__(self, block, nbytes, finalizer):
        self.block, self.work, self.nbytes, self.finalizer = block, None, nbytes, finalizer


class DeviceBlockCache:
    """Device copies of host blocks, LRU-bounded in bytes, dropped with their host block.

    Parameters
    ----------
    max_bytes : int, optional
        Bound on the device bytes held. Default: ``probe-dask.kernels.gpu-resident-fraction``
        of the device's memory, read at each insertion.

    Attributes
    ----------
    hits, misses, evictions : int
        Lookups served from the cache, copies made, entries evicted to stay in the bound.
    """

    def __init__(self, max_bytes: int | None = None):
        self.max_bytes = max_bytes
        self._entries: OrderedDict = OrderedDict()  # (id(host block), device) -> _Entry
        self._lock = threading.Lock()  # a worker may run several tasks in threads
        self.hits = self.misses = self.evictions = 0

    @property
    def nbytes(self) -> int:
        """Device bytes held by the cached copies and their work lists."""
        return sum(e.nbytes for e in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def bound(self, device: torch.device) -> int:
        """The byte bound for copies on ``device``."""
        if self.max_bytes is not None:
            return int(self.max_bytes)
        return int(float(config.get("probe-dask.kernels.gpu-resident-fraction")) * device_memory(device))

    def clear(self) -> None:
        """Drop every device copy."""
        with self._lock:
            for e in self._entries.values():
                e.finalizer.detach()
            self._entries.clear()

    def _drop(self, key) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def get(self, block, device) -> tb.DeviceBlock:
        """The device copy of host ``block`` on ``device``: cached, else copied (and cached
        when it fits the bound, evicting the least recently used)."""
        dev = tb._device(device)
        key = (id(block), str(dev))
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return entry.block
        db = tb.to_device(block, dev)
        with self._lock:
            self.misses += 1
            limit = self.bound(dev)
            if db.nbytes > limit:
                return db  # larger than the whole bound: streamed for this call only
            while self._entries and self.nbytes + db.nbytes > limit:
                _, old = self._entries.popitem(last=False)
                old.finalizer.detach()
                self.evictions += 1
            # The id of a dropped object can be reused: the finalizer removes the entry
            # before that can happen, since it runs when the host block is collected.
            finalizer = weakref.finalize(block, self._drop, key)
            self._entries[key] = _Entry(db, db.nbytes, finalizer)
            return db

    def work(self, block, db: tb.DeviceBlock, pairs) -> tb.WorkList:
        """The work list of ``(db, pairs)``: the cached one when the pairs per latent are those
        of the last call on this block (O(L) check), else planned (O(L): the units are kept
        on ``db``) and cached."""
        key = (id(block), str(db.device))
        with self._lock:
            entry = self._entries.get(key)
        if entry is not None and entry.work is not None and entry.work.matches(db, pairs):
            return entry.work
        work = tb.plan(db, pairs)
        if entry is not None:
            with self._lock:  # the bound counts the units and offsets too (WorkList.nbytes)
                entry.nbytes += _work_bytes(work) - _work_bytes(entry.work)
                entry.work = work
        return work


_CACHE = DeviceBlockCache()


def device_cache() -> DeviceBlockCache:
    """This process's cache (one per worker process)."""
    return _CACHE


def resident_sums(kind: str, block, pairs, device=None, *, resident: bool = True,
                  cache: DeviceBlockCache | None = None):
    """``triton_backend.fit_sums`` / ``eval_sums`` (``kind`` 'fit' or 'eval') of a host block,
    on its cached device copy when ``resident`` (else copied for this call only).

    Returns
    -------
    ndarray of float64, shape (6, P) or (3, P)
    """
    fn = tb.fit_sums if kind == "fit" else tb.eval_sums
    if not resident or isinstance(block, tb.DeviceBlock):
        return fn(block, pairs, device)
    cache = _CACHE if cache is None else cache
    db = cache.get(block, device)
    return fn(db, pairs, work=cache.work(block, db, pairs))
