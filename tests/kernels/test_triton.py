"""Triton kernels against the C kernel and a dense float64 numpy reference.

Runs on CUDA, else on CPU under ``TRITON_INTERPRET=1`` (slow: blocks of a few hundred
events only). Tolerances, as in test_kernels: each float32 term may be off by a few
``2**-24 (1 + |eta|)`` relative, so every sum is checked against
``sum |term| * 8 * 2**-24 (1 + |eta|)`` (float64 reference) and twice that (C kernel, itself
within the first bound), plus ``1e-37 (1 + v**2)`` per term for float32 terms that flush
to 0 below about 1e-38 (as in the C kernel). Counts are exact: the data keep every ``eta`` at least 1e-6 from 0.
Sums over sub-blocks equal the whole block's to 1e-9 relative, and tile shapes change
results only by float64 summation order (1e-12 relative). A latent cut into slices gives the
same bits on every run and the slice-order sum of its slices' sums, bitwise.
"""

import inspect
import os
import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.special import expit

# Before probe_dask.kernels.triton_backend is imported: triton reads it when it decorates kernels.
if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from probe_dask.kernels import ckernel  # noqa: E402
from probe_dask import kernels as K  # noqa: E402
from probe_dask.kernels import triton_backend as T  # noqa: E402
from probe_dask.kernels import triton_jit  # noqa: E402
from probe_dask.kernels.labels import device_label_sums  # noqa: E402
from probe_dask.kernels.warmup import warm_up  # noqa: E402
from probe_dask.kernels import ActivePairs, LabelSums, LatentBlock  # noqa: E402
from probe_dask.testing.reference import subset_pairs  # noqa: E402

pytestmark = pytest.mark.triton

DEV = "cuda" if torch.cuda.is_available() else "cpu"
F32 = 2.0**-24
SMALL_TILE = (4, 2)  # several event steps per latent, ragged pair tiles


def make_data(seed=0, n_rows=120, n_lat=8, n_cls=5, big=False):
    """Block with an empty latent, a single-event latent, negatives and varied densities."""
    rng = np.random.default_rng(seed)
    dens = rng.choice([0.02, 0.1, 0.4, 0.9], size=n_lat)
    dens[2:4] = 0.9, 0.4  # latents with more events than small event tiles
    mask = rng.random((n_rows, n_lat)) < dens
    mask[:, 0] = False  # no events
    mask[:, 1] = False
    mask[rng.integers(n_rows), 1] = True  # one event
    vals = rng.gamma(0.7, 2.0, size=(n_rows, n_lat)) * np.where(rng.random((n_rows, n_lat)) < 0.2, -1, 1)
    if big:
        vals[:, 2] = 1e3 + rng.random(n_rows)  # values near 1e3: |eta| up to ~1e3
    vals = np.where(mask, vals, 0.0).astype(np.float32)
    vals[mask & (vals == 0)] = 0.5
    labels = rng.integers(0, n_cls, size=n_rows).astype(np.uint8)
    b, w = rng.normal(0, 2, size=(n_lat, n_cls)), rng.normal(0, 1.5, size=(n_lat, n_cls))
    for _ in range(100):  # keep every eta at least 1e-6 from 0: counts exact in any precision
        close = (np.abs(b[None] + w[None] * vals.astype(np.float64)[:, :, None]) < 1e-6) & mask[:, :, None]
        if not close.any():
            break
        b += close.any(axis=0) * 1e-3
    return sp.csr_matrix(vals), labels, b, w


