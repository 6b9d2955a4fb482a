"""Command line: ``probe-dask demo | fit | plan``.

Thin by design: every command parses its flags, starts or joins a cluster, and calls a
library function (``job.run_job``, ``plan``). Errors meant for the
user (``ProbeDaskError``) become one line on stderr and exit status 2; any other failure
becomes one line and status 1 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

from dask.utils import format_bytes
from distributed import performance_report

from probe_dask._version import __version__
from probe_dask.app.demo import demo_run
from probe_dask.app.flags import OneLineParser, memory_limit, positive_float, positive_int
from probe_dask.app.job import format_table, open_inputs, run_job
from probe_dask.cluster import make_cluster
from probe_dask.engine.workers import gpu_resources
from probe_dask.errors import ProbeDaskError
from probe_dask.memory.report import format_plan
from probe_dask.memory.search import plan_run
from probe_dask.stages import Stage
from probe_dask.telemetry import PERFORMANCE_REPORT_NAME, TELEMETRY_NAME, Telemetry, strict_json

__all__ = ["main", "build_parser"]


def _add_cluster_flags(p):
    g = p.add_argument_group("cluster")
    g.add_argument("--cluster", default="local",
                   help="local (default), slurm, slurm:PROFILE, or a scheduler address tcp://HOST:PORT")
    g.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                   help="join this running scheduler and start no cluster (same as --cluster tcp://...)")
    g.add_argument("--workers", type=positive_int, default=None, help="local workers (default: one per core)")
    g.add_argument("--threads", type=positive_int, default=None, help="threads per local worker (default 1)")
    g.add_argument("--memory-limit", default=None, type=memory_limit,
                   help="memory limit per worker, e.g. 4GB (default: machine memory / workers)")
    g.add_argument("--jobs", type=positive_int, default=None, help="Slurm: worker jobs to start")
    g.add_argument("--min-jobs", type=positive_int, default=None,
                   help="Slurm, adaptive: keep at least this many worker jobs (replaces lost ones)")
    g.add_argument("--max-jobs", type=positive_int, default=None, help="Slurm, adaptive: at most this many")
    g.add_argument("--jobqueue-config", metavar="PATH", default=None,
                   help="jobqueue.yaml with the Slurm profiles (default: found via DASK_CONFIG)")


def _add_data_flags(p):
    p.add_argument("--run", required=True, help="SAE run folder (holds inference/<shard>/token_acts.npz)")
    p.add_argument("--train-shards", required=True, metavar="DIR", help="train shard folder")
    p.add_argument("--test-shards", required=True, metavar="DIR", help="test shard folder")
    p.add_argument("--cache-dir", default=None,
                   help="where compressed token_acts.npz are ingested (default: beside each file)")


def _add_fit_flags(p):
    p.add_argument("--max-iter", type=positive_int, default=30, help="most solver passes (default 30)")
    p.add_argument("--ridge", type=positive_float, default=1e-8, help="ridge penalty (default 1e-8)")
    p.add_argument("--block-nnz", type=positive_int, default=None, help="non-zeros per row block")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where block kernels run (auto: CUDA on workers that have it)")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")


def _add_telemetry_flags(p):
    g = p.add_argument_group("telemetry")
    g.add_argument("--telemetry", action=argparse.BooleanOptionalAction, default=True,
                   help="write probe1d_telemetry.jsonl and probe1d_memory.png beside the train "
                        "results (default: on)")
    g.add_argument("--telemetry-interval", type=positive_float, default=1.0, metavar="SECONDS",
                   help="seconds between memory samples of every worker (default 1)")
    g.add_argument("--performance-report", nargs="?", const="", default=None, metavar="HTML",
                   help="also write Dask's performance report (default path: "
                        "probe1d_performance.html beside the train results)")


def _add_plan_parser(sub):
    plan = sub.add_parser("plan", help="print the memory plan of a run: every buffer per process, "
                                       "and the block size (reads headers and indptr only)")
    _add_data_flags(plan)
    plan.add_argument("--memory-limit", default=None, type=memory_limit,
                      help="memory limit per worker, e.g. 16GB (default: machine memory / workers)")
    plan.add_argument("--workers", type=positive_int, default=None, help="workers (default: one per core)")
    plan.add_argument("--threads", type=positive_int, default=1, help="threads per worker (default 1)")
    plan.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"],
                      help="where block kernels run (default cpu)")
    plan.add_argument("--gpu-memory", default=None, help="memory of one GPU, e.g. 80GB "
                      "(default: this machine's first GPU, if any)")
    plan.add_argument("--block-nnz", type=positive_int, default=None,
                      help="non-zeros per row block (default: the largest that fits)")
    plan.add_argument("--target-fraction", type=float, default=None,
                      help="share of the limit every worker must stay under (default: Dask's distributed.worker.memory.target, 0.6)")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.set_defaults(func=_cmd_plan)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="probe-dask", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"probe-dask {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    demo = sub.add_parser("demo", help="make a synthetic run, fit, evaluate, print a summary")
    demo.add_argument("--out", default="demo-run", help="folder of the synthetic run (default ./demo-run)")
    demo.add_argument("--train-examples", type=positive_int, default=None, help="images in the train shard")
    demo.add_argument("--seed", type=int, default=0)
    _add_cluster_flags(demo)
    _add_fit_flags(demo)
    _add_telemetry_flags(demo)
    demo.set_defaults(func=_cmd_demo)

    fit = sub.add_parser("fit", help="fit and evaluate every (latent, class) probe of a run")
    _add_data_flags(fit)
    _add_cluster_flags(fit)
    _add_fit_flags(fit)
    _add_telemetry_flags(fit)
    fit.set_defaults(func=_cmd_fit)
    _add_plan_parser(sub)
    return parser


def _open_client(args):
    spec = args.scheduler or args.cluster
    sizing = dict(n_workers=args.workers, threads_per_worker=args.threads,
                  memory_limit=args.memory_limit, jobs=args.jobs, minimum_jobs=args.min_jobs,
                  maximum_jobs=args.max_jobs)
    if spec == "local" and sizing["threads_per_worker"] is None:
        sizing["threads_per_worker"] = 1  # torch and the C kernel each use one core per task
    # Only what the user asked for: joining a running scheduler takes no sizing at all.
    return make_cluster(spec, jobqueue_config=args.jobqueue_config,
                        **{k: v for k, v in sizing.items() if v is not None})


def _log(msg):
    print(msg, file=sys.stderr, flush=True)


def _run(args, run_dir, train, test):
    kwargs = {} if args.block_nnz is None else {"block_nnz": args.block_nnz}
    tele = _start_telemetry(args)
    # Input and output folders are checked before any cluster starts: bad input costs seconds.
    inputs = open_inputs(run_dir, train, test, cache_dir=getattr(args, "cache_dir", None), **kwargs)
    if tele is not None:
        tele.host_mem(Stage.INGEST, seconds=inputs.open_seconds)
        tele.open(inputs.out_dirs[0] / TELEMETRY_NAME)
    handle = _open_client(args)
    client = handle.client
    error = None
    try:
        _log(f"dashboard: {client.dashboard_link}")
        device = None if args.device == "auto" else args.device
        if tele is not None:
            tele.attach(client)
            tele.host_mem(Stage.CLUSTER, dashboard=client.dashboard_link)
        with _performance_report(args, inputs):
            result = run_job(client, inputs, ridge=args.ridge, max_iter=args.max_iter, device=device,
                             resources=gpu_resources(client), restart=args.restart, progress=True,
                             log=_log, callbacks=[tele] if tele is not None else None)
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        try:
            if tele is not None:
                summary = tele.close(**({"error": error} if error else {}))
                _log_memory_summary(summary, tele)
        except Exception as exc:  # noqa: BLE001 - telemetry never hides the run's own outcome
            _log(f"telemetry: not completed ({type(exc).__name__}: {exc})")
        finally:
            handle.close()
    print(format_table(result.table))
    print(f"\nsolver passes: {result.n_iter}; converged pairs: {result.n_converged:,} of "
          f"{result.n_pairs:,}; fit {result.seconds['fit']:.1f} s, evaluate "
          f"{result.seconds['evaluate']:.1f} s")
    print(f"results:\n  {result.train_metrics}\n  {result.test_metrics}")
    for p in result.classes_json:
        print(f"  {p}")
    return result


def _start_telemetry(args):
    if not getattr(args, "telemetry", False):
        return None
    tele = Telemetry(interval=args.telemetry_interval)
    tele.host_mem(Stage.OPEN)
    return tele


def _performance_report(args, inputs):
    if getattr(args, "performance_report", None) is None:
        return contextlib.nullcontext()
    path = args.performance_report or str(inputs.out_dirs[0] / PERFORMANCE_REPORT_NAME)
    _log(f"performance report: {path}")
    return performance_report(filename=path)


def _log_memory_summary(summary, tele):
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
    _log(line)


def _cmd_plan(args):
    kw = {} if args.target_fraction is None else {"target_fraction": args.target_fraction}
    plan = plan_run(args.train_shards, args.test_shards, run=args.run, memory_limit=args.memory_limit,
                    n_workers=args.workers, threads=args.threads, device=args.device,
                    block_nnz=args.block_nnz, gpu_memory=args.gpu_memory, **kw)
    if args.json:
        print(json.dumps(strict_json(plan.to_dict()), indent=1))
    else:
        print(format_plan(plan))
    if not plan.fits:
        print(f"probe-dask: error: {plan.message}", file=sys.stderr)
        return 2
    return 0


def _cmd_fit(args):
    _run(args, args.run, args.train_shards, args.test_shards)
    return 0


def _cmd_demo(args):
    t0 = time.perf_counter()
    run = demo_run(Path(args.out), n_train_examples=args.train_examples, seed=args.seed, log=_log)
    args.cache_dir = None
    _run(args, run.run_dir, run.train_shard, run.test_shard)
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s. The synthetic run is in {run.run_dir}.")
    print("On your own data (saev layout), run:\n"
          "  probe-dask fit --run RUN --train-shards SHARDS/<train_id> --test-shards SHARDS/<test_id>\n"
          "and read probe1d_metrics.npz in RUN/inference/<shard_id>/ (README: 'Outputs').")
    return 0


def main(argv=None) -> int:
    """Entry point of the ``probe-dask`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ProbeDaskError as err:
        if args.debug:
            raise
        print(f"probe-dask: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("probe-dask: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (``probe-dask plan ... | head``): stop quietly, and point
        # stdout at /dev/null so the interpreter's final flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as err:  # noqa: BLE001 - one line for the user, traceback with --debug
        if args.debug:
            raise
        print(f"probe-dask: error: {type(err).__name__}: {err} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
