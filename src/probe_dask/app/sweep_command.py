"""The modes of ``probe-dask sweep`` that fit nothing: ``--dry-run``, ``--array`` and
``--summarize`` (``app/cli.py`` fits; ``--task`` picks the run it fits here).

Memory per process: the list of runs.
"""

from __future__ import annotations

import logging
from pathlib import Path

from probe_dask.app.sweep import check_sweep, describe, summarize_sweep
from probe_dask.app.sweep_array import array_script, submit, task_index
from probe_dask.errors import ProbeDaskError

__all__ = ["LOGS_FOLDER", "sweep_mode", "task_runs"]

logger = logging.getLogger(__name__)

#: The array tasks' output, under the sweep's output folder.
LOGS_FOLDER = "logs"


def _check_array_flags(args) -> None:
    if args.array:
        return
    for flag, given in (("--submit", args.submit), ("--sbatch", args.sbatch),
                        ("--array-limit", args.array_limit)):
        if given:
            raise ProbeDaskError(f"sweep: {flag} goes with --array (it shapes the job array)")


def task_runs(args, runs) -> list:
    """``runs``, or with ``--task`` the one run it names (its index kept)."""
    if args.task is None:
        return runs
    return [runs[task_index(args.task or None, len(runs))]]


def sweep_mode(args, runs, summary_dir) -> int | None:
    """Run ``--dry-run``, ``--array`` or ``--summarize``; their exit status, or None when
    the sweep is to be fitted (no such flag)."""
    _check_array_flags(args)
    if args.dry_run:
        entries = check_sweep(args.file, runs)
        for line in describe(entries):
            print(line)
        todo = sum(e.status == "pending" for e in entries)
        logger.info("sweep --dry-run: %d runs: %d to fit, %d with results; nothing was run",
                    len(entries), todo, len(entries) - todo)
        return 0
    if args.array:
        check_sweep(args.file, runs)  # a bad run fails here, not in task 37 of the array
        log_dir = Path(summary_dir).resolve() / LOGS_FOLDER
        script = array_script(args.argv, args.sweep_options, len(runs), log_dir=log_dir,
                              sbatch=args.sbatch or (), limit=args.array_limit)
        if not args.submit:
            print(script, end="")
            return 0
        job = submit(script, log_dir)
        print(f"sweep: submitted job array {job}: {len(runs)} tasks, logs in {log_dir}; once "
              "they are done: the same command with --summarize instead of --array --submit")
        return 0
    if args.summarize:
        result = summarize_sweep(runs, summary_dir)
        print(f"summary:\n  {result.summary}\n  {result.best}")
        if result.failed:
            logger.error("probe-dask: error: sweep --summarize: %d of %d runs have no results: "
                         "%s", len(result.failed), len(runs),
                         "; ".join(f"{e.run.label}: {e.status}" + (f" ({e.error})" if e.error else "")
                                   for e in result.failed))
            return 1
        return 0
    return None
