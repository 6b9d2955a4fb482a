"""A sweep: many runs, validated up front, fitted back to back on one cluster.

``probe-dask sweep FILE`` reads the runs (:mod:`probe_dask.app.sweepfile`), validates every
one with :func:`probe_dask.app.job.open_inputs` before the first fit (a bad path in run 37
costs seconds, not hours), then fits them one after the other with
:func:`probe_dask.app.job.run_job` on one client whose workers stay warm. What runs share is
done once: a shard's labels are scanned once per process (``io.labels`` keeps each file's
histogram), the cluster is started once, imports and the C kernel are paid once.

Safe to stop and rerun: a run whose result set exists is skipped (and says so); each run keeps
its own checkpoint, so an interrupted run resumes from its last pass; a failing run is
reported and the sweep goes on (``fail_fast`` stops it); a ``KeyboardInterrupt`` (Ctrl-C,
or SIGTERM through the CLI's ``app.signals.graceful_stop``) stops the sweep after marking
the run in progress ``stopped`` (its checkpoint stays). The summary (:mod:`probe_dask.app.sweep_summary`)
is written at the end, also when the sweep fails or is stopped.

Memory per process: the driver holds every run's ``JobInputs`` (paths, row ranges and small
dask graphs) and one run's solver state at a time; workers hold what ``run_job`` says.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from probe_dask.app.job import JobInputs, open_inputs, run_job
from probe_dask.app.sweep_summary import write_summary
from probe_dask.app.sweepfile import SweepRun
from probe_dask.engine.workers import task_resources
from probe_dask.errors import ProbeDaskError
from probe_dask.io.layout import (
    ACTIVATIONS_NAME,
    CHECKPOINT_NAME,
    CLASSES_NAME,
    METRICS_NAME,
    inference_dir,
    require_dir,
    require_file,
)
from probe_dask.telemetry import Telemetry, telemetry_path

__all__ = ["SweepEntry", "SweepResult", "result_dirs", "is_complete", "validate_sweep",
           "run_sweep"]


@dataclass
class SweepEntry:
    """One run of a sweep and what the sweep knows of it.

    ``status`` is ``pending`` (to fit), ``skipped`` (results exist), ``finished``,
    ``failed`` (``error`` says why) or ``stopped`` (SIGTERM or Ctrl-C during it).
    """

    run: SweepRun
    out_dirs: list
    status: str = "pending"
    inputs: JobInputs | None = None
    error: str = ""
    seconds: float = 0.0


@dataclass
class SweepResult:
    """What a sweep did; ``failed`` lists the entries that failed."""

    entries: list
    summary: Path | None = None
    best: Path | None = None
    seconds: float = 0.0
    failed: list = field(default_factory=list)


def result_dirs(run: SweepRun) -> list[Path]:
    """Where ``run`` writes: ``RUN/inference/<train_id>`` and ``RUN/inference/<test_id>``."""
    return [inference_dir(run.run, run.train_shards.name), inference_dir(run.run, run.test_shards.name)]


def is_complete(out_dirs) -> bool:
    """Whether a run's result set exists: metrics and class table of both splits."""
    return all((Path(d) / name).is_file() for d in out_dirs for name in (METRICS_NAME, CLASSES_NAME))


def _named(sweep_file, run: SweepRun, err: Exception) -> ProbeDaskError:
    # One line that names the sweep file, the run (index and run id) and the input at fault.
    return ProbeDaskError(f"{sweep_file}: {run.label}: {err}")


def validate_sweep(sweep_file, runs, *, log=print) -> list[SweepEntry]:
    """Check every run before any fit; open the inputs of every run still to fit.

    Runs whose result set exists are marked ``skipped`` and not opened. The others are
    checked in two rounds: first the paths of every run (seconds for any number of runs),
    then :func:`~probe_dask.app.job.open_inputs` for each (shapes, labels, the npz itself,
    the output folders).

    Raises
    ------
    ProbeDaskError
        The first bad run: ``SWEEP_FILE: run I (RUN_ID): <file>: <field>: found ...``.
    """
    entries = [SweepEntry(r, result_dirs(r)) for r in runs]
    for e in entries:
        if is_complete(e.out_dirs) and not (e.out_dirs[0] / CHECKPOINT_NAME).exists():
            e.status = "skipped"
    todo = [e for e in entries if e.status == "pending"]
    for e in todo:  # round 1: paths only
        r = e.run
        try:
            require_dir(r.run, "run folder", "an SAE run folder (inference/<shard_id>/token_acts.npz)")
            for shard in (r.train_shards, r.test_shards):
                require_dir(shard, "shard folder", "a saev shard folder (metadata.json, labels.bin)")
                require_file(shard / "labels.bin", "file", "the labels.bin of a saev shard")
                require_file(inference_dir(r.run, shard.name) / ACTIVATIONS_NAME, "file",
                             "the token_acts.npz of this shard in the run")
        except ProbeDaskError as err:
            raise _named(sweep_file, r, err) from None
    t0 = time.perf_counter()
    for e in todo:  # round 2: everything open_inputs checks
        opts = e.run.options
        try:
            e.inputs = open_inputs(e.run.run, e.run.train_shards, e.run.test_shards,
                                   out_dirs=e.out_dirs, block_nnz=opts.get("block_nnz"),
                                   cache_dir=opts.get("cache_dir"))
        except ProbeDaskError as err:
            raise _named(sweep_file, e.run, err) from None
    log(f"sweep: {len(entries)} runs checked in {time.perf_counter() - t0:.1f} s: "
        f"{len(todo)} to fit, {len(entries) - len(todo)} with results already")
    return entries


