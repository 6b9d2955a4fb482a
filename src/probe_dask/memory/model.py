"""The memory model: every buffer each process of a run holds, its formula and its size.

For one choice of block size, torch work chunk and persistence, :func:`buffers` lists,
per process, what the run will hold and when: the driver's solver state (checkpoints are
written from it, not from a copy), the passes' sums and the step's scratch, and on each worker its baseline,
resident blocks (when persisted), the CSR blocks being read, the ``LatentBlock`` s, kernel
temporaries, the device copy, the scattered pairs and the pass's partials (one group of
blocks per worker thread, :func:`partials_per_worker`: O(threads x P), whatever the number
of blocks). Sizes come from the code they describe (``kernels``, ``core``,
``engine.passes``) and from measurements on this stack (``tracemalloc``; process RSS of a
LocalCluster worker); they are estimates meant to be right within tens of percent, and
telemetry sets the measured peaks beside them.

Stage names (when a buffer is live) are :data:`probe_dask.stages.WORKER_STAGES` and
:data:`~probe_dask.stages.DRIVER_STAGES`.

Memory per process: a model is a few dozen small :class:`Buffer` records; it reads the
shards only through ``ShardInfo.block_stats`` (their ``indptr``, already in memory).
"""

from __future__ import annotations

import dataclasses
import math

import dask

from probe_dask.core.state import TrustRegionState
from probe_dask.core.tuning import CHUNK_PAIRS
from probe_dask.engine.layout import layout_tasks
from probe_dask.kernels.units import DEFAULT_SLICES, DEFAULT_SPLIT_EVENTS
from probe_dask.stages import DRIVER_STAGES

__all__ = ["Buffer", "ModelInputs", "buffers", "peak", "GPU_STAGES", "WORKER_BASELINE",
           "WORKER_BASELINE_NO_TORCH", "DRIVER_BASELINE"]

#: RSS of an idle worker that imported probe_dask's kernels (Python, dask, numpy, scipy, torch),
#: measured on a LocalCluster worker (250 to 265 MiB); without torch 150 MiB (2026-11-30:
#: dask.array imports xarray and pandas whenever they are installed, about 60 MiB of it).
WORKER_BASELINE = 320 * 2**20
WORKER_BASELINE_NO_TORCH = 160 * 2**20
#: RSS of the driver: Python, dask, distributed, torch, the client and an in-process scheduler
#: (``probe-dask fit``, LocalCluster of 1 worker, at the start of the label pass: 350 and 378 MB
#: measured in two runs, 2026-11-30: 400 MiB keeps a margin over both).
DRIVER_BASELINE = 400 * 2**20
#: Freed memory the driver's allocator keeps mapped once passes have run (glibc arenas of the
#: client's and the checkpoint writer's threads): RSS measured 37 to 48 MB above the live
#: buffers at 1 M and 2 M pairs (tracemalloc beside telemetry), not growing with P.
DRIVER_ALLOCATOR_SLACK = 64 * 2**20
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
#: ``metrics.split_metrics`` peak per pair (measured: 73.5, of which 40 are kept).
SPLIT_METRICS_PEAK_PER_PAIR = 74
#: Bytes of solver state per pair (``core.state``: 11 float64 and 3 bool fields).
_STATE_PER_PAIR = 8 * len(TrustRegionState.FLOAT_FIELDS) + len(TrustRegionState.BOOL_FIELDS)
_C_KERNEL_SCRATCH = 64 * 2**10
#: The worker stages that run a kernel (and so hold a GPU's buffers, or kernel temporaries).
GPU_STAGES = ("fit", "eval_train", "eval_test")


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


@dataclasses.dataclass(frozen=True)
class ModelInputs:
    """What the model needs besides the block size: the shards (``ShardInfo``, ``test``
    optional), ``L`` latents, ``C`` classes, the cluster and the kernel that will run."""

    train: object
    test: object
    L: int
    C: int
    threads: int
    n_workers: int
    split_every: int
    device: str
    backend: str
    torch: bool
    chunk_bytes: int
    worker_baseline: int
    driver_baseline: int
    #: Bound of a GPU worker's resident-block cache (``kernels.resident``); None: unknown.
    gpu_resident: int | None = None


