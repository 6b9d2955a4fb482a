"""The memory bound: peak RSS stays flat while the data grows 64 times.

Usage::

    .venv/bin/python benchmarks/bench_memory.py [--workdir /tmp] [--largest-nnz 320e6]
        [--memory-limit 1GB] [--max-iter 3] [--classes 16] [--d-sae 4096] [--keep]
        [--json out.json]

Four synthetic runs (``probe_dask.synthetic.make_run``, uncompressed, 256 patches per
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
deleted after each run (unless ``--keep``).

Memory of this script: one synthetic row chunk while generating (tens of MB); the fits run
in their own processes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time

import psutil

from probe_dask.testing.synthetic import make_run

TOKENS = 256
MiB = 2**20


def sample_tree(proc: psutil.Process, stop: threading.Event, out: dict, interval=0.1):
    """Max RSS of ``proc`` (the driver) and of each worker process it spawned, by pid."""
    out.update(driver=0, workers={}, worker_pids_seen=[], pid_info={})
    t0 = time.perf_counter()
    while not stop.is_set():
        try:
            out["driver"] = max(out["driver"], proc.memory_info().rss)
            # Workers are the driver's own spawned children; their children (a fork running
            # the C compiler's version check, say) share the worker's pages and are not workers.
            for child in proc.children(recursive=False):
                try:
                    cmd = " ".join(child.cmdline())
                    if "spawn_main" not in cmd or "resource_tracker" in cmd:
                        continue
                    rss = child.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                now = round(time.perf_counter() - t0, 1)
                if child.pid not in out["workers"]:
                    out["worker_pids_seen"].append(child.pid)
                    out["pid_info"][child.pid] = {"cmd": cmd[-120:], "first": now}
                out["pid_info"][child.pid]["last"] = now
                out["workers"][child.pid] = max(out["workers"].get(child.pid, 0), rss)
        except psutil.NoSuchProcess:
            break
        stop.wait(interval)


def generate(root, n_examples, args):
    t0 = time.perf_counter()
    run = make_run(root, n_train_examples=n_examples, n_test_examples=max(1, n_examples // 8),
                   tokens_per_example=TOKENS, d_sae=args.d_sae, n_classes=args.classes,
                   seed=args.seed, compressed=False)
    return run, time.perf_counter() - t0


def nnz_of(path) -> int:
    import zipfile

    import numpy as np

    with zipfile.ZipFile(path) as zf, zf.open("data.npy") as f:
        version = np.lib.format.read_magic(f)
        shape, _, _ = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)(f)
    return int(shape[0])


def fit(run, args, log_path):
    cmd = [sys.executable, "-m", "probe_dask", "fit", "--run", run.run_dir,
           "--train-shards", run.train_shard, "--test-shards", run.test_shard,
           "--workers", "2", "--threads", "1", "--memory-limit", args.memory_limit,
           "--max-iter", str(args.max_iter), "--device", "cpu", "--telemetry-interval", "0.5"]
    stop, peaks = threading.Event(), {}
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=dict(os.environ, PYTHONWARNINGS="ignore"))
        sampler = threading.Thread(target=sample_tree, args=(psutil.Process(proc.pid), stop, peaks))
        sampler.start()
        rc = proc.wait()
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    if rc != 0:
        raise RuntimeError(f"probe-dask fit exited {rc}; see {log_path}")
    tele = os.path.join(run.run_dir, "inference", run.train_id, "probe1d_telemetry.jsonl")
    events = [json.loads(line) for line in open(tele)]
    summary = next(e for e in events if e["event"] == "summary")
    plan = next(e for e in events if e["event"] == "plan")
    passes = sum(e["event"] == "iteration" for e in events)
    return wall, peaks, summary, plan, passes


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="/tmp")
    ap.add_argument("--largest-nnz", type=float, default=320e6)
    ap.add_argument("--sizes", type=int, default=4)
    ap.add_argument("--memory-limit", default="1GB")
    ap.add_argument("--max-iter", type=int, default=3)
    ap.add_argument("--classes", type=int, default=16)
    ap.add_argument("--d-sae", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    from dask.utils import parse_bytes

    limit = parse_bytes(args.memory_limit)
    work = os.path.join(args.workdir, f"probe-dask-bench-memory-{os.getpid()}")
    logs = work + "-logs"  # kept: the fit logs of every size
    os.makedirs(work)
    os.makedirs(logs)
    print(f"machine: {platform.node()}, {platform.processor() or platform.machine()}, "
          f"{psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB; "
          f"python {platform.python_version()}; {time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    rows = []
    per_example = None
    try:
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
            wall, peaks, summary, plan, passes = fit(run, args, log_path)
            with open(log_path) as f:
                alarms = [line.strip() for line in f if any(
                    w in line for w in ("Restarting worker", "KilledWorker", "Worker process", "exceed",
                                        "paused", "Unmanaged memory", "Memory use is high"))]
            workers = sorted(peaks["workers"].values(), reverse=True)
            row = dict(nnz=nnz, csr_bytes=csr, test_nnz=nnz_of(run.test_acts), wall_s=wall,
                       passes=passes, driver_peak=peaks["driver"], worker_peaks=workers,
                       worker_pids=len(peaks["worker_pids_seen"]), pid_info=peaks["pid_info"],
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
                print(f"  processes: {peaks['pid_info']}\n  log: {alarms[:10]}", flush=True)
            if not args.keep:
                shutil.rmtree(root)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    print()
    print("| non-zeros | CSR | blocks (non-zeros each) | wall | solver passes | driver peak RSS "
          "sampled (HWM) | worker peak RSS sampled | worker peak RSS (HWM) | planned worker peak "
          "| restarts / paused |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['nnz']:,} | {r['csr_bytes'] / 2**30:.2f} GiB | {r['n_blocks']['train']} "
              f"({r['block_nnz']:,}){' persisted' if r['persist'] else ''} | {r['wall_s']:.0f} s | "
              f"{r['passes']} | {r['driver_peak'] / MiB:.0f} ({r['hwm_driver'] / MiB:.0f}) MiB | "
              f"{' / '.join(f'{w / MiB:.0f}' for w in r['worker_peaks'])} MiB | "
              f"{' / '.join(f'{w / MiB:.0f}' for w in sorted(r['hwm_workers'], reverse=True))} MiB | "
              f"{r['plan_worker'] / MiB:.0f} MiB | {r['restarts']} / {len(r['paused'])} |")
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
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "checks": checks, "driver_ratio": d_ratio,
                       "worker_ratio": w_ratio, "memory_limit": limit}, f, indent=1)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
