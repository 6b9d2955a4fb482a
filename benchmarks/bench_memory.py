"""The memory bound: peak RSS stays flat while the data grows 64 times.

Usage::

    .venv/bin/python benchmarks/bench_memory.py [--workdir /tmp] [--largest-nnz 320e6]
        [--memory-limit 1GB] [--max-iter 3] [--classes 16] [--d-sae 4096] [--keep]
        [--json PATH]

Four synthetic runs (``probe_dask.testing.synthetic.make_run``, uncompressed, 256 patches per
image, ``--classes`` classes, ``--d-sae`` latents; the test shard is 1/8 of the train
shard), each 4 times the previous in non-zeros, the largest ``--largest-nnz``. Each is
fitted (``--max-iter`` solver passes) and evaluated by the command line, ``probe-dask fit``,
as a user runs it, in its own process, on a ``LocalCluster`` of 2 workers of 1 thread with
``--memory-limit`` each (smaller than the largest shard's CSR), the block size chosen by
the memory plan. While it runs, this script samples the RSS of the driver and of each
worker process every 0.1 s with psutil (the process tree of the command), and reads the
run's telemetry afterwards (worker restarts and pauses, the kernel's peak RSS of every
process, the plan's predictions).

The bound holds when every run finishes with no worker restarted or paused, each worker's
peak stays under 80% of its limit, and the driver's and the workers' peaks grow by less
than 25% from the smallest to the largest run. Data is written under ``--workdir`` and
deleted after each run (unless ``--keep``); the fit logs stay in ``WORKDIR/bench_memory-PID-logs``
and the results go to ``WORKDIR/bench_memory.json`` (or ``--json``).

Memory of this script: one synthetic row chunk while generating (tens of MB); the fits run
in their own processes.
"""

from __future__ import annotations

import os
import shutil
import sys

from dask.utils import parse_bytes

import common
from probe_dask.memory import read_shard_info

TOKENS = 256
MiB = common.MiB
NAME = "bench_memory"


