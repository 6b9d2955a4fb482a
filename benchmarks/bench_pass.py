"""Throughput of one fit pass and one eval pass over a block, against bare torch.sigmoid.

Usage::

    .venv/bin/python benchmarks/bench_pass.py [--nnz 2000000] [--classes 151] [--latents 4096]
        [--repeat 3] [--torch-repeat 1] [--no-torch] [--workdir /tmp] [--json PATH]
    .venv/bin/python benchmarks/bench_pass.py --device cuda [--nnz 4000000] [--repeat 5]
    .venv/bin/python benchmarks/bench_pass.py --triton --nnz 3000 --latents 16 --classes 8 \
        --no-torch     # CPU: the Triton rows under TRITON_INTERPRET=1 (a smoke run, not timings)

One synthetic block (``probe_dask.testing.synthetic``: power-law latent frequencies,
heavy-tailed values) of about ``--nnz`` non-zeros, all ``L x C`` pairs active, made in
``WORKDIR/bench_pass-PID`` (deleted unless ``--keep``). Measured in the same run, each the best of ``--repeat``:

- bare ``torch.sigmoid`` on ``nnz x C`` float32 elements (in 2**24-element slices with
  ``out=``, so it measures the math, not allocation), with 1 thread and with torch's
  default number of threads;
- ``kernels.fit_sums`` and ``kernels.eval_sums`` with ``backend='c'`` (``threads=1`` and
  ``threads=default``) and ``backend='torch'`` (``torch.set_num_threads(1)`` and default).

With ``--device cuda`` (on a GPU; ``--triton`` on CPU runs the same rows under the Triton
interpreter, a smoke run whose timings mean nothing): bare ``torch.sigmoid`` float32 on the
GPU, and the Triton fit and eval passes on the block resident on the device with its work
list built once (``kernels.resident``, as a worker holds a persisted block: a pass moves
only ``(b, w)`` in and the sums out), each synchronised, and the torch backend on the
same GPU unless ``--no-torch``; the Triton results are checked against the C kernel.

Throughput is in (non-zero x active pair) elements per second; the ratio is against
bare sigmoid with the same number of threads (on the GPU: on the same GPU); the table also goes to
``WORKDIR/bench_pass.json`` (or ``--json``). Then a profile: for the C kernel, the time
per latent-size bin (which code path) and the fixed per-call cost (checks, output
allocation); for torch, the top ops of ``torch.profiler``; and the one-off per-block
costs (``LatentBlock.from_csr``, ``label_sums``).

Before the rows, the host's work to plan one Triton pass after 5 % of the pairs stop
(``triton_backend.plan``, the block's units already made, as on a worker's second pass):
``host_plan_ns_per_pass_per_latent`` (per latent with active pairs) and
``host_plan_bytes_per_unit`` (tracemalloc's peak of numpy's allocations, per unit; the
time is taken without tracemalloc, which slows every allocation), on this block; and
``host_plan_full_size_s`` / ``host_plan_full_size_bytes``, the same at full size (32768 latents
of power-law sizes summing to 2.26e9 events, 151 classes), timed on those offsets without
the events. On CPU this sets ``TRITON_INTERPRET=1`` (planning needs it).

Memory: the block (about 8 bytes per non-zero), ``(6, L C)`` float64 outputs, and for the
torch backend its work-chunk temporaries (see ``probe_dask.kernels.torch_backend``).
"""

from __future__ import annotations

import os
import platform
import sys
import time
import tracemalloc

import numpy as np
import scipy.sparse as sp
import torch

import common
from probe_dask import kernels as K
from probe_dask.io.labels import open_labels
from probe_dask.kernels import ckernel
from probe_dask.testing.synthetic import SyntheticRun

NAME = "bench_pass"

SIG_SLICE = 2**24


def best_of(fn, repeat):
    """Best wall time of ``repeat`` calls (the machine may be shared: min is the signal)."""
    best = float("inf")
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def make_block(work, nnz, n_classes, n_latents, seed=0):
    """A CSR block of about ``nnz`` non-zeros and its labels, made under ``work``."""
    tokens, per_row = 256, 96
    n_ex = max(1, int(round(nnz / (tokens * per_row))))
    run, _ = common.synthetic_run(work / "block", n_train_examples=n_ex, n_test_examples=1,
                                  tokens_per_example=tokens, d_sae=n_latents, n_classes=n_classes,
                                  mean_nnz_per_row=per_row, seed=seed, compressed=False)
    X, labels = block_of(run)
    return X, labels, "probe_dask.testing.synthetic"


