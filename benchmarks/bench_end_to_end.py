"""End to end: fit + evaluation of train and test on a 2-worker LocalCluster (issue 6).

Makes a synthetic run of at least 10 million non-zeros in train with 151 classes, runs the
whole job, and prints, side by side in one run:

- wall time of the fit and of the evaluation, solver passes, and for each pass the number
  of active pairs, the (non-zero x active pair) work and the pass time;
- throughput in (non-zero x class x pass) per second, and ns per unit;
- what the in-memory tool would take on the same data: 30 iterations per 8-class slab at
  27 to 55 ns per (non-zero x class x iteration) (its measured range on a 2-core CPU), and
  the ratio to our wall time;
- the largest gap to the float64 optimum over a sample of pairs (dense reference).

    python benchmarks/bench_end_to_end.py [--train-examples 512] [--workdir /tmp] [--keep]
    python benchmarks/bench_end_to_end.py --device cuda     # the whole job on one GPU worker

With ``--device cuda`` the job runs on one worker holding the ``GPU`` resource, with the
Triton kernels and its train blocks resident on the GPU; besides the per-pass table it
says where the wall time goes (open, plan and label pass, solver passes, driver steps,
evaluation, writing) and projects, from the all-pairs passes' ns per unit and this run's
pass profile, the full-size job: 2.26e9 non-zeros, 32768 latents, 151 classes, on one
such worker. ``--kernel`` picks the block kernel (``--kernel triton --device cpu`` under
``TRITON_INTERPRET=1`` runs the Triton path on CPU: a smoke run, slow).

The run is made in ``WORKDIR/bench_end_to_end-PID`` (deleted unless ``--keep``); the results
also go to ``WORKDIR/bench_end_to_end.json`` (or ``--json``).
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from distributed import Client, LocalCluster

import common
from probe_dask.app.job import open_inputs, run_job
from probe_dask.testing.reference import sparse_objective, sparse_reference_fit

NAME = "bench_end_to_end"


def main(argv=None):
    parser = common.parser(__doc__)
    parser.add_argument("--train-examples", type=int, default=512)
    parser.add_argument("--test-examples", type=int, default=128)
    parser.add_argument("--d-sae", type=int, default=8192)
    parser.add_argument("--mean-nnz", type=float, default=80)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--block-nnz", type=int, default=1_500_000)
    parser.add_argument("--max-iter", type=int, default=30)
    parser.add_argument("--gap-latents", type=int, default=200, help="latents checked against the reference")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--kernel", default="auto", choices=["auto", "c", "triton", "torch"])
    args = parser.parse_args(argv)
    if args.device == "cuda":
        if not torch.cuda.is_available():
            print("bench_end_to_end: --device cuda: no CUDA device here; GPU numbers are not "
                  "measured", file=sys.stderr)
            return 2
        args.workers = 1  # the setting: the whole job on one GPU worker

    with common.work_folder(args, NAME) as work:
        results = measure(args, work)
    common.write_results(args, NAME, results)
    return 0


def measure(args, work) -> dict:
    """Make the run under ``work``, run the job, print and return the measurements."""
    run, t_make = common.synthetic_run(work, n_train_examples=args.train_examples,
                                       n_test_examples=args.test_examples, tokens_per_example=256,
                                       d_sae=args.d_sae, n_classes=151, mean_nnz_per_row=args.mean_nnz,
                                       seed=7)
    inputs = open_inputs(run.run_dir, run.train_shard, run.test_shard, block_nnz=args.block_nnz)
    nnz_train, nnz_test = inputs.train.nnz, inputs.test.nnz
    C = inputs.n_classes
    print(f"synthetic run: train {nnz_train:,} non-zeros ({inputs.train.n_rows:,} rows, "
          f"{len(inputs.train.row_blocks)} blocks), test {nnz_test:,}; {inputs.train.n_latents} "
          f"latents, {C} classes; made in {t_make:.1f} s", flush=True)

    gpu = {"GPU": 1} if args.device == "cuda" else None
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, dashboard_address=":0",
                      resources=gpu) as cluster, Client(cluster) as client:
        t1 = time.perf_counter()
        result = run_job(client, inputs, max_iter=args.max_iter, device=args.device,
                         resources=gpu, backend=args.kernel, log=lambda m: None)
        wall = time.perf_counter() - t1
    fitter = result.fitter

    # per pass: active pairs, the (non-zero x active pair) work they cost, and its time
    passes_table = [{"pass": h["n_iter"], "active_pairs": h["active_before"], "work_units": h["work_units"],
                     "seconds": h["pass_seconds"],
                     "ns_per_unit": h["pass_seconds"] / max(h["work_units"], 1) * 1e9}
                    for h in fitter.history_]
    print()
    common.print_table(["pass", "active pairs", "nnz x pairs", "seconds", "ns/unit"],
                       [[p["pass"], f"{p['active_pairs']:,}", f"{p['work_units']:.3g}",
                         f"{p['seconds']:.2f}", f"{p['ns_per_unit']:.2f}"] for p in passes_table],
                       left=())

    passes = fitter.n_iter_
    fit_s, eval_s = result.seconds["fit"], result.seconds["evaluate"]
    full_units = nnz_train * C  # one pass over every pair
    ours_units = full_units * passes + (nnz_train + nnz_test) * C  # upper bound: all pairs every pass
    print(f"\nfit {fit_s:.1f} s, evaluate (train + test) {eval_s:.1f} s, whole job {wall:.1f} s; "
          f"{passes} passes; converged {result.n_converged:,} of {result.n_pairs:,} pairs")
    print(f"throughput over the job: {ours_units / wall:.3g} (non-zero x class x pass)/s "
          f"= {wall / ours_units * 1e9:.2f} ns per unit (counting every pair in every pass)")
    baseline_lo, baseline_hi = (27e-9 * 30 * full_units, 55e-9 * 30 * full_units)
    print(f"in-memory tool, same data: 30 iterations x {full_units:.3g} units at 27..55 ns "
          f"= {baseline_lo:.0f}..{baseline_hi:.0f} s (fit only)")
    print(f"ratio (in-memory fit / our whole job): {baseline_lo / wall:.1f}x .. {baseline_hi / wall:.1f}x")

    where = where_time_goes(result, passes_table, wall)
    projection = project_full_size(passes_table, nnz_train, C)

    # gap to the float64 optimum: every class of a random sample of latents, against an
    # independent sparse float64 Newton reference (probe_dask.testing.reference)
    csc, y = common.train_problem(run.run_dir, run.train_shard)
    rng = np.random.default_rng(0)
    nonempty = np.flatnonzero(np.diff(csc.indptr) > 0)  # latents with events
    latents = np.sort(rng.choice(nonempty, size=min(args.gap_latents, nonempty.size), replace=False))
    sub = csc[:, latents]
    _, _, best = sparse_reference_fit(sub, y, C)
    ours = sparse_objective(sub, y, C, fitter.intercept_[latents], fitter.coef_[latents])
    gap = float((ours - best).max())
    print(f"gap to the float64 optimum over {best.size:,} pairs ({latents.size} random latents x "
          f"{C} classes): max {gap:.2e}")
    return {"train_nnz": nnz_train, "test_nnz": nnz_test, "n_latents": inputs.train.n_latents,
            "n_classes": C, "train_blocks": len(inputs.train.row_blocks), "make_s": t_make,
            "fit_s": fit_s, "evaluate_s": eval_s, "job_s": wall, "passes": passes,
            "converged": result.n_converged, "pairs": result.n_pairs, "per_pass": passes_table,
            "ns_per_unit": wall / ours_units * 1e9,
            "in_memory_fit_s": [baseline_lo, baseline_hi],
            "gap": {"pairs": int(best.size), "max": gap}, "device": args.device,
            "kernel": args.kernel, "where": where, "projection": projection}


def where_time_goes(result, passes_table, wall) -> dict:
    """Print and return the job's wall time split by stage."""
    sec = result.seconds
    in_passes = sum(p["seconds"] for p in passes_table)
    where = {"open (before the job)": sec.get("open", 0.0),
             "solver passes (kernels, transfers, tree sums)": in_passes,
             "rest of the fit (label pass, driver steps, checkpoints)": sec["fit"] - in_passes,
             "evaluation (train + test)": sec["evaluate"], "writing": sec.get("write", 0.0)}
    where["other (kernel check, memory plan, class table)"] = wall - sum(v for k, v in where.items()
                                                        if not k.startswith("open"))
    print("\nwhere the time goes:")
    for k, v in where.items():
        print(f"  {k:<64} {v:8.2f} s  {v / wall:6.1%}")
    return where


