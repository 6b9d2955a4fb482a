"""`probe-dask fit` as a user runs it: wall time, sampled peak RSS, passes, gap (issue 2).

Makes a synthetic run (default about 5 million non-zeros in train, 151 classes), runs
`probe-dask fit` in a subprocess on a 2-worker LocalCluster while sampling the RSS of its
whole process tree every 50 ms (psutil), then computes the exact float64 optimum of EVERY
pair with an independent sparse Newton reference (``probe_dask.testing.reference``) and
prints the largest gap between our objective and the optimum; the results also go to
``WORKDIR/bench_fit.json`` (or ``--json``).

    python benchmarks/bench_fit.py [--train-examples 200] [--demo] [--workdir /tmp] [--keep]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

import common
from probe_dask.testing.reference import sparse_objective, sparse_reference_fit

NAME = "bench_fit"


def main(argv=None):
    parser = common.parser(__doc__)
    parser.add_argument("--train-examples", type=int, default=200)
    parser.add_argument("--d-sae", type=int, default=4096)
    parser.add_argument("--demo", action="store_true", help="run `probe-dask demo` instead")
    parser.add_argument("--no-gap", action="store_true")
    args = parser.parse_args(argv)

    with common.work_folder(args, NAME) as work:
        if args.demo:
            cli_args = ["demo", "--out", str(work / "demo")]
        else:
            run, _ = common.synthetic_run(work, n_train_examples=args.train_examples,
                                          n_test_examples=max(1, args.train_examples // 4),
                                          d_sae=args.d_sae, n_classes=151, seed=11)
            cli_args = ["fit", "--run", str(run.run_dir), "--train-shards", str(run.train_shard),
                        "--test-shards", str(run.test_shard), "--workers", "2"]
        code, wall, sampler, out, err = common.run_cli_sampled(*cli_args, interval=0.05)
        if code != 0:
            print(err[-3000:])
            raise SystemExit(f"exit {code}")
        mib = common.MiB
        driver, workers = sampler.driver_peak, sampler.worker_peaks
        classes_json = next(work.rglob("probe1d_classes.json"))
        summary = json.loads(classes_json.read_text())["summary"]
        print(f"command: {' '.join(cli_args)}")
        print(f"train {summary['train_nnz']:,} non-zeros, test {summary['test_nnz']:,}, "
              f"{summary['n_latents']} latents x {summary['n_classes']} classes")
        print(f"wall {wall:.1f} s (fit {summary['seconds']['fit']:.1f} s, evaluate "
              f"{summary['seconds']['evaluate']:.1f} s); solver passes {summary['solver_passes']}; "
              f"converged {summary['converged_pairs']:,} of {summary['pairs']:,}")
        print(f"peak RSS: driver {driver / mib:.0f} MiB; worker processes "
              f"{', '.join(f'{v / mib:.0f}' for v in workers[:4])} MiB (sampled every 50 ms)")
        results = {"command": cli_args, "wall_s": wall, "summary": summary,
                   "sampled": sampler.as_dict()}
        # the run's own measurement (kernel high-water marks per worker)
        final = common.first_event(common.telemetry_events(summary["run"], summary["train_shard"]),
                                   "summary", last=True)
        if final is not None:
            m = final["measured"]
            results["telemetry_summary"] = final
            print(f"telemetry: driver peak {m.get('driver_peak_rss', 0) / mib:.0f} MiB, "
                  f"worker peak {m.get('worker_peak_rss_max', 0) / mib:.0f} MiB, "
                  f"measured / planned: {final.get('measured_over_predicted')}")

        if not args.no_gap:
            csc, y = common.train_problem(summary["run"], summary["train_shard"])
            C = summary["n_classes"]
            with np.load(Path(classes_json).with_name("probe1d_metrics.npz")) as f:
                b, w = f["biases"].astype(np.float64), f["weights"].astype(np.float64)
            t = time.perf_counter()
            _, _, best = sparse_reference_fit(csc, y, C)
            ours = sparse_objective(csc, y, C, b, w)
            nonempty = np.diff(csc.indptr) > 0
            gap = (ours - best)[nonempty]
            results["gap"] = {"pairs": int(gap.size), "max": float(gap.max()),
                              "p999": float(np.quantile(gap, 0.999))}
            print(f"gap to the float64 optimum over all {gap.size:,} non-empty pairs (float32 "
                  f"parameters as written): max {gap.max():.2e}, 99.9th pct "
                  f"{np.quantile(gap, 0.999):.2e}; reference took {time.perf_counter() - t:.0f} s")
    common.write_results(args, NAME, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
