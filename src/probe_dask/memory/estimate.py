"""How long a run takes: the kernel's throughput times the work of the run's passes.

A pass's kernel work is its *units*: one per (non-zero event x active pair of its latent),
``nnz x C`` when every pair is active. :func:`kernel_ns_per_unit` measures the
nanoseconds per unit of the kernel the workers will run, on a small synthetic block here
(the C kernel on CPU: about 0.1 s), or reads the configured figure of a backend that cannot
run here (``probe-dask.memory.ns-per-unit.{c,triton,torch}``). :func:`estimate_time` turns
it into seconds per pass and per job on the plan's workers, under an assumption it states:
``probe-dask.memory.estimate`` passes, the first ``full-passes`` of them with every pair
active, the work then shrinking by ``decay`` a pass (pairs converge), plus one evaluation
pass per split over every pair. The first pass is free (closed forms at ``w = 0``). Kernel
time only, plus, for ranges read from disk, the layout's one-time build and each pass's
reads at ``probe-dask.memory.disk-bytes-per-s``: the label sums (one unit per non-zero) and
the tasks' overheads are not counted, so the figure is a floor of what a run with that
throughput takes.

Memory per process: the measurement's synthetic block (``2**17`` non-zeros, its
``LatentBlock`` and ``(6, 2048 C)`` sums: about 20 MB at 151 classes) while it runs; an estimate is a few numbers.
"""

from __future__ import annotations

import dataclasses
import textwrap
import time

import numpy as np
import scipy.sparse as sp

from probe_dask import config, kernels
from probe_dask.engine.layout import layout_tasks
from probe_dask.io.latent_major import build_disk_bytes
from probe_dask.kernels import ckernel
from probe_dask.memory.plan import REPORT_WIDTH

__all__ = ["kernel_ns_per_unit", "estimate_time", "format_estimate"]

# 2048 latents: the (6, P) output (15 MB at 151 classes) outgrows the caches, as a real
# pass's does; 2**17 non-zeros: a call takes tens of milliseconds.
_MEASURE_LATENTS = 2048
_MEASURE_ROWS = 2048
_MEASURE_ROW_NNZ = 64


def kernel_ns_per_unit(backend: str, device: str, n_classes: int, *, seconds: float = 0.1,
                       seed: int = 0) -> tuple[float, str]:
    """(nanoseconds per unit, where the figure comes from) of the kernel the workers run.

    The C kernel on CPU is timed here (one thread, as each worker thread runs it) on a
    synthetic block of ``2**17`` non-zeros (2048 latents) with ``n_classes`` classes, for about
    ``seconds``; any other backend (Triton or torch on a GPU, torch on CPU) reads
    ``probe-dask.memory.ns-per-unit.<backend>``.
    """
    if backend == "c" and device == "cpu" and ckernel.available():
        ns = _measure_c(int(n_classes), float(seconds), seed)
        return ns, (f"measured here: C kernel, one thread, median call on a synthetic block of "
                    f"~{_MEASURE_ROWS * _MEASURE_ROW_NNZ:,} non-zeros, {_MEASURE_LATENTS} latents x "
                    f"{int(n_classes)} classes")
    key = f"probe-dask.memory.ns-per-unit.{backend}"
    return float(config.get(key)), f"{key} (configured, not measured here)"


def _measure_c(n_classes: int, seconds: float, seed: int) -> float:
    """ns per unit of ``kernels.fit_sums`` (C backend) on a random block, every pair active."""
    rng = np.random.default_rng(seed)
    L, rows, per_row = _MEASURE_LATENTS, _MEASURE_ROWS, _MEASURE_ROW_NNZ
    cols = rng.integers(0, L, (rows, per_row)).astype(np.int32)
    values = rng.gamma(2.0, 1.0, cols.size).astype(np.float32)
    csr = sp.csr_matrix((values, cols.ravel(), np.arange(rows + 1, dtype=np.int64) * per_row),
                        shape=(rows, L))
    csr.sum_duplicates()  # a row's latents are distinct, as in a real shard
    labels = rng.integers(0, n_classes, rows).astype(np.uint8)
    block = kernels.LatentBlock.from_csr(csr, labels)
    pairs = kernels.ActivePairs.all_pairs(rng.normal(-2.0, 0.5, (L, n_classes)),
                                          rng.normal(0.0, 0.2, (L, n_classes)))
    units = csr.nnz * n_classes
    kernels.fit_sums(block, pairs, backend="c")  # warm: the library is loaded, pages touched
    # The median call: other processes sharing the cores slow some calls, not the kernel.
    times, start = [], time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < seconds and len(times) < 1000):
        t0 = time.perf_counter()
        kernels.fit_sums(block, pairs, backend="c")
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e9 / units


