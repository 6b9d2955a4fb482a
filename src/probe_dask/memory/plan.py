"""The memory plan of a run as a record, and its two renderings: JSON and a table.

:class:`Plan` holds what :func:`probe_dask.memory.search.plan_run` decided (block size,
work chunk, persistence), for which shards and cluster, and every buffer of the model
(:mod:`probe_dask.memory.model`) at that choice; :meth:`Plan.to_dict` is telemetry's
``plan`` event and the CLI's ``plan --json``; :func:`format_plan` the CLI's table.

Memory per process: a plan holds a few dozen small buffer records and the row ranges of
the chosen blocks (``row_blocks``); its shards' ``indptr`` is let go once planned.
"""

from __future__ import annotations

import dataclasses
import textwrap

from dask.utils import format_bytes

from probe_dask.memory.model import GPU_STAGES, peak
from probe_dask.memory.shardinfo import ShardInfo
from probe_dask.stages import DRIVER_STAGES, WORKER_STAGES

__all__ = ["Plan", "format_plan", "format_size", "format_limit"]


def format_size(n) -> str:
    """Bytes as the plan prints them (``dask.utils.format_bytes``)."""
    return format_bytes(int(n))


def format_limit(n) -> str:
    """A memory limit as a user writes it: decimal GB/MB when exact, else binary units."""
    n = int(n)
    for unit, size in (("GB", 10**9), ("MB", 10**6)):
        if n % size == 0:
            return f"{n // size} {unit}"
    return format_size(n)


@dataclasses.dataclass
class Plan:
    """The memory plan of a run (see :func:`~probe_dask.memory.search.plan_run`); sizes in bytes.

    The shards (``train``, ``test``) and sizes (``n_latents``, ``n_classes``); the cluster
    (``n_workers`` x ``threads``, each worker's ``memory_limit``, ``device``, ``backend``,
    ``gpu_memory``) and the share of the limit to stay under (``target_fraction``); the
    choice (``block_nnz``, ``block_nnz_fixed`` when the caller gave it, ``work_chunk``,
    ``persist``, ``split_every``) and the blocks it makes (``n_blocks`` per shard,
    ``max_block``, ``row_blocks``); the buffers per process (``driver``, ``worker``,
    ``gpu``); the verdict (``fits``, ``min_memory_limit``, ``message``).
    """

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
    fits: bool = True
    min_memory_limit: int | None = None
    message: str = ""
    block_nnz_fixed: bool = False
    #: The row blocks of each shard at ``block_nnz`` (``CSRSource.row_blocks``): what the fit uses.
    row_blocks: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def worker_budget(self) -> int:
        return int(self.target_fraction * self.memory_limit)

    @property
    def worker_peak(self) -> int:
        return peak(self.worker, WORKER_STAGES)[1]

    @property
    def worker_peak_stage(self) -> str:
        return peak(self.worker, WORKER_STAGES)[0]

    @property
    def driver_peak(self) -> int:
        return peak(self.driver, DRIVER_STAGES)[1]

    @property
    def gpu_peak(self) -> int:
        return peak(self.gpu, GPU_STAGES)[1] if self.gpu else 0

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
            "worker_peak": self.worker_peak, "worker_peak_stage": self.worker_peak_stage,
            "worker_budget": self.worker_budget, "driver_peak": self.driver_peak,
            "driver_peak_stage": peak(self.driver, DRIVER_STAGES)[0], "gpu_peak": self.gpu_peak,
            "gpu_memory": self.gpu_memory, "fits": self.fits,
            "min_memory_limit": self.min_memory_limit, "message": self.message,
            "driver": bufs(self.driver), "worker": bufs(self.worker), "gpu": bufs(self.gpu),
        }


