"""The whole probe job on one train/test pair of shards, as a library function.

``run_job`` is what ``probe-dask fit``, the demo and the notebook call: open both shards,
check they agree, fit on train (checkpointed), evaluate train and test, and write
``probe1d_metrics.npz`` into each split's inference folder plus ``probe1d_classes.json``
(the per-class table) beside them. Nothing is written until everything is computed, and
each file is renamed into place, so a killed job leaves no result that looks finished.

Memory per process: the driver holds the fitted ``b``, ``w``, ``converged`` (17 bytes a
pair) and two ``SplitMetrics`` (40 bytes a pair each); workers hold what ``engine.fit``,
``engine.ranges`` and ``engine.evaluate`` say.
"""

from __future__ import annotations

import functools
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from probe_dask.core.metrics import class_table
from probe_dask.engine.evaluate import evaluate_ranges, evaluate_split
from probe_dask.engine.fit import ProbeFitter
from probe_dask.core.settings import FitSettings
from probe_dask.engine.parameters import check_settings, persist_setting
from probe_dask.engine.passes import latent_blocks
from probe_dask.engine.ranges import persist_ranges
from probe_dask.engine.shard import Shard, open_shard
from probe_dask.engine.workers import check_worker_kernels
from probe_dask.errors import ConvergenceWarning, InputError, ProbeDaskError
from probe_dask.io.layout import (CHECKPOINT_NAME, CLASSES_NAME, LATENT_MAJOR_NAME, METRICS_NAME,
                                  inference_dir)
from probe_dask.io.outputs import check_writable, write_json, write_metrics_npz
from probe_dask.io.resultset import ResultSet, check_targets
from probe_dask.io.tempfiles import remove_stale
from probe_dask.io.preflight import check_distinct_shards, check_no_results, split_out_dirs
from probe_dask.app.provenance import provenance, utc_now
from probe_dask.memory.live import plan_job
from probe_dask.stages import Stage, emit

logger = logging.getLogger(__name__)

__all__ = ["JobInputs", "JobResult", "open_inputs", "run_job", "count_classes", "format_table",
           "CHECKPOINT_NAME", "METRICS_NAME", "CLASSES_NAME"]



@dataclass
class JobResult:
    """What a finished job wrote and measured."""

    train_metrics: Path
    test_metrics: Path
    classes_json: list
    table: list
    n_iter: int
    n_converged: int
    n_pairs: int
    seconds: dict = field(default_factory=dict)
    fitter: ProbeFitter | None = None


def count_classes(train: Shard, test: Shard) -> int:
    """Number of classes of a run: ``max(label over train and test) + 1`` (docs/formats.md)."""
    return int(max(train.labels.max_label(), test.labels.max_label())) + 1


def _check_pair(train: Shard, test: Shard) -> None:
    if train.n_latents != test.n_latents:
        raise InputError(
            test.source.path, "shape.npy (latents)", test.n_latents,
            f"{train.n_latents} latents, as in the train shard {train.source.path}",
        )


@dataclass
class JobInputs:
    """Both shards of a job, opened and checked, and where results go."""

    run_dir: Path
    train: Shard
    test: Shard
    n_classes: int
    out_dirs: list
    open_seconds: float = 0.0
    #: Non-zeros per block asked for by the caller; None: the memory plan chooses.
    block_nnz: int | None = None


def open_inputs(run_dir, train_shard, test_shard, *, out_dirs=None, block_nnz=None,
                cache_dir=None, out_root=None, overwrite=True, restart=False) -> JobInputs:
    """Open and validate both shards and the output folders; no cluster is needed.

    Everything that can be wrong with the input (files, sizes, shapes, labels) and with the
    output folders is found here, before any cluster starts or any fitting begins: train
    and test must be two shard folders, and with ``overwrite=False`` (the CLI's default)
    existing results are refused unless the train folder holds a checkpoint to resume
    (``restart=False``). ``out_root`` (``--out DIR``) puts each split's results in
    ``DIR/<shard_id>/`` instead of the run's inference folders.
    """
    check_distinct_shards(train_shard, test_shard)
    t0 = time.perf_counter()
    first_nnz = block_nnz  # None: the configured size; run_job re-cuts to the memory plan's
    train = open_shard(run_dir, train_shard, block_nnz=first_nnz, cache_dir=cache_dir)
    test = open_shard(run_dir, test_shard, block_nnz=first_nnz, cache_dir=cache_dir)
    _check_pair(train, test)
    n_classes = count_classes(train, test)
    if out_dirs is None and out_root is not None:
        out_dirs = split_out_dirs(out_root, (train.shard_id, test.shard_id))
    if out_dirs is None:
        out_dirs = [inference_dir(run_dir, s.shard_id) for s in (train, test)]
    out_dirs = [Path(d) for d in out_dirs]
    resuming = not restart and (out_dirs[0] / CHECKPOINT_NAME).exists()
    check_no_results(out_dirs, (METRICS_NAME, CLASSES_NAME), overwrite=overwrite, resuming=resuming)
    for d in out_dirs:
        check_writable(d)
        remove_stale(d)  # temporaries left by dead runs (their PID is gone)
    # A folder in the way of a result costs seconds now, not a failed write after the fit.
    check_targets([out_dirs[0] / CHECKPOINT_NAME,
                   *(d / name for d in out_dirs for name in (METRICS_NAME, CLASSES_NAME))])
    return JobInputs(Path(run_dir), train, test, n_classes, out_dirs, time.perf_counter() - t0,
                     block_nnz=block_nnz)


