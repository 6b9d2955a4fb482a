"""The users' largest shard, out of core: ranges read from the latent-major layout every pass.

Usage::

    .venv/bin/python benchmarks/bench_giant.py [--scale 1.0] [--workdir /tmp] [--json PATH]

Makes a run of the real shape (``--scale 1``: 5.6 M rows of 256 patches per image, 32768
latents, about 400 non-zeros a row: 2.26e9, more than 2**31; power-law latent frequencies;
``probe_dask.testing.synthetic.make_run``, uncompressed, cached under ``--workdir`` by its
parameters; ``--scale`` multiplies the rows) and fits it with ``probe-dask fit`` as a user
runs it, on 2 local workers of the default memory limit, its ranges forced onto the layout on
disk (``probe-dask.engine.persist: false``), twice: with 151 classes and ``--max-iter 2``,
and with 2 classes to convergence (the kernel then costs about what a GPU pass costs
relative to the reads). The command's process tree is sampled every 0.1 s (psutil).

Per pass it reports the wall seconds and the bytes read (the run's telemetry), the kernel's
seconds on the same work (its ``work_units`` at the C kernel's ns per unit measured here on
the layout's own events, over the 2 worker threads), the slowest range's seconds on its
worker (reading and summing its events, and its whole step), and the disk's read rate measured here (the layout's
``values.f32`` read once in 64 MiB reads after ``posix_fadvise(DONTNEED)``), side by side
with the ratio the target bounds: pass seconds / (kernel seconds + bytes / rate) <= 1.3
(the first pass is closed forms and reads nothing). Also the layout's build time and the
driver's and workers' peak RSS (targets: driver <= 1.0 GB, workers under 80 % of their
limit). Writes JSON (keys ``nnz``, ``layout_s``, ``pass_s``, ``pass_kernel_s``,
``pass_bytes_read``, ``disk_bytes_per_s``, ``driver_peak_bytes``, ``worker_peak_bytes``).

Memory of this script: one row chunk of the generator at a time; the fits run in their own
processes.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
from distributed.system import MEMORY_LIMIT

import common
from probe_dask import kernels
from probe_dask.core.datatypes import ActivePairs, LatentBlock
from probe_dask.io.latent_major import LatentMajorLayout
from probe_dask.io.layout import LATENT_MAJOR_NAME, activations_path
from probe_dask.memory import read_shard_info
from probe_dask.memory.estimate import kernel_ns_per_unit
from probe_dask.telemetry import read_telemetry, run_telemetry
from probe_dask.testing.synthetic import make_run

NAME = "bench_giant"
FULL_EXAMPLES = 21_875  # x 256 patches = 5.6 M rows
TOKENS, LATENTS, ROW_NNZ = 256, 32_768, 400
WORKERS = 2


def generate(workdir: Path, scale: float, n_classes: int):
    """The run at ``scale`` (cached: made once per parameters)."""
    n = max(1, round(FULL_EXAMPLES * scale))
    params = dict(n_train_examples=n, n_test_examples=max(1, n // 8), tokens_per_example=TOKENS,
                  d_sae=LATENTS, n_classes=n_classes, mean_nnz_per_row=ROW_NNZ, seed=7,
                  compressed=False)
    root = workdir / f"{NAME}-{n}x{TOKENS}-{LATENTS}-{n_classes}"
    stamp = root / "params.json"
    if stamp.exists() and json.loads(stamp.read_text()) == params:
        run = json.loads((root / "run.json").read_text())
        return run, 0.0
    t0 = time.perf_counter()
    made = make_run(root, **params)
    run = {"run_dir": str(made.run_dir), "train_shard": str(made.train_shard),
           "test_shard": str(made.test_shard)}
    (root / "run.json").write_text(json.dumps(run))
    stamp.write_text(json.dumps(params))
    return run, time.perf_counter() - t0


def disk_rate(path: Path, chunk: int = 64 * 2**20) -> float:
    """Bytes per second of one cold read of ``path`` (its pages dropped first)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        t0, total = time.perf_counter(), 0
        while True:
            got = os.read(fd, chunk)
            if not got:
                break
            total += len(got)
        return total / max(time.perf_counter() - t0, 1e-9)
    finally:
        os.close(fd)


