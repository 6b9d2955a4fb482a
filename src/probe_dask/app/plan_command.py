"""The ``plan`` command's inputs: a run's shards, or sizes given on the command line.

``probe-dask plan`` plans either a run on disk (``--run``, ``--train-shards``,
``--test-shards``: headers and ``indptr`` are read) or a run of given sizes that need not
exist here (``--simulate-nnz``, ``--simulate-latents``, ``--simulate-classes``,
``--simulate-rows``, optionally ``--simulate-test-nnz``: rows of equal width,
``memory.shardinfo.simulated_shard_info``), so a user sees the full-size job, its memory
and its time, before having the data on that machine. :func:`plan_command` returns the
memory plan and the time estimate (``memory.estimate``: the workers' kernel timed here when
it can run here). Neither or both kinds of input is one error line (exit 2).

Memory per process: what planning holds (``memory.search``); a simulated shard's
``indptr`` (8 bytes a row: 45 MB for 5.6 million rows) until the plan lets go of it.
"""

from __future__ import annotations

from probe_dask.app.flags import positive_int
from probe_dask.app.sizing import plan_sizing
from probe_dask.errors import ProbeDaskError
from probe_dask.memory.estimate import estimate_time, kernel_ns_per_unit
from probe_dask.memory.search import plan_run
from probe_dask.memory.shardinfo import simulated_shard_info

__all__ = ["add_simulate_flags", "plan_command"]

_DATA = ("run", "train_shards", "test_shards")
_SIZES = ("simulate_nnz", "simulate_latents", "simulate_classes", "simulate_rows")


def add_simulate_flags(p) -> None:
    """The ``--simulate-*`` flags of ``plan``."""
    g = p.add_argument_group("a run of given sizes, instead of --run and the shards")
    g.add_argument("--simulate-nnz", type=positive_int, default=None, metavar="N",
                   help="non-zeros of the train shard (e.g. 2260000000)")
    g.add_argument("--simulate-latents", type=positive_int, default=None, metavar="L",
                   help="latents (columns), e.g. 32768")
    g.add_argument("--simulate-classes", type=positive_int, default=None, metavar="C",
                   help="classes, e.g. 151")
    g.add_argument("--simulate-rows", type=positive_int, default=None, metavar="R",
                   help="rows (tokens) of the train shard, of equal width (e.g. 5600000)")
    g.add_argument("--simulate-test-nnz", type=positive_int, default=None, metavar="N",
                   help="non-zeros of the test shard, rows as wide as the train's "
                        "(default: no test shard)")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _inputs(args) -> dict:
    """``plan_run``'s shard keywords from the flags; ProbeDaskError when they do not say
    one kind of input whole."""
    data = [n for n in _DATA if getattr(args, n, None) is not None]
    sizes = [n for n in _SIZES + ("simulate_test_nnz",) if getattr(args, n, None) is not None]
    need = (f"the run's data ({', '.join(map(_flag, _DATA))}) or its sizes "
            f"({', '.join(map(_flag, _SIZES))})")
    if data and sizes:
        raise ProbeDaskError(f"plan: found {_flag(data[0])} and {_flag(sizes[0])}; expected {need}, "
                             "not both")
    if not data and not sizes:
        raise ProbeDaskError(f"plan: no input; expected {need}")
    want = _DATA if data else _SIZES
    missing = [n for n in want if getattr(args, n, None) is None]
    if missing:
        raise ProbeDaskError(f"plan: {', '.join(map(_flag, missing))} missing; expected {need}")
    if data:
        return {"train": args.train_shards, "test": args.test_shards, "run": args.run}
    if args.simulate_classes > 256:
        raise ProbeDaskError(f"plan: --simulate-classes {args.simulate_classes}; expected at "
                             "most 256 (labels are uint8)")
    train = simulated_shard_info(args.simulate_nnz, args.simulate_latents, args.simulate_rows,
                                 name="simulated train")
    test = None
    if args.simulate_test_nnz is not None:
        width = args.simulate_nnz / args.simulate_rows
        rows = max(1, round(args.simulate_test_nnz / width))
        test = simulated_shard_info(args.simulate_test_nnz, args.simulate_latents, rows,
                                    name="simulated test")
    return {"train": train, "test": test, "n_classes": args.simulate_classes}


def plan_command(args):
    """(memory plan, time estimate) of the run the ``plan`` flags describe.

    Raises
    ------
    ProbeDaskError
        Neither, both, or part of one kind of input given.
    """
    shards = _inputs(args)
    kw = {} if args.target_fraction is None else {"target_fraction": args.target_fraction}
    sizing = plan_sizing(args.scheduler or args.cluster, jobs=args.jobs or args.max_jobs,
                         workers=args.workers, threads=args.threads,
                         memory_limit=args.memory_limit, device=args.device,
                         jobqueue_config=args.jobqueue_config)
    plan = plan_run(**shards, block_nnz=args.block_nnz, gpu_memory=args.gpu_memory, **sizing, **kw)
    ns, source = kernel_ns_per_unit(plan.backend, plan.device, plan.n_classes)
    return plan, estimate_time(plan, ns, source)
