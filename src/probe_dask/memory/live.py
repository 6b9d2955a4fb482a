"""Planning on a live cluster: the workers' limits and threads, and shards re-cut to the plan.

:func:`plan_job` asks the client for its workers (memory limit, threads, GPUs), plans with
:func:`probe_dask.memory.search.plan_run`, stops the job before any fitting when nothing
fits, and re-cuts both shards into the planned row blocks (:func:`reblock`), so the plan
printed is the plan run.

Memory per process: what planning holds (:mod:`probe_dask.memory.search`); re-cutting a
shard builds new dask graphs over the same source (nothing is read).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from distributed.system import MEMORY_LIMIT

from probe_dask.engine.shard import csr_block_array, label_block_array
from probe_dask.engine.workers import gpu_resources, worker_table
from probe_dask.errors import PlanDoesNotFit, ProbeDaskError
from probe_dask.memory.plan import format_size
from probe_dask.memory.search import plan_run

__all__ = ["plan_job", "reblock"]


def reblock(shard, blocks):
    """The same ``engine.shard.Shard`` cut into other row blocks: a list of ``(r0, r1)``, or a
    target number of non-zeros per block (``CSRSource.row_blocks``). Nothing is read."""
    if isinstance(blocks, (int, np.integer)):
        blocks = shard.source.row_blocks(int(blocks))
    blocks = [(int(r0), int(r1)) for r0, r1 in blocks]
    return dataclasses.replace(shard, X=csr_block_array(shard.source, blocks),
                               y=label_block_array(shard.labels, blocks), row_blocks=blocks)


def plan_job(client, inputs, *, device=None, persist="auto", log=None, **kwargs):
    """Plan a job on the workers ``client`` has, and cut both shards into the planned blocks.

    The block size is the caller's when ``inputs.block_nnz`` is set, else the plan's. Raises
    before any fitting when no setting fits the workers' memory limit.

    Returns
    -------
    (app.job.JobInputs, Plan)
        The inputs with both shards re-cut (when the size changed), and the plan.

    Raises
    ------
    PlanDoesNotFit
        (a ProbeDaskError; the CLI exits 4) When the workers' memory limit cannot hold one
        block (names the limit, the block size and the setting to change).
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
        raise PlanDoesNotFit(plan.message)
    if log is not None:
        log(f"memory plan: blocks of {plan.block_nnz:,} non-zeros, worker peak "
            f"{format_size(plan.worker_peak)} of a {format_size(plan.memory_limit)} limit, driver peak "
            f"{format_size(plan.driver_peak)}, train blocks "
            f"{'kept in' if plan.persist else 're-read from disk into'} worker memory")
    if inputs.train.row_blocks != plan.row_blocks["train"] or \
            inputs.test.row_blocks != plan.row_blocks["test"]:
        inputs = dataclasses.replace(inputs, train=reblock(inputs.train, plan.row_blocks["train"]),
                                     test=reblock(inputs.test, plan.row_blocks["test"]))
    return inputs, plan
