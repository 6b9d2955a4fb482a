"""Command line: ``probe-dask demo | fit | plan | submit``.

Thin by design: every command parses its flags, starts or joins a cluster, and calls a
library function (``job.run_job``, ``plan.plan_run``, ``submit``). Errors meant for the
user (``ProbeDaskError``) become one line on stderr and exit status 2; any other failure
becomes one line and status 1 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .errors import ProbeDaskError

__all__ = ["main", "build_parser"]


def _add_cluster_flags(p):
    g = p.add_argument_group("cluster")
    g.add_argument("--cluster", default="local",
                   help="local (default), slurm, slurm:PROFILE, or a scheduler address tcp://HOST:PORT")
    g.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                   help="join this running scheduler and start no cluster (same as --cluster tcp://...)")
    g.add_argument("--workers", type=int, default=None, help="local workers (default: one per core)")
    g.add_argument("--threads", type=int, default=None, help="threads per local worker (default 1)")
    g.add_argument("--memory-limit", default=None,
                   help="memory limit per worker, e.g. 4GB (default: machine memory / workers)")
    g.add_argument("--jobs", type=int, default=None, help="Slurm: worker jobs to start")
    g.add_argument("--jobqueue-config", metavar="PATH", default=None,
                   help="jobqueue.yaml with the Slurm profiles (default: found via DASK_CONFIG)")


def _add_data_flags(p):
    p.add_argument("--run", required=True, help="SAE run folder (holds inference/<shard>/token_acts.npz)")
    p.add_argument("--train-shards", required=True, metavar="DIR", help="train shard folder")
    p.add_argument("--test-shards", required=True, metavar="DIR", help="test shard folder")
    p.add_argument("--cache-dir", default=None,
                   help="where compressed token_acts.npz are ingested (default: beside each file)")


def _add_fit_flags(p):
    p.add_argument("--max-iter", type=int, default=30, help="most solver passes (default 30)")
    p.add_argument("--ridge", type=float, default=1e-8, help="ridge penalty (default 1e-8)")
    p.add_argument("--block-nnz", type=int, default=None, help="non-zeros per row block")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where block kernels run (auto: CUDA on workers that have it)")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="probe-dask", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="make a synthetic run, fit, evaluate, print a summary")
    demo.add_argument("--out", default="demo-run", help="folder of the synthetic run (default ./demo-run)")
    demo.add_argument("--train-examples", type=int, default=None, help="images in the train shard")
    demo.add_argument("--seed", type=int, default=0)
    _add_cluster_flags(demo)
    _add_fit_flags(demo)
    demo.set_defaults(func=_cmd_demo)

    fit = sub.add_parser("fit", help="fit and evaluate every (latent, class) probe of a run")
    _add_data_flags(fit)
    _add_cluster_flags(fit)
    _add_fit_flags(fit)
    fit.set_defaults(func=_cmd_fit)
    return parser


def _open_client(args):
    from .cluster import make_cluster

    spec = args.scheduler or args.cluster
    sizing = dict(n_workers=args.workers, threads_per_worker=args.threads,
                  memory_limit=args.memory_limit, jobs=args.jobs)
    if spec == "local" and sizing["threads_per_worker"] is None:
        sizing["threads_per_worker"] = 1  # torch and the C kernel each use one core per task
    # Only what the user asked for: joining a running scheduler takes no sizing at all.
    return make_cluster(spec, jobqueue_config=args.jobqueue_config,
                        **{k: v for k, v in sizing.items() if v is not None})


def _log(msg):
    print(msg, file=sys.stderr, flush=True)


def _run(args, run_dir, train, test):
    from .cluster import gpu_resources
    from .job import format_table, open_inputs, run_job

    kwargs = {} if args.block_nnz is None else {"block_nnz": args.block_nnz}
    # Input and output folders are checked before any cluster starts: bad input costs seconds.
    inputs = open_inputs(run_dir, train, test, cache_dir=getattr(args, "cache_dir", None), **kwargs)
    handle = _open_client(args)
    client = handle.client
    try:
        _log(f"dashboard: {client.dashboard_link}")
        device = None if args.device == "auto" else args.device
        result = run_job(client, inputs, ridge=args.ridge, max_iter=args.max_iter, device=device,
                         resources=gpu_resources(client), restart=args.restart, progress=True,
                         log=_log)
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


def _cmd_fit(args):
    _run(args, args.run, args.train_shards, args.test_shards)
    return 0


def _cmd_demo(args):
    from .demo import demo_run

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
    except Exception as err:  # noqa: BLE001 - one line for the user, traceback with --debug
        if args.debug:
            raise
        print(f"probe-dask: error: {type(err).__name__}: {err} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
