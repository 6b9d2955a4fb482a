"""The memory model of a run: every buffer each process holds, and the block size that fits.

:func:`plan_run` reads only the shards' headers, index pointers and labels (seconds, even
for a 27 GB ``token_acts.npz``: ``indptr`` is 8 bytes a row) and lists, per process, every
buffer the run will hold with its formula and its size for these shards: the driver's solver
state and passes' sums, and on each worker its baseline, resident blocks (when persisted),
the CSR blocks being read, the ``LatentBlock`` s, kernel temporaries, the device copy, the
scattered pairs and the reduction's partials. It picks the largest block (non-zeros per row
block, at most :data:`MAX_BLOCK_NNZ`, at least one block per worker thread) and torch work
chunk that keep every worker under ``target_fraction`` of its memory limit, or says that
none fits and which memory limit would. ``fit`` sizes its blocks with the same model
(:func:`plan_job`), so the plan printed is the plan run; telemetry then sets the measured
peaks beside these predictions.

Sizes come from the code they describe (``kernels``, ``solver``, ``passes``) and from
measurements on this stack (``tracemalloc``; process RSS of a LocalCluster worker); they are
estimates meant to be right within tens of percent, and the telemetry checks them.

Memory per process: the ``indptr`` of one shard at a time (8 bytes a row, 45 MB for 5.6
million rows) and the plan itself (a few hundred small objects).
"""

from __future__ import annotations

import dataclasses
import math
import os
import zipfile
from pathlib import Path

import numpy as np

from .errors import InputError, ProbeDaskError

__all__ = ["Buffer", "ShardInfo", "Plan", "plan_run", "plan_job", "format_plan", "reblock",
           "MAX_BLOCK_NNZ", "TARGET_FRACTION"]

#: Largest block the planner picks: past this, fewer tasks save no measurable time.
MAX_BLOCK_NNZ = 4_000_000
#: Share of a worker's memory limit the plan keeps every worker under (Dask's own ``target``).
TARGET_FRACTION = 0.6
#: RSS of an idle worker that imported probe_dask's kernels (Python, dask, numpy, scipy, torch),
#: measured on a LocalCluster worker; without torch it is about 80 MB.
WORKER_BASELINE = 300 * 2**20
WORKER_BASELINE_NO_TORCH = 100 * 2**20
#: RSS of the driver: Python, dask, distributed, torch, the client and an in-process scheduler.
DRIVER_BASELINE = 320 * 2**20
#: Scheduler state per task of a pass (held on the driver for local and Slurm clusters).
SCHEDULER_TASK_BYTES = 8 * 2**10
#: Bytes per (event x pair) element of the torch backend's chunk temporaries (counted in
#: ``kernels._torch_sums``); a chunk holds at most ``2 work_chunk`` elements.
TORCH_ELEMENT_BYTES = 112
#: ``kernels.label_sums`` scratch per non-zero (measured with tracemalloc: 25.0).
LABEL_SCRATCH_PER_NNZ = 25
#: ``solver.step`` temporaries per pair of a chunk (measured: 362) and ``init_state``'s (83).
STEP_SCRATCH_PER_PAIR = 362
INIT_SCRATCH_PER_PAIR = 83
#: ``evaluate.split_metrics`` peak per pair (measured: 73.5, of which 40 are kept).
SPLIT_METRICS_PEAK_PER_PAIR = 74
_C_KERNEL_SCRATCH = 64 * 2**10
_MIN_WORK_CHUNK = 2**12

WORKER_STAGES = ("label_train", "fit", "eval_train", "label_test", "eval_test")
DRIVER_STAGES = ("open", "fit_start", "iteration", "evaluate", "write")


@dataclasses.dataclass
class Buffer:
    """One kind of buffer: ``count`` of them, ``each`` bytes, live during ``stages``."""

    process: str
    name: str
    formula: str
    each: int
    count: int = 1
    stages: tuple = ("all",)

    @property
    def nbytes(self) -> int:
        return int(self.each) * int(self.count)

    def live(self, stage: str) -> bool:
        return "all" in self.stages or stage in self.stages


