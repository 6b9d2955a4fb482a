"""Throughput of the Triton fit and eval passes against bare torch.sigmoid on the same GPU.

Usage::

    .venv/bin/python benchmarks/bench_triton.py --device cuda [--nnz 4000000] [--latents 4096]
        [--classes 151] [--repeat 5]
    .venv/bin/python benchmarks/bench_triton.py --device cpu   # interpreter smoke run only

One random block (power-law latent frequencies, all ``L x C`` pairs active) resident on the
device (``triton_backend.to_device``) with its work list built once (``plan``), as a worker
would hold them; each pass moves only (b, w) in and the sums out. Reports ns per
(event x pair) element, best of ``--repeat``, for ``fit_sums``, ``eval_sums`` and bare
``torch.sigmoid`` on float32 (``out=``, 2**26-element slices), and their ratios.

On CPU the kernels run under ``TRITON_INTERPRET=1`` (set here before import): only a tiny
smoke size runs, checked against the C kernel, and GPU numbers are not measured.

Memory: the block on the device (8 bytes per event), the work list (40 bytes per unit), the
``(6, L C)`` float64 output, and one 2**26-element float32 slice pair for sigmoid (512 MB).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import scipy.sparse as sp


def make_block(nnz, n_lat, n_cls, seed=0):
    """A random (LatentBlock, ActivePairs) with power-law latent frequencies."""
    from probe_dask.kernels import ActivePairs, LatentBlock

    rng = np.random.default_rng(seed)
    n_rows = max(nnz // 32, 64)
    freq = 1.0 / np.arange(1, n_lat + 1) ** 0.8
    cols = rng.choice(n_lat, size=nnz, p=freq / freq.sum())
    rows = rng.integers(0, n_rows, size=nnz)
    vals = rng.gamma(0.7, 2.0, size=nnz).astype(np.float32) + np.float32(1e-3)
    X = sp.csr_matrix((vals, (rows, cols)), shape=(n_rows, n_lat))
    labels = rng.integers(0, n_cls, size=n_rows).astype(np.uint8)
    b, w = rng.normal(0, 2, (n_lat, n_cls)), rng.normal(0, 1, (n_lat, n_cls))
    return LatentBlock.from_csr(X, labels), ActivePairs.all_pairs(b, w)


def best(fn, repeat, sync):
    times = []
    for _ in range(repeat):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--nnz", type=int, default=4_000_000)
    ap.add_argument("--latents", type=int, default=4096)
    ap.add_argument("--classes", type=int, default=151)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    cpu = args.device == "cpu"
    if cpu:  # triton reads it when the kernels are decorated, i.e. on import
        os.environ["TRITON_INTERPRET"] = "1"
        args.nnz, args.latents, args.classes, args.repeat = 300, 8, 4, 1
    import torch

    from probe_dask import kernels as K
    from probe_dask.kernels import triton_backend as T

    if not T.available():
        raise SystemExit(f"Triton kernels unavailable: {T.unavailable_reason()}")
    block, pairs = make_block(args.nnz, args.latents, args.classes)
    elements = int(np.diff(block.latent_ptr) @ np.diff(pairs.latent_ptr))
    sync = torch.cuda.synchronize if not cpu else (lambda: None)
    dblock = T.to_device(block, args.device)
    work = T.plan(dblock, pairs)
    print(f"block: {block.nnz} events, {args.latents} latents x {args.classes} classes, "
          f"{elements} elements, {work.n_units} units")
    res = {}
    for name, fn in (("fit", T.fit_sums), ("eval", T.eval_sums)):
        fn(dblock, pairs, work=work)  # compile
        res[name] = best(lambda: fn(dblock, pairs, work=work), args.repeat, sync)
        print(f"{name:5s} {res[name] * 1e9 / elements:8.3f} ns/element")
    if cpu:
        ref = K.fit_sums(block, pairs, "cpu")
        got = T.fit_sums(dblock, pairs, work=work)
        err = np.max(np.abs(got - ref) / (np.abs(ref) + 1e-30))
        print(f"interpreter smoke run (max rel. diff vs CPU kernel {err:.2e}); "
              "GPU numbers are not measured")
        return
    n = min(elements, 2**26)
    x = torch.randn(n, device=args.device)
    y = torch.empty_like(x)
    reps = max(elements // n, 1)
    t_sig = best(lambda: [torch.sigmoid(x, out=y) for _ in range(reps)], args.repeat, sync)
    ns_sig = t_sig * 1e9 / (n * reps)
    print(f"sigmoid {ns_sig:8.4f} ns/element (float32, {torch.cuda.get_device_name()})")
    for name in ("fit", "eval"):
        print(f"{name:5s} / sigmoid: {res[name] * 1e9 / elements / ns_sig:6.1f}x")


if __name__ == "__main__":
    main()
