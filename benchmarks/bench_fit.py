"""`probe-dask fit` as a user runs it: wall time, sampled peak RSS, passes, gap (issue 2).

Makes a synthetic run (default about 5 million non-zeros in train, 151 classes), runs
`probe-dask fit` in a subprocess on a 2-worker LocalCluster while sampling the RSS of its
whole process tree every 50 ms (psutil), then computes the exact float64 optimum of EVERY
pair with an independent sparse Newton reference (tests/reference.py) and prints the
largest gap between our objective and the optimum.

    python benchmarks/bench_fit.py [--train-examples 200] [--demo]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]


def run_sampled(cmd):
    """Run ``cmd``; return (exit code, wall seconds, driver peak RSS, per-process peaks)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    root = psutil.Process(proc.pid)
    peaks: dict[int, tuple[str, int]] = {}
    done = threading.Event()

    def sample():
        while not done.is_set():
            try:
                procs = [root] + root.children(recursive=True)
            except psutil.NoSuchProcess:
                break
            for p in procs:
                try:
                    rss = p.memory_info().rss
                    role = "driver" if p.pid == proc.pid else (
                        "worker" if "spawn_main" in " ".join(p.cmdline()) else "other")
                    old = peaks.get(p.pid, (role, 0))
                    peaks[p.pid] = (role, max(old[1], rss))
                except psutil.Error:
                    pass
            time.sleep(0.05)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, err = proc.communicate()
    done.set()
    thread.join()
    return proc.returncode, time.perf_counter() - start, peaks, out, err


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-examples", type=int, default=200)
    parser.add_argument("--d-sae", type=int, default=4096)
    parser.add_argument("--demo", action="store_true", help="run `probe-dask demo` instead")
    parser.add_argument("--no-gap", action="store_true")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="pd-fit-"))
    exe = [sys.executable, "-m", "probe_dask"]
    if args.demo:
        cmd = exe + ["demo", "--out", str(work / "demo")]
    else:
        from probe_dask.testing.synthetic import make_run

        run = make_run(work, n_train_examples=args.train_examples,
                       n_test_examples=max(1, args.train_examples // 4), d_sae=args.d_sae,
                       n_classes=151, seed=11)
        cmd = exe + ["fit", "--run", str(run.run_dir), "--train-shards", str(run.train_shard),
                     "--test-shards", str(run.test_shard), "--workers", "2"]
    code, wall, peaks, out, err = run_sampled(cmd)
    if code != 0:
        print(err[-3000:])
        raise SystemExit(f"exit {code}")
    mib = 2**20
    driver = max((v for r, v in peaks.values() if r == "driver"), default=0)
    workers = sorted((v for r, v in peaks.values() if r == "worker"), reverse=True)
    classes_json = next((work).rglob("probe1d_classes.json"))
    summary = json.loads(classes_json.read_text())["summary"]
    print(f"command: {' '.join(cmd[2:])}")
    print(f"train {summary['train_nnz']:,} non-zeros, test {summary['test_nnz']:,}, "
          f"{summary['n_latents']} latents x {summary['n_classes']} classes")
    print(f"wall {wall:.1f} s (fit {summary['seconds']['fit']:.1f} s, evaluate "
          f"{summary['seconds']['evaluate']:.1f} s); solver passes {summary['solver_passes']}; "
          f"converged {summary['converged_pairs']:,} of {summary['pairs']:,}")
    print(f"peak RSS: driver {driver / mib:.0f} MiB; worker processes "
          f"{', '.join(f'{v / mib:.0f}' for v in workers[:4])} MiB (sampled every 50 ms)")
    telemetry = next(work.rglob("probe1d_telemetry.jsonl"), None)
    if telemetry is not None:  # the run's own measurement (kernel high-water marks per worker)
        events = [json.loads(line) for line in telemetry.read_text().splitlines() if line.strip()]
        final = next((e for e in reversed(events) if e.get("event") == "summary"), None)
        if final is not None:
            m = final["measured"]
            print(f"telemetry: driver peak {m.get('driver_peak_rss', 0) / mib:.0f} MiB, "
                  f"worker peak {m.get('worker_peak_rss_max', 0) / mib:.0f} MiB, "
                  f"measured / planned: {final.get('measured_over_predicted')}")

    if not args.no_gap:
        import scipy.sparse as sp

        sys.path.insert(0, str(ROOT / "tests"))
        from probe_dask.testing.reference import sparse_objective, sparse_reference_fit

        run_dir = Path(summary["run"])
        train = Path(summary["train_shard"])
        csc = sp.load_npz(run_dir / "inference" / train.name / "token_acts.npz").tocsc()
        y = np.fromfile(train / "labels.bin", dtype=np.uint8).astype(np.int64)
        C = summary["n_classes"]
        with np.load(run_dir / "inference" / train.name / "probe1d_metrics.npz") as f:
            b, w = f["biases"].astype(np.float64), f["weights"].astype(np.float64)
        t = time.perf_counter()
        _, _, best = sparse_reference_fit(csc, y, C)
        ours = sparse_objective(csc, y, C, b, w)
        nonempty = np.diff(csc.indptr) > 0
        gap = (ours - best)[nonempty]
        print(f"gap to the float64 optimum over all {gap.size:,} non-empty pairs (float32 "
              f"parameters as written): max {gap.max():.2e}, 99.9th pct "
              f"{np.quantile(gap, 0.999):.2e}; reference took {time.perf_counter() - t:.0f} s")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