def block_of(run: SyntheticRun):
    """The train shard of ``run`` as one CSR matrix and its uint8 labels."""
    labels = open_labels(run.train_shard)
    return sp.load_npz(run.train_acts).tocsr(), labels.read(0, labels.n_rows)


def make_params(block, sums, n_classes, seed=1):
    """Parameters like those of a fit in progress: prior intercepts, spread slopes."""
    rng = np.random.default_rng(seed)
    pi = np.clip(sums.class_rows / max(sums.n_rows, 1), 1e-8, 1 - 1e-8)
    b0 = np.log(pi / (1 - pi))
    qx = np.sqrt(np.maximum(sums.sum_v2 / np.maximum(sums.count, 1), 1e-12))
    b = b0[None, :] + rng.normal(0, 0.5, (block.n_latents, n_classes))
    w = rng.normal(0, 1.0, (block.n_latents, n_classes)) / qx[:, None]
    return b, w


def sigmoid_time(n_elem, threads, repeat):
    """ns per element of bare torch.sigmoid over ``n_elem`` float32 elements."""
    torch.set_num_threads(threads)
    m = min(n_elem, SIG_SLICE)
    x = torch.randn(m)
    out = torch.empty_like(x)
    full, rest = divmod(n_elem, m)

    def run():
        for _ in range(full):
            torch.sigmoid(x, out=out)
        if rest:
            torch.sigmoid(x[:rest], out=out[:rest])

    run()  # warm up
    return best_of(run, repeat) / n_elem * 1e9


def pass_time(fn, block, pairs, backend, threads, repeat):
    n_elem = pair_elements(block, pairs)
    if backend == "torch":
        torch.set_num_threads(threads)
        call = lambda: fn(block, pairs, "cpu", backend="torch")  # noqa: E731
    else:
        call = lambda: fn(block, pairs, "cpu", backend="c", threads=threads)  # noqa: E731
    if backend == "c":
        call()  # warm up (page in the library); torch passes are long enough as they are
    return best_of(call, repeat) / n_elem * 1e9


def sync_best(fn, repeat, sync):
    """Best wall time of ``repeat`` calls, each between two device synchronisations."""
    def once():
        sync()
        fn()
        sync()
    return best_of(once, repeat)