@dataclasses.dataclass(frozen=True)
class TimeEstimate:
    """Seconds of a run's kernel work on its workers, and what they assume (see the module)."""

    ns_per_unit: float
    source: str
    parallel: int
    parallel_what: str
    units_per_pass: int
    pass_seconds: float
    passes: int
    full_passes: int
    decay: float
    full_pass_equivalents: float
    fit_seconds: float
    eval_units: int
    eval_seconds: float
    test: bool
    #: The latent-major layout (ranges read from disk): its build's tasks, bytes moved
    #: (CSR read, parts written and read back, the layout written) and seconds at
    #: ``disk_bytes_per_s``; 0 when the ranges are in memory. Also a pass's reads, and
    #: the disk its build takes at the peak (``io.latent_major.build_disk_bytes``, where
    #: holes can be punched).
    layout_tasks: int = 0
    layout_bytes: int = 0
    layout_disk_bytes: int = 0
    layout_seconds: float = 0.0
    read_seconds_per_pass: float = 0.0
    disk_bytes_per_s: float = 0.0

    @property
    def total_seconds(self) -> float:
        return self.fit_seconds + self.eval_seconds + self.layout_seconds

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "total_seconds": self.total_seconds}


def estimate_time(plan, ns_per_unit: float, source: str = "given") -> TimeEstimate:
    """The time of ``plan``'s run (a ``memory.plan.Plan``) at ``ns_per_unit``.

    Work runs in parallel on every worker thread (CPU), or on one GPU per worker (CUDA:
    threads of a worker share its GPU).
    """
    est = config.get("probe-dask.memory.estimate")
    passes, full = int(est["passes"]), int(est["full-passes"])
    decay = float(est["decay"])
    full = min(full, passes)
    equivalents = full + sum(decay ** i for i in range(1, passes - full + 1))
    C = int(plan.n_classes)
    if plan.device == "cuda":
        parallel, what = int(plan.n_workers), f"{plan.n_workers} GPU(s), one per worker"
    else:
        parallel = int(plan.n_workers) * int(plan.threads)
        what = f"{plan.n_workers} workers x {plan.threads} thread(s)"
    parallel = max(parallel, 1)

    def seconds(units):
        return units * ns_per_unit * 1e-9 / parallel

    units = int(plan.train.nnz) * C
    eval_units = units + (int(plan.test.nnz) * C if plan.test is not None else 0)
    disk = {}
    read = 0.0
    if not plan.persist:
        rate = float(config.get("probe-dask.memory.disk-bytes-per-s"))
        nnz = int(plan.train.nnz)
        moved = 12 * nnz + 3 * 8 * nnz  # CSR read; parts written and read; layout written
        read = 8 * nnz / rate  # a pass with every latent active
        threads = plan.n_workers * plan.threads
        n_tasks = layout_tasks(plan.n_blocks["train"], nnz, threads, plan.block_nnz)
        peak = build_disk_bytes(nnz, plan.train.n_rows, plan.n_latents, plan.n_blocks["train"],
                                threads, plan.block_nnz, True)
        disk = dict(layout_tasks=n_tasks, layout_bytes=moved, layout_disk_bytes=peak, layout_seconds=moved / rate,
                    read_seconds_per_pass=read, disk_bytes_per_s=rate)
    # the first pass reads nothing and costs no kernel time (closed forms at w = 0)
    fit_passes = max(equivalents - 1.0, 0.0)
    return TimeEstimate(
        ns_per_unit=float(ns_per_unit), source=source, parallel=parallel, parallel_what=what,
        units_per_pass=units, pass_seconds=seconds(units) + read, passes=passes,
        full_passes=full, decay=decay, full_pass_equivalents=equivalents,
        fit_seconds=(seconds(units) + read) * fit_passes,
        eval_units=eval_units, eval_seconds=seconds(eval_units) + read,
        test=plan.test is not None, **disk)


def _duration(s: float) -> str:
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def format_estimate(e: TimeEstimate) -> str:
    """The estimate as the lines ``probe-dask plan`` prints under the memory plan."""
    lines = [
        f"time (kernel only): {e.ns_per_unit:.2f} ns per (non-zero x pair) unit, {e.source}",
        (f"  a pass with every pair active: {e.units_per_pass:.3g} units / {e.parallel_what} = "
         f"{_duration(e.pass_seconds - e.read_seconds_per_pass)}"
         + (f", plus {_duration(e.read_seconds_per_pass)} reading the layout"
            if e.layout_tasks else "")),
        (f"  fit: assuming {e.passes} passes, every pair active in the first {e.full_passes} and "
         f"the work then x{e.decay:g} a pass (= {e.full_pass_equivalents:.1f} full passes, the "
         f"first free: closed forms at w = 0): {_duration(e.fit_seconds)}"),
        (f"  evaluation ({'train + test' if e.test else 'train; no test shard given'}, every "
         f"pair): {e.eval_units:.3g} units = {_duration(e.eval_seconds)}"),
        (f"  whole job: about {_duration(e.total_seconds)}; the label sums and the tasks' "
         "overheads come on top"),
    ]
    if e.layout_tasks:
        lines.insert(1, f"  writing the latent-major layout (once per input): {e.layout_tasks:,} "
                        f"tasks, {e.layout_disk_bytes / 1e9:.1f} GB of disk at the peak, "
                        f"{e.layout_bytes / 1e9:.1f} GB moved at "
                        f"{e.disk_bytes_per_s / 1e6:.0f} MB/s (probe-dask.memory.disk-bytes-per-s)"
                        f" = {_duration(e.layout_seconds)}")
    return "\n".join(textwrap.fill(ln, REPORT_WIDTH, subsequent_indent="    ",
                                   break_on_hyphens=False) for ln in lines)