#: The full-size job of the issue: non-zeros of the train shard, latents, classes.
FULL = {"nnz": 2.26e9, "latents": 32768, "classes": 151}


def project_full_size(passes_table, nnz_train, C) -> dict:
    """The full-size job's fit on one such worker, from this run: each pass's share of an
    all-pairs pass times the all-pairs pass's ns per unit (the fastest of the passes that
    computed at least 90 % of all pairs' work), scaled to 2.26e9 non-zeros x 151 classes."""
    full_units = nnz_train * C
    big = [p for p in passes_table if p["work_units"] >= 0.9 * full_units]
    if not big:
        return {}
    ns = min(p["ns_per_unit"] for p in big)
    shares = [p["work_units"] / full_units for p in passes_table]
    per_pass = ns * 1e-9 * FULL["nnz"] * FULL["classes"]
    fit = per_pass * sum(shares)
    print(f"\nprojection, full size ({FULL['nnz']:.3g} non-zeros, {FULL['latents']} latents, "
          f"{FULL['classes']} classes) on one such worker: {ns:.3f} ns per unit -> all-pairs "
          f"pass {per_pass:.1f} s; fit with this run's pass profile ({len(shares)} passes, "
          f"{sum(shares):.1f} all-pairs equivalents) {fit / 60:.1f} min (kernels only: reading "
          f"the shard and evaluation not included)")
    return {"ns_per_unit": ns, "all_pairs_pass_s": per_pass, "fit_s": fit,
            "all_pairs_equivalents": sum(shares), **FULL}


if __name__ == "__main__":
    sys.exit(main())