def peak(buffers, stages) -> tuple[str, int]:
    """(stage, bytes) of the stage whose live buffers sum highest (the first on ties)."""
    best = (stages[0], 0)
    for st in stages:
        total = sum(b.nbytes for b in buffers if b.live(st))
        if total > best[1]:
            best = (st, total)
    return best


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


def buffers(cfg: ModelInputs, block_nnz: int, work_chunk: int, persist: bool):
    """Every buffer for one choice of block size, work chunk and persistence.

    Returns
    -------
    (driver, worker, gpu, n_blocks, max_block)
        Three lists of :class:`Buffer`; blocks per shard (``{"train": n, "test": n}``);
        the largest block over both shards (``{"nnz": n, "rows": n}``).
    """
    L, C, T = cfg.L, cfg.C, cfg.threads
    P = L * C
    train, test = cfg.train, cfg.test
    nb, bnz, brows = {}, {}, {}
    for name, s in (("train", train), ("test", test)):
        if s is not None:
            nb[name], bnz[name], brows[name] = s.block_stats(block_nnz)
    n, r = max(bnz.values()), max(brows.values())
    worker = _worker(cfg, nb, bnz, brows, n, r, work_chunk, persist)
    gpu = []
    if cfg.device == "cuda" and cfg.backend == "triton":
        gpu = _gpu_triton(cfg, nb, bnz, brows, n, r, persist)
        worker.append(Buffer("worker", "host copy of the kernel output", "48 P (fit) / 24 P (eval)",
                             48 * P, T, GPU_STAGES))
    elif cfg.device == "cuda":
        G = lambda *a, **kw: Buffer("gpu", *a, **kw)  # noqa: E731
        gpu = [
            G("device copy of the block (fit: values)", "4 nnz_b", 4 * n, 1, ("fit",)),
            G("device copy of the block (eval: values, rows, labels)", "8 nnz_b + rows_b", 8 * n + r, 1,
              ("eval_train", "eval_test")),
            G("pairs b, w and classes on the device", "20 P", 20 * P, 1, GPU_STAGES),
            G("fit output (6 x P float64)", "48 P", 48 * P, 1, ("fit",)),
            G("eval output (3 x P float64)", "24 P", 24 * P, 1, ("eval_train", "eval_test")),
            G("torch chunk temporaries", f"{TORCH_ELEMENT_BYTES} x 2 work_chunk (work_chunk = {work_chunk})",
              TORCH_ELEMENT_BYTES * 2 * work_chunk, 1, GPU_STAGES),
        ]
        worker.append(Buffer("worker", "host copy of the kernel output", "48 P (fit) / 24 P (eval)",
                             48 * P, T, GPU_STAGES))
    driver = _driver(cfg, nb, block_nnz, persist)
    worker = [b for b in worker if b.stages]  # e.g. no separate block when persisted
    return driver, worker, gpu, nb, {"nnz": n, "rows": r}


