"""Command line: probe-dask demo | fit | plan | sweep | report.

Thin by design: every command parses its flags, starts or joins a cluster, and calls a
library function (``job.run_job``, ``plan``). Records of the ``probe_dask`` loggers go to
stderr through the handlers of ``app/logs.py`` (``-v``, ``-q``, ``--log-file``, anywhere on
the line). Exit statuses (``parser.EXIT_CODES``, in every --help): errors meant for the user
(``ProbeDaskError``) become one line on stderr and status 2; a plan that does not fit the
workers 4; pairs unconverged with ``--require-converged`` 3; any other failure one line and
status 1 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path

from dask.utils import format_bytes
from distributed import performance_report

from probe_dask._version import __version__
from probe_dask.app.demo import demo_run
from probe_dask.app.flags import OneLineParser, positive_int
from probe_dask.app.guards import check_block_count, check_local_threads
from probe_dask.app.job import CHECKPOINT_NAME, format_table, open_inputs, run_job
from probe_dask.app.logs import configure_logging, remove_handlers
from probe_dask.app.parser import (
    NO_FIT_STATUS,
    UNCONVERGED_STATUS,
    add_cluster_flags,
    add_common_flags,
    add_data_flags,
    add_fit_flags,
    add_output_flags,
    add_plan_parser,
    add_sweep_parser,
    add_telemetry_flags,
    finish_help,
    fit_settings,
)
from probe_dask.app.plan_command import plan_command
from probe_dask.app.progress import Progress
from probe_dask.app.reach import login_node_warning
from probe_dask.app.report_command import add_report_parser, class_names
from probe_dask.app.requeue import after_stop, restart_applies
from probe_dask.app.signals import Stopped, graceful_stop
from probe_dask.app.sweep import run_sweep, validate_sweep
from probe_dask.app.sweep_command import sweep_mode, task_runs
from probe_dask.app.sweepfile import parse_set, read_sweep
from probe_dask.cluster import INSECURE_WARNING, make_cluster, ssh_tunnel_hint
from probe_dask.engine.workers import task_resources
from probe_dask.errors import PlanDoesNotFit, ProbeDaskError
from probe_dask.io.outputs import check_writable
from probe_dask.memory.estimate import format_estimate
from probe_dask.memory.plan import format_plan
from probe_dask.stages import Stage
from probe_dask.telemetry import (
    PERFORMANCE_REPORT_NAME,
    Telemetry,
    strict_json,
    telemetry_path,
)

__all__ = ["main", "build_parser"]

logger = logging.getLogger(__name__)

_RUN = "--run RUN --train-shards SHARDS/TRAIN --test-shards SHARDS/TEST"
#: Each subcommand's --help: (description, example).
_HELP = {
    "demo": ("Make a small synthetic SAE run, fit and evaluate every probe of it on a local "
             "cluster, and print a summary: the whole pipeline in a minute, no data needed.",
             "probe-dask demo --out demo-run --workers 2"),
    "fit": ("Fit one 1D logistic-regression probe per (latent, class) pair of an SAE run on "
            "its train shard, evaluate every probe on both shards, and write "
            "probe1d_metrics.npz and probe1d_classes.json per shard. Resumes from the "
            "checkpoint of an interrupted run.",
            f"probe-dask fit {_RUN} --cluster slurm --jobs 4"),
    "plan": ("Print the memory plan of a run without fitting: every buffer per process, the "
             "block size and the kernel time. Exits 4 when the run does not fit the workers.",
             f"probe-dask plan {_RUN} --cluster slurm:gpu"),
    "sweep": (None, "probe-dask sweep sweep.toml --set ridge=1e-8,1e-6 --cluster slurm --jobs 8 "
                    "--out results/"),
    "report": ("Write an HTML page with figures of a finished run (the best latents per "
               "class, convergence, memory) from its result files; needs no cluster.",
               f"probe-dask report {_RUN} --out report.html"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="probe-dask", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"probe-dask {__version__}")
    add_common_flags(parser)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    demo = sub.add_parser("demo", help="make a synthetic run, fit, evaluate, print a summary")
    demo.add_argument("--out", dest="demo_dir", default="demo-run",
                      help="folder of the synthetic run (default ./demo-run)")
    demo.add_argument("--train-examples", type=positive_int, default=None, help="images in the train shard")
    demo.add_argument("--seed", type=int, default=0)
    add_cluster_flags(demo)
    add_fit_flags(demo)
    add_output_flags(demo, out=False)
    add_telemetry_flags(demo)
    # The synthetic run is made here: no cache folder, no results to keep.
    demo.set_defaults(func=_cmd_demo, cache_dir=None, out=None, overwrite=True)

    fit = sub.add_parser("fit", help="fit and evaluate every (latent, class) probe of a run")
    add_data_flags(fit)
    add_cluster_flags(fit)
    add_fit_flags(fit)
    add_output_flags(fit)
    add_telemetry_flags(fit)
    fit.set_defaults(func=_cmd_fit)
    add_plan_parser(sub, _cmd_plan)
    add_sweep_parser(sub, _cmd_sweep)
    add_report_parser(sub)
    for name, command in sub.choices.items():
        # After the subcommand too: ``probe-dask fit ... -v`` (a subparser's own flags only
        # are known after its name).
        add_common_flags(command)
        description, example = _HELP[name]
        finish_help(command, example, description)
    return parser


def _open_client(args):
    spec = args.scheduler or args.cluster
    check_local_threads(spec, args.workers, args.threads, allow=args.allow_oversubscribe)
    sizing = dict(n_workers=args.workers, threads_per_worker=args.threads,
                  memory_limit=args.memory_limit, jobs=args.jobs, minimum_jobs=args.min_jobs,
                  maximum_jobs=args.max_jobs)
    if spec == "local" and sizing["threads_per_worker"] is None:
        sizing["threads_per_worker"] = 1  # torch and the C kernel each use one core per task
    security = {}
    if args.insecure:
        logger.warning("probe-dask: %s", INSECURE_WARNING)
        security = {"security": False}
    # Only what the user asked for: joining a running scheduler takes no sizing at all.
    return make_cluster(spec, jobqueue_config=args.jobqueue_config,
                        dashboard_address=args.dashboard_address, **security,
                        **{k: v for k, v in sizing.items() if v is not None})


def _run(args, run_dir, train, test):
    # Lines go to the logging handlers (app/logs.py); the bars only are Progress's own.
    progress = Progress(quiet=_flag(args, "quiet"), logger=logging.getLogger("probe_dask.app.progress"))
    try:
        tele = _start_telemetry(args)
        inputs, names = _open_job(args, run_dir, train, test, progress, tele)
        result = _fit_on_cluster(args, fit_settings(args), inputs, names, progress, tele)
        _print_result(result)
        return result
    finally:
        progress.close()


def _open_job(args, run_dir, train, test, progress, tele):
    """The job's inputs and class names, opened and checked before any cluster starts (bad
    input costs seconds)."""
    progress(Stage.OPEN, {})
    check_local_threads(args.scheduler or args.cluster, args.workers, args.threads,
                        allow=args.allow_oversubscribe)
    kwargs = {} if args.block_nnz is None else {"block_nnz": args.block_nnz}
    inputs = open_inputs(run_dir, train, test, cache_dir=args.cache_dir, out_root=args.out,
                         overwrite=args.overwrite, restart=args.restart, **kwargs)
    names = class_names(args.class_names, inputs.n_classes)
    progress(Stage.INGEST, {"seconds": inputs.open_seconds})
    check_block_count(inputs, args.block_nnz, allow=args.allow_many_blocks)
    args.checkpoint_path = inputs.out_dirs[0] / CHECKPOINT_NAME  # named if a signal stops the run
    if tele is not None:
        tele.host_mem(Stage.INGEST, seconds=inputs.open_seconds)
        tele.open(telemetry_path(inputs.out_dirs[0]))
    return inputs, names


def _fit_on_cluster(args, settings, inputs, names, progress, tele):
    """Start or join the cluster, run the job on it, and close both the telemetry and the
    cluster whatever happens."""
    log = progress.log
    warning = login_node_warning(args.scheduler or args.cluster)
    if warning:
        logger.warning(warning)
    handle = _open_client(args)
    client = handle.client
    error = None
    try:
        log(f"dashboard: {client.dashboard_link}")
        if (hint := ssh_tunnel_hint(client.dashboard_link)) is not None:
            log(f"dashboard from a laptop: {hint}")
        if tele is not None:
            tele.attach(client)
            tele.host_mem(Stage.CLUSTER, dashboard=client.dashboard_link)
        with _performance_report(args, inputs, log):
            result = run_job(client, inputs, settings,
                             resources=task_resources(client, settings.device),
                             restart=args.restart, progress=False, class_names=names,
                             callbacks=[c for c in (tele, progress) if c is not None])
            args.results_final = True  # committed: a walltime signal from here on is not requeued
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        try:
            if tele is not None:
                summary = tele.close(**({"error": error} if error else {}))
                _log_memory_summary(summary, tele, log)
        except Exception as exc:  # noqa: BLE001 - telemetry never hides the run's own outcome
            log(f"telemetry: not completed ({type(exc).__name__}: {exc})")
        finally:
            handle.close()
    return result


def _print_result(result) -> None:
    print(format_table(result.table))
    print(f"\nsolver passes: {result.n_iter}; converged pairs: {result.n_converged:,} of "
          f"{result.n_pairs:,}; fit {result.seconds['fit']:.1f} s, evaluate "
          f"{result.seconds['evaluate']:.1f} s")
    print(f"results:\n  {result.train_metrics}\n  {result.test_metrics}")
    for p in result.classes_json:
        print(f"  {p}")


def _status(args, result) -> int:
    """0, or :data:`UNCONVERGED_STATUS` when ``--require-converged`` and pairs are left."""
    left = result.n_pairs - result.n_converged
    if left and args.require_converged:
        logger.error("probe-dask: error: %s of %s pairs did not converge (--require-converged); "
                     "results were written", f"{left:,}", f"{result.n_pairs:,}")
        return UNCONVERGED_STATUS
    return 0


def _start_telemetry(args):
    if not args.telemetry:
        return None
    tele = Telemetry(interval=args.telemetry_interval)
    tele.host_mem(Stage.OPEN)
    return tele


def _performance_report(args, inputs, log=None):
    if args.performance_report is None:
        return contextlib.nullcontext()
    path = args.performance_report or str(inputs.out_dirs[0] / PERFORMANCE_REPORT_NAME)
    (log or logger.info)(f"performance report: {path}")
    return performance_report(filename=path)


def _log_memory_summary(summary, tele, log=None):
    if not summary:
        return
    fb = format_bytes
    pred, meas = summary.get("predicted") or {}, summary["measured"]
    worker, driver = meas.get("worker_peak_rss_max"), meas.get("driver_peak_rss")
    line = "memory: peak RSS"
    if worker:
        line += f" of a worker {fb(worker)}" + (f" (planned {fb(pred['worker_peak'])})" if pred else "")
    if driver:
        line += f", of the driver {fb(driver)}" + (f" (planned {fb(pred['driver_peak'])})" if pred else "")
    line += f"; worker restarts {summary['worker_restarts']}; telemetry: {tele.path}"
    (log or logger.info)(line)


def _cmd_plan(args):
    plan, estimate = plan_command(args)
    if args.json:
        print(json.dumps(strict_json({**plan.to_dict(), "estimate": estimate.to_dict()}), indent=1))
    else:
        print(format_plan(plan))
        print(format_estimate(estimate))
    if not plan.fits:
        logger.error("probe-dask: error: %s", plan.message)
        return NO_FIT_STATUS
    return 0


def _cmd_fit(args):
    result = _run(args, args.run, args.train_shards, args.test_shards)
    return _status(args, result)


def _cmd_demo(args):
    t0 = time.perf_counter()
    run = demo_run(Path(args.demo_dir), n_train_examples=args.train_examples, seed=args.seed)
    result = _run(args, run.run_dir, run.train_shard, run.test_shard)
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s. The synthetic run is in {run.run_dir}.")
    print("On your own data (saev layout), run:\n"
          "  probe-dask fit --run RUN --train-shards SHARDS/<train_id> --test-shards SHARDS/<test_id>\n"
          "and read probe1d_metrics.npz in RUN/inference/<shard_id>/ (README: 'Outputs').")
    return _status(args, result)


def _abspath(path):
    return None if path is None else str(Path(path).expanduser().resolve())


def _cmd_sweep(args):
    overrides = {"ridge": args.ridge, "max_iter": args.max_iter, "block_nnz": args.block_nnz,
                 "device": args.device, "debug": True if _flag(args, "debug") else None,
                 "train_shards": _abspath(args.train_shards), "test_shards": _abspath(args.test_shards),
                 "cache_dir": _abspath(args.cache_dir)}
    summary_dir = Path(args.out) if args.out else Path(args.file).resolve().parent
    sweeps = dict(parse_set(text) for text in args.set or ())
    runs = read_sweep(args.file, overrides, sweeps, out=summary_dir)
    status = sweep_mode(args, runs, summary_dir)  # --dry-run, --array, --summarize
    if status is not None:
        return status
    runs = task_runs(args, runs)  # --task: one run, no summary (the array's tasks would race)
    if args.task is not None:
        summary_dir = None
    # Every run is checked before the cluster starts: a bad run costs seconds, exit 2.
    entries = validate_sweep(args.file, runs)
    if summary_dir is not None:
        check_writable(summary_dir)
    client = handle = None
    if any(e.status == "pending" for e in entries):
        handle = _open_client(args)
        client = handle.client
        logger.info("dashboard: %s", client.dashboard_link)
    report = contextlib.nullcontext()
    if args.performance_report is not None and client is not None:
        report = performance_report(filename=args.performance_report or str(
            (summary_dir or entries[0].out_dirs[0]) / PERFORMANCE_REPORT_NAME))
    try:
        with report:
            result = run_sweep(client, entries, fit_settings(args), summary_dir=summary_dir,
                               restart=args.restart, fail_fast=args.fail_fast,
                               concurrent=args.concurrent_runs,
                               telemetry_interval=args.telemetry_interval if args.telemetry else None)
    except KeyboardInterrupt:  # SIGTERM/SIGINT: main's stop line names the run's checkpoint
        stopped = [e for e in entries if e.status == "stopped"]
        if stopped:
            args.checkpoint_path = stopped[0].out_dirs[0] / CHECKPOINT_NAME
        raise
    finally:
        if handle is not None:
            handle.close()
    counts = {s: sum(e.status == s for e in entries) for s in ("finished", "skipped", "failed")}
    print(f"sweep: {len(entries)} runs: {counts['finished']} fitted, {counts['skipped']} skipped, "
          f"{counts['failed']} failed, in {result.seconds:.0f} s"
          + (f"\nsummary:\n  {result.summary}\n  {result.best}" if summary_dir is not None else ""))
    if result.failed:
        why = "; ".join(f"{e.run.label}: {e.error}" for e in result.failed)
        logger.error("probe-dask: error: sweep: %d of %d runs failed: %s", len(result.failed),
                     len(entries), why)
        return 1
    return _sweep_status(args, entries)


def _sweep_status(args, entries) -> int:
    """0, or :data:`UNCONVERGED_STATUS` when ``--require-converged`` and a run left pairs."""
    left = [e for e in entries if e.status == "finished" and e.unconverged]
    if left and args.require_converged:
        logger.error("probe-dask: error: %d of %d runs left pairs unconverged "
                     "(--require-converged): %s; results were written", len(left), len(entries),
                     ", ".join(e.run.label for e in left))
        return UNCONVERGED_STATUS
    return 0


def _flag(args, name, default=False):
    """A flag of ``add_common_flags`` (SUPPRESS defaults: absent when not given)."""
    return getattr(args, name, default)


def main(argv=None) -> int:
    """Entry point of the ``probe-dask`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]  # sweep --array
    args.debug = _flag(args, "debug")
    try:
        handlers = configure_logging(_flag(args, "verbose", 0), _flag(args, "quiet"),
                                     _flag(args, "log_file", None))
    except OSError as err:
        print(f"probe-dask: error: --log-file {err.filename}: {err.strerror}", file=sys.stderr)
        return 2
    try:
        return _main(args)
    finally:
        remove_handlers(handlers)


def _main(args) -> int:
    if getattr(args, "restart", False) and not restart_applies(args.restart):
        logger.warning("probe-dask: this Slurm job was requeued: --restart applied to its "
                       "first run; resuming")
        args.restart = False
    try:
        with graceful_stop():  # SIGTERM / SIGINT / SIGUSR1: clean up, then one line (app/signals.py)
            return int(args.func(args) or 0)
    except Stopped as stop:  # SIGUSR1 in a Slurm job: requeue it (app/requeue.py)
        return after_stop(stop, getattr(args, "checkpoint_path", None),
                          restart=getattr(args, "restart", False),
                          finished=getattr(args, "results_final", False))
    except ProbeDaskError as err:
        if args.debug:
            raise
        logger.error("probe-dask: error: %s", err)
        return NO_FIT_STATUS if isinstance(err, PlanDoesNotFit) else 2
    except KeyboardInterrupt:
        logger.error("probe-dask: interrupted")
        return 130
    except BrokenPipeError:
        # The reader went away (``probe-dask plan ... | head``): stop quietly, and point
        # stdout at /dev/null so the interpreter's final flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as err:  # noqa: BLE001 - one line for the user, traceback with --debug
        if args.debug:
            raise
        logger.error("probe-dask: error: %s: %s (rerun with --debug for the traceback)",
                     type(err).__name__, err)
        return 1


if __name__ == "__main__":
    sys.exit(main())