def run_fit(run, max_iter, out: Path, persist: str):
    """``probe-dask fit`` with ``probe-dask.engine.persist`` set; (wall s, sampler)."""
    os.environ["DASK_PROBE_DASK__ENGINE__PERSIST"] = persist
    rc, wall, sampler, _, err = common.run_cli_sampled(
        "fit", "--run", run["run_dir"], "--train-shards", run["train_shard"], "--test-shards",
        run["test_shard"], "--workers", str(WORKERS), "--threads", "1", "--max-iter",
        str(max_iter), "--out", str(out), "--restart", "--overwrite")
    if rc != 0:
        raise SystemExit(f"probe-dask fit failed ({rc}):\n{err[-3000:]}")
    return wall, sampler


def kernel_ns_on_layout(store: Path, shape, n_classes: int, target_nnz: int = 2**23) -> float:
    """ns per unit of the C kernel on the layout's own events: the latents from the middle
    of the order on, until about ``target_nnz`` events, read into memory first, every pair
    active at ``w != 0`` (a pass after the first), the median of three calls.

    The synthetic calibration of ``probe-dask plan`` times an in-cache block; this times
    the events a pass reads (power-law latent sizes, a range's full pair table)."""
    layout = LatentMajorLayout(str(store), tuple(shape), 0)
    ptr = layout.latent_ptr()
    first = shape[1] // 2
    last = int(np.searchsorted(ptr, ptr[first] + target_nnz)) or shape[1]
    last = min(max(last, first + 1), shape[1])
    n = int(ptr[last] - ptr[first])
    rows, values = np.empty(n, dtype=np.int32), np.empty(n, dtype=np.float32)
    layout.read_runs([(int(ptr[first]), int(ptr[last]))], rows, values)
    block = LatentBlock(ptr[first:last + 1] - ptr[first], rows, values, layout.labels())
    rng = np.random.default_rng(0)
    pairs = ActivePairs.all_pairs(rng.normal(-2.0, 0.5, (last - first, n_classes)),
                                  rng.normal(0.0, 0.2, (last - first, n_classes)))
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        kernels.fit_sums(block, pairs, backend="c")
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e9 / (n * n_classes)


def fit(run, n_classes, max_iter, args):
    """One ``probe-dask fit`` from disk; its per-pass numbers and peaks."""
    out = Path(args.workdir) / f"{NAME}-out-{n_classes}"
    store = (activations_path(run["run_dir"], Path(run["train_shard"]).name).parent
             / ".probe-dask-store" / LATENT_MAJOR_NAME)
    shutil.rmtree(store, ignore_errors=True)  # the fit builds it again: layout_s
    wall, sampler = run_fit(run, max_iter, out, "false")
    kept = run_telemetry(out / Path(run["train_shard"]).name)
    events = read_telemetry(kept[-1]) if kept else []
    passes = [e for e in events if e.get("event") == "iteration"]
    # the telemetry keeps a stage's numbers in the host_mem event that closes it
    start = next((e for e in events if e.get("event") == "host_mem"
                  and e.get("stage") == "fit_start"), {})
    calibrated, _ = kernel_ns_per_unit("c", "cpu", n_classes)
    info = read_shard_info(activations_path(run["run_dir"], Path(run["train_shard"]).name))
    shape = (info.n_rows, info.n_cols)
    ns = kernel_ns_on_layout(store, shape, n_classes)
    values = store / "values.f32"
    rate = disk_rate(values) if values.exists() else float("nan")
    pass_s = [float(p["pass_seconds"]) for p in passes]
    kernel_s = [int(p["work_units"]) * ns * 1e-9 / WORKERS if int(p["bytes_read"]) else 0.0
                for p in passes]
    read = [int(p["bytes_read"]) for p in passes]
    ratio = [s / (k + b / rate) if b else None for s, k, b in zip(pass_s, kernel_s, read)]
    first_read = next((b for b in read if b), 0)
    return {
        "classes": n_classes, "wall_s": wall, "layout_s": start.get("layout_seconds"),
        "pass_s": pass_s, "pass_kernel_s": kernel_s, "pass_bytes_read": read,
        "pass_active_pairs": [int(p["active_after"]) for p in passes],
        "pass_active_latents": [int(p["active_latents"]) for p in passes],
        # the slowest range's seconds on its worker: reads and sums, and all of its step
        "pass_range_sums_s": [float(p["sums_seconds"]) for p in passes],
        "pass_range_s": [float(p["range_seconds"]) for p in passes],
        "pass_read_vs_first_reading_pass": [b / first_read if first_read else None
                                            for b in read],
        "pass_vs_kernel_plus_reads": ratio, "disk_bytes_per_s": rate,
        "driver_peak_bytes": sampler.driver_peak,
        "worker_peak_bytes": max(sampler.worker_peaks, default=0),
        "worker_limit_bytes": MEMORY_LIMIT // WORKERS, "ns_per_unit": ns,
        "ns_per_unit_calibration": calibrated,
        "nnz": read_shard_info(activations_path(run["run_dir"],
                                                Path(run["train_shard"]).name)).nnz,
    }