def reference(X, labels, pairs):
    """Dense float64 fit (6, P) and eval (3, P) sums, with their tolerances."""
    D = X.toarray().astype(np.float64)
    fit, ftol = np.zeros((6, pairs.n_pairs)), np.zeros((6, pairs.n_pairs))
    ev, etol = np.zeros((3, pairs.n_pairs)), np.zeros((3, pairs.n_pairs))
    for l in range(D.shape[1]):
        nz = D[:, l] != 0
        v, y = D[nz, l], labels[nz]
        for p in range(pairs.latent_ptr[l], pairs.latent_ptr[l + 1]):
            eta = pairs.b[p] + pairs.w[p] * v
            mu, s = expit(eta), expit(eta) * expit(-eta)
            spl = np.logaddexp(0.0, eta)
            rel = 8 * F32 * (1 + np.abs(eta))
            flush = 1e-37 * (1 + v * v)  # float32 terms below ~1e-38 flush to 0
            for i, t in enumerate([mu, mu * v, s, s * v, s * v * v, spl]):
                fit[i, p], ftol[i, p] = t.sum(), (np.abs(t) * rel + flush).sum()
            ev[:, p] = spl.sum(), (eta > 0).sum(), ((eta > 0) & (y == pairs.classes[p])).sum()
            etol[0, p] = ftol[5, p]
    return fit, ftol, ev, etol


def check_close(got, want, tol):
    err = np.abs(got - want)
    assert np.all(err <= tol + 1e-300), f"max excess {np.max(err - tol)} at {np.argmax(err - tol)}"


def rel_err(a, b):
    """Max relative difference, scaled per output row (so zero sums do not blow up)."""
    scale = np.maximum(np.abs(a), np.abs(b)).max(axis=1, keepdims=True) + 1e-300
    return float(np.max(np.abs(a - b) / scale)) if a.size else 0.0


def check_all(X, labels, pairs, tile=T.DEFAULT_TILE):
    """Triton fit/eval sums vs float64 and (when it builds) the C kernel; returns them."""
    block = LatentBlock.from_csr(X, labels)
    fit, ftol, ev, etol = reference(X, labels, pairs)
    got_f = T.fit_sums(block, pairs, DEV, tile=tile)
    got_e = T.eval_sums(block, pairs, DEV, tile=tile)
    assert got_f.shape == (6, pairs.n_pairs) and got_f.dtype == np.float64
    assert got_e.shape == (3, pairs.n_pairs) and got_e.dtype == np.float64
    check_close(got_f, fit, ftol)
    check_close(got_e[0], ev[0], etol[0])
    np.testing.assert_array_equal(got_e[1:], ev[1:])
    if ckernel.available():
        check_close(got_f, K.fit_sums(block, pairs, backend="c"), 2 * ftol)
        c_e = K.eval_sums(block, pairs, backend="c")
        check_close(got_e[0], c_e[0], 2 * etol[0])
        np.testing.assert_array_equal(got_e[1:], c_e[1:])
    return got_f, got_e


@pytest.mark.parametrize("seed,big,subset", [(0, False, False), (1, True, True), (2, False, True)])
def test_match_c_and_float64(seed, big, subset):
    X, labels, b, w = make_data(seed, big=big)
    keep = np.ones(b.shape, bool)
    if subset:  # a pair subset per latent; latent 3 has events and no pairs
        keep = np.random.default_rng(seed + 10).random(b.shape) < 0.5
        keep[3] = False
    pairs = subset_pairs(b, w, keep)
    got_f, got_e = check_all(X, labels, pairs)
    empty = np.flatnonzero(np.repeat(X.getnnz(axis=0) == 0, keep.sum(axis=1)))
    assert empty.size and np.all(got_f[:, empty] == 0) and np.all(got_e[:, empty] == 0)


def test_single_event_no_pairs_and_empty_block():
    X = sp.csr_matrix(np.array([[0, 0, 2.0], [0, 0, 0]], np.float32))
    labels = np.array([0, 1], np.uint8)
    b, w = np.array([[0.5, -0.25]] * 3), np.array([[1.0, -1.0]] * 3)
    pairs = ActivePairs.all_pairs(b, w)
    _, got_e = check_all(X, labels, pairs)
    np.testing.assert_array_equal(got_e[1:], [[0, 0, 0, 0, 1, 0], [0, 0, 0, 0, 1, 0]])
    block = LatentBlock.from_csr(X, labels)
    assert T.fit_sums(block, subset_pairs(b, w, np.zeros(b.shape, bool)), DEV).shape == (6, 0)
    empty = LatentBlock.from_csr(sp.csr_matrix((0, 3), dtype=np.float32), np.zeros(0, np.uint8))
    assert empty.nnz == 0 and T.plan(empty, pairs, DEV).n_units == 0
    assert np.all(T.fit_sums(empty, pairs, DEV) == 0) and T.eval_sums(empty, pairs, DEV).shape == (3, 6)