@dataclasses.dataclass
class ShardInfo:
    """What the plan knows of one shard (read from headers and ``indptr`` only)."""

    path: str
    n_rows: int
    n_cols: int
    nnz: int
    max_row_nnz: int
    compressed: bool
    indptr: np.ndarray = dataclasses.field(repr=False, default=None)

    @property
    def csr_bytes(self) -> int:
        """Bytes of the whole matrix as CSR (float32 data, int32 indices, int64 indptr)."""
        return 8 * self.nnz + 8 * (self.n_rows + 1)

    def blocks(self, block_nnz: int) -> list:
        """The row blocks ``array.open_shard`` makes (``CSRSource.row_blocks``)."""
        return _InMemoryIndptr(self.indptr, self.n_cols).row_blocks(int(block_nnz))

    def block_stats(self, block_nnz: int) -> tuple[int, int, int]:
        """(number of blocks, largest block's non-zeros, largest block's rows)."""
        b = np.asarray(self.blocks(block_nnz), dtype=np.int64)
        nnz = self.indptr[b[:, 1]] - self.indptr[b[:, 0]]
        return int(b.shape[0]), int(nnz.max()), int((b[:, 1] - b[:, 0]).max())


@dataclasses.dataclass
class Plan:
    """The memory plan of a run (see :func:`plan_run`); sizes in bytes."""

    train: ShardInfo
    test: ShardInfo | None
    n_latents: int
    n_classes: int
    n_workers: int
    threads: int
    memory_limit: int
    device: str
    backend: str
    target_fraction: float
    split_every: int
    block_nnz: int
    work_chunk: int | None
    persist: bool
    n_blocks: dict
    max_block: dict
    driver: list
    worker: list
    gpu: list
    gpu_memory: int | None
    fits: bool
    min_memory_limit: int | None
    message: str
    block_nnz_fixed: bool = False

    @property
    def worker_budget(self) -> int:
        return int(self.target_fraction * self.memory_limit)

    @property
    def worker_peak(self) -> int:
        return _peak(self.worker, WORKER_STAGES)[1]

    @property
    def driver_peak(self) -> int:
        return _peak(self.driver, DRIVER_STAGES)[1]

    @property
    def gpu_peak(self) -> int:
        return _peak(self.gpu, ("fit", "eval_train", "eval_test"))[1] if self.gpu else 0

    def to_dict(self) -> dict:
        """JSON-able summary (telemetry's ``plan`` event)."""
        def bufs(items):
            return [{"name": b.name, "formula": b.formula, "each": b.each, "count": b.count,
                     "bytes": b.nbytes, "stages": list(b.stages)} for b in items]
        shard = lambda s: None if s is None else {  # noqa: E731
            "path": s.path, "n_rows": s.n_rows, "n_cols": s.n_cols, "nnz": s.nnz,
            "max_row_nnz": s.max_row_nnz, "csr_bytes": s.csr_bytes}
        return {
            "train": shard(self.train), "test": shard(self.test), "n_latents": self.n_latents,
            "n_classes": self.n_classes, "n_workers": self.n_workers, "threads": self.threads,
            "memory_limit": self.memory_limit, "device": self.device, "backend": self.backend,
            "target_fraction": self.target_fraction, "split_every": self.split_every,
            "block_nnz": self.block_nnz, "work_chunk": self.work_chunk, "persist": self.persist,
            "n_blocks": self.n_blocks, "max_block": self.max_block,
            "worker_peak": self.worker_peak, "worker_peak_stage": _peak(self.worker, WORKER_STAGES)[0],
            "worker_budget": self.worker_budget, "driver_peak": self.driver_peak,
            "driver_peak_stage": _peak(self.driver, DRIVER_STAGES)[0], "gpu_peak": self.gpu_peak,
            "gpu_memory": self.gpu_memory, "fits": self.fits,
            "min_memory_limit": self.min_memory_limit, "message": self.message,
            "driver": bufs(self.driver), "worker": bufs(self.worker), "gpu": bufs(self.gpu),
        }


def _peak(buffers, stages) -> tuple[str, int]:
    best = (stages[0], 0)
    for st in stages:
        total = sum(b.nbytes for b in buffers if b.live(st))
        if total > best[1]:
            best = (st, total)
    return best


# ----------------------------------------------------------------------------- reading shards


class _InMemoryIndptr:
    """Duck-typed ``CSRSource`` over an in-memory ``indptr``: the very same block planner."""

    def __init__(self, indptr, n_cols, chunk_bytes=64 * 2**20):
        from .store import CSRSource

        self._indptr, self.shape, self.chunk_bytes = indptr, (indptr.size - 1, int(n_cols)), chunk_bytes
        self.nnz = int(indptr[-1])
        self._row_blocks = CSRSource.row_blocks
        self._nearest = CSRSource._nearest_boundaries

    n_rows = property(lambda self: self.shape[0])
    n_cols = property(lambda self: self.shape[1])

    def read_indptr(self, r0, r1):
        return self._indptr[r0:r1 + 1]

    def _nearest_boundaries(self, targets):
        return self._nearest(self, targets)

    def row_blocks(self, target_nnz, max_rows=None):
        return self._row_blocks(self, target_nnz, max_rows)