def layout_dir(shard: Shard) -> Path | None:
    """Where the fit keeps ``shard``'s latent-major layout when its ranges are read from
    disk: inside the shard's store (replaced with it when the input changes), or None (the
    fit's default folder, ``engine.fit.layout_path``) when the store's folder is not
    writable (an uncompressed npz validated in place)."""
    store = Path(shard.source.store_dir)
    writable = store if store.exists() else store.parent
    return store / LATENT_MAJOR_NAME if os.access(writable, os.W_OK) else None


def run_job(client, inputs: JobInputs, settings: FitSettings | None = None, *, resources=None,
            restart=False, progress=False, callbacks=None, log=None, memory_plan=True,
            class_names=None, capture_warnings=True, **changes) -> JobResult:
    """Fit on the train shard, evaluate on both shards, write results.

    Parameters
    ----------
    client : distributed.Client
    inputs : JobInputs
        From :func:`open_inputs`.
    settings : core.settings.FitSettings, optional
        Ridge, passes, device and block kernel (default: ``FitSettings()``). Every worker is
        asked first which kernel it runs on the device (one log line); one that cannot stops
        the job here (ProbeDaskError naming it).
    resources : dict, optional
        Worker resources of the fit's tasks (``engine.workers.task_resources``).
    restart : bool
        Ignore (and replace) an existing checkpoint.
    progress : bool
        The fitter's progress bar (stderr).
    callbacks : list of callable, optional
        Passed to ``ProbeFitter`` (telemetry); also called (``stages.emit``) at ``plan``,
        ``evaluate_train_start``, ``evaluate_train_end``, ``evaluate_test_end`` and
        ``write_end``.
    log : callable, optional
        Receives one-line progress messages (default: this module's logger, at INFO).
    memory_plan : bool
        Plan memory on the client's workers first (``memory.live.plan_job``): blocks cut to
        its size unless ``inputs.block_nnz`` was given, ranges in memory or read from disk
        as it says; a limit that cannot hold one block stops here (``PlanDoesNotFit``).
    class_names : list of str, optional
        One name per class (``--class-names FILE``), kept in ``probe1d_classes.json``.
    capture_warnings : bool
        Catch the fit's ``ConvergenceWarning`` (logged as one line either way). Warning
        filters are process-wide: a caller running jobs in threads (``app.sweep``) passes
        False and filters them once itself.
    **changes
        Fields of ``settings`` to replace (``ridge=1e-6, max_iter=10``).

    Returns
    -------
    JobResult
    """
    started = utc_now()
    settings = check_settings((settings or FitSettings()).replace(**changes))
    log = logger.info if log is None else log
    inputs, fitter = _prepare(client, inputs, settings, memory_plan=memory_plan,
                              restart=restart, resources=resources, progress=progress,
                              callbacks=callbacks, log=log)
    seconds = {"open": inputs.open_seconds}
    t1 = time.perf_counter()
    _fit(fitter, inputs, capture_warnings, log)
    t2 = time.perf_counter()
    metrics = _evaluate(client, fitter, inputs, callbacks, device=settings.device,
                        resources=resources, backend=settings.backend)
    seconds.update(fit=t2 - t1, evaluate=time.perf_counter() - t2)
    emit(callbacks, Stage.EVALUATE_TEST_END, seconds=seconds["evaluate"])
    summary = {"seconds": seconds, **provenance(client, device=settings.device,
                                                backend=settings.backend, started=started)}
    return _finish(inputs, fitter, metrics, summary, class_names, callbacks, log)