def test_tiles_loop_over_events_and_ragged_pairs():
    X, labels, b, w = make_data(3, n_rows=60, n_lat=5, big=True)
    pairs = ActivePairs.all_pairs(b, w)
    block = LatentBlock.from_csr(X, labels)
    work = T.plan(block, pairs, DEV, tile=SMALL_TILE)
    # one unit per latent with events (none cut at the default split), 5 pairs in tiles of 2
    assert np.diff(block.latent_ptr).max() > 4 and work.block.n_split == 0
    assert work.n_pair_tiles == 3 and work.n_units == 3 * int((np.diff(block.latent_ptr) > 0).sum())
    small_f, small_e = check_all(X, labels, pairs, tile=SMALL_TILE)
    for fn, small in ((T.fit_sums, small_f), (T.eval_sums, small_e)):
        assert rel_err(fn(block, pairs, DEV, tile=(1, 8)), small) <= 1e-12
        assert rel_err(fn(block, pairs, DEV), small) <= 1e-12


def slices_of(block, latent, n_slices, e_tile):
    """Event bounds of the kernel's slices of ``latent``: whole event tiles, the last shorter."""
    lo, hi = int(block.latent_ptr[latent]), int(block.latent_ptr[latent + 1])
    chunk = -(-(-(-(hi - lo) // n_slices)) // e_tile) * e_tile
    return [(min(lo + s * chunk, hi), min(lo + (s + 1) * chunk, hi)) for s in range(n_slices)]


def test_cut_latent_same_bits_and_slice_order_sum():
    """A latent cut into 5 slices: the same bits on two runs, and bitwise the sum, in slice
    order, of each slice's sums computed uncut (each slice alone in a block of its own)."""
    X, labels, b, w = make_data(8, n_rows=120, n_lat=4, big=True)
    X = X.tolil()
    X[:, 2] = 0
    X[:110, 2] = np.linspace(-3, 3, 110, dtype=np.float32)[:, None]  # latent 2: 110 events
    X = sp.csr_matrix(X, dtype=np.float32)
    block, pairs = LatentBlock.from_csr(X, labels), ActivePairs.all_pairs(b, w)
    cut = dict(tile=SMALL_TILE, n_slices=5, split_events=100)
    work = T.plan(block, pairs, DEV, **cut)
    assert work.block.split_latents.tolist() == [2] and work.n_units == 3 * (2 + 5)
    bounds = slices_of(block, 2, 5, SMALL_TILE[0])
    assert len({z - a for a, z in bounds}) > 1  # a shorter last slice
    mine = slice(int(pairs.latent_ptr[2]), int(pairs.latent_ptr[3]))
    for fn, n_out in ((T.fit_sums, 6), (T.eval_sums, 3)):
        one, two = fn(block, pairs, DEV, work=work), fn(block, pairs, DEV, work=work)
        np.testing.assert_array_equal(one, two)
        want = np.zeros((n_out, mine.stop - mine.start))
        for k, (a, z) in enumerate(bounds):
            alone = LatentBlock(np.array([0, z - a], np.int64), block.rows[a:z],
                                block.values[a:z], block.labels)
            part = fn(alone, ActivePairs.all_pairs(b[2:3], w[2:3]), DEV, tile=SMALL_TILE)
            want = part if k == 0 else want + part  # float64 adds in slice order
        np.testing.assert_array_equal(one[:, mine], want)
        # the other latents are uncut: their sums are those of the uncut run
        uncut = fn(block, pairs, DEV, tile=SMALL_TILE)
        rest = np.ones(pairs.n_pairs, bool)
        rest[mine] = False
        np.testing.assert_array_equal(one[:, rest], uncut[:, rest])
        assert rel_err(one, uncut) <= 1e-12
    check_all(X, labels, pairs, tile=SMALL_TILE)  # to the C kernel and float64 references


def test_block_split_invariance():
    X, labels, b, w = make_data(4, n_rows=100, big=True)
    pairs = subset_pairs(b, w, np.random.default_rng(0).random(b.shape) < 0.7)
    whole = LatentBlock.from_csr(X, labels)
    halves = [LatentBlock.from_csr(X[a:z], labels[a:z]) for a, z in ((0, 37), (37, 100))]
    for fn in (T.fit_sums, T.eval_sums):
        one = fn(whole, pairs, DEV, tile=(8, 4))
        split = sum(fn(h, pairs, DEV, tile=(8, 4)) for h in halves)
        assert np.any(one != 0) and rel_err(one, split) <= 1e-9


def test_device_block_and_work_list_reuse():
    X, labels, b, w = make_data(5)
    block = LatentBlock.from_csr(X, labels)
    pairs = ActivePairs.all_pairs(b, w)
    dblock = T.to_device(block, DEV)
    assert T.to_device(dblock) is dblock and dblock.nbytes == 8 * block.nnz + block.n_rows
    work = T.plan(dblock, pairs)
    for fn in (T.fit_sums, T.eval_sums):
        host = fn(block, pairs, DEV)
        np.testing.assert_array_equal(fn(dblock, pairs, work=work), host)
        np.testing.assert_array_equal(fn(dblock, pairs, work=work), host)  # reusable
    # pairs moved on (new b, w, same structure): the same work list still applies
    moved = ActivePairs(pairs.latent_ptr, pairs.classes, pairs.b + 0.5, pairs.w * 0.5)
    assert rel_err(T.fit_sums(dblock, moved, work=work), T.fit_sums(block, moved, DEV)) <= 1e-12
    with pytest.raises(ValueError):  # a work list for other pairs
        T.fit_sums(dblock, subset_pairs(b, w, b > 0), work=work)


def test_label_sums_of_a_device_block_match_kernels():
    """The GPU worker's label pass on a block resident on the device (its tensors used where
    they are) and on host blocks, against the host's label sums."""
    X, labels, _, _ = make_data(6)
    C = 6
    parts = [LatentBlock.from_csr(X[a:z], labels[a:z]) for a, z in ((0, 50), (50, 120))]
    whole = LatentBlock.from_csr(X, labels)
    got = device_label_sums(T.to_device(whole, DEV), C, DEV)
    want = K.label_sums(whole, C)
    assert got.n_rows == want.n_rows == 120 and got.pos.shape == (8, C)
    for f in ("class_rows", "count", "pos"):
        assert getattr(got, f).dtype == getattr(want, f).dtype
        np.testing.assert_array_equal(getattr(got, f), getattr(want, f))
    for f in ("sum_v2", "vpos"):
        np.testing.assert_allclose(getattr(got, f), getattr(want, f), rtol=1e-12, atol=1e-12)
    tot = sum((device_label_sums(T.to_device(p, DEV), C, DEV) for p in parts[1:]),
              device_label_sums(parts[0], C, DEV))
    np.testing.assert_array_equal(tot.pos, want.pos)
    np.testing.assert_allclose(tot.vpos, want.vpos, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError):
        device_label_sums(T.to_device(whole, DEV), 3, DEV)


def test_plan_int64_offsets_and_checks():
    # Plan only reads offsets: a block of 2**31 + 5 events, the second latent's events
    # start beyond int32 (not run: that would need 18 GB); it is cut into 3 slices.
    class Offsets:
        latent_ptr = np.array([0, 2**31 - 3, 2**31 + 5], np.int64)

    pairs = ActivePairs(np.array([0, 0, 3], np.int64), np.arange(3, dtype=np.int32),
                        np.zeros(3), np.ones(3))
    work = T.plan(Offsets, pairs, DEV, tile=(4, 2), n_slices=3, split_events=2**20)
    got = work.block.units.cpu().numpy()
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, [[0, 0, 0], [0, 1, 0], [0, 2, 0], [1, 0, -1]])
    assert work.block.event_ptr.cpu().numpy()[-1] == 2**31 + 5
    assert (work.max_pairs, work.n_pair_tiles, work.n_units) == (3, 2, 8)
    X, labels, b, w = make_data(7)
    block = LatentBlock.from_csr(X, labels)
    with pytest.raises(ValueError):
        T.plan(block, ActivePairs.all_pairs(b[:-1], w[:-1]), DEV)
    with pytest.raises(ValueError):
        T.plan(block, ActivePairs.all_pairs(b, w), DEV, tile=(3, 2))
    bad = LatentBlock(block.latent_ptr, block.rows + 1000, block.values, block.labels)
    with pytest.raises(ValueError):
        T.to_device(bad, DEV)
    assert T.available() and T.unavailable_reason() == ""


def test_replanning_a_pass_is_o_latents_on_the_host():
    """After pairs stop, planning reuses the block's units and allocates O(L) host bytes,
    not O(units): 2000 latents of up to 10**7 events (some cut), 151 pairs each."""
    L, C = 2000, 151
    rng = np.random.default_rng(0)
    ev_ptr = np.concatenate([[0], np.cumsum(rng.integers(1, 10**7, L))]).astype(np.int64)

    class Offsets:
        latent_ptr = ev_ptr
        units = T.block_units(ev_ptr, DEV, n_slices=8, split_events=5 * 10**6)

    def pairs_of(n):
        ptr = np.concatenate([[0], np.cumsum(n)]).astype(np.int64)
        return ActivePairs(ptr, np.zeros(ptr[-1], np.int32), np.zeros(ptr[-1]), np.zeros(ptr[-1]))

    before, after = pairs_of(np.full(L, C)), pairs_of(rng.binomial(C, 0.95, L))
    plan = dict(n_slices=8, split_events=5 * 10**6)
    T.plan(Offsets, before, DEV, **plan)
    tracemalloc.start()
    work = T.plan(Offsets, after, DEV, **plan)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert work.block is Offsets.units and work.block.n_split > 100
    assert work.n_units > 5 * L and peak <= 8 * (L + 1) + 4096  # np.diff of the offsets
    assert work.pair_ptr_dev.cpu().numpy().tolist() == after.latent_ptr.tolist()


def test_dispatch_routes_to_triton_and_keeps_c_on_cpu():
    """``kernels.fit_sums(backend="triton")`` runs these kernels; ``backend="c"`` with no
    device is the CPU whatever GPU the machine has (it raised on CUDA machines before)."""
    X, labels, b, w = make_data(5)
    block, pairs = LatentBlock.from_csr(X, labels), ActivePairs.all_pairs(b, w)
    fit, ftol, ev, etol = reference(X, labels, pairs)
    check_close(K.fit_sums(block, pairs, DEV, backend="triton"), fit, ftol)
    np.testing.assert_array_equal(K.eval_sums(block, pairs, DEV, backend="triton")[1:], ev[1:])
    assert K.choose_backend(DEV, "triton") == ("triton", DEV)
    if ckernel.available():
        assert K.choose_backend(None, "c") == ("c", "cpu")
        check_close(K.fit_sums(block, pairs, None, backend="c"), fit, 2 * ftol)
    with pytest.raises(ValueError, match="CPU only"):
        K.choose_backend("cuda", "c")


def test_warm_up_compiles_the_variants_bounds_do_not_make_new_ones():
    """warm_up runs (compiling fit and eval for a tile); the kernel is told not to
    specialise on the arguments that only move bounds, each a real parameter of it."""
    kernel = triton_jit.sums_kernel
    names = inspect.signature(kernel.fn).parameters
    assert set(triton_jit.NOT_SPECIALIZED) <= set(names)
    told = getattr(kernel, "do_not_specialize", None)  # a JITFunction; the interpreter's:
    told = kernel.kwargs["do_not_specialize"] if told is None else told
    assert tuple(told) == triton_jit.NOT_SPECIALIZED
    seconds = warm_up(DEV, tile=SMALL_TILE)
    assert isinstance(seconds, float) and seconds > 0
    assert K.dispatch.warm_up(DEV, "triton") > 0  # what a worker runs when asked its kernel
    if ckernel.available():
        assert K.dispatch.warm_up("cpu", "c") == 0.0  # nothing to compile
