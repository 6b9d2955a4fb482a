"""Throughput of one fit pass and one eval pass over a block, against bare torch.sigmoid.

Usage::

    .venv/bin/python benchmarks/bench_pass.py [--nnz 2000000] [--classes 151] [--latents 4096]
        [--repeat 3] [--torch-repeat 1] [--no-torch] [--json out.json]

One synthetic block (``probe_dask.synthetic``: power-law latent frequencies, heavy-tailed
values; random power-law data if that module is missing) of about ``--nnz`` non-zeros,
all ``L x C`` pairs active. Measured in the same run, each the best of ``--repeat``:

- bare ``torch.sigmoid`` on ``nnz x C`` float32 elements (in 2**24-element slices with
  ``out=``, so it measures the math, not allocation), with 1 thread and with torch's
  default number of threads;
- ``kernels.fit_sums`` and ``kernels.eval_sums`` with ``backend='c'`` (``threads=1`` and
  ``threads=default``) and ``backend='torch'`` (``torch.set_num_threads(1)`` and default).

Throughput is in (non-zero x active pair) elements per second; the ratio is against
bare sigmoid with the same number of threads. Then a profile: for the C kernel, the time
per latent-size bin (which code path) and the fixed per-call cost (checks, output
allocation); for torch, the top ops of ``torch.profiler``; and the one-off per-block
costs (``LatentBlock.from_csr``, ``label_sums``).

Memory: the block (about 8 bytes per non-zero), ``(6, L C)`` float64 outputs, and for the
torch backend its work-chunk temporaries (see ``probe_dask.kernels``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np
import scipy.sparse as sp
import torch

from probe_dask import kernels as K

SIG_SLICE = 2**24


def best_of(fn, repeat):
    """Best wall time of ``repeat`` calls (the machine may be shared: min is the signal)."""
    best = float("inf")
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def make_block(nnz, n_classes, n_latents, seed=0):
    """A CSR block of about ``nnz`` non-zeros and its labels."""
    try:
        from probe_dask.testing import synthetic
    except ImportError:
        synthetic = None
    if synthetic is not None:
        tokens, per_row = 256, 96
        n_ex = max(1, int(round(nnz / (tokens * per_row))))
        with tempfile.TemporaryDirectory() as root:
            run = synthetic.make_run(root, n_train_examples=n_ex, n_test_examples=1,
                                     tokens_per_example=tokens, d_sae=n_latents,
                                     n_classes=n_classes, mean_nnz_per_row=per_row,
                                     seed=seed, compressed=False)
            X = sp.load_npz(run.train_acts).tocsr()
            labels = np.fromfile(os.path.join(run.train_shard, "labels.bin"), dtype=np.uint8)
        return X, labels, "probe_dask.synthetic"
    rng = np.random.default_rng(seed)
    n_rows = max(1000, nnz // 100)
    freq = (np.arange(n_latents) + 8.0) ** -1.15
    cols = rng.choice(n_latents, size=nnz, p=freq / freq.sum())
    rows = rng.integers(0, n_rows, size=nnz)
    vals = rng.lognormal(0.0, 1.0, size=nnz).astype(np.float32)
    X = sp.csr_matrix((vals, (rows, cols)), shape=(n_rows, n_latents))
    prior = 1.0 / (np.arange(n_classes) + 1.0)
    labels = rng.choice(n_classes, size=n_rows, p=prior / prior.sum()).astype(np.uint8)
    return X, labels, "random power law"


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
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nnz", type=int, default=2_000_000)
    ap.add_argument("--classes", type=int, default=151)
    ap.add_argument("--latents", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--torch-repeat", type=int, default=1)
    ap.add_argument("--no-torch", action="store_true", help="skip the torch backend")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)

    from probe_dask.kernels import ckernel

    default_threads = torch.get_num_threads()
    t0 = time.perf_counter()
    X, labels, source = make_block(args.nnz, args.classes, args.latents)
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

    results = {"n_elements": n_elem, "nnz": block.nnz, "pairs": pairs.n_pairs, "rows": []}
    print(f"\n{'what':<28} {'threads':>7} {'ns/element':>11} {'G elem/s':>9} {'vs sigmoid':>10}")
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
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