def _prepare(client, inputs: JobInputs, settings: FitSettings, *, memory_plan, restart,
             resources, progress, callbacks, log):
    """Ask the workers for their kernel, plan memory (the inputs re-cut to the plan's
    blocks), and make the fitter; returns the inputs and the fitter."""
    check_worker_kernels(client, settings.device, settings.backend, log=log)
    persist, chunk_nnz = persist_setting(), None
    if memory_plan:
        inputs, plan = plan_job(client, inputs, device=settings.device, persist=persist, log=log)
        emit(callbacks, Stage.PLAN, plan=plan)
        persist, chunk_nnz = plan.persist, plan.block_nnz
    _log_inputs(inputs, log)
    checkpoint = inputs.out_dirs[0] / CHECKPOINT_NAME
    if restart:
        checkpoint.unlink(missing_ok=True)
    fitter = ProbeFitter.from_settings(
        settings, resources=resources, persist=persist, layout_dir=layout_dir(inputs.train),
        chunk_nnz=chunk_nnz, checkpoint=checkpoint, identity=train_identity(inputs.train),
        progress=progress, callbacks=[_resume_logger(log), *(callbacks or ())], client=client,
        keep_state=False)
    return inputs, fitter


def _finish(inputs: JobInputs, fitter, metrics, summary, class_names, callbacks,
            log) -> JobResult:
    """The per-class table and every result file written; the checkpoint goes last."""
    train_metrics, test_metrics = metrics
    seconds = summary["seconds"]
    t3 = time.perf_counter()
    table = class_table(train_metrics, test_metrics)
    _note_missing_classes(table, log)
    summary = {**_summary(inputs, fitter, class_names), **summary}
    paths, classes_paths = _write(inputs.out_dirs, metrics, fitter, summary, table)
    seconds["write"] = time.perf_counter() - t3
    emit(callbacks, Stage.WRITE_END, seconds=seconds["write"], paths=[*paths, *classes_paths])
    fitter.checkpoint.unlink(missing_ok=True)  # the results are final now
    return JobResult(
        train_metrics=paths[0], test_metrics=paths[1], classes_json=classes_paths, table=table,
        n_iter=fitter.n_iter_, n_converged=int(fitter.converged_.sum()),
        n_pairs=int(fitter.coef_.size), seconds=seconds, fitter=fitter,
    )


def _log_inputs(inputs: JobInputs, log) -> None:
    train, test = inputs.train, inputs.test
    log(f"train {train.shard_id}: {train.n_rows:,} rows x {train.n_latents:,} latents, "
        f"{train.nnz:,} non-zeros in {len(train.row_blocks)} blocks; test {test.shard_id}: "
        f"{test.n_rows:,} rows, {test.nnz:,} non-zeros; {inputs.n_classes} classes")


def train_identity(train: Shard) -> dict:
    """What the fit's checkpoint and latent-major layout belong to: the train shard's
    files (identity, fingerprint, labels file) and shape."""
    labels_stat = Path(train.labels.path).stat()
    return {"train": train.source.identity, "train_fingerprint": train.source.fingerprint,
            "train_labels": str(train.labels.path),
            "train_labels_file": [labels_stat.st_size, labels_stat.st_mtime_ns],
            "n_rows": train.n_rows, "n_latents": train.n_latents}


def _resume_logger(log):
    def on_resume(stage, info):
        if stage == Stage.RESUMED:
            log(f"resuming from checkpoint at pass {info['n_iter']} ({info['path']}); "
                "--restart ignores it")
    return on_resume


def _fit(fitter, inputs: JobInputs, capture_warnings: bool, log) -> None:
    """Fit on the train shard; pairs left unconverged are one loud line (the job goes on)."""
    train = inputs.train
    if capture_warnings:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            fitter.fit(train.X, train.y, n_classes=inputs.n_classes, nnz=train.nnz)
        for caught_warning in caught:  # ConvergenceWarning: the log line below says it
            if not issubclass(caught_warning.category, ConvergenceWarning):
                warnings.warn_explicit(caught_warning.message, caught_warning.category,
                                       caught_warning.filename, caught_warning.lineno)
    else:
        fitter.fit(train.X, train.y, n_classes=inputs.n_classes, nnz=train.nnz)
    if not fitter.converged_.all():  # max_iter reached
        (logger.warning if log == logger.info else log)(unconverged_warning(fitter))


