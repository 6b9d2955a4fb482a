"""Blocks resident on the device (kernels.resident): the cache hits on the second pass, evicts
under a small bound, frees a dropped block's copy, and gives the sums of uncached calls.

Runs the Triton kernels on CUDA, else on CPU under ``TRITON_INTERPRET=1`` (small blocks).
Cached and uncached calls run the same kernels on the same data: results are equal to 1e-12
relative (the kernels give the same bits on every run, so equal in practice);
against the C kernel to the tolerance of test_triton (a few float32 roundings per term).
"""

import gc
import os

import numpy as np
import pytest
import scipy.sparse as sp
import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from probe_dask import kernels as K  # noqa: E402
from probe_dask.kernels import ActivePairs, LatentBlock, ckernel  # noqa: E402
from probe_dask.kernels import resident as R  # noqa: E402

pytestmark = pytest.mark.triton

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def make_block(seed, n_rows=60, n_lat=6, n_cls=4):
    rng = np.random.default_rng(seed)
    X = sp.random(n_rows, n_lat, density=0.3, random_state=seed, format="csr", dtype=np.float32)
    X.data = rng.uniform(0.1, 3.0, X.nnz).astype(np.float32)
    labels = rng.integers(0, n_cls, n_rows).astype(np.uint8)
    return LatentBlock.from_csr(X, labels)


def test_second_pass_hits_and_equals_uncached():
    cache = R.DeviceBlockCache(max_bytes=10**9)
    blocks = [make_block(s) for s in range(3)]
    pairs = ActivePairs.all_pairs(*np.random.default_rng(1).normal(0, 1, (2, 6, 4)))
    for kind in ("fit", "eval"):
        plain = [R.resident_sums(kind, b, pairs, DEV, resident=False) for b in blocks]
        first = [R.resident_sums(kind, b, pairs, DEV, cache=cache) for b in blocks]
        second = [R.resident_sums(kind, b, pairs, DEV, cache=cache) for b in blocks]
        for p, f, s in zip(plain, first, second):
            np.testing.assert_allclose(f, p, rtol=1e-12, atol=0)
            np.testing.assert_allclose(s, p, rtol=1e-12, atol=0)
        if ckernel.available():
            ref = (K.fit_sums if kind == "fit" else K.eval_sums)(blocks[0], pairs, backend="c")
            np.testing.assert_allclose(second[0], ref, rtol=1e-5, atol=1e-9)
    # 3 copies made on the first fit pass; every later call (fit pass 2, eval passes) hits.
    assert (cache.misses, cache.hits, len(cache)) == (3, 9, 3)
    # the bound counts each copy (8 bytes a value + row, a byte a label) and its work list
    # (24 bytes a unit, 8 a cut latent, and the events' and pairs' offsets: 16 (L + 1))
    units = [R.tb.block_units(b.latent_ptr, DEV) for b in blocks]
    assert all(u.n_split == 0 for u in units)
    work = sum(24 * u.units.shape[0] + 16 * (b.n_latents + 1) for u, b in zip(units, blocks))
    assert cache.nbytes == sum(8 * b.nnz + b.n_rows for b in blocks) + work


def test_work_list_is_reused_while_pairs_per_latent_are_unchanged():
    cache = R.DeviceBlockCache(max_bytes=10**9)
    block = make_block(0)
    rng = np.random.default_rng(2)
    pairs = ActivePairs.all_pairs(*rng.normal(0, 1, (2, 6, 4)))
    R.resident_sums("fit", block, pairs, DEV, cache=cache)
    db = cache.get(block, DEV)
    work = cache.work(block, db, pairs)
    # new (b, w), same pairs per latent: the same work list; other pairs: a new one
    moved = ActivePairs.all_pairs(*rng.normal(0, 1, (2, 6, 4)))
    assert cache.work(block, db, moved) is work
    fewer = ActivePairs(np.arange(7, dtype=np.int64), pairs.classes[:6], pairs.b[:6], pairs.w[:6])
    assert cache.work(block, db, fewer) is not work
    np.testing.assert_allclose(R.resident_sums("fit", block, fewer, DEV, cache=cache),
                               R.resident_sums("fit", block, fewer, DEV, resident=False),
                               rtol=1e-12, atol=0)


def test_small_bound_evicts_least_recently_used():
    blocks = [make_block(s) for s in range(3)]
    pairs = ActivePairs.all_pairs(*np.random.default_rng(1).normal(0, 1, (2, 6, 4)))
    sizes = [8 * b.nnz + b.n_rows + R.tb.plan(b, pairs, DEV).nbytes for b in blocks]
    size = 8 * blocks[0].nnz + blocks[0].n_rows
    cache = R.DeviceBlockCache(max_bytes=2 * max(sizes))  # two blocks and their lists
    plain = [R.resident_sums("fit", b, pairs, DEV, resident=False) for b in blocks]
    for _ in range(2):
        for b, p in zip(blocks, plain):
            np.testing.assert_allclose(R.resident_sums("fit", b, pairs, DEV, cache=cache), p,
                                       rtol=1e-12, atol=0)
    assert len(cache) == 2 and cache.nbytes <= cache.max_bytes
    assert cache.evictions >= 1 and cache.misses > 3  # cycling 3 blocks through 2 slots
    tiny = R.DeviceBlockCache(max_bytes=size // 2)  # no block fits: every call streams
    R.resident_sums("fit", blocks[0], pairs, DEV, cache=tiny)
    R.resident_sums("fit", blocks[0], pairs, DEV, cache=tiny)
    assert len(tiny) == 0 and tiny.hits == 0


def test_dropped_block_frees_its_device_copy():
    cache = R.DeviceBlockCache(max_bytes=10**9)
    block = make_block(4)
    pairs = ActivePairs.all_pairs(*np.random.default_rng(1).normal(0, 1, (2, 6, 4)))
    R.resident_sums("eval", block, pairs, DEV, cache=cache)
    assert len(cache) == 1
    del block
    gc.collect()
    assert len(cache) == 0 and cache.nbytes == 0


def test_dispatch_routes_persisted_blocks_through_the_process_cache():
    cache = R.device_cache()
    cache.clear()
    block = make_block(5)
    pairs = ActivePairs.all_pairs(*np.random.default_rng(3).normal(0, 1, (2, 6, 4)))
    hits = cache.hits
    a = K.fit_sums(block, pairs, DEV, backend="triton", resident=True)
    b = K.fit_sums(block, pairs, DEV, backend="triton", resident=True)
    c = K.fit_sums(block, pairs, DEV, backend="triton")  # streamed: not cached
    assert cache.hits == hits + 1 and len(cache) == 1
    np.testing.assert_allclose(a, c, rtol=1e-12, atol=0)
    np.testing.assert_allclose(b, c, rtol=1e-12, atol=0)
    cache.clear()