def _work_list_bytes(nnz_b: int, L: int) -> int:
    """A Triton work list's bytes (``triton_backend.plan``): ``24 U + 8 S + 16 (L + 1)``, a
    unit per latent plus ``n_slices - 1`` per giant latent (``S`` of them: more than
    ``split_events`` events; at most ``nnz_b / split_events``)."""
    S = min(L, nnz_b // DEFAULT_SPLIT_EVENTS)
    return 24 * (L + (DEFAULT_SLICES - 1) * S) + 8 * S + 16 * (L + 1)


def _slice_scratch(nnz_b: int, L: int, C: int) -> int:
    """The float64 partials of a giant latent's slices, per call: ``8 S n_slices C x 6``."""
    return 48 * min(L, nnz_b // DEFAULT_SPLIT_EVENTS) * DEFAULT_SLICES * C


def _gpu_triton(cfg, nb, bnz, brows, n, r, persist) -> list:
    """A GPU's buffers with the Triton kernels: resident train ranges (in memory, bounded by
    the cache, ``kernels.resident``), a streamed block's or chunk's copy, work lists, pairs,
    outputs."""
    L, C, T = cfg.L, cfg.C, cfg.threads
    P = L * C
    R = max(1, cfg.n_workers * T)
    G = lambda *a, **kw: Buffer("gpu", *a, **kw)  # noqa: E731
    gpu = []
    if persist:
        nnz_r, lat = -(-int(cfg.train.nnz) // R) + bnz["train"], -(-L // R)
        each = 8 * nnz_r + int(cfg.train.n_rows) + _work_list_bytes(nnz_r, lat)
        held = each * T if cfg.gpu_resident is None else min(each * T, cfg.gpu_resident)
        gpu.append(G("resident train ranges + work lists (kernels.resident)",
                     f"(8 nnz_r + rows + work list) x {T} ranges, at most gpu-resident-fraction "
                     "of the GPU", held, 1, GPU_STAGES))
    streamed = ("eval_test",) if persist else GPU_STAGES
    rows = max(r, int(cfg.train.n_rows))  # a chunk of a range carries every row's label
    gpu += [
        G("streamed block's or chunk's device copy + work list", "8 nnz_b + rows + 24 U + "
          "8 S + 16 (L + 1), U = L + 7 S, S = giant latents; one per thread",
          8 * n + rows + _work_list_bytes(n, L), T, streamed),
        G("pairs b, w and classes on the device", "20 P", 20 * P, T, GPU_STAGES),
        G("fit output (6 x P float64) and a giant latent's slice partials", "48 P + 384 S C",
          48 * P + _slice_scratch(n, L, C), T, ("fit",)),
        G("eval output (3 x P float64)", "24 P", 24 * P, T, ("eval_train", "eval_test")),
    ]
    return gpu


def partials_per_worker(cfg: ModelInputs, n_blocks: int) -> tuple[int, str]:
    """(count, formula) of the partials a worker holds at once during a pass
    (``engine.passes``: one group of blocks per worker thread, group sums tree-summed).

    While the groups run, each thread holds its group's partial and its block's (``2 T``);
    then the ``T`` group partials stay until the tree has summed them, while up to
    ``a = min(T, ceil(G / split_every))`` tree tasks (``G`` groups) each hold
    ``split_every`` partials and two running sums. Independent of the number of blocks
    beyond ``G = min(workers x threads, blocks)``.
    """
    T, se = cfg.threads, cfg.split_every
    groups = max(1, min(cfg.n_workers * T, int(n_blocks)))
    tree = -(-groups // se) if groups > 1 else 0
    a = min(T, tree)
    count = max(2 * T, T + a * (se + 2))
    return count, (f"max(2 threads, threads + a (split_every + 2)) = {count}, a = min(threads, "
                   f"ceil({groups} groups / {se})) = {a} tree tasks")


def _worker(cfg, nb, bnz, brows, n, r, work_chunk, persist) -> list:
    """A worker's buffers (the host copy of a GPU's output is added by :func:`buffers`)."""
    L, C, T = cfg.L, cfg.C, cfg.threads
    LC, P = L * C, L * C
    k = _read_ahead(T)
    W = lambda *a, **kw: Buffer("worker", *a, **kw)  # noqa: E731
    worker = [
        W("baseline: Python, dask, numpy, scipy" + (", torch" if cfg.torch else ""),
          "measured RSS of an idle worker", cfg.worker_baseline),
    ]
    for name in nb:  # blocks streamed from disk, per shard and stage
        sn, sr = bnz[name], brows[name]
        # train blocks are read once, to cut the ranges or write the layout
        live = ("label_train",) if name == "train" else ("label_test", "eval_test")
        worker += [
            W(f"CSR row block read ({name}, largest)", f"8 nnz_b + 12 (rows_b + 1); {k} per worker "
              "(converting + running/queued reads)", 8 * sn + 12 * (sr + 1), k, live),
            W(f"labels of a block ({name})", "rows_b (uint8)", sr, k, live),
            W(f"LatentBlock being used ({name})", "8 nnz_b + 8 (L + 1) + rows_b; one per thread",
              8 * sn + 8 * (L + 1) + sr, T, live),
        ]
        if name == "test":
            worker.append(W("label_sums scratch (test)", f"{LABEL_SCRATCH_PER_NNZ} nnz_b + 24 L C; "
                            "one per thread", LABEL_SCRATCH_PER_NNZ * sn + 24 * LC, T,
                            ("label_test",)))
    ranges_test = persist and "test" in nb and cfg.test.nnz <= cfg.train.nnz
    if not persist:  # the layout's build: part tasks (the blocks above), then merges
        worker.append(W("merging a segment of the latent-major layout (engine.layout)",
                        f"16 nnz_s + 8 (L + 1), nnz_s = the block size {n:,}; one per thread",
                        16 * min(n, cfg.train.nnz) + 8 * (L + 1), T, ("label_train",)))
    if "test" in nb and not ranges_test:  # the test split: one pass over its row blocks
        parts, why = partials_per_worker(cfg, nb["test"])
        worker += [
            W("label partials (LabelSums) of the test pass", f"16 L C + 16 L + 8 C; {why}",
              16 * LC + 16 * L + 8 * C, parts, ("label_test", "eval_test")),
            W("all pairs, scattered (test evaluation)", "20 L C + 8 (L + 1); one copy per "
              "worker", 20 * LC + 8 * (L + 1), 1, ("eval_test",)),
            W("eval partials (3 x P float64) of the test pass", f"24 L C; {why}", 24 * LC,
              parts, ("eval_test",)),
            W("the test split's summed pass (one worker), and split_metrics of a slice of "
              "latents while the driver reads it", f"40 L C + {SPLIT_METRICS_PEAK_PER_PAIR + 40}"
              f" L C / {cfg.n_workers * T} slices", 40 * LC + (SPLIT_METRICS_PEAK_PER_PAIR + 40)
              * LC // max(1, cfg.n_workers * T), 1, ("eval_test",)),
        ]
    worker += _worker_ranges(cfg, nb, bnz, brows, persist, ranges_test, n)
    if cfg.backend == "torch" and cfg.device == "cpu":
        worker.append(W("torch chunk temporaries (CPU)", f"{TORCH_ELEMENT_BYTES} x 2 work_chunk "
                        f"(work_chunk = {work_chunk}) + 8 nnz_b copies; one per thread",
                        TORCH_ELEMENT_BYTES * 2 * work_chunk + 8 * n + r, T, GPU_STAGES))
    elif cfg.device != "cuda":
        worker.append(W("C kernel tile buffers", "about 64 KB per thread", _C_KERNEL_SCRATCH, T,
                        GPU_STAGES))
    return worker


def _worker_ranges(cfg, nb, bnz, brows, persist, ranges_test, chunk_nnz) -> list:
    """A worker's buffers of a fit on latent ranges (``engine.ranges``: one range per worker
    thread, ``T`` per worker), their events in memory (``persist``) or read from the layout
    on disk in chunks of ``chunk_nnz`` events, the block size (``engine.range_data``), and
    of their evaluation."""
    L, C, T = cfg.L, cfg.C, cfg.threads
    R = max(1, cfg.n_workers * T)
    lat = -(-L // R)  # latents of a range, at most (they are balanced by non-zeros)
    LCr = lat * C
    W = lambda *a, **kw: Buffer("worker", *a, **kw)  # noqa: E731
    # a range's events follow its latents' frequencies: an equal share of the non-zeros
    # plus the largest block's, as a margin
    nnz_r = -(-int(cfg.train.nnz) // R) + bnz["train"]
    out = _range_events(cfg, nb, bnz, brows, persist, ranges_test, chunk_nnz, R, lat)
    out += [
        W("range label sums and constants (pos, vpos, count, qx, n0)", "32 L_r C + 32 L_r; one "
          "per thread", 32 * LCr + 32 * lat, T,
          ("label_train", "fit", "eval_train", "label_test", "eval_test")),
        W("label_sums scratch (a range, or a chunk of it)", f"{LABEL_SCRATCH_PER_NNZ} nnz_r + "
          "24 L_r C; one per thread", LABEL_SCRATCH_PER_NNZ * (nnz_r if persist else chunk_nnz)
          + 24 * LCr, T,
          ("label_train",) + (("label_test",) if ranges_test else ())),
        W("range solver states (two: a pass's copy, or the last pass streaming to the "
          "checkpoint)", f"2 x {_STATE_PER_PAIR} L_r C; one range per thread",
          2 * _STATE_PER_PAIR * LCr, T, ("fit",)),
        W("fitted range state (its parameters for the evaluation)",
          f"{_STATE_PER_PAIR} L_r C; one per thread", _STATE_PER_PAIR * LCr, T,
          ("label_train", "eval_train", "label_test", "eval_test")),
        W("a range's active pairs and fit sums (6 x P_r float64)", "28 P_r + 48 P_r; one per "
          "thread", 76 * LCr, T, ("fit",)),
        W("the step's scratch (chunks of core.tuning.CHUNK_PAIRS pairs), or init_state's",
          f"max({STEP_SCRATCH_PER_PAIR} min(P_r, {CHUNK_PAIRS}), {INIT_SCRATCH_PER_PAIR} P_r); "
          "one per thread", max(STEP_SCRATCH_PER_PAIR * min(LCr, CHUNK_PAIRS),
                                INIT_SCRATCH_PER_PAIR * LCr), T, ("label_train", "fit")),
        W("range evaluation: all pairs, sums (3 x P_r), split_metrics and its result",
          f"20 + 24 + {SPLIT_METRICS_PEAK_PER_PAIR} + 40 per pair of a range; one per thread",
          (84 + SPLIT_METRICS_PEAK_PER_PAIR) * LCr, T,
          ("eval_train",) + (("eval_test",) if ranges_test else ())),
    ]
    return out


def _range_events(cfg, nb, bnz, brows, persist, ranges_test, chunk_nnz, R, lat) -> list:
    """A worker's buffers of its ranges' events (``_worker_ranges``'s first part): each
    split's ranges in memory and their cutting (``persist``), else the chunks read from the
    layout on disk. ``R`` ranges in all, of at most ``lat`` latents."""
    W = lambda *a, **kw: Buffer("worker", *a, **kw)  # noqa: E731
    T = cfg.threads
    nnz_r = -(-int(cfg.train.nnz) // R) + bnz["train"]
    out = []
    for name, live, keep in (("train", ("label_train",), ("label_train", "fit", "eval_train")),
                             ("test", ("label_test",), ("label_test", "eval_test"))):
        if not persist or name not in nb or (name == "test" and not ranges_test):
            continue
        shard = cfg.train if name == "train" else cfg.test
        nnz_s = -(-int(shard.nnz) // R) + bnz[name]
        each = 8 * nnz_s + 8 * (lat + 1) + int(shard.n_rows)
        out += [
            W(f"{name} latent ranges (in memory: a range's events, every row's label)",
              f"8 nnz_r + 8 (L_r + 1) + rows, nnz_r = nnz / {R} ranges + nnz_b, "
              f"L_r = {lat}; one per thread", each, T, keep),
            W(f"cutting {name} ranges: a block's slices, a range's slices and their join",
              "2 (8 nnz_b + rows_b) + 2 x the range; one per thread",
              2 * (8 * bnz[name] + brows[name]) + 2 * each, T, live),
        ]
    if not persist:
        chunk = min(int(chunk_nnz), nnz_r)
        out.append(W("chunks of a range read from disk (the one computing, the one being read) "
                     "and every row's label", f"2 (8 chunk_nnz + 8 L_r) + rows, chunk_nnz = "
                     f"{chunk:,}; one per thread", 2 * (8 * chunk + 8 * lat)
                     + int(cfg.train.n_rows), T, ("label_train", "fit", "eval_train")))
    return out


def _driver(cfg, nb, block_nnz, persist=False) -> list:
    """The driver's buffers: baseline, scheduler, results, metrics, validation.

    The solver state, the pairs and the sums stay with the ranges on the workers
    (``engine.ranges``): the driver receives statistics, one field of one range at a time,
    then the results."""
    L, C = cfg.L, cfg.C
    LC = L * C
    train, test = cfg.train, cfg.test
    R = max(1, cfg.n_workers * cfg.threads)  # latent ranges: one per worker thread
    n_tasks = 5 * max(nb.values()) + 2
    if not persist:  # the layout's build submits its part and merge tasks at once
        n_tasks = max(n_tasks, layout_tasks(nb["train"], train.nnz, R, block_nnz))
    D = lambda *a, **kw: Buffer("driver", *a, **kw)  # noqa: E731
    after_open = DRIVER_STAGES[2:]
    rows = max(train.n_rows, test.n_rows if test is not None else 0)
    csr = max(train.csr_bytes, test.csr_bytes if test is not None else 0)
    ranges_test = persist and test is not None and test.nnz <= train.nnz

    def rows_eval(*stages):  # the test split evaluated by row groups (finished on a worker)
        return () if ranges_test else stages

    return [
        D("baseline: Python, dask, distributed, torch, client, scheduler", "measured RSS",
          cfg.driver_baseline),
        D("freed memory the allocator keeps (measured, not growing with P)", "64 MiB",
          DRIVER_ALLOCATOR_SLACK, 1, after_open),
        D("scheduler state of one pass (or of the layout's build)",
          f"{SCHEDULER_TASK_BYTES // 1024} KB x {n_tasks} tasks",
          SCHEDULER_TASK_BYTES * n_tasks, 1, after_open),
        D("the layout's per-latent counts and offsets (engine.layout)", "16 (L + 1)",
          16 * (L + 1), 1, () if persist else ("plan", "fit_start")),
        # the job's fit keeps only its results (ProbeFitter(keep_state=False))
        D("fitted b, w, converged", "17 L C", 17 * LC, 1, ("evaluate", "write")),
        D("a range's state field streamed to the checkpoint, and its frames",
          f"8 L C / {R} ranges x 2", 8 * -(-L // R) * C, 2, ("iteration",)),
        D("one field of a range's metrics, received, and its frames",
          f"8 L C / {R} ranges x 2", 8 * -(-L // R) * C, 2, ("evaluate",)),
        D("train SplitMetrics (loss, tp, fp, tn, fn)", "40 L C", 40 * LC, 1, ("evaluate", "write")),
        D("all pairs of the test split's pass (ActivePairs, scattered from here)",
          "20 L C + 8 L", 20 * LC + 8 * L, 1, rows_eval("evaluate")),
        D("test SplitMetrics", "40 L C", 40 * LC, 1, ("evaluate", "write")),
        D("one float32 array being written to probe1d_metrics.npz + class table", "4 L C + 8 L C",
          12 * LC, 1, ("write",)),
        D("validating (and ingesting, when compressed) token_acts.npz",
          "min(2 x chunk_bytes, CSR bytes): a raw and a converted chunk", min(2 * cfg.chunk_bytes, csr),
          1, ("open",)),
        D("indptr of a shard, read to plan the blocks", "8 (rows + 1)", 8 * (rows + 1), 1, ("plan",)),
    ]