def _evaluate(client, fitter, inputs: JobInputs, callbacks, **options):
    """Both splits' metrics: train where its ranges are (in memory or read from disk), test
    cut at the same ranges when the workers just held as much, else one pass over its row
    blocks. The fitter lets go of its ranges afterwards (a sweep's next job needs the
    workers' memory)."""
    train, test, n_classes = inputs.train, inputs.test, inputs.n_classes
    t0 = time.perf_counter()
    emit(callbacks, Stage.EVALUATE_TRAIN_START)
    train_metrics = evaluate_ranges(client, fitter.blocks_, fitter.range_fits_, fitter.ranges_,
                                    n_classes, resident=True, **options)
    emit(callbacks, Stage.EVALUATE_TRAIN_END, seconds=time.perf_counter() - t0)
    fitter.blocks_ = None  # the train events go before the test split's take their place
    test_blocks = latent_blocks(test.X, test.y)
    if fitter.persisted_ and test.nnz <= train.nnz:
        test_data, _ = persist_ranges(client, test_blocks, fitter.ranges_)
        test_metrics = evaluate_ranges(client, test_data, fitter.range_fits_, fitter.ranges_,
                                       n_classes, own_labels=True, **options)
        del test_data
    else:  # not laid out by latent
        test_metrics = evaluate_split(client, test_blocks, fitter.intercept_, fitter.coef_,
                                      n_classes, groups=fitter.worker_threads_, **options)
    fitter.range_fits_ = None
    return train_metrics, test_metrics


def _note_missing_classes(table, log) -> None:
    for row in table:  # allowed input: a class of the run that the train shard lacks
        if row["train_rows"] == 0:
            row["note"] = "not in the train shard: prior-only probe (w = 0, b = logit(1e-8))"
            log(f"class {row['class']}: not in the train shard ({row.get('test_rows', 0)} test "
                "rows); its probes are prior-only")


def _summary(inputs: JobInputs, fitter, class_names) -> dict:
    """``probe1d_classes.json``'s summary: the inputs, the fit and its passes."""
    train, test = inputs.train, inputs.test
    return {
        "run": str(Path(inputs.run_dir).resolve()),
        "train_shard": str(Path(train.labels.path).parent.resolve()),
        "test_shard": str(Path(test.labels.path).parent.resolve()),
        "n_latents": train.n_latents, "n_classes": inputs.n_classes,
        "train_rows": train.n_rows, "test_rows": test.n_rows,
        "train_nnz": train.nnz, "test_nnz": test.nnz,
        "solver_passes": fitter.n_iter_, "ridge": fitter.ridge, "max_iter": fitter.max_iter,
        "pairs": int(fitter.coef_.size), "converged_pairs": int(fitter.converged_.sum()),
        # [pass, pairs still active after it] of the passes this process made (a resumed
        # fit: those after the checkpoint): the report's passes-per-pair curve.
        "active_after_pass": [[int(h["n_iter"]), int(h["active_after"])]
                              for h in fitter.history_],
        **({"class_names": list(class_names)} if class_names is not None else {}),
    }


def _write(out_dirs, splits, fitter, summary, table):
    """Every result file under a temporary name first, then renamed in one commit step: a
    failure (disk full, a signal) leaves the previous result set whole (io/resultset.py).
    Returns the metrics files and the class tables."""
    b, w = fitter.intercept_, fitter.coef_
    with ResultSet() as results:
        paths = [results.stage(d / METRICS_NAME, functools.partial(
            write_metrics_npz, loss=split.loss, weights=w, biases=b, tp=split.tp, fp=split.fp,
            tn=split.tn, fn=split.fn, converged=fitter.converged_))
            for split, d in zip(splits, out_dirs)]
        classes_paths = [results.stage(d / CLASSES_NAME, functools.partial(
            write_json, obj={"summary": summary, "classes": table})) for d in out_dirs]
        results.commit()
    return paths, classes_paths


def unconverged_warning(fitter) -> str:
    """The loud line logged when pairs are still iterating after ``max_iter`` passes."""
    n_left = int(fitter.converged_.size - fitter.converged_.sum())
    return (f"WARNING: {n_left:,} of {fitter.converged_.size:,} pairs did not converge in "
            f"{fitter.n_iter_} solver passes (--max-iter {fitter.max_iter}); their probes are "
            "not optimal (see 'converged' in probe1d_metrics.npz). Raise --max-iter, or pass "
            "--require-converged to make this an error (exit 3)")


def format_table(table, limit=None) -> str:
    """The per-class table as aligned text (what the CLI prints)."""
    head = (f"{'class':>5} {'latent':>6} {'train loss':>10} {'test loss':>10} "
            f"{'baseline':>9} {'R train':>8} {'R test':>8}")
    lines = [head]
    for row in table[:limit]:
        lines.append(
            f"{row['class']:>5} {row['best_latent']:>6} {row['train_loss']:>10.5f} "
            f"{row.get('test_loss', np.nan):>10.5f} {row['train_baseline_ce']:>9.5f} "
            f"{row['train_probe_r']:>8.3f} {row.get('test_probe_r', np.nan):>8.3f}"
        )
    return "\n".join(lines)