def format_plan(plan: Plan) -> str:
    """The plan as a table: every buffer per process, its formula, size and when it lives."""
    fmt = format_size
    lines = []
    for name, s in (("train", plan.train), ("test", plan.test)):
        if s is not None:
            lines.append(f"{name}: {s.path}: {s.n_rows:,} rows x {s.n_cols:,} latents, {s.nnz:,} "
                         f"non-zeros (CSR {fmt(s.csr_bytes)}), widest row {s.max_row_nnz:,}")
    kernel = {"c": "C kernel", "torch": "torch", "triton": "Triton kernels"}[plan.backend]
    lines.append(f"cluster: {plan.n_workers} workers x {plan.threads} thread(s), memory limit "
                 f"{fmt(plan.memory_limit)} each (target {plan.target_fraction:.0%} = "
                 f"{fmt(plan.worker_budget)}), device {plan.device} ({kernel})"
                 + (f", GPU memory {fmt(plan.gpu_memory)}" if plan.gpu_memory else ""))
    nb = ", ".join(f"{k} {v:,}" for k, v in plan.n_blocks.items())
    lines.append(f"{'given' if plan.block_nnz_fixed else 'chosen'}: block_nnz {plan.block_nnz:,} "
                 f"(blocks: {nb}; largest {plan.max_block['nnz']:,} non-zeros, "
                 f"{plan.max_block['rows']:,} rows), work chunk "
                 f"{plan.work_chunk if plan.work_chunk else f'- ({kernel}: none)'}, train blocks "
                 f"{'persisted' if plan.persist else 're-read every pass'}")
    lines.append(f"L = {plan.n_latents:,} latents, C = {plan.n_classes} classes, P = L C = "
                 f"{plan.n_latents * plan.n_classes:,} pairs, split_every = {plan.split_every}")
    lines.append("")
    # Each buffer is a row of sizes, then its stages and formula wrapped under it: the
    # table fits REPORT_WIDTH columns with no name or formula cut.
    head = f"{'process':<7} {'buffer':<{_NAME}} {'each':>10} {'x':>4} {'total':>10}"
    lines.append(head)
    lines.append(" " * 8 + "live in (stages); formula")
    lines.append("-" * REPORT_WIDTH)
    for group, stages in ((plan.driver, DRIVER_STAGES), (plan.worker, WORKER_STAGES),
                          (plan.gpu, GPU_STAGES)):
        for b in group:
            live = "all" if "all" in b.stages or set(stages) <= set(b.stages) else ",".join(b.stages)
            name = b.name
            if len(name) > _NAME:  # a long name gets its own line, the sizes the next
                lines.extend(textwrap.wrap(name, REPORT_WIDTH - 8, initial_indent=f"{b.process:<7} ",
                                           subsequent_indent=" " * 8))
                name = ""
            lines.append(f"{b.process:<7} {name:<{_NAME}} {fmt(b.each):>10} {b.count:>4} "
                         f"{fmt(b.nbytes):>10}")
            lines.extend(textwrap.wrap(f"live in {live}; {b.formula}", REPORT_WIDTH,
                                       initial_indent=" " * 8, subsequent_indent=" " * 10,
                                       break_on_hyphens=False))
    lines.append("")
    for who, bufs, stages in (("driver", plan.driver, DRIVER_STAGES),
                              ("each worker", plan.worker, WORKER_STAGES),
                              ("each GPU", plan.gpu, GPU_STAGES)):
        if not bufs:
            continue
        per = ", ".join(f"{st} {fmt(sum(b.nbytes for b in bufs if b.live(st)))}" for st in stages)
        lines.append(f"peak of {who}: {fmt(peak(bufs, stages)[1])} (by stage: {per})")
    lines.append(("OK, " if plan.fits else "DOES NOT FIT: ") + plan.message)
    return _fit_width(lines)


#: Columns of :func:`format_plan`'s report (a terminal, an sbatch log, an email).
REPORT_WIDTH = 100
_NAME = 60  # buffer name column: 7 + 1 + 60 + 1 + 10 + 1 + 4 + 1 + 10 = 95 columns


def _fit_width(lines) -> str:
    """Wrap every line longer than :data:`REPORT_WIDTH` (continuations indented 2)."""
    out = []
    for line in lines:
        if len(line) <= REPORT_WIDTH:
            out.append(line)
        else:
            out.extend(textwrap.wrap(line, REPORT_WIDTH, subsequent_indent="  ",
                                     break_on_hyphens=False))
    return "\n".join(out)
