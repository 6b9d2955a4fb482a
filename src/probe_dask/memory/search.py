"""Choosing a run's block size and torch work chunk: the largest that keep workers in budget.

:func:`plan_run` reads only the shards' headers, ``indptr`` and labels
(:mod:`probe_dask.memory.shardinfo`), resolves the cluster and kernel (memory limit,
workers, threads, device, backend), and tries block sizes from the largest useful one
(``probe-dask.memory.max-block-nnz``, at least one block per worker thread) down by quarters to the
smallest (``probe-dask.memory.min-block-nnz``, or the widest row: rows are never split), each with work
chunks from the backend's default down by halves, until the model
(:mod:`probe_dask.memory.model`) keeps every worker under ``target_fraction`` of its limit
(and every GPU under the same share of its memory). When none does, the plan says so and
which memory limit (or, for a given block size, which block size) would fit.

Memory per process: the shards' ``indptr`` while searching (8 bytes a row, both shards);
each candidate is a model of a few dozen small records; the plan returned lets go of
``indptr`` and keeps the chosen row blocks.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from dask.system import CPU_COUNT
from dask.utils import parse_bytes
from distributed.system import MEMORY_LIMIT

from probe_dask import config
from probe_dask.errors import InputError
from probe_dask.engine.parameters import persist_setting
from probe_dask.kernels import ckernel
from probe_dask.kernels.torch_backend import CPU_WORK_CHUNK, CUDA_WORK_CHUNK
from probe_dask.memory.model import (DRIVER_BASELINE, WORKER_BASELINE, WORKER_BASELINE_NO_TORCH,
                                     ModelInputs, buffers)
from probe_dask.memory.plan import Plan, format_limit, format_size
from probe_dask.memory.shardinfo import shard_info

__all__ = ["plan_run", "default_target_fraction"]

_MIN_WORK_CHUNK = 2**12


def default_target_fraction() -> float:
    """Share of a worker's memory limit the plan keeps every worker under: Dask's own
    ``distributed.worker.memory.target`` (where a worker starts spilling), 0.6 if unset."""
    target = config.get("distributed.worker.memory.target")
    return float(target) if target else 0.6


def _device(device) -> str:
    if device in (None, "auto"):
        try:
            import torch  # lazy: torch is optional and slow to import

            return "cuda" if torch.cuda.is_available() else "cpu"
        except ImportError:
            return "cpu"
    return str(device).split(":")[0]


def _backend(device, backend) -> str:
    if device == "cuda":  # the Triton kernels, unless torch is asked for (kernels.choose_backend)
        return "torch" if backend == "torch" else "triton"
    if backend == "torch":
        return "torch"
    if backend == "c":
        return "c"
    return "c" if ckernel.available() else "torch"


def _gpu_memory(device, gpu_memory) -> int | None:
    """Device memory of one GPU: as given, else the driver's first GPU's (CUDA only)."""
    if isinstance(gpu_memory, str):
        gpu_memory = parse_bytes(gpu_memory)
    if device == "cuda" and gpu_memory is None:
        try:
            import torch  # lazy: torch is optional and slow to import

            if torch.cuda.is_available():
                gpu_memory = int(torch.cuda.get_device_properties(0).total_memory)
        except ImportError:
            pass
    return gpu_memory


def _default_limit(n_workers, threads) -> tuple[int, int]:
    """(n_workers, memory_limit) a default ``LocalCluster`` would use on this machine."""
    n_workers = n_workers or max(1, CPU_COUNT // max(threads, 1))
    return n_workers, int(MEMORY_LIMIT * min(1.0, threads / CPU_COUNT))


def _work_chunks(device, backend, work_chunk) -> list:
    """Torch work chunks to try, largest first; ``[None]`` for the C kernel."""
    if backend != "torch":
        return [None]
    if work_chunk:
        return [int(work_chunk)]
    default = CUDA_WORK_CHUNK if device == "cuda" else CPU_WORK_CHUNK
    return [default >> i for i in range(64) if (default >> i) >= _MIN_WORK_CHUNK] or [default]


def _block_sizes(cap, floor) -> list:
    """Block sizes to try: from ``max(cap, floor)`` down by quarters, ending at ``floor``."""
    sizes, s = [], max(cap, floor)
    while s > floor:
        sizes.append(s)
        s = int(s * 0.75)
    sizes.append(floor)
    return sizes


def _first_fit(search, sizes, chunks, persist):
    """The first (largest) block size, then work chunk, whose plan fits; None when none does."""
    for bn in sizes:
        for wc in chunks:
            p = search.build(bn, wc, persist is True)
            if search.fits(p):
                return p
    return None


@dataclass(frozen=True)
class _Search:
    """What every candidate plan of one search shares: the model's inputs, the worker's
    memory limit and the share of it (and of the GPU's memory) a plan must stay under."""

    cfg: ModelInputs
    limit: int
    target_fraction: float
    gpu_memory: int | None
    block_nnz: int | None  # given by the user (not chosen)

    @property
    def budget(self) -> float:
        return self.target_fraction * self.limit

    @property
    def gpu_budget(self) -> float:
        return self.target_fraction * self.gpu_memory if self.gpu_memory else math.inf

    def build(self, bn, wc, keep) -> Plan:
        """The plan at block size ``bn``, work chunk ``wc``, events kept in memory or not."""
        cfg = self.cfg
        drv, wrk, gpu, nb, mb = buffers(cfg, bn, wc or 0, keep)
        return Plan(train=cfg.train, test=cfg.test, n_latents=cfg.L, n_classes=cfg.C,
                    n_workers=cfg.n_workers, threads=cfg.threads, memory_limit=self.limit,
                    device=cfg.device, backend=cfg.backend,
                    target_fraction=self.target_fraction, split_every=cfg.split_every,
                    block_nnz=int(bn), work_chunk=wc, persist=keep, n_blocks=nb, max_block=mb,
                    driver=drv, worker=wrk, gpu=gpu, gpu_memory=self.gpu_memory,
                    block_nnz_fixed=bool(self.block_nnz))

    def fits(self, p: Plan) -> bool:
        return p.worker_peak <= self.budget and p.gpu_peak <= self.gpu_budget


def plan_run(train, test=None, *, run=None, memory_limit=None, n_workers=None, threads=1,
             device="cpu", n_classes=None, block_nnz=None, work_chunk=None,
             target_fraction=None, split_every=4, persist=None, gpu_memory=None,
             backend="auto", worker_baseline=None, driver_baseline=None,
             chunk_bytes=64 * 2**20) -> Plan:
    """Plan the memory of a run, and choose its block size.

    Parameters
    ----------
    train, test : path, ``engine.shard.Shard`` or ``CSRSource``
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
    persist : {"auto", True, False}, optional
        Keep the train ranges' events in worker memory, else read them from the shard's
        latent-major layout every pass; "auto": in memory when that fits too. Default:
        ``probe-dask.engine.persist`` (configuration).
    gpu_memory : int or str, optional
        Device memory of one GPU (default: the driver's first GPU, when it has one).

    Returns
    -------
    Plan
        ``fits`` False means no setting keeps the workers under the target; ``message``
        says why and ``min_memory_limit`` which limit would.
    """
    if persist is None:
        persist = persist_setting()
    search = _search(train, test, run=run, n_classes=n_classes, memory_limit=memory_limit,
                     n_workers=n_workers, threads=threads, device=device, backend=backend,
                     gpu_memory=gpu_memory, target_fraction=target_fraction,
                     block_nnz=block_nnz, split_every=split_every, chunk_bytes=chunk_bytes,
                     worker_baseline=worker_baseline, driver_baseline=driver_baseline)
    chunks = _work_chunks(search.cfg.device, search.cfg.backend, work_chunk)
    auto_sizes, widest = _auto_sizes(search.cfg)
    sizes = [int(block_nnz)] if block_nnz else auto_sizes
    chosen = _first_fit(search, sizes, chunks, persist)
    if chosen is not None:
        return _chosen(search, chosen, persist)
    # Nothing fits: report the smallest setting and the limit that would hold it.
    worst = search.build(sizes[-1], chunks[-1], persist is True)
    auto = _first_fit(search, auto_sizes, chunks, persist) if block_nnz else None
    worst.message = _no_fit_message(worst, block_nnz, auto, widest, search.budget,
                                    search.gpu_budget)
    return _finish(worst)


def _search(train, test, *, run, n_classes, memory_limit, n_workers, threads, device, backend,
            gpu_memory, target_fraction, block_nnz, split_every, chunk_bytes, worker_baseline,
            driver_baseline) -> _Search:
    """``plan_run``'s arguments resolved: the shards read, the defaults of the memory limit,
    workers, device, backend, GPU memory and target share filled in."""
    tr, te, n_classes = _shards(train, test, run, n_classes)
    if memory_limit is None:
        n_workers, memory_limit = _default_limit(n_workers, threads)
    elif isinstance(memory_limit, str):
        memory_limit = parse_bytes(memory_limit)
    n_workers = n_workers or _default_limit(None, threads)[0]
    device = _device(device)
    backend = _backend(device, backend)
    gpu_memory = _gpu_memory(device, gpu_memory)
    cfg = _model_inputs(tr, te, n_classes, threads, n_workers, split_every, device, backend,
                        chunk_bytes, gpu_memory, worker_baseline, driver_baseline)
    if target_fraction is None:
        target_fraction = default_target_fraction()
    return _Search(cfg, int(memory_limit), target_fraction, gpu_memory, block_nnz)


def _chosen(search: _Search, chosen: Plan, persist) -> Plan:
    """The plan that fits, its events kept in memory when ``persist`` is "auto" and that
    fits too, with its message."""
    if persist == "auto":
        kept = search.build(chosen.block_nnz, chosen.work_chunk, True)
        chosen = kept if search.fits(kept) else chosen
    _finish(chosen)
    chosen.message = (
        f"fits: worker peak {format_size(chosen.worker_peak)} ({chosen.worker_peak_stage}) "
        f"<= {search.target_fraction:.0%} of the {format_limit(search.limit)} limit; driver "
        f"peak {format_size(chosen.driver_peak)}")
    return chosen


def _model_inputs(tr, te, n_classes, threads, n_workers, split_every, device, backend,
                  chunk_bytes, gpu_memory, worker_baseline, driver_baseline) -> ModelInputs:
    # The kernels import torch only for the torch backend (CUDA, or the CPU fallback).
    uses_torch = backend == "torch" or device == "cuda"
    resident = float(config.get("probe-dask.kernels.gpu-resident-fraction"))
    return ModelInputs(
        train=tr, test=te, L=tr.n_cols, C=int(n_classes), threads=int(threads),
        n_workers=int(n_workers), split_every=int(split_every), device=device, backend=backend,
        torch=uses_torch, chunk_bytes=int(chunk_bytes),
        gpu_resident=int(resident * gpu_memory) if gpu_memory else None,
        worker_baseline=int(worker_baseline or (WORKER_BASELINE if uses_torch
                                                else WORKER_BASELINE_NO_TORCH)),
        driver_baseline=int(driver_baseline or DRIVER_BASELINE))


def _shards(train, test, run, n_classes):
    """``(train ShardInfo, test ShardInfo or None, n_classes)``; InputError when their
    latents differ."""
    tr, tr_labels = shard_info(train, run)
    te, te_labels = shard_info(test, run)
    if te is not None and te.n_cols != tr.n_cols:
        raise InputError(te.path, "shape.npy (latents)", te.n_cols, f"{tr.n_cols} as in {tr.path}")
    if n_classes is None:
        if tr_labels is None:
            raise ValueError("n_classes is needed when shards are given as CSR sources")
        n_classes = 1 + max(int(x.max_label()) for x in (tr_labels, te_labels) if x is not None)
    return tr, te, n_classes


def _auto_sizes(cfg: ModelInputs) -> tuple[list, int]:
    """The block sizes the plan tries, largest first, and the widest row's non-zeros."""
    tr, te = cfg.train, cfg.test
    threads_total = max(1, cfg.n_workers * cfg.threads)
    # A GPU pass over a block is one launch: GPU workers take the largest blocks their GPU
    # holds (max-gpu-block-nnz), the model keeps them under the GPU's budget.
    max_key = ("max-gpu-block-nnz" if cfg.device == "cuda" and cfg.backend == "triton"
               else "max-block-nnz")
    # at least 2 blocks per thread
    cap = max(1, min(int(config.get(f"probe-dask.memory.{max_key}")),
                     tr.nnz // (2 * threads_total)))
    widest = max(tr.max_row_nnz, te.max_row_nnz if te else 0, 1)
    # rows are never split
    floor = max(widest, min(int(config.get("probe-dask.memory.min-block-nnz")), cap))
    return _block_sizes(cap, floor), widest


def _no_fit_message(worst: Plan, block_nnz, auto: Plan | None, widest: int, budget: float,
                    gpu_budget: float) -> str:
    """Why nothing fits, and what to change (sets ``worst.fits`` and ``min_memory_limit``)."""
    target_fraction, limit = worst.target_fraction, worst.memory_limit
    worst.fits = False
    need = max(worst.worker_peak / target_fraction, 0)
    worst.min_memory_limit = int(math.ceil(need / 10**6)) * 10**6
    stage = worst.worker_peak_stage
    head = f"worker memory limit {format_limit(limit)} cannot hold one block: "
    raise_to = f"raise --memory-limit to at least {worst.min_memory_limit // 10**6}MB"
    over = f"over {target_fraction:.0%} of the limit ({format_size(budget)})"
    if block_nnz:
        # the size the plan would have chosen itself, with every other setting the same
        hint = (f"lower --block-nnz to {auto.block_nnz:,} (or leave it out: the plan picks it)"
                if auto is not None else "lower --block-nnz")
        message = (
            head + f"--block-nnz {int(block_nnz):,} (largest block {worst.max_block['nnz']:,} "
            f"non-zeros) needs {format_size(worst.worker_peak)} per worker ({stage}), {over}; "
            f"{hint}, or {raise_to}")
    else:
        message = (
            head + f"even the smallest blocks ({worst.block_nnz:,} non-zeros; the widest row "
            f"has {widest:,}) need {format_size(worst.worker_peak)} per worker ({stage}), {over}; "
            f"{raise_to}"
            + (", or use fewer --threads per worker (each thread holds its own block)"
               if worst.threads > 1 else ""))
    if worst.gpu_memory and worst.gpu_peak > gpu_budget:
        message += (f"; the GPU needs {format_size(worst.gpu_peak)} of its "
                    f"{format_size(worst.gpu_memory)}")
    return message


def _finish(plan: Plan) -> Plan:
    """Keep the chosen row blocks and let go of ``indptr`` (8 bytes a row): a plan kept for
    the whole run (telemetry holds it) must not hold per-row data on the driver."""
    for name in ("train", "test"):
        info = getattr(plan, name)
        if info is not None and info.indptr is not None:
            plan.row_blocks[name] = info.blocks(plan.block_nnz)
            setattr(plan, name, dataclasses.replace(info, indptr=None))
    return plan
