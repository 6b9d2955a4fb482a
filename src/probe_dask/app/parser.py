"""The flags of the ``probe-dask`` commands, in groups that the commands share.

``fit``, ``demo``, ``plan`` and ``sweep`` take the same cluster, fit, output and telemetry
flags with the same defaults, so each group is defined once here; ``app/cli.py`` builds the
parser from them and runs the commands. Values are checked where they are parsed
(``app/flags.py``). Memory per process: the parser only.
"""

from __future__ import annotations

import argparse
import textwrap

from probe_dask.app.flags import memory_limit, positive_float, positive_int
from probe_dask.app.plan_command import add_simulate_flags
from probe_dask.app.report_command import add_class_names_flag
from probe_dask.core.settings import FitSettings
from probe_dask.engine.parameters import DEVICE_CHOICES, check_settings
from probe_dask.kernels import BACKENDS

__all__ = ["add_cluster_flags", "add_data_flags", "add_fit_flags", "fit_settings",
           "add_output_flags",
           "add_telemetry_flags", "add_plan_parser", "add_sweep_parser", "add_common_flags",
           "finish_help", "UNCONVERGED_STATUS", "NO_FIT_STATUS", "EXIT_CODES"]


def add_cluster_flags(p):
    g = p.add_argument_group("cluster")
    g.add_argument("--cluster", default="local",
                   help="local (default), slurm, slurm:PROFILE, or a scheduler address tcp://HOST:PORT")
    g.add_argument("--scheduler", metavar="tls://HOST:PORT",
                   help="join this running scheduler and start no cluster (same as --cluster "
                        "tls://...; certificates from Dask's distributed.comm.tls config)")
    g.add_argument("--workers", type=positive_int, default=None, help="local workers (default: one per core)")
    g.add_argument("--threads", type=positive_int, default=None, help="threads per local worker (default 1)")
    g.add_argument("--allow-oversubscribe", action="store_true",
                   help="local: allow more worker threads (--workers x --threads) than cores")
    g.add_argument("--memory-limit", default=None, type=memory_limit,
                   help="memory limit per worker, e.g. 4GB (default: machine memory / workers)")
    g.add_argument("--jobs", type=positive_int, default=None, help="Slurm: worker jobs to start")
    g.add_argument("--min-jobs", type=positive_int, default=None,
                   help="Slurm, adaptive: keep at least this many worker jobs (replaces lost ones)")
    g.add_argument("--max-jobs", type=positive_int, default=None, help="Slurm, adaptive: at most this many")
    g.add_argument("--jobqueue-config", metavar="PATH", default=None,
                   help="jobqueue.yaml with the Slurm profiles (default: found via DASK_CONFIG)")
    g.add_argument("--insecure", action="store_true",
                   help="Slurm: plain tcp:// instead of TLS with per-run credentials (anyone who "
                        "reaches the scheduler's port can run code as you; docs/security.md)")
    g.add_argument("--dashboard-address", metavar="HOST:PORT", default=None,
                   help="where the dashboard of a local or Slurm cluster listens (default "
                        "127.0.0.1:8787, loopback: reach it with the printed ssh -L line)")


def add_data_flags(p, required=True):
    p.add_argument("--run", required=required, help="SAE run folder (holds inference/<shard>/token_acts.npz)")
    p.add_argument("--train-shards", required=required, metavar="DIR", help="train shard folder")
    p.add_argument("--test-shards", required=required, metavar="DIR", help="test shard folder")
    p.add_argument("--cache-dir", default=None,
                   help="where compressed token_acts.npz are ingested (default: beside each file)")


def add_fit_flags(p, *, file_defaults=False):
    # In a sweep a flag not given leaves each run's own value (file_defaults): no default
    # is claimed in its help.
    given = "each run's value from the sweep file (else {})" if file_defaults else "{}"
    defaults = FitSettings()
    p.add_argument("--max-iter", type=positive_int, default=defaults.max_iter,
                   help=f"most solver passes (default: {given.format(defaults.max_iter)})")
    p.add_argument("--ridge", type=positive_float, default=defaults.ridge,
                   help=f"ridge penalty (default: {given.format(f'{defaults.ridge:g}')})")
    p.add_argument("--block-nnz", type=positive_int, default=None, help="non-zeros per row block")
    p.add_argument("--allow-many-blocks", action="store_true",
                   help="allow a --block-nnz that cuts the run into thousands of blocks")
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES,
                   help="where block kernels run (auto: CUDA on workers that have it)")
    p.add_argument("--kernel", default=defaults.backend, choices=BACKENDS,
                   help="block kernel (auto: C on CPU, Triton on CUDA; triton on CPU needs "
                        "TRITON_INTERPRET=1, slow: for tests)")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")