def _npy_header(path, name, f):
    try:
        version = np.lib.format.read_magic(f)
        read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        shape, _, dtype = (read[version](f) if version in read
                           else np.lib.format._read_array_header(f, version))
    except Exception as exc:  # zip, zlib and .npy errors alike
        raise InputError(path, f"{name} header", f"unreadable ({exc})", "a .npy header") from None
    return shape, np.dtype(dtype)


def read_shard_info(npz_path, chunk_items: int = 2**22) -> ShardInfo:
    """Shape, nnz and ``indptr`` of a ``token_acts.npz``, reading nothing else.

    ``indptr`` is streamed out of the zip (decompressed when the member is deflated); the
    ``indices`` and ``data`` members are not read beyond their headers.
    """
    path = os.path.abspath(os.fspath(npz_path))
    try:
        zf = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise InputError(path, "file", "no such file", "a CSR .npz written by scipy.sparse.save_npz") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(path, "zip archive", f"unreadable ({exc})", "a CSR .npz") from None
    with zf:
        names = set(zf.namelist())
        for m in ("shape.npy", "indptr.npy", "data.npy"):
            if m not in names:
                raise InputError(path, "members", f"missing {m}", "format, shape, indptr, indices, data")
        with zf.open("shape.npy") as f:
            shape = np.lib.format.read_array(f, allow_pickle=False)
        n_rows, n_cols = (int(x) for x in shape)
        with zf.open("data.npy") as f:
            (nnz,), _ = _npy_header(path, "data.npy", f)
        info = zf.getinfo("indptr.npy")
        indptr = np.empty(n_rows + 1, np.int64)
        with zf.open(info) as f:
            (count,), dtype = _npy_header(path, "indptr.npy", f)
            if count != n_rows + 1:
                raise InputError(path, "indptr.npy length", count, f"n_rows + 1 = {n_rows + 1}")
            for s in range(0, count, chunk_items):
                k = min(chunk_items, count - s)
                raw = f.read(k * dtype.itemsize)
                if len(raw) != k * dtype.itemsize:
                    raise InputError(path, "indptr.npy", "truncated", f"{count} items")
                indptr[s:s + k] = np.frombuffer(raw, dtype)
    if indptr[-1] != nnz:
        raise InputError(path, "indptr.npy[-1]", int(indptr[-1]), f"nnz = {nnz}")
    max_row = int(np.diff(indptr).max()) if n_rows else 0
    return ShardInfo(path, n_rows, n_cols, int(nnz), max_row,
                     info.compress_type != zipfile.ZIP_STORED, indptr)


def _source_info(source) -> ShardInfo:
    """ShardInfo of an opened ``CSRSource`` (its ``indptr`` read once)."""
    indptr = source.read_indptr(0, source.n_rows)
    return ShardInfo(str(source.path), int(source.n_rows), int(source.n_cols), int(source.nnz),
                     int(np.diff(indptr).max()) if source.n_rows else 0,
                     getattr(source, "kind", "") == "store", indptr)


def _shard(obj, run):
    """(ShardInfo, LabelsSource or None) from a Shard, a CSRSource or a shard folder."""
    if obj is None:
        return None, None
    if hasattr(obj, "source") and hasattr(obj, "labels"):  # array.Shard
        return _source_info(obj.source), obj.labels
    if hasattr(obj, "read_indptr"):
        return _source_info(obj), None
    from .array import activations_path
    from .labels import open_labels

    if run is None:
        raise ValueError("a shard folder needs run= (the folder holding inference/<shard>/)")
    labels = open_labels(obj)
    info = read_shard_info(activations_path(run, Path(obj).name))
    if info.n_rows != labels.n_rows:
        raise InputError(info.path, "shape.npy (rows)", info.n_rows, f"{labels.n_rows} rows as in {labels.path}")
    return info, labels


def reblock(shard, block_nnz: int):
    """The same ``array.Shard`` cut into blocks of about ``block_nnz`` non-zeros (no re-reading)."""
    from .array import csr_block_array, label_block_array

    blocks = shard.source.row_blocks(int(block_nnz))
    return dataclasses.replace(shard, X=csr_block_array(shard.source, blocks),
                               y=label_block_array(shard.labels, blocks), row_blocks=blocks)