def device_rows(block, pairs, device, repeat, torch_repeat, no_torch):
    """Rows (what, ns/element) on ``device``: bare sigmoid, the Triton passes on the resident
    block, and the torch backend; plus the Triton kernels' largest gap to the C kernel."""
    from probe_dask.kernels import resident  # imports triton: only when asked for

    n_elem = pair_elements(block, pairs)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rows = []
    if device == "cuda":
        m = min(n_elem, 2**26)
        x = torch.randn(m, device=device)
        y = torch.empty_like(x)
        reps = max(n_elem // m, 1)
        torch.sigmoid(x, out=y)
        t = sync_best(lambda: [torch.sigmoid(x, out=y) for _ in range(reps)], repeat, sync)
        rows.append(("bare torch.sigmoid f32", t / (m * reps) * 1e9))
    cache = resident.DeviceBlockCache(max_bytes=2**62)
    gap = 0.0
    for name in ("fit", "eval"):
        call = lambda name=name: resident.resident_sums(name, block, pairs, device, cache=cache)  # noqa: E731
        got = call()  # compiles, copies the block and builds the work list once
        rows.append((f"{name} pass, triton resident", sync_best(call, repeat, sync) / n_elem * 1e9))
        if ckernel.available():
            ref = (K.fit_sums if name == "fit" else K.eval_sums)(block, pairs, "cpu", backend="c")
            gap = max(gap, float(np.max(np.abs(got - ref) / (np.abs(ref) + 1e-12))))
    if not no_torch:
        for name, fn in (("fit", K.fit_sums), ("eval", K.eval_sums)):
            call = lambda fn=fn: fn(block, pairs, device, backend="torch")  # noqa: E731
            rows.append((f"{name} pass, torch", sync_best(call, torch_repeat, sync) / n_elem * 1e9))
    return rows, gap


#: The full size the per-pass planning cost is simulated at (a run of the target job).
FULL_LATENTS, FULL_CLASSES, FULL_NNZ = 32768, 151, 2_260_000_000
#: Share of active pairs that stop between the two passes timed (a new pairs.latent_ptr).
STOP_SHARE = 0.05


class _Offsets:
    """What planning reads of a block (its offsets, and its units once made): no events."""

    def __init__(self, latent_ptr, units=None):
        self.latent_ptr, self.units = latent_ptr, units


class _PairOffsets:
    """What planning reads of the pairs: offsets and lengths (broadcast arrays, no memory)."""

    def __init__(self, latent_ptr):
        self.latent_ptr = latent_ptr
        n = int(latent_ptr[-1])
        self.b = self.w = np.broadcast_to(0.0, (n,))
        self.classes = np.broadcast_to(np.int32(0), (n,))


def _stopped(pair_ptr, rng):
    """Pair offsets after ``STOP_SHARE`` of the pairs stopped (at random, per latent)."""
    n = rng.binomial(np.diff(pair_ptr), 1 - STOP_SHARE)
    return np.concatenate([[0], np.cumsum(n)]).astype(np.int64)


def _plan_cost(plan, block, pair_ptrs, repeat):
    """Best wall time and host bytes (tracemalloc peak: numpy's allocations) of one re-plan,
    alternating between offsets that differ (so each call plans anew, as after a stop).

    Timed without tracemalloc, which hooks every allocation and doubled the few
    microseconds a plan takes; its peak is taken over separate calls. A plan is microseconds:
    best of at least 50.
    """
    work = plan(block, _PairOffsets(pair_ptrs[0]))  # the block's units, made once
    pairs = [_PairOffsets(p) for p in pair_ptrs]
    best, peak = float("inf"), 0
    for i in range(max(50, repeat) * 2):
        t0 = time.perf_counter()
        work = plan(block, pairs[i % 2])
        best = min(best, time.perf_counter() - t0)
    for i in range(2):
        tracemalloc.start()
        work = plan(block, pairs[i % 2])
        peak = max(peak, tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    return best, peak, work


def host_plan(block, pairs, device, repeat, seed=0):
    """Host work of planning one pass of the Triton kernels (``triton_backend.plan``) after
    ``STOP_SHARE`` of the pairs stopped: on this block, and simulated at full size
    (``FULL_LATENTS`` latents of power-law sizes summing to ``FULL_NNZ`` events,
    ``FULL_CLASSES`` pairs each), timing the plan on offsets only."""
    from probe_dask.kernels import triton_backend as tb  # imports triton: after TRITON_INTERPRET

    rng = np.random.default_rng(seed)
    dev = "cuda" if device == "cuda" else "cpu"
    plan = lambda blk, prs: tb.plan(blk, prs, dev)  # noqa: E731
    db = tb.to_device(block, dev)
    ptrs = [_stopped(pairs.latent_ptr, rng) for _ in range(2)]
    t, peak, work = _plan_cost(plan, db, ptrs, repeat)
    active = int((np.diff(ptrs[1]) > 0).sum())
    out = {"host_plan_ns_per_pass_per_latent": t / max(active, 1) * 1e9,
           "host_plan_bytes_per_unit": peak / max(work.n_units, 1),
           "host_plan_block_units": work.n_units, "host_plan_block_latents": active}
    size = (np.arange(1, FULL_LATENTS + 1) ** -1.0)[rng.permutation(FULL_LATENTS)]
    ev = np.floor(size / size.sum() * FULL_NNZ).astype(np.int64)
    ev[np.argmax(ev)] += FULL_NNZ - int(ev.sum())
    ev_ptr = np.concatenate([[0], np.cumsum(ev)]).astype(np.int64)
    t0 = time.perf_counter()
    full = _Offsets(ev_ptr, tb.block_units(ev_ptr, dev))
    t_units = time.perf_counter() - t0
    full_pairs = np.arange(FULL_LATENTS + 1, dtype=np.int64) * FULL_CLASSES
    t, peak, work = _plan_cost(plan, full, [_stopped(full_pairs, rng) for _ in range(2)], repeat)
    out.update(host_plan_full_size_s=t, host_plan_full_size_bytes=peak,
               host_plan_full_size_units=work.n_units,
               host_plan_full_size_cut_latents=work.block.n_split,
               host_plan_full_size_block_units_once_s=t_units)
    return out


def pair_elements(block, pairs):
    return int(np.dot(np.diff(block.latent_ptr), np.diff(pairs.latent_ptr)))


def subset(pairs, keep_latent):
    """The pairs of the latents in ``keep_latent`` only."""
    k = np.diff(pairs.latent_ptr) * keep_latent
    sel = np.repeat(keep_latent, np.diff(pairs.latent_ptr))
    ptr = np.concatenate([[0], np.cumsum(k)]).astype(np.int64)
    return K.ActivePairs(ptr, pairs.classes[sel], pairs.b[sel], pairs.w[sel])


def profile_c(block, pairs, repeat):
    print("\nC kernel profile (1 thread): by events per latent in the block")
    n_ev = np.diff(block.latent_ptr)
    total = pair_elements(block, pairs)
    bins = [(1, 11, "pairs-in-lanes path"), (12, 63, ""), (64, 511, ""), (512, 10**12, "")]
    print(f"  {'events/latent':>15} {'latents':>8} {'share of work':>14} {'fit ns/el':>10} "
          f"{'eval ns/el':>10}")
    for lo, hi, note in bins:
        keep = (n_ev >= lo) & (n_ev <= hi)
        sub = subset(pairs, keep)
        n_el = pair_elements(block, sub)
        if n_el == 0:
            continue
        tf = best_of(lambda: K.fit_sums(block, sub, "cpu", backend="c"), repeat)
        te = best_of(lambda: K.eval_sums(block, sub, "cpu", backend="c"), repeat)
        label = f"{lo}..{hi}" if hi < 10**12 else f">={lo}"
        print(f"  {label:>15} {int(keep.sum()):8d} {n_el / total:14.1%} {tf / n_el * 1e9:10.2f} "
              f"{te / n_el * 1e9:10.2f}  {note}")
    # fixed cost per call: checks + the (6, P) output, measured with all P pairs but no work
    empty = K.LatentBlock(np.zeros_like(block.latent_ptr), block.rows[:0], block.values[:0],
                          block.labels)
    tf0 = best_of(lambda: K.fit_sums(empty, pairs, "cpu", backend="c"), repeat)
    te0 = best_of(lambda: K.eval_sums(empty, pairs, "cpu", backend="c"), repeat)
    print(f"  fixed per call with {pairs.n_pairs} pairs (checks, zeroed output): "
          f"fit {tf0 * 1e3:.1f} ms, eval {te0 * 1e3:.1f} ms")


def profile_torch(block, pairs, threads):
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(threads)
    print(f"\ntorch backend profile (fit pass, {threads} thread(s)), top ops by self CPU time")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        K.fit_sums(block, pairs, "cpu", backend="torch")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def main(argv=None):
    ap = common.parser(__doc__, first_paragraph=True)
    ap.add_argument("--nnz", type=int, default=2_000_000)
    ap.add_argument("--classes", type=int, default=151)
    ap.add_argument("--latents", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--torch-repeat", type=int, default=1)
    ap.add_argument("--no-torch", action="store_true", help="skip the torch backend")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="cuda: the Triton and torch passes against sigmoid on the GPU")
    ap.add_argument("--triton", action="store_true",
                    help="on CPU: also the Triton rows, under TRITON_INTERPRET=1 (tiny sizes only)")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_pass: --device cuda: no CUDA device here; GPU numbers are not measured",
              file=sys.stderr)
        return 2
    if args.device == "cpu":
        # triton reads it when probe_dask's kernels are decorated, i.e. at their first import;
        # planning the Triton passes (host_plan) runs on CPU only under the interpreter.
        os.environ["TRITON_INTERPRET"] = "1"

    default_threads = torch.get_num_threads()
    t0 = time.perf_counter()
    with common.work_folder(args, NAME) as work:
        X, labels, source = make_block(work, args.nnz, args.classes, args.latents)
    t_gen = time.perf_counter() - t0
    t_csr = best_of(lambda: K.LatentBlock.from_csr(X, labels), args.repeat)
    block = K.LatentBlock.from_csr(X, labels)
    t_lab = best_of(lambda: K.label_sums(block, args.classes), args.repeat)
    sums = K.label_sums(block, args.classes)
    b, w = make_params(block, sums, args.classes)
    pairs = K.ActivePairs.all_pairs(b, w)
    n_elem = pair_elements(block, pairs)
    n_ev = np.diff(block.latent_ptr)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, default threads {default_threads}")
    print(f"block ({source}, generated in {t_gen:.1f} s): {block.n_rows} rows, "
          f"{block.n_latents} latents ({int((n_ev == 0).sum())} empty, median "
          f"{int(np.median(n_ev[n_ev > 0]))} / max {int(n_ev.max())} events), {block.nnz} nnz, "
          f"{args.classes} classes, {pairs.n_pairs} pairs -> {n_elem / 1e6:.1f} M elements")
    c_ok = ckernel.available()
    print(f"C kernel: {ckernel.library_path() if c_ok else 'unavailable: ' + ckernel.unavailable_reason()}"
          + (f" flags {' '.join(ckernel.library_flags())}" if c_ok else ""))

    results = {"n_elements": n_elem, "nnz": block.nnz, "pairs": pairs.n_pairs, "rows": [],
               "device": args.device}
    plan_cost = host_plan(block, pairs, args.device, args.repeat)
    results.update(plan_cost)
    print(f"Triton planning per pass after {STOP_SHARE:.0%} of the pairs stop (host): "
          f"{plan_cost['host_plan_ns_per_pass_per_latent']:.1f} ns per latent with active pairs, "
          f"{plan_cost['host_plan_bytes_per_unit']:.1f} bytes per unit "
          f"({plan_cost['host_plan_block_units']} units); at full size ({FULL_LATENTS} latents, "
          f"{FULL_CLASSES} classes, {FULL_NNZ:.3g} nnz; "
          f"{plan_cost['host_plan_full_size_units']} units, "
          f"{plan_cost['host_plan_full_size_cut_latents']} latents cut): "
          f"{plan_cost['host_plan_full_size_s'] * 1e3:.2f} ms, "
          f"{plan_cost['host_plan_full_size_bytes'] / 1e6:.2f} MB")
    print(f"\n{'what':<28} {'threads':>7} {'ns/element':>11} {'G elem/s':>9} {'vs sigmoid':>10}")
    if args.device == "cuda" or args.triton:
        rows, gap = device_rows(block, pairs, args.device, args.repeat, args.torch_repeat,
                                args.no_torch)
        sig = rows[0][1] if args.device == "cuda" else sigmoid_time(n_elem, default_threads, 1)
        where = torch.cuda.get_device_name() if args.device == "cuda" else "cpu, interpreted"
        for what, ns in rows:
            label = "GPU" if args.device == "cuda" else "interp"
            print(f"{what:<28} {label:>7} {ns:11.4f} {1 / ns:9.3f} {sig / ns:10.1%}")
            results["rows"].append({"what": what, "device": where, "ns_per_element": ns,
                                    "ratio_vs_sigmoid": sig / ns})
        print(f"Triton vs C kernel: largest relative difference {gap:.1e}")
        results["triton_vs_c_max_rel"] = gap
        if args.device == "cpu":
            print("(Triton under its CPU interpreter: a smoke run; GPU numbers are not measured)")
        if args.device == "cuda":
            results.update(torch=torch.__version__, gpu=where)
            common.write_results(args, NAME, results)
            return 0
    for threads in sorted({1, default_threads}):
        sig = sigmoid_time(n_elem, threads, args.repeat)
        rows = [("bare torch.sigmoid f32", sig)]
        for backend in ("c", "torch"):
            if backend == "c" and not c_ok or backend == "torch" and args.no_torch:
                continue
            rep = args.repeat if backend == "c" else args.torch_repeat
            for name, fn in (("fit", K.fit_sums), ("eval", K.eval_sums)):
                rows.append((f"{name} pass, {backend}", pass_time(fn, block, pairs, backend,
                                                                  threads, rep)))
        for what, ns in rows:
            print(f"{what:<28} {threads:>7} {ns:11.2f} {1 / ns:9.3f} {sig / ns:10.1%}")
            results["rows"].append({"what": what, "threads": threads, "ns_per_element": ns,
                                    "ratio_vs_sigmoid": sig / ns})
    torch.set_num_threads(default_threads)

    print(f"\none-off per block: LatentBlock.from_csr {t_csr * 1e3:.0f} ms, "
          f"label_sums {t_lab * 1e3:.0f} ms")
    if c_ok:
        profile_c(block, pairs, args.repeat)
    if not args.no_torch:
        profile_torch(block, pairs, 1)
        torch.set_num_threads(default_threads)
    results.update(torch=torch.__version__, default_threads=default_threads, block_source=source,
                   c_kernel=str(ckernel.library_path()) if c_ok else None)
    common.write_results(args, NAME, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