def fit_settings(args) -> FitSettings:
    """The fit's settings from the parsed fit flags, built once per command (``--kernel``
    is the fitter's ``backend``; ``--device auto`` its None). Flags a sweep left unset
    (None) keep the defaults: each run's own value is laid over them
    (``app.sweepfile.run_settings``)."""
    given = {"ridge": args.ridge, "max_iter": args.max_iter, "device": args.device,
             "backend": args.kernel}
    return check_settings(FitSettings(**{k: v for k, v in given.items() if v is not None}))


#: Exit status of a run that wrote its results with pairs unconverged (--require-converged).
UNCONVERGED_STATUS = 3

#: Exit status of a run whose memory plan does not fit the workers.
NO_FIT_STATUS = 4

#: The exit statuses, as every subcommand's --help lists them.
EXIT_CODES = ("exit status:\n"
              "  0  done\n"
              "  1  failed (an unexpected error; --debug shows the traceback)\n"
              "  2  usage or input error (one line naming the flag, file or field)\n"
              f"  {UNCONVERGED_STATUS}  pairs left unconverged, with --require-converged "
              "(results are written)\n"
              f"  {NO_FIT_STATUS}  the memory plan does not fit the workers\n"
              "  130  interrupted")


def require_converged_flag(g):
    g.add_argument("--require-converged", action="store_true",
                   help=f"exit {UNCONVERGED_STATUS} when pairs have not converged at the end "
                        "(results are still written)")


def add_common_flags(p) -> None:
    """-v, -q, --debug and --log-file, added to the top parser and to every subcommand's
    (so they are accepted before and after the subcommand).

    Defaults are ``SUPPRESS`` so a flag given before the subcommand is not reset by the
    subcommand's own default; read them with ``getattr(args, name, default)``.
    """
    g = p.add_argument_group("logging")
    g.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                   help="more detail on stderr (debug records: worker waits, stage lines)")
    g.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                   help="no progress on stderr, warnings and errors only")
    g.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show tracebacks")
    g.add_argument("--log-file", metavar="PATH", default=argparse.SUPPRESS,
                   help="also append every record, time-stamped (UTC), to PATH, with "
                        "distributed's warnings and errors")


def finish_help(parser, example: str, description: str | None = None) -> None:
    """Give a subcommand's --help its description, an example and the exit statuses."""
    # Raw: the epilog's lines stay lines; so the description is wrapped here.
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    description = parser.description if description is None else description
    if description:
        parser.description = textwrap.fill(" ".join(description.split()), 88)
    parser.epilog = f"example:\n  {example}\n\n{EXIT_CODES}"


def add_output_flags(p, *, out=True):
    g = p.add_argument_group("results and logs")
    if out:
        g.add_argument("--out", metavar="DIR", default=None,
                       help="write each split's results to DIR/<shard_id>/ (default: the run's "
                            "inference/<shard_id>/ folders)")
        g.add_argument("--overwrite", action="store_true",
                       help="replace results of an earlier run (default: refuse; resuming an "
                            "interrupted run's checkpoint is not an overwrite)")
    require_converged_flag(g)
    add_class_names_flag(g)


def add_telemetry_flags(p):
    g = p.add_argument_group("telemetry")
    g.add_argument("--telemetry", action=argparse.BooleanOptionalAction, default=True,
                   help="write probe1d_telemetry-<UTC time>.jsonl and probe1d_memory-<UTC "
                        "time>.png beside the train results, one pair per run (default: on)")
    g.add_argument("--telemetry-interval", type=positive_float, default=1.0, metavar="SECONDS",
                   help="seconds between memory samples of every worker (default 1)")
    g.add_argument("--performance-report", nargs="?", const="", default=None, metavar="HTML",
                   help="also write Dask's performance report (default path: "
                        "probe1d_performance.html beside the train results)")