def generate(root, n_examples, args):
    return common.synthetic_run(root, n_train_examples=n_examples,
                                n_test_examples=max(1, n_examples // 8), tokens_per_example=TOKENS,
                                d_sae=args.d_sae, n_classes=args.classes, seed=args.seed,
                                compressed=False)


def nnz_of(path) -> int:
    """Non-zeros of a ``token_acts.npz``, from its headers and index pointers only."""
    return read_shard_info(path).nnz


def fit(run, args, log_path):
    """``probe-dask fit`` on ``run`` with its process tree sampled every 0.1 s."""
    rc, wall, sampler, _, _ = common.run_cli_sampled(
        "fit", "--run", run.run_dir, "--train-shards", run.train_shard,
        "--test-shards", run.test_shard, "--workers", "2", "--threads", "1",
        "--memory-limit", args.memory_limit, "--max-iter", args.max_iter, "--device", "cpu",
        "--telemetry-interval", "0.5", interval=0.1, log_path=log_path)
    if rc != 0:
        raise RuntimeError(f"probe-dask fit exited {rc}; see {log_path}")
    events = common.telemetry_events(run.run_dir, run.train_shard)
    summary = common.first_event(events, "summary")
    plan = common.first_event(events, "plan")
    passes = sum(e["event"] == "iteration" for e in events)
    return wall, sampler, summary, plan, passes


def main(argv=None):
    ap = common.parser(__doc__)
    ap.add_argument("--largest-nnz", type=float, default=320e6)
    ap.add_argument("--sizes", type=int, default=4)
    ap.add_argument("--memory-limit", default="1GB")
    ap.add_argument("--max-iter", type=int, default=3)
    ap.add_argument("--classes", type=int, default=16)
    ap.add_argument("--d-sae", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    limit = parse_bytes(args.memory_limit)
    print(common.machine_line(), flush=True)
    rows = []
    per_example = None
    with common.work_folder(args, NAME) as work:
        logs = f"{work}-logs"  # kept: the fit logs of every size
        os.makedirs(logs)
        for i in range(args.sizes):
            want = args.largest_nnz / 4 ** (args.sizes - 1 - i)
            root = os.path.join(work, f"size{i}")
            if per_example is None:  # calibrate non-zeros per image on a small run
                probe, _ = generate(os.path.join(work, "calibrate"), 64, args)
                per_example = nnz_of(probe.train_acts) / 64
                shutil.rmtree(os.path.join(work, "calibrate"))
            n_ex = max(2, int(round(want / per_example)))
            run, gen_s = generate(root, n_ex, args)
            nnz = nnz_of(run.train_acts)
            csr = os.path.getsize(run.train_acts)
            print(f"size {i}: {nnz:,} non-zeros ({csr / 2**30:.2f} GiB CSR), generated in "
                  f"{gen_s:.0f} s; fitting ...", flush=True)
            log_path = os.path.join(logs, f"fit-size{i}.log")
            wall, sampler, summary, plan, passes = fit(run, args, log_path)
            with open(log_path) as f:
                alarms = [line.strip() for line in f if any(
                    w in line for w in ("Restarting worker", "KilledWorker", "Worker process", "exceed",
                                        "paused", "Unmanaged memory", "Memory use is high"))]
            workers = sampler.worker_peaks
            row = dict(nnz=nnz, csr_bytes=csr, test_nnz=nnz_of(run.test_acts), wall_s=wall,
                       passes=passes, driver_peak=sampler.driver_peak, worker_peaks=workers,
                       worker_pids=len(workers), processes=sampler.as_dict()["processes"],
                       log_alarms=alarms[:20],
                       restarts=summary["worker_restarts"], paused=summary["workers_paused"],
                       removed=summary["workers_removed"],
                       hwm_workers=[w["peak_rss"] for w in summary["measured"]["workers"].values()],
                       hwm_driver=summary["measured"]["driver_peak_rss"],
                       plan_worker=plan["worker_peak"], plan_driver=plan["driver_peak"],
                       block_nnz=plan["block_nnz"], n_blocks=plan["n_blocks"], persist=plan["persist"],
                       by_stage=summary.get("worker_peak_by_stage"))
            rows.append(row)
            print(f"  wall {wall:.0f} s, {passes} solver passes, blocks of {row['block_nnz']:,} "
                  f"({row['n_blocks']}), driver peak {row['driver_peak'] / MiB:.0f} MiB, worker "
                  f"peaks {[round(w / MiB) for w in workers]} MiB sampled, "
                  f"{sorted((round(w / MiB) for w in row['hwm_workers']), reverse=True)} MiB "
                  f"kernel high-water mark (planned "
                  f"{row['plan_worker'] / MiB:.0f}), restarts {row['restarts']}", flush=True)
            if len(workers) != 2 or alarms:
                print(f"  processes: {row['processes']}\n  log: {alarms[:10]}", flush=True)
            if not args.keep:
                shutil.rmtree(root)

    print()
    common.print_table(
        ["non-zeros", "CSR", "blocks (non-zeros each)", "wall", "solver passes",
         "driver peak RSS sampled (HWM)", "worker peak RSS sampled", "worker peak RSS (HWM)",
         "planned worker peak", "restarts / paused"],
        [[f"{r['nnz']:,}", f"{r['csr_bytes'] / 2**30:.2f} GiB",
          f"{r['n_blocks']['train']} ({r['block_nnz']:,}){' persisted' if r['persist'] else ''}",
          f"{r['wall_s']:.0f} s", r["passes"],
          f"{r['driver_peak'] / MiB:.0f} ({r['hwm_driver'] / MiB:.0f}) MiB",
          f"{' / '.join(f'{w / MiB:.0f}' for w in r['worker_peaks'])} MiB",
          f"{' / '.join(f'{w / MiB:.0f}' for w in sorted(r['hwm_workers'], reverse=True))} MiB",
          f"{r['plan_worker'] / MiB:.0f} MiB", f"{r['restarts']} / {len(r['paused'])}"]
         for r in rows],
        markdown=True, left=(2, 9))
    small, large = rows[0], rows[-1]
    d_ratio = max(large["driver_peak"], large["hwm_driver"]) / max(small["driver_peak"], small["hwm_driver"])
    w_ratio = max(large["worker_peaks"] + large["hwm_workers"]) / max(small["worker_peaks"] + small["hwm_workers"])
    data_ratio = large["nnz"] / small["nnz"]
    print(f"\ndata grew {data_ratio:.0f}x; peak RSS largest / smallest (max of sampled and "
          f"high-water mark): driver {d_ratio:.3f}, workers {w_ratio:.3f}")
    checks = {
        "no worker restarted or paused": all(r["restarts"] == 0 and not r["paused"] and not r["removed"]
                                             and r["worker_pids"] == 2 for r in rows),
        "every worker under 80% of its limit": all(max(r["worker_peaks"] + r["hwm_workers"]) < 0.8 * limit
                                                   for r in rows),
        "driver peak grows < 25%": d_ratio < 1.25,
        "worker peak grows < 25%": w_ratio < 1.25,
        "largest shard's CSR bigger than a worker's limit": large["csr_bytes"] > limit,
    }
    for name, ok in checks.items():
        print(f"  {'PASS' if ok else 'FAIL'}: {name}")
    print("bound holds" if all(checks.values()) else "BOUND VIOLATED")
    common.write_results(args, NAME, {"rows": rows, "checks": checks, "driver_ratio": d_ratio,
                                      "worker_ratio": w_ratio, "memory_limit": limit})
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