def _eta(done_seconds, remaining) -> str:
    if not remaining:
        return "ETA 0 s"
    if not done_seconds:
        return "ETA after the first fit"
    return f"ETA {sum(done_seconds) / len(done_seconds) * remaining:.0f} s"


def _fit_one(client, e: SweepEntry, *, ridge, max_iter, device, backend, restart, progress,
             log, telemetry_interval):
    opts = e.run.options
    dev = opts.get("device", device)
    dev = None if dev in (None, "auto") else dev
    tele = None
    if telemetry_interval is not None:
        tele = Telemetry(interval=telemetry_interval)
        tele.open(telemetry_path(e.out_dirs[0]))
        tele.attach(client)
    error = None
    try:
        return run_job(client, e.inputs, ridge=opts.get("ridge", ridge),
                       max_iter=opts.get("max_iter", max_iter),
                       device=dev, resources=task_resources(client, dev), backend=backend,
                       restart=restart, progress=progress, log=log,
                       callbacks=[tele] if tele is not None else None)
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        if tele is not None:
            try:
                tele.close(**({"error": error} if error else {}))
            except Exception as exc:
                log(f"telemetry: not completed ({type(exc).__name__}: {exc})")


def run_sweep(client, entries, *, summary_dir=None, ridge=1e-8, max_iter=30, device=None,
              backend="auto", restart=False, fail_fast=False, progress=False, log=print,
              telemetry_interval=None) -> SweepResult:
    """Fit every pending run of ``entries`` on ``client``, one after the other.

    Parameters
    ----------
    client : distributed.Client
        One cluster for the whole sweep; its workers stay up between runs.
    entries : list of SweepEntry
        From :func:`validate_sweep`.
    summary_dir : path, optional
        Where ``sweep_summary.csv`` and ``sweep_best.csv`` go (always written, also after a
        failure or a stop); None: no summary.
    ridge, max_iter, device : optional
        Defaults for runs whose sweep file does not set them.
    backend, restart, progress, log
        As for :func:`~probe_dask.app.job.run_job`, for every run (each run's GPU resources
        come from ``engine.workers.task_resources``).
    fail_fast : bool
        Stop at the first failed run (the rest stay ``pending``).
    telemetry_interval : float, optional
        Write each run's telemetry beside its train results, sampling this often.

    Returns
    -------
    SweepResult
        ``failed`` is empty when every run finished or was skipped.
    """
    t0 = time.perf_counter()
    n = len(entries)
    done_seconds = []
    result = SweepResult(entries)
    try:
        for k, e in enumerate(entries):
            remaining = sum(x.status == "pending" for x in entries[k:])
            head = f"sweep [{k + 1}/{n}] {e.run.label}"
            if e.status == "skipped":
                log(f"{head}: skipped, results exist in {e.out_dirs[0]}")
                continue
            log(f"{head}: started; {_eta(done_seconds, remaining)}")
            t1 = time.perf_counter()
            try:
                _fit_one(client, e, ridge=ridge, max_iter=max_iter, device=device,
                         backend=backend, restart=restart, progress=progress, log=log,
                         telemetry_interval=telemetry_interval)
            except KeyboardInterrupt:
                e.status, e.error = "stopped", "stopped (SIGTERM or Ctrl-C); rerun to resume"
                log(f"{head}: stopped; its checkpoint stays, rerun the sweep to resume it")
                raise
            except Exception as exc:
                e.status, e.error = "failed", f"{type(exc).__name__}: {exc}"
                e.seconds = time.perf_counter() - t1
                result.failed.append(e)
                log(f"{head}: failed after {e.seconds:.1f} s: {e.error}")
                if e.run.options.get("debug"):
                    log(traceback.format_exc())
                if fail_fast:
                    log("sweep: --fail-fast: stopping")
                    break
                continue
            e.status, e.seconds = "finished", time.perf_counter() - t1
            done_seconds.append(e.seconds)
            log(f"{head}: finished in {e.seconds:.1f} s; {_eta(done_seconds, remaining - 1)}")
    finally:
        result.seconds = time.perf_counter() - t0
        if summary_dir is not None:
            result.summary, result.best = write_summary(
                summary_dir, [(e.run, e.out_dirs, e.status, e.error) for e in entries])
            log(f"sweep summary: {result.summary}, {result.best}")
    return result