def add_plan_parser(sub, func):
    plan = sub.add_parser("plan", help="print the memory plan of a run: every buffer per process, "
                                       "and the block size (reads headers and indptr only), "
                                       "and the kernel time of the job")
    # The shards, or --simulate-* sizes of a run that need not be here (app/plan_command.py).
    add_data_flags(plan, required=False)
    add_simulate_flags(plan)
    # The same cluster flags and defaults as fit: plan what fit would run.
    add_cluster_flags(plan)
    plan.add_argument("--device", default="auto", choices=DEVICE_CHOICES,
                      help="where block kernels run (auto: CUDA with a GPU profile or GPU here)")
    plan.add_argument("--gpu-memory", default=None, help="memory of one GPU, e.g. 80GB "
                      "(default: this machine's first GPU, if any)")
    plan.add_argument("--block-nnz", type=positive_int, default=None,
                      help="non-zeros per row block (default: the largest that fits)")
    plan.add_argument("--target-fraction", type=float, default=None,
                      help="share of the limit every worker must stay under (default: Dask's distributed.worker.memory.target, 0.6)")
    plan.add_argument("--json", action="store_true", help="print the plan (and its \"estimate\") as JSON")
    plan.set_defaults(func=func)


def add_sweep_parser(sub, func):
    sweep = sub.add_parser(
        "sweep", help="fit many runs listed in a sweep file, one after the other on one cluster",
        description="FILE lists the runs: a .py file defining make_cfgs() (CODE: it runs with "
                    "your rights; run only sweep files you trust), or a .json list / .toml "
                    "[[runs]] of dicts with run, train_shards, test_shards and optionally "
                    "ridge, max_iter, block_nnz, device, cache_dir, debug, name (prefer JSON "
                    "or TOML for sweeps that come from someone else). A list as a ridge, "
                    "max_iter, block_nnz or device value, or --set KEY=V1,V2, sweeps it: one run "
                    "per value (the product for several), each in a folder of its own. Flags "
                    "given here win over the file's values. Runs whose results exist are skipped.")
    sweep.add_argument("file", metavar="FILE", help="sweep file: .py (make_cfgs()), .json or .toml")
    sweep.add_argument("--train-shards", metavar="DIR", default=None, help="train shard of every run")
    sweep.add_argument("--test-shards", metavar="DIR", default=None, help="test shard of every run")
    sweep.add_argument("--cache-dir", default=None,
                       help="where compressed token_acts.npz are ingested (default: beside each file)")
    sweep.add_argument("--out", metavar="DIR", default=None,
                       help="folder of sweep_summary.csv and sweep_best.csv (default: beside FILE)")
    sweep.add_argument("--set", action="append", metavar="KEY=V1,V2", default=None,
                       help="sweep a setting (ridge, max_iter, block_nnz, device) over these "
                            "values in every run, instead of the file's value; repeated: the "
                            "product. Each (run, values) writes into OUT/results/<name>/")
    sweep.add_argument("--fail-fast", action="store_true", help="stop at the first failed run")
    sweep.add_argument("--concurrent-runs", type=positive_int, default=None, metavar="N",
                       help="fit N runs at once (default: as many as the memory plan allows, "
                            "at most probe-dask.sweep.max-concurrent-runs; 1: one after the other)")
    require_converged_flag(sweep)
    _add_sweep_modes(sweep)
    add_cluster_flags(sweep)
    add_fit_flags(sweep, file_defaults=True)
    add_telemetry_flags(sweep)
    # None: not given, so each run's value from the file (or the library default) applies.
    # sweep_options: the array's tasks drop the array's own flags, abbreviated or not.
    sweep.set_defaults(func=func, max_iter=None, ridge=None, device=None,
                       sweep_options=tuple(sweep._option_string_actions))


def _add_sweep_modes(sweep):
    g = sweep.add_argument_group("what to do (default: fit every run on one cluster)")
    modes = g.add_mutually_exclusive_group()
    modes.add_argument("--dry-run", action="store_true",
                       help="list the runs (index, settings, results folder, fit or skip) "
                            "and run nothing")
    modes.add_argument("--array", action="store_true",
                       help="print an sbatch job array script: task i fits run i (the "
                            "--dry-run index) on a cluster of its own, from these flags")
    modes.add_argument("--task", nargs="?", const="", default=None, metavar="I",
                       help="fit run I only and write no summary (alone: run "
                            "$SLURM_ARRAY_TASK_ID; what each task of --array runs)")
    modes.add_argument("--summarize", action="store_true",
                       help="write sweep_summary.csv and sweep_best.csv from the runs' "
                            "folders, fitting nothing (after --array); exit 1 if runs lack "
                            "results")
    g.add_argument("--submit", action="store_true",
                   help="with --array: submit the script with sbatch (logs: OUT/logs/)")
    g.add_argument("--sbatch", action="append", default=None, metavar="OPTION",
                   help="with --array: one more #SBATCH line, e.g. --sbatch=--time=02:00:00 "
                        "(repeatable)")
    g.add_argument("--array-limit", type=positive_int, default=None, metavar="N",
                   help="with --array: at most N tasks at once")
