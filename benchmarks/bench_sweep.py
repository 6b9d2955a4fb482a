"""A sweep of N runs against N separate ``probe-dask fit`` invocations (issue 14).

Makes one pair of shards of the demo's size (96 train and 24 test images of 256 patches,
4096 latents, 151 classes) and N run folders over them, each with its own activations
(seeds 0..N-1). Then, side by side in one run of this script, on a LocalCluster of the same
size:

- ``probe-dask fit`` once per run (each pays the interpreter start, imports, the cluster
  start, the label scans and the kernel load);
- ``probe-dask sweep`` over the same runs in fresh copies of the run folders (one cluster,
  workers kept warm, each shard's labels scanned once), overlapping runs as the memory plan
  allows, and again with ``--concurrent-runs 1`` (one after the other);

and prints the wall times and the ratio of the overlapping sweep to the separate fits
(target: <= 0.7), and that of the one-after-the-other sweep.

    python benchmarks/bench_sweep.py [--runs 6] [--train-examples 96] [--workdir /tmp] [--keep]

Smoke test at a tiny size: ``--runs 2 --train-examples 4 --d-sae 256``.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import common

from probe_dask.io.layout import inference_dir
from probe_dask.testing.runner import run_cli
from probe_dask.testing.synthetic import make_run

NAME = "bench_sweep"


def main(argv=None):
    parser = common.parser(__doc__)
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--train-examples", type=int, default=96)
    parser.add_argument("--d-sae", type=int, default=4096)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-iter", type=int, default=30)
    args = parser.parse_args(argv)
    with common.work_folder(args, NAME) as work:
        results = measure(args, work)
    common.write_results(args, NAME, results)
    return 0


def make_runs(args, work: Path) -> list[dict]:
    """N run folders over one pair of shards, each with the activations of its own seed."""
    kw = dict(n_train_examples=args.train_examples, n_test_examples=max(1, args.train_examples // 4),
              tokens_per_example=256, d_sae=args.d_sae, n_classes=151)
    base = make_run(work / "gen-0", seed=0, **kw)
    runs = []
    for i in range(args.runs):
        src = base if i == 0 else make_run(work / f"gen-{i}", seed=i, **kw)
        run_dir = work / "runs" / f"run-{i}"
        for sid_src, sid in ((src.train_id, base.train_id), (src.test_id, base.test_id)):
            inference_dir(run_dir, sid).mkdir(parents=True)
            shutil.copy(src.acts_path(sid_src), inference_dir(run_dir, sid) / "token_acts.npz")
        runs.append({"run": str(run_dir), "train_shards": base.train_shard,
                     "test_shards": base.test_shard})
    return runs


def measure(args, work: Path) -> dict:
    t0 = time.perf_counter()
    runs = make_runs(args, work)
    made = time.perf_counter() - t0
    shutil.copytree(work / "runs", work / "runs-sweep")
    shutil.copytree(work / "runs", work / "runs-sweep1")
    cluster = ("--workers", str(args.workers), "--threads", "1", "--max-iter", str(args.max_iter),
               "--no-telemetry")
    separate = []
    for cfg in runs:  # the way without a sweep: one command per run
        proc = run_cli("fit", "--run", cfg["run"], "--train-shards", cfg["train_shards"],
                       "--test-shards", cfg["test_shards"], *cluster, timeout=3600)
        if proc.returncode != 0:
            sys.exit(f"fit failed: {proc.stderr[-2000:]}")
        separate.append(proc.seconds)
    sweeps = {}
    for name, folder, flags in (("overlapping", "runs-sweep", ()),
                                ("one after the other", "runs-sweep1", ("--concurrent-runs", "1"))):
        sweep_file = work / f"{folder}.json"
        sweep_file.write_text(json.dumps([{**c, "run": c["run"].replace("/runs/", f"/{folder}/")}
                                          for c in runs]))
        proc = run_cli("sweep", sweep_file, *cluster, *flags, timeout=3600)
        if proc.returncode != 0:
            sys.exit(f"sweep failed: {proc.stderr[-2000:]}")
        at_once = next((line.split("sweep: ", 1)[1].split(" (")[0]
                        for line in proc.stderr.splitlines() if " at once " in line), "1 run at once")
        sweeps[name] = (proc.seconds, at_once)
    proc_seconds = sweeps["overlapping"][0]
    ratio = proc_seconds / sum(separate)
    print(common.machine_line())
    print(f"{args.runs} runs over one pair of shards ({args.train_examples} train images x 256 "
          f"patches, {args.d_sae} latents, 151 classes), made in {made:.1f} s\n")
    common.print_table(["what", "wall s"],
                       [*[[f"probe-dask fit, run {i}", f"{s:.1f}"] for i, s in enumerate(separate)],
                        [f"sum of {args.runs} fits", f"{sum(separate):.1f}"],
                        *[[f"probe-dask sweep of {args.runs}, {name} ({at_once})", f"{sec:.1f}"]
                          for name, (sec, at_once) in sweeps.items()]])
    print(f"\nratio sweep / separate fits: {ratio:.2f} (target <= 0.7); one run after the "
          f"other: {sweeps['one after the other'][0] / sum(separate):.2f}")
    return {"machine": common.machine(), "runs": args.runs, "train_examples": args.train_examples,
            "d_sae": args.d_sae, "separate_seconds": separate, "sweep_seconds": proc_seconds,
            "sweep_one_at_a_time_seconds": sweeps["one after the other"][0], "ratio": ratio}


if __name__ == "__main__":
    sys.exit(main())
