"""Run-size guards, checked before anything starts: a run that would crawl is refused.

Two flags that each pass their own check (``app/flags.py``) can still make a run that makes
no progress: a ``--block-nnz`` so small that each pass is thousands of tasks (the
scheduler, not the data, is then the bottleneck: milliseconds per block per pass), and
more worker threads than cores on a local cluster (``--workers 64`` on 2 cores). Each is
refused with the numbers and the flag that overrides it, one line, exit 2.

Memory per process: nothing (counts only).
"""

from __future__ import annotations

from dask.system import CPU_COUNT

from probe_dask import config
from probe_dask.errors import ProbeDaskError

__all__ = ["check_local_threads", "check_block_count"]


def check_local_threads(spec: str, workers: int | None, threads: int | None, *,
                        allow: bool = False, cores: int | None = None) -> None:
    """ProbeDaskError when a local cluster would run more threads than this machine has cores.

    Parameters
    ----------
    spec : str
        The cluster spec; only ``"local"`` is checked (Slurm jobs ask for their own cores).
    workers, threads : int, optional
        ``--workers`` and ``--threads`` (None: Dask's choice, one thread per core).
    allow : bool
        ``--allow-oversubscribe``: do not check.
    cores : int, optional
        Cores available here (default: Dask's count, which honours cgroups and affinity).
    """
    if allow or spec != "local" or (workers is None and threads is None):
        return
    cores = int(cores or CPU_COUNT)
    threads = threads or 1
    workers = workers or max(1, cores // threads)
    if workers * threads > cores:
        raise ProbeDaskError(
            f"--workers {workers} x --threads {threads} = {workers * threads} worker threads on "
            f"{cores} cores: each pass would crawl; use at most {cores} in all, or "
            "--allow-oversubscribe")


def check_block_count(inputs, block_nnz: int | None, *, allow: bool = False) -> None:
    """ProbeDaskError when the user's ``--block-nnz`` cuts the shards into too many blocks.

    Refused: more than ``probe-dask.engine.max-blocks`` blocks (train + test), or more than
    ``probe-dask.engine.max-small-blocks`` blocks that are smaller than
    ``probe-dask.memory.min-block-nnz``. A block size chosen by the memory plan is never
    refused (``block_nnz`` None).

    Parameters
    ----------
    inputs : probe_dask.app.job.JobInputs
        Both shards, cut into ``block_nnz`` blocks.
    block_nnz : int, optional
        ``--block-nnz``.
    allow : bool
        ``--allow-many-blocks``: do not check.
    """
    if allow or block_nnz is None:
        return
    shards = (inputs.train, inputs.test)
    n_blocks = sum(len(s.row_blocks) for s in shards)
    nnz = sum(int(s.nnz) for s in shards)
    most = int(config.get("probe-dask.engine.max-blocks"))
    most_small = int(config.get("probe-dask.engine.max-small-blocks"))
    small = int(config.get("probe-dask.memory.min-block-nnz"))
    mean = nnz / max(n_blocks, 1)
    if n_blocks > most or (n_blocks > most_small and mean < small):
        limit = (f"more than {most:,} blocks" if n_blocks > most else
                 f"more than {most_small:,} blocks of under {small:,} non-zeros")
        good = max(small, -(-nnz // most_small))
        raise ProbeDaskError(
            f"--block-nnz {block_nnz:,}: the run needs {n_blocks:,} blocks (train "
            f"{len(inputs.train.row_blocks):,}, test {len(inputs.test.row_blocks):,}; about "
            f"{mean:,.0f} non-zeros each); {limit} make every pass a scheduling exercise; use "
            f"--block-nnz {good} or more (or leave it to the memory plan), or "
            "--allow-many-blocks")
