"""How a solver pass scales with the number of row blocks: seconds per pass and peak RSS (issue 10).

Usage::

    .venv/bin/python benchmarks/bench_scale.py [--latents 32768] [--classes 151]
        [--nnz 5000000] [--blocks 1,20,100] [--workers 2] [--max-iter 3]
        [--workdir /tmp] [--keep] [--json PATH]

Makes one synthetic run (``probe_dask.testing.synthetic.make_run``: ``--latents`` x
``--classes``, about ``--nnz`` train non-zeros; at the defaults about 4.45 M active pairs)
and fits it with ``probe-dask fit --workers W --max-iter N --block-nnz B`` for each block
count of ``--blocks`` (``B = ceil(nnz / blocks)``; one block is ``B = nnz + 1``), in a
subprocess whose process tree is sampled for RSS. From each run's telemetry it reads the
seconds of every pass (``iteration`` events' ``pass_seconds``), the pass's work
(``work_units``, non-zero x active pair) and the peak RSS of the workers and of the
driver (the ``summary`` event). A one-block kernel timing in this process
(``kernels.fit_sums`` on the whole train shard with the pairs of a first pass, best of
``--repeat``) gives the kernel's ns per unit; the time of a pass outside the kernel is
its seconds minus ``work_units x ns per unit`` (the kernel's time on one core: with W
workers the kernel part of the wall time is smaller, so this is the lenient figure; the
table also shows the strict one, the kernel time divided by W).

Printed: one row per block count, then the ratios of the most blocks to one block for
seconds per pass and worker peak RSS (target: at most 1.25 each) and the largest time
outside the kernel (target: at most 1.0 s). The results also go to
``WORKDIR/bench_scale.json`` (or ``--json``).

Memory of this process: the train shard as one CSR block and ``LatentBlock`` (about 16
bytes per non-zero), the pairs of a first pass and one ``(6, P)`` float64 sum; the fits
run in subprocesses.
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np
import scipy.sparse as sp

import common
from probe_dask import kernels
from probe_dask.core.objective import ProblemConstants
from probe_dask.core.state import init_state
from probe_dask.io.row_blocks import row_blocks
from probe_dask.io.labels import open_labels
from probe_dask.io.layout import activations_path
from probe_dask.telemetry import read_telemetry

NAME = "bench_scale"
TOKENS, PER_ROW, KEPT_ROWS = 256, 96, 0.95  # make_run: ~5 % of rows are all zero
TARGET_RATIO, TARGET_OUTSIDE_S = 1.25, 1.0


def kernel_ns_per_unit(run, n_classes, repeat):
    """(ns per unit, units, seconds) of ``kernels.fit_sums`` on the whole train shard as one
    block, with the pairs of a first pass (every pair active at its prior)."""
    labels = open_labels(run.train_shard)
    csr = sp.load_npz(run.train_acts).tocsr()
    block = kernels.LatentBlock.from_csr(csr, labels.read(0, labels.n_rows))
    del csr
    sums = kernels.label_sums(block, n_classes)
    state = init_state(ProblemConstants.from_label_sums(sums, ridge=1e-8))
    pairs = state.active_pairs()
    units = int(np.diff(pairs.latent_ptr) @ sums.count)
    kernels.fit_sums(block, pairs)  # warm up: page in the library and the block
    best = math.inf
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        kernels.fit_sums(block, pairs)
        best = min(best, time.perf_counter() - t0)
    return best / max(units, 1) * 1e9, units, best, int(pairs.n_pairs)


def _telemetry_files(run) -> set:
    """The telemetry files beside the train results (each run writes its own)."""
    return set(activations_path(run.run_dir, run.train_id).parent.glob("probe1d_telemetry*.jsonl"))


def fit_once(run, workers, max_iter, block_nnz, log_path):
    """One ``probe-dask fit``; returns what its telemetry and the RSS sampler measured."""
    before = _telemetry_files(run)
    args = ["fit", "--run", run.run_dir, "--train-shards", run.train_shard, "--test-shards",
            run.test_shard, "--workers", str(workers), "--max-iter", str(max_iter),
            "--block-nnz", str(block_nnz), "--overwrite"]
    code, wall, sampler, _, _ = common.run_cli_sampled(*args, interval=0.05, log_path=log_path)
    if code != 0:
        tail = log_path.read_text()[-3000:]
        raise SystemExit(f"probe-dask fit --block-nnz {block_nnz} exited {code}:\n{tail}")
    new = sorted(_telemetry_files(run) - before, key=lambda p: p.stat().st_mtime)
    if not new:
        raise SystemExit(f"probe-dask fit --block-nnz {block_nnz} wrote no telemetry file")
    events = read_telemetry(new[-1])
    iters = [e for e in events if e.get("event") == "iteration"]
    final = common.first_event(events, "summary", last=True) or {}
    measured = final.get("measured", {})
    return {"command": ["probe-dask", *map(str, args)], "wall_s": wall,
            "pass_seconds": [float(e["pass_seconds"]) for e in iters],
            "work_units": [int(e["work_units"]) for e in iters],
            "worker_peak_rss": measured.get("worker_peak_rss_max"),
            "driver_peak_rss": measured.get("driver_peak_rss"),
            "sampled": {"driver_peak": sampler.driver_peak,
                        "worker_peaks": list(sampler.worker_peaks)}}


def main(argv=None):
    parser = common.parser(__doc__)
    parser.add_argument("--latents", type=int, default=32768)
    parser.add_argument("--classes", type=int, default=151)
    parser.add_argument("--nnz", type=int, default=5_000_000, help="about this many train non-zeros")
    parser.add_argument("--blocks", default="1,20,100", help="block counts, comma-separated")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-iter", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3, help="kernel timings (best of)")
    args = parser.parse_args(argv)
    counts = sorted({int(b) for b in args.blocks.split(",")})

    with common.work_folder(args, NAME) as work:
        n_ex = max(1, round(args.nnz / (TOKENS * PER_ROW * KEPT_ROWS)))
        run, made = common.synthetic_run(work / "data", n_train_examples=n_ex,
                                         n_test_examples=max(1, n_ex // 16),
                                         tokens_per_example=TOKENS, d_sae=args.latents,
                                         n_classes=args.classes, mean_nnz_per_row=PER_ROW,
                                         compressed=False, seed=10)
        indptr = sp.load_npz(run.train_acts).indptr
        nnz = int(indptr[-1])
        ns, units, kernel_s, n_pairs = kernel_ns_per_unit(run, args.classes, args.repeat)
        print(common.machine_line())
        print(f"run: {args.latents} latents x {args.classes} classes, {nnz:,} train non-zeros, "
              f"{n_pairs:,} active pairs in a first pass (made in {made:.0f} s)")
        print(f"kernel on one block, one core: {kernel_s:.2f} s for {units:.3g} units = "
              f"{ns:.2f} ns per unit (best of {args.repeat})\n")

        rows, runs = [], {}
        for k in counts:
            block_nnz = nnz + 1 if k == 1 else -(-nnz // k)
            r = fit_once(run, args.workers, args.max_iter, block_nnz, work / f"fit-{k}.log")
            # the fit's own planner (io.row_blocks): the blocks it made
            r["n_blocks"] = len(row_blocks(lambda a, b: indptr[a:b + 1], indptr.size - 1, nnz,
                                           block_nnz))
            kern = [u * ns * 1e-9 for u in r["work_units"]]
            r["kernel_seconds"] = kern
            r["outside_seconds"] = [p - q for p, q in zip(r["pass_seconds"], kern)]
            r["outside_seconds_kernel_per_worker"] = [p - q / args.workers for p, q in
                                                      zip(r["pass_seconds"], kern)]
            r["mean_pass_seconds"] = float(np.mean(r["pass_seconds"]))
            runs[k] = r
            gb = 1e-9
            rows.append([k, r["n_blocks"], f"{block_nnz:,}",
                         ", ".join(f"{p:.2f}" for p in r["pass_seconds"]),
                         f"{r['mean_pass_seconds']:.2f}",
                         ", ".join(f"{o:.2f}" for o in r["outside_seconds"]),
                         ", ".join(f"{o:.2f}" for o in r["outside_seconds_kernel_per_worker"]),
                         f"{(r['worker_peak_rss'] or 0) * gb:.2f}",
                         f"{(r['driver_peak_rss'] or 0) * gb:.2f}"])
            print(f"  {k} blocks: passes {rows[-1][3]} s", flush=True)

    print()
    common.print_table(["blocks", "made", "--block-nnz", "seconds per pass", "mean",
                        "outside kernel (1 core)", "outside (kernel / workers)",
                        "worker peak GB", "driver peak GB"], rows, left=(3, 5, 6))
    lo, hi = runs[counts[0]], runs[counts[-1]]
    ratio_s = hi["mean_pass_seconds"] / lo["mean_pass_seconds"]
    ratio_rss = (hi["worker_peak_rss"] or math.nan) / (lo["worker_peak_rss"] or math.nan)
    outside = max(o for r in runs.values() for o in r["outside_seconds"])

    def verdict(ok):
        return "ok" if ok else "OVER TARGET"

    print(f"\n{counts[-1]} blocks / {counts[0]} block: seconds per pass x{ratio_s:.2f} "
          f"(target <= {TARGET_RATIO}: {verdict(ratio_s <= TARGET_RATIO)}); worker peak RSS "
          f"x{ratio_rss:.2f} (target <= {TARGET_RATIO}: {verdict(ratio_rss <= TARGET_RATIO)})")
    print(f"largest time per pass outside the kernel: {outside:.2f} s (target <= "
          f"{TARGET_OUTSIDE_S} s: {verdict(outside <= TARGET_OUTSIDE_S)})")
    common.write_results(args, NAME, {
        "nnz": nnz, "n_pairs_first_pass": n_pairs,
        "kernel": {"ns_per_unit": ns, "units": units, "seconds": kernel_s},
        "runs": {str(k): r for k, r in runs.items()},
        "ratios": {"pass_seconds": ratio_s, "worker_peak_rss": ratio_rss},
        "max_outside_kernel_s": outside,
        "targets": {"ratio": TARGET_RATIO, "outside_kernel_s": TARGET_OUTSIDE_S}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
