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

Memory per process: while planning, the ``indptr`` of one shard at a time (8 bytes a row,
45 MB for 5.6 million rows); the plan kept afterwards holds no per-row data (a few hundred
small objects and the row ranges of the blocks).
"""

from __future__ import annotations

import dataclasses
import math
import os
import zipfile
from pathlib import Path

import dask
import numpy as np
from dask.system import CPU_COUNT
from dask.utils import format_bytes, parse_bytes
from distributed.system import MEMORY_LIMIT

from probe_dask.core.solver import CHUNK_PAIRS, TrustRegionState
from probe_dask.engine.shard import csr_block_array, label_block_array
from probe_dask.engine.workers import gpu_resources, worker_table
from probe_dask.errors import InputError, ProbeDaskError
from probe_dask.io.labels import open_labels
from probe_dask.io.layout import activations_path
from probe_dask.io.store import CSRSource
from probe_dask.kernels import ckernel
from probe_dask.kernels.torch_backend import CPU_WORK_CHUNK, CUDA_WORK_CHUNK

__all__ = ["Buffer", "ShardInfo", "Plan", "plan_run", "plan_job", "format_plan", "reblock",
           "read_shard_info", "MAX_BLOCK_NNZ", "MIN_BLOCK_NNZ", "TARGET_FRACTION",
           "WORKER_STAGES", "DRIVER_STAGES"]

#: Largest block the planner picks: past this, fewer tasks save no measurable time.
MAX_BLOCK_NNZ = 4_000_000
#: Smallest block the planner picks (unless one row is wider): smaller blocks make the
#: scheduler, not the memory, the bottleneck.
MIN_BLOCK_NNZ = 2**16
#: Share of a worker's memory limit the plan keeps every worker under (Dask's own ``target``).
TARGET_FRACTION = 0.6
#: RSS of an idle worker that imported probe_dask's kernels (Python, dask, numpy, scipy, torch),
#: measured on a LocalCluster worker (250 to 265 MiB); without torch it is about 70 MiB.
WORKER_BASELINE = 270 * 2**20
WORKER_BASELINE_NO_TORCH = 100 * 2**20
#: RSS of the driver: Python, dask, distributed, torch, the client and an in-process scheduler.
DRIVER_BASELINE = 300 * 2**20
#: Scheduler state per task of a pass (held on the driver for local and Slurm clusters).
SCHEDULER_TASK_BYTES = 8 * 2**10
#: Bytes per (event x pair) element of the torch backend's chunk temporaries (counted in
#: ``kernels_torch.torch_sums``); a chunk holds at most ``2 work_chunk`` elements.
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
DRIVER_STAGES = ("open", "plan", "fit_start", "iteration", "evaluate", "write")


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
    #: The row blocks of each shard at ``block_nnz`` (``CSRSource.row_blocks``): what the fit uses.
    row_blocks: dict = dataclasses.field(default_factory=dict, repr=False)

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
    max_row = _max_row(indptr)
    return ShardInfo(path, n_rows, n_cols, int(nnz), max_row,
                     info.compress_type != zipfile.ZIP_STORED, indptr)


def _max_row(indptr, step=2**20) -> int:
    """Non-zeros of the widest row, without a second row-length array."""
    return max((int(np.diff(indptr[s:s + step + 1]).max()) for s in range(0, indptr.size - 1, step)),
               default=0)


def _source_info(source) -> ShardInfo:
    """ShardInfo of an opened ``CSRSource`` (its ``indptr`` read once)."""
    indptr = source.read_indptr(0, source.n_rows)
    return ShardInfo(str(source.path), int(source.n_rows), int(source.n_cols), int(source.nnz),
                     _max_row(indptr),
                     getattr(source, "kind", "") == "store", indptr)


def _shard(obj, run):
    """(ShardInfo, LabelsSource or None) from a Shard, a CSRSource or a shard folder."""
    if obj is None:
        return None, None
    if isinstance(obj, ShardInfo):
        return obj, None
    if hasattr(obj, "source") and hasattr(obj, "labels"):  # array.Shard
        return _source_info(obj.source), obj.labels
    if hasattr(obj, "read_indptr"):
        return _source_info(obj), None
    if run is None:
        raise ValueError("a shard folder needs run= (the folder holding inference/<shard>/)")
    labels = open_labels(obj)
    info = read_shard_info(activations_path(run, Path(obj).name))
    if info.n_rows != labels.n_rows:
        raise InputError(info.path, "shape.npy (rows)", info.n_rows, f"{labels.n_rows} rows as in {labels.path}")
    return info, labels


def reblock(shard, blocks):
    """The same ``array.Shard`` cut into other row blocks: a list of ``(r0, r1)``, or a
    target number of non-zeros per block (``CSRSource.row_blocks``). Nothing is read."""
    if isinstance(blocks, (int, np.integer)):
        blocks = shard.source.row_blocks(int(blocks))
    blocks = [(int(r0), int(r1)) for r0, r1 in blocks]
    return dataclasses.replace(shard, X=csr_block_array(shard.source, blocks),
                               y=label_block_array(shard.labels, blocks), row_blocks=blocks)


# ----------------------------------------------------------------------------- the model


def _fmt(n) -> str:
    return format_bytes(int(n))


def _limit(n) -> str:
    """A memory limit as a user writes it: decimal GB/MB when exact, else binary units."""
    n = int(n)
    for unit, size in (("GB", 10**9), ("MB", 10**6)):
        if n % size == 0:
            return f"{n // size} {unit}"
    return _fmt(n)


def _read_ahead(threads: int) -> int:
    """CSR blocks a worker may hold at once: one per thread being converted, plus the root
    tasks (reads) the scheduler keeps on it (``distributed.scheduler.worker-saturation``,
    1.1 by default)."""
    sat = dask.config.get("distributed.scheduler.worker-saturation", 1.1)
    try:
        sat = float(sat)
    except (TypeError, ValueError):
        sat = 1.1
    if not math.isfinite(sat):
        sat = 4.0  # no queuing: every root task is sent at once; assume a deep queue
    # one block being converted per thread, plus the reads running or queued (measured on
    # a 1-thread LocalCluster worker: up to 3 CSR blocks during a streaming pass)
    return threads + max(math.ceil(sat * threads), 1)


def _model(cfg, block_nnz, work_chunk, persist):
    """(driver, worker, gpu) buffers for one choice of block size, work chunk and persist."""
    L, C, T, se = cfg["L"], cfg["C"], cfg["threads"], cfg["split_every"]
    LC, P = L * C, L * C
    train, test = cfg["train"], cfg["test"]
    nb, bnz, brows = {}, {}, {}
    for name, s in (("train", train), ("test", test)):
        if s is not None:
            nb[name], bnz[name], brows[name] = s.block_stats(block_nnz)
    n, r = max(bnz.values()), max(brows.values())
    k = _read_ahead(T)
    torch_host = cfg["backend"] == "torch" and cfg["device"] == "cpu"
    cuda = cfg["device"] == "cuda"
    W = lambda *a, **kw: Buffer("worker", *a, **kw)  # noqa: E731
    worker = [
        W("baseline: Python, dask, numpy, scipy" + (", torch" if cfg["torch"] else ""),
          "measured RSS of an idle worker", cfg["worker_baseline"]),
    ]
    for name in nb:  # blocks streamed from disk, per shard and stage
        sn, sr = bnz[name], brows[name]
        live = ("label_train",) + (() if persist else ("fit", "eval_train")) if name == "train" \
            else ("label_test", "eval_test")
        worker += [
            W(f"CSR row block read ({name}, largest)", f"8 nnz_b + 12 (rows_b + 1); {k} per worker "
              "(converting + running/queued reads)", 8 * sn + 12 * (sr + 1), k, live),
            W(f"labels of a block ({name})", "rows_b (uint8)", sr, k, live),
            W(f"LatentBlock being used ({name})", "8 nnz_b + 8 (L + 1) + rows_b; one per thread",
              8 * sn + 8 * (L + 1) + sr, T,
              () if persist and name == "train" else live),  # persisted: it is a resident one
            W(f"label_sums scratch ({name})", f"{LABEL_SCRATCH_PER_NNZ} nnz_b + 24 L C; one per thread",
              LABEL_SCRATCH_PER_NNZ * sn + 24 * LC, T, (f"label_{name}",)),
        ]
    worker += [
        W("label partials (LabelSums) in the reduction", f"16 L C + 16 L + 8 C; threads x "
          f"(split_every + 2) = {T * (se + 2)}", 16 * LC + 16 * L + 8 * C, T * (se + 2),
          ("label_train", "label_test")),
        W("active pairs, scattered (fit)", "20 P + 8 (L + 1); one copy per worker",
          20 * P + 8 * (L + 1), 1, ("fit",)),
        W("fit partials (6 x P float64) in the reduction", "48 P; threads x (split_every + 2)",
          48 * P, T * (se + 2), ("fit",)),
        W("all pairs, scattered (evaluation)", "20 L C + 8 (L + 1); one copy per worker",
          20 * LC + 8 * (L + 1), 1, ("eval_train", "eval_test")),
        W("eval partials (3 x P float64) in the reduction", "24 L C; threads x (split_every + 2)",
          24 * LC, T * (se + 2), ("eval_train", "eval_test")),
    ]
    if persist:
        per = -(-nb["train"] // cfg["n_workers"])
        extra = 1 if nb["train"] > cfg["n_workers"] else 0  # the scheduler may not spread them evenly
        worker.insert(1, W("resident train LatentBlocks (persisted)",
                           f"8 nnz_b + 8 (L + 1) + rows_b; ceil({nb['train']} blocks / "
                           f"{cfg['n_workers']} workers)" + (" + 1" if extra else ""),
                           8 * bnz["train"] + 8 * (L + 1) + brows["train"], per + extra,
                           WORKER_STAGES))  # filled during the label pass
    if torch_host:
        worker.append(W("torch chunk temporaries (CPU)", f"{TORCH_ELEMENT_BYTES} x 2 work_chunk "
                        f"(work_chunk = {work_chunk}) + 8 nnz_b copies; one per thread",
                        TORCH_ELEMENT_BYTES * 2 * work_chunk + 8 * n + r, T, ("fit", "eval_train", "eval_test")))
    elif not cuda:
        worker.append(W("C kernel tile buffers", "about 64 KB per thread", _C_KERNEL_SCRATCH, T,
                        ("fit", "eval_train", "eval_test")))
    gpu = []
    if cuda:
        G = lambda *a, **kw: Buffer("gpu", *a, **kw)  # noqa: E731
        gpu = [
            G("device copy of the block (fit: values)", "4 nnz_b", 4 * n, 1, ("fit",)),
            G("device copy of the block (eval: values, rows, labels)", "8 nnz_b + rows_b", 8 * n + r, 1,
              ("eval_train", "eval_test")),
            G("pairs b, w and classes on the device", "20 P", 20 * P, 1, ("fit", "eval_train", "eval_test")),
            G("fit output (6 x P float64)", "48 P", 48 * P, 1, ("fit",)),
            G("eval output (3 x P float64)", "24 P", 24 * P, 1, ("eval_train", "eval_test")),
            G("torch chunk temporaries", f"{TORCH_ELEMENT_BYTES} x 2 work_chunk (work_chunk = {work_chunk})",
              TORCH_ELEMENT_BYTES * 2 * work_chunk, 1, ("fit", "eval_train", "eval_test")),
        ]
        worker.append(W("host copy of the kernel output", "48 P (fit) / 24 P (eval)", 48 * P, T,
                        ("fit", "eval_train", "eval_test")))

    state_pp = 8 * len(TrustRegionState.FLOAT_FIELDS) + len(TrustRegionState.BOOL_FIELDS)
    n_tasks = 5 * max(nb.values()) + 2
    D = lambda *a, **kw: Buffer("driver", *a, **kw)  # noqa: E731
    after_open = DRIVER_STAGES[2:]
    rows = max(train.n_rows, test.n_rows if test is not None else 0)
    driver = [
        D("baseline: Python, dask, distributed, torch, client, scheduler", "measured RSS",
          cfg["driver_baseline"]),
        D("scheduler state of one pass", f"{SCHEDULER_TASK_BYTES // 1024} KB x {n_tasks} tasks",
          SCHEDULER_TASK_BYTES * n_tasks, 1, after_open),
        D("train LabelSums (pos, vpos)", "16 L C + 16 L + 8 C", 16 * LC + 16 * L + 8 * C, 1, after_open),
        D("solver state", f"{state_pp} L C ({len(TrustRegionState.FLOAT_FIELDS)} float64 + "
          f"{len(TrustRegionState.BOOL_FIELDS)} bool per pair)", state_pp * LC, 1, after_open),
        D("init_state scratch", f"{INIT_SCRATCH_PER_PAIR} L C", INIT_SCRATCH_PER_PAIR * LC, 1, ("fit_start",)),
        D("active pairs of an iteration", "28 P", 28 * P, 1, ("iteration",)),
        D("summed fit sums (6 x P float64)", "48 P", 48 * P, 1, ("iteration",)),
        D("solver.step scratch", f"{STEP_SCRATCH_PER_PAIR} x min(P, {CHUNK_PAIRS})",
          STEP_SCRATCH_PER_PAIR * min(P, CHUNK_PAIRS), 1, ("iteration",)),
        D("train SplitMetrics (loss, tp, fp, tn, fn)", "40 L C", 40 * LC, 1, ("evaluate", "write")),
        D("test LabelSums", "16 L C + 16 L + 8 C", 16 * LC + 16 * L + 8 * C, 1, ("evaluate",)),
        D("all pairs + summed eval sums (3 x P)", "4 L C + 8 L + 24 L C", 28 * LC + 8 * L, 1, ("evaluate",)),
        D("split_metrics scratch", f"{SPLIT_METRICS_PEAK_PER_PAIR} L C", SPLIT_METRICS_PEAK_PER_PAIR * LC,
          1, ("evaluate",)),
        D("test SplitMetrics", "40 L C", 40 * LC, 1, ("write",)),
        D("float32 copies written to probe1d_metrics.npz + class table", "32 L C + 8 L C", 40 * LC,
          1, ("write",)),
    ]
    csr = max(train.csr_bytes, test.csr_bytes if test is not None else 0)
    driver += [
        D("validating (and ingesting, when compressed) token_acts.npz",
          "min(2 x chunk_bytes, CSR bytes): a raw and a converted chunk", min(2 * cfg["chunk_bytes"], csr),
          1, ("open",)),
        D("indptr of a shard, read to plan the blocks", "8 (rows + 1)", 8 * (rows + 1), 1, ("plan",)),
    ]
    worker = [b for b in worker if b.stages]  # e.g. no separate block when persisted
    return driver, worker, gpu, nb, {"nnz": n, "rows": r}


def _device(device):
    if device in (None, "auto"):
        try:
            import torch

            return "cuda" if torch.cuda.is_available() else "cpu"
        except ImportError:
            return "cpu"
    return str(device).split(":")[0]


def _backend(device, backend):
    if device == "cuda" or backend == "torch":
        return "torch"
    if backend == "c":
        return "c"
    return "c" if ckernel.available() else "torch"


def _default_limit(n_workers, threads) -> tuple[int, int]:
    """(n_workers, memory_limit) a default ``LocalCluster`` would use on this machine."""
    n_workers = n_workers or max(1, CPU_COUNT // max(threads, 1))
    return n_workers, int(MEMORY_LIMIT * min(1.0, threads / CPU_COUNT))


def plan_run(train, test=None, *, run=None, memory_limit=None, n_workers=None, threads=1,
             device="cpu", n_classes=None, block_nnz=None, work_chunk=None,
             target_fraction=TARGET_FRACTION, split_every=4, persist="auto", gpu_memory=None,
             backend="auto", worker_baseline=None, driver_baseline=None,
             chunk_bytes=64 * 2**20) -> Plan:
    """Plan the memory of a run, and choose its block size.

    Parameters
    ----------
    train, test : path, ``array.Shard`` or ``CSRSource``
        The shards: folders (with ``run``), opened shards, or sources (then give
        ``n_classes``). Only headers, ``indptr`` and labels are read.
    run : path, optional
        The run folder, when shards are given as folders.
    memory_limit : int or str, optional
        Memory limit of one worker (``"16GB"``); default: what a ``LocalCluster`` of
        ``n_workers`` would get on this machine.
    n_workers, threads : int
        Workers, and threads per worker (each thread works on its own block).
    device : {"cpu", "cuda", "auto"}
    n_classes : int, optional
        Default: ``max(label) + 1`` over both shards.
    block_nnz, work_chunk : int, optional
        Fix the block size / torch work chunk instead of choosing them.
    target_fraction : float
        Every worker's predicted peak must stay under this share of its limit.
    persist : {"auto", True, False}
        Keep the train blocks in worker memory; "auto": when they fit too.
    gpu_memory : int or str, optional
        Device memory of one GPU (default: the driver's first GPU, when it has one).

    Returns
    -------
    Plan
        ``fits`` False means no setting keeps the workers under the target; ``message``
        says why and ``min_memory_limit`` which limit would.
    """
    tr, tr_labels = _shard(train, run)
    te, te_labels = _shard(test, run)
    if te is not None and te.n_cols != tr.n_cols:
        raise InputError(te.path, "shape.npy (latents)", te.n_cols, f"{tr.n_cols} as in {tr.path}")
    if n_classes is None:
        if tr_labels is None:
            raise ValueError("n_classes is needed when shards are given as CSR sources")
        n_classes = 1 + max(int(x.max_label()) for x in (tr_labels, te_labels) if x is not None)
    if memory_limit is None:
        n_workers, memory_limit = _default_limit(n_workers, threads)
    elif isinstance(memory_limit, str):
        memory_limit = parse_bytes(memory_limit)
    n_workers = n_workers or _default_limit(None, threads)[0]
    device = _device(device)
    backend = _backend(device, backend)
    if isinstance(gpu_memory, str):
        gpu_memory = parse_bytes(gpu_memory)
    if device == "cuda" and gpu_memory is None:
        try:
            import torch

            if torch.cuda.is_available():
                gpu_memory = int(torch.cuda.get_device_properties(0).total_memory)
        except ImportError:
            pass
    # The kernels import torch only for the torch backend (CUDA, or the CPU fallback).
    uses_torch = backend == "torch" or device == "cuda"
    cfg = dict(L=tr.n_cols, C=int(n_classes), threads=int(threads), n_workers=int(n_workers),
               split_every=int(split_every), train=tr, test=te, device=device, backend=backend,
               torch=uses_torch, chunk_bytes=int(chunk_bytes),
               worker_baseline=int(worker_baseline or (WORKER_BASELINE if uses_torch
                                                       else WORKER_BASELINE_NO_TORCH)),
               driver_baseline=int(driver_baseline or DRIVER_BASELINE))
    limit = int(memory_limit)
    budget = target_fraction * limit
    gpu_budget = target_fraction * gpu_memory if gpu_memory else math.inf

    if backend == "torch":
        default_wc = CUDA_WORK_CHUNK if device == "cuda" else CPU_WORK_CHUNK
        chunks = [int(work_chunk)] if work_chunk else \
            [default_wc >> i for i in range(64) if (default_wc >> i) >= _MIN_WORK_CHUNK] or [default_wc]
    else:
        chunks = [None]
    threads_total = max(1, int(n_workers) * int(threads))
    cap = max(1, min(MAX_BLOCK_NNZ, -(-tr.nnz // threads_total)))
    widest = max(tr.max_row_nnz, te.max_row_nnz if te else 0, 1)
    floor = max(widest, min(MIN_BLOCK_NNZ, cap))  # rows are never split
    if block_nnz:
        sizes = [int(block_nnz)]
    else:
        sizes, s = [], max(cap, floor)
        while s > floor:
            sizes.append(s)
            s = int(s * 0.75)
        sizes.append(floor)

    def build(bn, wc, keep):
        drv, wrk, gpu, nb, mb = _model(cfg, bn, wc or 0, keep)
        return Plan(tr, te, cfg["L"], cfg["C"], cfg["n_workers"], cfg["threads"], limit, device,
                    backend, target_fraction, cfg["split_every"], int(bn), wc, keep, nb, mb, drv,
                    wrk, gpu, gpu_memory, True, None, "", bool(block_nnz))

    def ok(p):
        return p.worker_peak <= budget and p.gpu_peak <= gpu_budget

    chosen = None
    for bn in sizes:
        for wc in chunks:
            p = build(bn, wc, persist is True)
            if ok(p):
                chosen = p
                break
        if chosen is not None:
            break
    if chosen is not None:
        if persist == "auto":
            kept = build(chosen.block_nnz, chosen.work_chunk, True)
            chosen = kept if ok(kept) else chosen
        _finish(chosen)
        chosen.message = (
            f"fits: worker peak {_fmt(chosen.worker_peak)} ({_peak(chosen.worker, WORKER_STAGES)[0]}) "
            f"<= {target_fraction:.0%} of the {_limit(limit)} limit; driver peak {_fmt(chosen.driver_peak)}")
        return chosen

    # Nothing fits: report the smallest setting and the limit that would hold it.
    worst = build(sizes[-1], chunks[-1], persist is True)
    worst.fits = False
    need = max(worst.worker_peak / target_fraction, 0)
    worst.min_memory_limit = int(math.ceil(need / 10**6)) * 10**6
    stage = _peak(worst.worker, WORKER_STAGES)[0]
    head = f"worker memory limit {_limit(limit)} cannot hold one block: "
    raise_to = f"raise --memory-limit to at least {worst.min_memory_limit // 10**6}MB"
    if block_nnz:
        auto = plan_run(tr, te, memory_limit=limit, n_workers=n_workers, threads=threads,
                        device=device, n_classes=n_classes, work_chunk=work_chunk,
                        target_fraction=target_fraction, split_every=split_every,
                        persist=persist, gpu_memory=gpu_memory, backend=backend,
                        worker_baseline=worker_baseline, driver_baseline=driver_baseline,
                        chunk_bytes=chunk_bytes)
        hint = (f"lower --block-nnz to {auto.block_nnz:,} (or leave it out: the plan picks it)"
                if auto.fits else "lower --block-nnz")
        worst.message = (
            head + f"--block-nnz {int(block_nnz):,} (largest block {worst.max_block['nnz']:,} "
            f"non-zeros) needs {_fmt(worst.worker_peak)} per worker ({stage}), over "
            f"{target_fraction:.0%} of the limit ({_fmt(budget)}); {hint}, or {raise_to}")
    else:
        worst.message = (
            head + f"even the smallest blocks ({worst.block_nnz:,} non-zeros; the widest row "
            f"has {widest:,}) need {_fmt(worst.worker_peak)} per worker ({stage}), over "
            f"{target_fraction:.0%} of the limit ({_fmt(budget)}); {raise_to}"
            + (", or use fewer --threads per worker (each thread holds its own block)"
               if threads > 1 else ""))
    if gpu_memory and worst.gpu_peak > gpu_budget:
        worst.message += (f"; the GPU needs {_fmt(worst.gpu_peak)} of its {_fmt(gpu_memory)}")
    return _finish(worst)


def _finish(plan: Plan) -> Plan:
    """Keep the chosen row blocks and let go of ``indptr`` (8 bytes a row): a plan kept for
    the whole run (telemetry holds it) must not hold per-row data on the driver."""
    for name in ("train", "test"):
        info = getattr(plan, name)
        if info is not None and info.indptr is not None:
            plan.row_blocks[name] = info.blocks(plan.block_nnz)
            setattr(plan, name, dataclasses.replace(info, indptr=None))
    return plan


def plan_job(client, inputs, *, device=None, persist="auto", log=None, **kwargs):
    """Plan a job on the workers ``client`` has, and cut both shards into the planned blocks.

    The block size is the caller's when ``inputs.block_nnz`` is set, else the plan's. Raises
    before any fitting when no setting fits the workers' memory limit.

    Returns
    -------
    (job.JobInputs, Plan)
        The inputs with both shards re-cut (when the size changed), and the plan.

    Raises
    ------
    ProbeDaskError
        When the workers' memory limit cannot hold one block (names the limit, the block
        size and the setting to change).
    """
    workers = worker_table(client)
    if not workers:
        raise ProbeDaskError("the cluster has no workers")
    limits = [int(w.get("memory_limit") or 0) for w in workers.values()]
    threads = max(int(w.get("nthreads") or 1) for w in workers.values())
    limit = min((x for x in limits if x), default=None)
    if limit is None:  # workers without a limit: the machine's memory bounds them
        limit = MEMORY_LIMIT
    if device is None:
        device = "cuda" if gpu_resources(client) else "auto"
    fixed = getattr(inputs, "block_nnz", None)
    plan = plan_run(inputs.train, inputs.test, memory_limit=limit, n_workers=len(workers),
                    threads=threads, device=device, n_classes=inputs.n_classes, block_nnz=fixed,
                    persist=persist, **kwargs)
    if not plan.fits:
        raise ProbeDaskError(plan.message)
    if log is not None:
        log(f"memory plan: blocks of {plan.block_nnz:,} non-zeros, worker peak "
            f"{_fmt(plan.worker_peak)} of a {_fmt(plan.memory_limit)} limit, driver peak "
            f"{_fmt(plan.driver_peak)}, train blocks {'kept in' if plan.persist else 're-read from disk into'} "
            "worker memory")
    if inputs.train.row_blocks != plan.row_blocks["train"] or \
            inputs.test.row_blocks != plan.row_blocks["test"]:
        inputs = dataclasses.replace(inputs, train=reblock(inputs.train, plan.row_blocks["train"]),
                                     test=reblock(inputs.test, plan.row_blocks["test"]))
    return inputs, plan


def format_plan(plan: Plan) -> str:
    """The plan as a table: every buffer per process, its formula, size and when it lives."""
    lines = []
    for name, s in (("train", plan.train), ("test", plan.test)):
        if s is not None:
            lines.append(f"{name}: {s.path}: {s.n_rows:,} rows x {s.n_cols:,} latents, {s.nnz:,} "
                         f"non-zeros (CSR {_fmt(s.csr_bytes)}), widest row {s.max_row_nnz:,}")
    kernel = {"c": "C kernel", "torch": "torch"}[plan.backend]
    lines.append(f"cluster: {plan.n_workers} workers x {plan.threads} thread(s), memory limit "
                 f"{_fmt(plan.memory_limit)} each (target {plan.target_fraction:.0%} = "
                 f"{_fmt(plan.worker_budget)}), device {plan.device} ({kernel})"
                 + (f", GPU memory {_fmt(plan.gpu_memory)}" if plan.gpu_memory else ""))
    nb = ", ".join(f"{k} {v:,}" for k, v in plan.n_blocks.items())
    lines.append(f"{'given' if plan.block_nnz_fixed else 'chosen'}: block_nnz {plan.block_nnz:,} "
                 f"(blocks: {nb}; largest {plan.max_block['nnz']:,} non-zeros, "
                 f"{plan.max_block['rows']:,} rows), work chunk "
                 f"{plan.work_chunk if plan.work_chunk else '- (C kernel: none)'}, train blocks "
                 f"{'persisted' if plan.persist else 're-read every pass'}")
    lines.append(f"L = {plan.n_latents:,} latents, C = {plan.n_classes} classes, P = L C = "
                 f"{plan.n_latents * plan.n_classes:,} pairs, split_every = {plan.split_every}")
    lines.append("")
    head = f"{'process':<7} {'buffer':<50} {'each':>10} {'x':>4} {'total':>10}  {'live in':<28} formula"
    lines.append(head)
    lines.append("-" * len(head))
    for group, stages in ((plan.driver, DRIVER_STAGES), (plan.worker, WORKER_STAGES),
                          (plan.gpu, ("fit", "eval_train", "eval_test"))):
        for b in group:
            live = "all" if "all" in b.stages or set(stages) <= set(b.stages) else ",".join(b.stages)
            lines.append(f"{b.process:<7} {b.name[:50]:<50} {_fmt(b.each):>10} {b.count:>4} "
                         f"{_fmt(b.nbytes):>10}  {live[:28]:<28} {b.formula}")
    lines.append("")
    for who, bufs, stages in (("driver", plan.driver, DRIVER_STAGES),
                              ("each worker", plan.worker, WORKER_STAGES),
                              ("each GPU", plan.gpu, ("fit", "eval_train", "eval_test"))):
        if not bufs:
            continue
        per = ", ".join(f"{st} {_fmt(sum(b.nbytes for b in bufs if b.live(st)))}" for st in stages)
        lines.append(f"peak of {who}: {_fmt(_peak(bufs, stages)[1])} (by stage: {per})")
    lines.append(("OK, " if plan.fits else "DOES NOT FIT: ") + plan.message)
    return "\n".join(lines)
