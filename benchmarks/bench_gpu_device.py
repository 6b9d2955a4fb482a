"""The Triton kernels where the GPU is: a script that needs torch and triton only (no dask).

Usage::

    python benchmarks/bench_gpu_device.py [--device cuda] [--rows 65536] [--latents 4096]
        [--classes 151] [--row-nnz 64] [--repeats 5] [--json PATH]

The GPU machine this project is sometimes lent has torch and triton but not dask or
distributed, so this script loads ``probe_dask.kernels.triton_backend`` without the
package's front door (``probe_dask/__init__`` imports the Dask engine): the ``probe_dask``
and ``probe_dask.kernels`` packages are registered bare, and only the modules the Triton
backend, the warm-up and the label sums import are read (``kernels.triton_jit``,
``kernels.units``, ``kernels.warmup``, ``kernels.labels``, ``core.datatypes``). It then
measures, on a synthetic block (power-law latent sizes, every pair active):

- the warm-up: compiling the fit and eval kernels, as a GPU worker does when it starts;
- the fit and evaluation passes' throughput against bare ``torch.sigmoid`` on as many
  float32 elements (the target: at least 25 %);
- the host's re-planning cost after 5 % of the pairs stop (the block's units are kept, so
  a pass's plan is O(latents));
- run-to-run bits: the fit sums of two runs compared byte for byte (no atomics: equal);
- the float64 error of the sums against a float64 numpy reference on a subset of latents;
- the label sums on the device: their time, equality to the host's (counts exact, sums to
  1e-12) and their bits on two runs.

It prints a table and writes one JSON (``--json``, default ``bench_gpu_device.json`` beside
this script's working folder). Without CUDA it runs under ``TRITON_INTERPRET=1`` on the CPU
(``--device cpu``: slowly; use ``--rows 2048 --latents 128``), which checks the script, not
the speed.

Memory: the block (``8 nnz + rows`` bytes on the host and on the device), the ``(6, P)``
sums (twice: two runs), and the reference's ``nnz_subset x C`` float64 temporaries.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import types
from pathlib import Path

import numpy as np

SRC = Path(__file__).resolve().parents[1] / "src"


def load_triton_backend(device: str):
    """``probe_dask.kernels.triton_backend``, imported without ``probe_dask/__init__``."""
    if device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    for name, path in (("probe_dask", SRC / "probe_dask"),
                       ("probe_dask.kernels", SRC / "probe_dask" / "kernels")):
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [str(path)]
            sys.modules[name] = package
    return importlib.import_module("probe_dask.kernels.triton_backend")


def synthetic_block(rows, latents, row_nnz, classes=1, seed=0):
    """``(latent_ptr, rows, values, labels)`` of a block grouped by latent, power-law
    latent frequencies (a few giant latents, as an SAE's), labels uniform in ``classes``."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, latents + 1) ** 1.1
    weights /= weights.sum()
    cols = rng.choice(latents, size=(rows, row_nnz), p=weights)
    r = np.repeat(np.arange(rows, dtype=np.int32), row_nnz)
    c = cols.ravel()
    keep = np.ones(c.size, bool)
    order = np.lexsort((r, c))
    r, c = r[order], c[order]
    keep[1:] = (c[1:] != c[:-1]) | (r[1:] != r[:-1])  # a row's latents are distinct
    r, c = r[keep], c[keep]
    ptr = np.zeros(latents + 1, dtype=np.int64)
    np.cumsum(np.bincount(c, minlength=latents), out=ptr[1:])
    values = rng.gamma(2.0, 1.0, r.size).astype(np.float32)
    return ptr, r, values, rng.integers(0, classes, rows).astype(np.uint8)


class Block:
    def __init__(self, latent_ptr, rows, values, labels):
        self.latent_ptr, self.rows, self.values, self.labels = latent_ptr, rows, values, labels


class Pairs:
    def __init__(self, latent_ptr, classes, b, w):
        self.latent_ptr, self.classes, self.b, self.w = latent_ptr, classes, b, w


def all_pairs(latents, classes, rng):
    ptr = np.arange(0, latents * classes + 1, classes, dtype=np.int64)
    return Pairs(ptr, np.tile(np.arange(classes, dtype=np.int32), latents),
                 rng.normal(-2.0, 0.5, latents * classes), rng.normal(0.0, 0.2, latents * classes))


def drop_pairs(pairs, fraction, rng):
    """The pairs with ``fraction`` of them stopped (a later pass's active pairs)."""
    keep = rng.random(pairs.b.size) >= fraction
    latent = np.repeat(np.arange(pairs.latent_ptr.size - 1), np.diff(pairs.latent_ptr))
    ptr = np.zeros_like(pairs.latent_ptr)
    np.cumsum(np.bincount(latent[keep], minlength=ptr.size - 1), out=ptr[1:])
    return Pairs(ptr, pairs.classes[keep], pairs.b[keep], pairs.w[keep])


def reference_sums(block, pairs, latents):
    """The six fit sums of the pairs of ``latents`` in float64 (numpy), in pair order."""
    out = []
    for lat in latents:
        e0, e1 = block.latent_ptr[lat], block.latent_ptr[lat + 1]
        p0, p1 = pairs.latent_ptr[lat], pairs.latent_ptr[lat + 1]
        v = block.values[e0:e1].astype(np.float64)[:, None]
        eta = pairs.b[p0:p1][None, :] + pairs.w[p0:p1][None, :] * v
        mu = 1.0 / (1.0 + np.exp(-eta))
        s = mu * (1.0 - mu)
        sp = np.maximum(eta, 0) + np.log1p(np.exp(-np.abs(eta)))
        out.append(np.stack([mu.sum(0), (mu * v).sum(0), s.sum(0), (s * v).sum(0),
                             (s * v * v).sum(0), sp.sum(0)]))
    return np.concatenate(out, axis=1)


def check_label_sums(labels, block, on_dev, classes, dev) -> dict:
    """The GPU's label sums against the host's (counts equal, sums to 1e-12 relative) and
    against a second run (bit for bit)."""
    one = labels.device_label_sums(on_dev, classes, dev)
    two = labels.device_label_sums(on_dev, classes, dev)
    host = labels.host_label_sums(block, classes)
    match = all(np.array_equal(getattr(one, f), getattr(host, f)) for f in ("class_rows", "count", "pos"))
    match = match and all(np.allclose(getattr(one, f), getattr(host, f), rtol=1e-12, atol=1e-12)
                          for f in ("sum_v2", "vpos"))
    same = all(getattr(one, f).tobytes() == getattr(two, f).tobytes() for f in ("sum_v2", "vpos"))
    return {"label_sums_match_host": bool(match), "label_sums_same_bits": bool(same)}


def timed(fn, repeats, sync):
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--rows", type=int, default=65536)
    p.add_argument("--latents", type=int, default=4096)
    p.add_argument("--classes", type=int, default=151)
    p.add_argument("--row-nnz", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default="bench_gpu_device.json")
    args = p.parse_args(argv)

    tb = load_triton_backend(args.device)
    warmup = importlib.import_module("probe_dask.kernels.warmup")
    labels = importlib.import_module("probe_dask.kernels.labels")
    import torch  # the backend imported it already; here for the sigmoid baseline

    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    t_warm = warmup.warm_up(dev)  # first: the compilation a worker pays as it starts
    rng = np.random.default_rng(1)
    block = Block(*synthetic_block(args.rows, args.latents, args.row_nnz, min(args.classes, 256)))  # uint8 labels
    pairs = all_pairs(args.latents, args.classes, rng)
    nnz = int(block.latent_ptr[-1])
    units = nnz * args.classes  # (event x pair) elements of a pass with every pair active
    on_dev = tb.to_device(block, dev)
    work = tb.plan(on_dev, pairs)

    x = torch.randn(units, dtype=torch.float32, device=dev)
    t_sigmoid = timed(lambda: torch.sigmoid(x), args.repeats, sync)
    del x
    t_fit = timed(lambda: tb.fit_sums(on_dev, pairs, work=work), args.repeats, sync)
    t_eval = timed(lambda: tb.eval_sums(on_dev, pairs, work=work), args.repeats, sync)

    later = drop_pairs(pairs, 0.05, rng)
    t0 = time.perf_counter()
    n_plans = 20
    for _ in range(n_plans):
        tb.plan(on_dev, later)
    replan_s = (time.perf_counter() - t0) / n_plans

    first = tb.fit_sums(on_dev, pairs, work=work)
    second = tb.fit_sums(on_dev, pairs, work=work)
    same_bits = bool(first.tobytes() == second.tobytes())
    subset = np.unique(np.concatenate([np.arange(min(8, args.latents)),
                                       rng.choice(args.latents, min(24, args.latents), False)]))
    ref = reference_sums(block, pairs, subset)
    cols = np.concatenate([np.arange(pairs.latent_ptr[l], pairs.latent_ptr[l + 1]) for l in subset])
    got = first[:, cols]
    rel_err = float(np.max(np.abs(got - ref) / np.maximum(np.abs(ref), 1e-300)))

    n_labels = min(args.classes, 256)  # labels are uint8
    label_check = check_label_sums(labels, block, on_dev, n_labels, dev)
    t_labels = timed(lambda: labels.device_label_sums(on_dev, n_labels, dev), args.repeats, sync)

    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu (TRITON_INTERPRET=1)"
    result = {
        "device": name, "torch": torch.__version__,
        "triton": importlib.import_module("triton").__version__,
        "dask_imported": "dask" in sys.modules,
        "rows": args.rows, "latents": args.latents, "classes": args.classes, "nnz": nnz,
        "units": units, "giant_latents": int((np.diff(block.latent_ptr) > tb.DEFAULT_SPLIT_EVENTS).sum()),
        "sigmoid_s": t_sigmoid, "fit_s": t_fit, "eval_s": t_eval,
        "fit_vs_sigmoid": t_sigmoid / t_fit, "eval_vs_sigmoid": t_sigmoid / t_eval,
        "replan_after_5pct_s": replan_s,
        "replan_ns_per_latent": replan_s * 1e9 / args.latents,
        "same_bits_run_to_run": same_bits, "max_rel_error_vs_float64": rel_err,
        "reference_latents": int(subset.size), "warm_up_s": t_warm,
        "label_sums_s": t_labels, **label_check,
    }
    rows = [("bare torch.sigmoid f32", f"{t_sigmoid * 1e3:.2f} ms", "100%"),
            ("fit pass (Triton)", f"{t_fit * 1e3:.2f} ms", f"{t_sigmoid / t_fit:.0%}"),
            ("eval pass (Triton)", f"{t_eval * 1e3:.2f} ms", f"{t_sigmoid / t_eval:.0%}")]
    print(f"device: {name}; block: {args.rows:,} rows, {args.latents:,} latents, {nnz:,} nnz, "
          f"{args.classes} classes, {units:,} (event x pair) elements")
    for what, t, ratio in rows:
        print(f"  {what:<24} {t:>12}  {ratio:>6} of sigmoid's throughput")
    print(f"  re-plan after 5% of pairs stop: {replan_s * 1e6:.0f} us "
          f"({result['replan_ns_per_latent']:.0f} ns per latent)")
    print(f"  warm-up (compiling fit and eval): {t_warm:.2f} s; label sums on the device: "
          f"{t_labels * 1e3:.2f} ms, equal to the host's: {label_check['label_sums_match_host']}, "
          f"same bits run to run: {label_check['label_sums_same_bits']}")
    print(f"  same bits run to run: {same_bits}; max relative error against float64 "
          f"({subset.size} latents): {rel_err:.2e}; dask imported: {result['dask_imported']}")
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.json}")
    ok = same_bits and label_check["label_sums_match_host"] and label_check["label_sums_same_bits"]
    return 0 if ok and not result["dask_imported"] else 1


if __name__ == "__main__":
    sys.exit(main())