def train_results(out: Path, run) -> dict:
    """The train shard's ``probe1d_metrics.npz`` arrays."""
    with np.load(out / Path(run["train_shard"]).name / "probe1d_metrics.npz") as z:
        return {k: z[k] for k in z.files}


def agreement(workdir: Path, scale: float) -> dict:
    """The 151-class job on 1/16 of the rows, ranges from disk and kept in memory.

    Returns the largest relative difference of each train array (the target: <= 1e-12;
    the layout changes where events are read from, not the sums' order).
    """
    run, _ = generate(workdir, scale / 16, 151)
    got = {}
    for persist in ("false", "true"):
        out = workdir / f"{NAME}-agree-{persist}"
        run_fit(run, 2, out, persist)
        got[persist] = train_results(out, run)
    diff = {}
    for key, disk in got["false"].items():
        mem = got["true"][key].astype(np.float64)
        d = np.abs(disk.astype(np.float64) - mem)
        diff[key] = float(np.max(d / np.maximum(np.abs(mem), np.finfo(np.float64).tiny)))
    return {"rows": int(got["false"]["loss"].shape[0]), "max_rel_diff": diff}


def main():
    p = common.parser(__doc__, first_paragraph=True)
    p.add_argument("--scale", type=float, default=1.0, help="share of the real rows (1: 5.6 M)")
    args = p.parse_args()
    workdir = Path(args.workdir)
    print(common.machine_line())
    results = {"scale": args.scale, "runs": []}
    for n_classes, max_iter in ((151, 2), (2, 200)):
        run, made_s = generate(workdir, args.scale, n_classes)
        r = fit(run, n_classes, max_iter, args)
        r["generate_s"] = made_s
        results["runs"].append(r)
        print(f"\n{n_classes} classes: kernel {r['ns_per_unit']:.2f} ns/unit on the layout's "
              f"events ({r['ns_per_unit_calibration']:.2f} on the plan's synthetic block)")
        print(f"{n_classes} classes: layout built in {r['layout_s'] or 0:.1f} s; disk "
              f"{r['disk_bytes_per_s'] / 1e6:.0f} MB/s; driver peak "
              f"{r['driver_peak_bytes'] / 2**20:.0f} MiB, worker peak "
              f"{r['worker_peak_bytes'] / 2**20:.0f} MiB of {r['worker_limit_bytes'] / 2**30:.1f} GiB")
        rows = [[i + 1, f"{s:.2f}", f"{k:.2f}", f"{b / 1e6:.1f}", f"{rs:.2f}", f"{ra:.2f}",
                 n, a, "-" if q is None else f"{q:.2f}"]
                for i, (s, k, b, rs, ra, n, a, q) in enumerate(zip(
                    r["pass_s"], r["pass_kernel_s"], r["pass_bytes_read"],
                    r["pass_range_sums_s"], r["pass_range_s"], r["pass_active_latents"],
                    r["pass_active_pairs"], r["pass_vs_kernel_plus_reads"]))]
        common.print_table(["pass", "s", "kernel s", "MB read", "range sums s", "range s",
                            "latents read", "active after", "s / (kernel + read)"], rows)
    results["nnz"] = results["runs"][0]["nnz"]
    # The keys at the top level, one entry per class count.
    for key in ("layout_s", "pass_s", "pass_kernel_s", "pass_bytes_read", "disk_bytes_per_s",
                "driver_peak_bytes", "worker_peak_bytes", "pass_vs_kernel_plus_reads"):
        results[key] = {str(r["classes"]): r[key] for r in results["runs"]}
    results["subsample_agreement"] = agree = agreement(workdir, args.scale)
    print(f"\n1/16 of the rows, from disk vs in memory: largest relative difference "
          f"{max(agree['max_rel_diff'].values()):.3g} (target 1e-12)")
    print_targets(results)
    common.write_results(args, NAME, results)


