"""Checks made before a job starts that protect results: train and test are two shards, and
results already on disk are replaced only when the user says so.

Both run from ``app.job.open_inputs``, before any cluster starts: a refused run costs
seconds and writes nothing. Each failure is one line (``ProbeDaskError``; exit status 2)
naming the path and the flag that changes the outcome.

Memory per process: a few paths.
"""

from __future__ import annotations

import os
from pathlib import Path

from probe_dask.errors import ProbeDaskError

__all__ = ["check_distinct_shards", "check_no_results", "split_out_dirs"]


def check_distinct_shards(train_shard, test_shard) -> None:
    """Refuse a job whose train and test shard are one folder (after resolving links).

    Each split's results are written into that shard's folder: the test results would
    replace the train ones, and the test scores would measure the training data.
    """
    train, test = Path(os.path.realpath(train_shard)), Path(os.path.realpath(test_shard))
    if train == test:
        raise ProbeDaskError(
            f"{test}: --test-shards is the train shard (--train-shards {train_shard}); "
            "expected two different shard folders"
        )


def check_no_results(out_dirs, names, *, overwrite=False, resuming=False) -> None:
    """Refuse to replace results that exist unless ``overwrite``.

    Parameters
    ----------
    out_dirs : list of path
        Where each split's results go.
    names : iterable of str
        The result files of a split (``probe1d_metrics.npz``, ``probe1d_classes.json``).
    overwrite : bool
        ``--overwrite``: existing results may be replaced.
    resuming : bool
        The train folder holds a checkpoint of an interrupted run: that run was already
        allowed to write here, and resuming it is not an overwrite.
    """
    if overwrite or resuming:
        return
    for d in out_dirs:
        for name in names:
            path = Path(d) / name
            if path.exists():
                raise ProbeDaskError(
                    f"{path}: results of an earlier run exist; pass --overwrite to replace "
                    "them, or --out DIR to write elsewhere"
                )


def split_out_dirs(out_root, shard_ids) -> list[Path]:
    """``--out DIR``: each split's results go to ``DIR/<shard_id>/``."""
    return [Path(out_root) / str(s) for s in shard_ids]
