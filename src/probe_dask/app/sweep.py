"""A sweep: many runs, validated up front, fitted on one cluster, overlapping when memory allows.

``probe-dask sweep FILE`` reads the runs (:mod:`probe_dask.app.sweepfile`), validates every
one with :func:`probe_dask.app.job.open_inputs` before the first fit (a bad path in run 37
costs seconds, not hours), then fits them with :func:`probe_dask.app.job.run_job` on one
client whose workers stay warm: as many at once as their memory plans allow together
(:func:`overlapping_runs`, at most ``probe-dask.sweep.max-concurrent-runs``), each in a
thread of the driver, so that the workers compute one run's pass while another run's
driver steps, evaluates or writes; else one after the other. What runs share is
done once: a shard's labels are scanned once per process (``io.labels`` keeps each file's
histogram), the cluster is started once, imports and the C kernel are paid once.

Safe to stop and rerun: a run whose result set exists is skipped (and says so); each run keeps
its own checkpoint, so an interrupted run resumes from its last pass; a failing run is
reported and the sweep goes on (``fail_fast`` stops it); a ``KeyboardInterrupt`` (Ctrl-C,
or SIGTERM through the CLI's ``app.signals.graceful_stop``) stops the sweep after marking
the run in progress ``stopped`` (its checkpoint stays). The summary (:mod:`probe_dask.app.sweep_summary`)
is written at the end, also when the sweep fails or is stopped.

A stop (SIGTERM, Ctrl-C) with overlapping runs lets each running run reach its next stage
(the end of its pass in flight: its checkpoint is then whole) and starts no other.

Memory per process: the driver holds every run's ``JobInputs`` (paths, row ranges and small
dask graphs) and the solver state of each running run; workers hold what ``run_job`` says,
for each running run (the plans are added up before runs overlap).
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
import warnings

import dask
import psutil

from probe_dask.app.job import open_inputs, run_job
from probe_dask.app.sweep_runs import (
    SweepEntry,
    SweepResult,
    check_sweep,
    describe,
    is_complete,
    named_error,
    result_dirs,
    summarize_sweep,
    write_settings,
)
from probe_dask.app.sweep_summary import SETTINGS_NAME, write_summary
from probe_dask.app.sweepfile import RUN_DEFAULTS, run_settings
from probe_dask import config
from probe_dask.core.settings import FitSettings
from probe_dask.engine.parameters import check_settings
from probe_dask.engine.workers import task_resources
from probe_dask.errors import ConvergenceWarning, ProbeDaskError
from probe_dask.memory.live import plan_job
from probe_dask.memory.plan import format_size
from probe_dask.telemetry import Telemetry, telemetry_path

logger = logging.getLogger(__name__)

__all__ = ["SweepEntry", "SweepResult", "RUN_DEFAULTS", "SETTINGS_NAME", "result_dirs",
           "is_complete", "write_settings", "check_sweep", "validate_sweep", "describe",
           "summarize_sweep", "run_sweep"]


def validate_sweep(sweep_file, runs, *, log=None) -> list[SweepEntry]:
    """Check every run before any fit; open the inputs of every run still to fit.

    First :func:`check_sweep` (results that exist, the paths of every run), then
    :func:`~probe_dask.app.job.open_inputs` for each run to fit (shapes, labels, the npz
    itself, the output folders).

    ``log`` (optional) receives the one-line summary; default: this module's logger.

    Raises
    ------
    ProbeDaskError
        The first bad run: ``SWEEP_FILE: run I (RUN_ID): <file>: <field>: found ...``.
    """
    log = logger.info if log is None else log
    entries = check_sweep(sweep_file, runs)
    todo = [e for e in entries if e.status == "pending"]
    t0 = time.perf_counter()
    for e in todo:  # everything open_inputs checks
        opts = e.run.options
        try:
            e.inputs = open_inputs(e.run.run, e.run.train_shards, e.run.test_shards,
                                   out_dirs=e.out_dirs, block_nnz=opts.get("block_nnz"),
                                   cache_dir=opts.get("cache_dir"))
        except ProbeDaskError as err:
            raise named_error(sweep_file, e.run, err) from None
    log(f"sweep: {len(entries)} runs checked in {time.perf_counter() - t0:.1f} s: "
        f"{len(todo)} to fit, {len(entries) - len(todo)} with results already")
    return entries


def _eta(done_seconds, remaining, width=1) -> str:
    if not remaining:
        return "ETA 0 s"
    if not done_seconds:
        return "ETA after the first fit"
    return f"ETA {sum(done_seconds) / len(done_seconds) * remaining / width:.0f} s"


def _run_device(e: SweepEntry, settings: FitSettings):
    return run_settings(e.run, settings).device


def overlapping_runs(client, entries, *, settings=FitSettings(), log=None, most=None) -> int:
    """How many runs of ``entries`` the sweep fits at once: the most (at most ``most``,
    default ``probe-dask.sweep.max-concurrent-runs``) whose memory plans, added up, stay
    within the workers' target share of their limit (``distributed.worker.memory.target``)
    and within the memory this machine has free for the driver. 1: back to back.
    ``log`` (optional, default this module's logger) receives the decision's line."""
    log = logger.info if log is None else log
    most = int(config.get("probe-dask.sweep.max-concurrent-runs") if most is None else most)
    todo = [e for e in entries if e.status == "pending"]
    if most <= 1 or len(todo) <= 1:
        return 1
    plans = []
    for e in todo:
        try:
            e.inputs, plan = plan_job(client, e.inputs, device=_run_device(e, settings))
        except ProbeDaskError:
            continue  # the run fails in its own turn, saying why; the others go on
        plans.append(plan)
    if not plans:
        return 1
    target = float(dask.config.get("distributed.worker.memory.target") or 0.6)
    worker = max(p.worker_peak for p in plans)
    driver = max(p.driver_peak for p in plans)
    room_workers = int(target * min(p.memory_limit for p in plans) // max(worker, 1))
    room_driver = int(0.8 * psutil.virtual_memory().available // max(driver, 1))
    width = max(1, min(most, len(todo), room_workers, room_driver))
    log(f"sweep: {width} run{'s' if width > 1 else ''} at once (worker peak "
        f"{format_size(worker)} and driver peak {format_size(driver)} a run, planned)")
    return width


class _Stop(KeyboardInterrupt):
    """Raised in a run's thread, at its next stage, when the sweep is stopped."""


def _fit_one(client, e: SweepEntry, *, settings, restart, progress, log, telemetry_interval,
             stop=None):
    fit_with = run_settings(e.run, settings)
    tele = None
    if telemetry_interval is not None:
        tele = Telemetry(interval=telemetry_interval)
        tele.open(telemetry_path(e.out_dirs[0]))
        tele.attach(client)
    write_settings(e.run, e.out_dirs, settings)
    callbacks = [tele] if tele is not None else []
    if stop is not None:  # in a thread: a stop of the sweep ends the run at its next stage
        def check(stage, info):
            if stop.is_set():
                raise _Stop()
        callbacks.append(check)
    error = None
    try:
        return run_job(client, e.inputs, fit_with,
                       resources=task_resources(client, fit_with.device),
                       restart=restart, progress=progress, log=log,
                       callbacks=callbacks or None, capture_warnings=stop is None)
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        if tele is not None:
            try:
                tele.close(**({"error": error} if error else {}))
            except Exception as exc:
                log(f"telemetry: not completed ({type(exc).__name__}: {exc})")


class _Progress:
    """The sweep's lines and counters, shared by the runs' threads."""

    def __init__(self, entries, log, width):
        self.entries, self.log, self.width = entries, log, width
        self.done_seconds = []
        self.lock = threading.Lock()

    def head(self, e) -> str:
        return f"sweep [{self.entries.index(e) + 1}/{len(self.entries)}] {e.run.label}"

    def remaining(self) -> int:
        return sum(x.status in ("pending", "running") for x in self.entries)

    def finished(self, e, seconds) -> None:
        with self.lock:
            e.status, e.seconds = "finished", seconds
            self.done_seconds.append(seconds)
            eta = _eta(self.done_seconds, self.remaining(), self.width)
        self.log(f"{self.head(e)}: finished in {seconds:.1f} s; {eta}")


def _fit_entry(client, e, progress, fit_kw, result, fail_fast, stop=None) -> bool:
    """Fit one run, update its entry and the result; False when the sweep must stop."""
    head = progress.head(e)
    with progress.lock:
        eta = _eta(progress.done_seconds, progress.remaining(), progress.width)
        e.status = "running"
    progress.log(f"{head}: started; {eta}")
    log = progress.log if stop is None else (lambda m: progress.log(f"[{e.run.label}] {m}"))
    t1 = time.perf_counter()
    try:
        job = _fit_one(client, e, log=log, stop=stop, **fit_kw)
        e.unconverged = job.n_pairs - job.n_converged
    except KeyboardInterrupt:
        e.status, e.error = "stopped", "stopped (SIGTERM or Ctrl-C); rerun to resume"
        progress.log(f"{head}: stopped; its checkpoint stays, rerun the sweep to resume it")
        raise
    except Exception as exc:
        e.status, e.error = "failed", f"{type(exc).__name__}: {exc}"
        e.seconds = time.perf_counter() - t1
        with progress.lock:
            result.failed.append(e)
        progress.log(f"{head}: failed after {e.seconds:.1f} s: {e.error}")
        if e.run.options.get("debug"):
            progress.log(traceback.format_exc())
        if fail_fast:
            progress.log("sweep: --fail-fast: stopping")
            return False
        return True
    progress.finished(e, time.perf_counter() - t1)
    return True


def _run_overlapping(client, todo, progress, fit_kw, result, fail_fast) -> None:
    """Fit ``todo`` in as many threads as ``progress`` is wide; a stop or --fail-fast lets the running
    runs reach their next stage and starts no other."""
    stop = threading.Event()
    queue = list(todo)

    def worker():
        while not stop.is_set():
            with progress.lock:
                if not queue:
                    return
                e = queue.pop(0)
            try:
                if not _fit_entry(client, e, progress, fit_kw, result, fail_fast, stop):
                    stop.set()
            except KeyboardInterrupt:
                return

    threads = [threading.Thread(target=worker, name=f"probe-dask-sweep-{i}", daemon=True)
               for i in range(progress.width)]
    with warnings.catch_warnings():  # once, for every thread: run_job logs unconverged runs
        warnings.simplefilter("ignore", ConvergenceWarning)
        for t in threads:
            t.start()
        try:
            for t in threads:
                while t.is_alive():
                    t.join(0.2)  # the main thread stays free for SIGTERM / Ctrl-C
        except KeyboardInterrupt:
            stop.set()
            progress.log("sweep: stopping: each running run stops at its next stage")
            for t in threads:
                t.join()
            raise
    if any(e.status == "stopped" for e in todo):
        raise KeyboardInterrupt


def run_sweep(client, entries, settings: FitSettings | None = None, *, summary_dir=None,
              restart=False, fail_fast=False, progress=False, log=None, telemetry_interval=None,
              concurrent=None, **changes) -> SweepResult:
    """Fit every pending run of ``entries`` on ``client``, several at once when memory
    allows (:func:`overlapping_runs`), else one after the other.

    Parameters
    ----------
    client : distributed.Client
        One cluster for the whole sweep; its workers stay up between runs.
    entries : list of SweepEntry
        From :func:`validate_sweep`.
    settings : core.settings.FitSettings, optional
        What runs fit with where their sweep entry does not say (``ridge``, ``max_iter``,
        ``device``), and the block kernel of every run; ``**changes`` replaces its fields.
    summary_dir : path, optional
        Where ``sweep_summary.csv`` and ``sweep_best.csv`` go (always written, also after a
        failure or a stop); None: no summary.
    restart, progress, log
        As for :func:`~probe_dask.app.job.run_job`, for every run (each run's GPU resources
        come from ``engine.workers.task_resources``; no progress bars with overlapping runs).
    fail_fast : bool
        Stop at the first failed run (the rest stay ``pending``).
    telemetry_interval : float, optional
        Write each run's telemetry beside its train results, sampling this often (with
        overlapping runs, each run's telemetry sees the whole cluster).
    concurrent : int, optional
        Runs at once; default: :func:`overlapping_runs` decides. Overlapping runs keep the
        workers busy while one run's driver steps, evaluates or writes; their log lines
        start with ``[run label]``.

    Returns
    -------
    SweepResult
        ``failed`` is empty when every run finished or was skipped.
    """
    settings = check_settings((settings or FitSettings()).replace(**changes))
    log = logger.info if log is None else log
    t0 = time.perf_counter()
    result = SweepResult(entries)
    try:
        _log_skipped(entries, log)
        todo = [e for e in entries if e.status == "pending"]
        prog = _Progress(entries, log, _width(client, entries, todo, settings, concurrent, log))
        fit_kw = dict(settings=settings, restart=restart, progress=progress and prog.width == 1,
                      telemetry_interval=telemetry_interval)
        if prog.width > 1:
            _run_overlapping(client, todo, prog, fit_kw, result, fail_fast)
        else:
            for e in todo:
                if not _fit_entry(client, e, prog, fit_kw, result, fail_fast):
                    break
    finally:
        result.seconds = time.perf_counter() - t0
        if summary_dir is not None:
            result.summary, result.best = write_summary(
                summary_dir, [(e.run, e.out_dirs, e.status, e.error) for e in entries])
            log(f"sweep summary: {result.summary}, {result.best}")
    return result


def _log_skipped(entries, log) -> None:
    for k, e in enumerate(entries):
        if e.status == "skipped":
            log(f"sweep [{k + 1}/{len(entries)}] {e.run.label}: skipped, results exist in "
                f"{e.out_dirs[0]}")


def _width(client, entries, todo, settings, concurrent, log) -> int:
    """Runs at once: ``concurrent``, else what :func:`overlapping_runs` allows; at least 1,
    at most the runs to fit."""
    width = 1
    if len(todo) > 1:
        width = concurrent if concurrent else overlapping_runs(client, entries,
                                                               settings=settings, log=log)
    return max(1, min(int(width), len(todo) or 1))