def print_targets(results: dict) -> None:
    """Each target of the issue beside what was measured."""
    rows = []
    for r in results["runs"]:
        ratios = [q for q in r["pass_vs_kernel_plus_reads"] if q is not None]
        rows.append([f"{r['classes']} classes: every pass <= 1.3x (kernel + reads)",
                     f"{max(ratios, default=float('nan')):.2f}",
                     "ok" if ratios and max(ratios) <= 1.3 else "MISSED"])
        # what the strict ratio cannot show: passes with next to no events to read are a
        # fixed cost of task round trips (the pass beyond its slowest range's own seconds)
        big = [q for q, k, b in zip(r["pass_vs_kernel_plus_reads"], r["pass_kernel_s"],
                                    r["pass_bytes_read"])
               if q is not None and k + b / r["disk_bytes_per_s"] >= 0.1]
        rows.append([f"{r['classes']} classes: passes of >= 0.1 s kernel + reads, largest ratio",
                     f"{max(big):.2f}" if big else "no such pass", ""])
        fixed = [s - g for s, g in zip(r["pass_s"], r["pass_range_s"])]
        rows.append([f"{r['classes']} classes: fixed cost a pass (pass s - slowest range s)",
                     f"median {np.median(fixed) * 1e3:.0f} ms, largest {max(fixed) * 1e3:.0f} ms",
                     ""])
        rows.append([f"{r['classes']} classes: driver peak <= 1.0 GB",
                     f"{r['driver_peak_bytes'] / 1e9:.2f} GB",
                     "ok" if r["driver_peak_bytes"] <= 1e9 else "MISSED"])
        share = r["worker_peak_bytes"] / r["worker_limit_bytes"]
        rows.append([f"{r['classes']} classes: worker peak < 80 % of limit", f"{share:.0%}",
                     "ok" if share < 0.8 else "MISSED"])
    two = results["runs"][-1]
    first = next((b for b in two["pass_bytes_read"] if b), 0)
    sparse = [b / first for b, a in zip(two["pass_bytes_read"], two["pass_active_latents"])
              if first and a is not None and a <= 0.1 * LATENTS]
    rows.append(["passes with <= 10 % latents active read <= 15 % of the first",
                 f"{max(sparse):.1%}" if sparse else "no such pass",
                 "-" if not sparse else ("ok" if max(sparse) <= 0.15 else "MISSED")])
    worst = max(results["subsample_agreement"]["max_rel_diff"].values())
    rows.append(["1/16 rows: from disk == in memory to 1e-12", f"{worst:.3g}",
                 "ok" if worst <= 1e-12 else "MISSED"])
    print()
    common.print_table(["target", "measured", ""], rows)


if __name__ == "__main__":
    main()
