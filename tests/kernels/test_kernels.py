"""Block kernels against a dense float64 numpy reference.

Tolerances: the transcendental part may be float32, after ``|eta|`` is rounded to float32,
so each term of a sum carries a relative error of a few ``2**-24 (1 + |eta|)`` (measured
at most 5.2 of those for the C kernel, 3.4 for torch, over |eta| <= 87); every sum is
checked against ``sum |term| * 8 * 2**-24 (1 + |eta|)`` (5e-7 relative at eta = 0, 1e-6
at |eta| = 1). Counts are exact: the data keep every ``eta`` at least 1e-6 away
from 0. Block additivity and event order are checked at 1e-12 relative.
"""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.special import expit

from probe_dask import kernels as K
from probe_dask.kernels import ActivePairs, LabelSums, LatentBlock
from probe_dask.kernels.labels import device_label_sums
from probe_dask.testing.reference import subset_pairs

BACKENDS = ["torch", "c"]
F32 = 2.0**-24


def _need(backend):
    if backend == "c":
        ckernel = pytest.importorskip("probe_dask.kernels.ckernel")
        if not ckernel.available():
            pytest.skip(f"C kernel unavailable: {ckernel.unavailable_reason()}")


def make_data(seed=0, n_rows=300, n_lat=14, n_cls=5, big=False, negative=True):
    """Random block with empty latents, a single-event latent and varied densities."""
    rng = np.random.default_rng(seed)
    dens = rng.choice([0.0, 0.02, 0.1, 0.4, 0.9], size=n_lat)
    dens[0] = 0.0
    mask = rng.random((n_rows, n_lat)) < dens
    mask[:, 1] = False
    mask[rng.integers(n_rows), 1] = True  # single event
    vals = rng.gamma(0.7, 2.0, size=(n_rows, n_lat))
    if negative:
        vals *= np.where(rng.random((n_rows, n_lat)) < 0.2, -1.0, 1.0)
    if big:
        vals[:, 2] *= 1e3  # eta of order 1e3
    vals = np.where(mask, vals, 0.0).astype(np.float32)
    vals[mask & (vals == 0)] = 0.5
    X = sp.csr_matrix(vals)
    labels = rng.integers(0, n_cls, size=n_rows).astype(np.uint8)
    b = rng.normal(0, 2, size=(n_lat, n_cls))
    w = rng.normal(0, 1.5, size=(n_lat, n_cls))
    # Keep every eta at least 1e-6 from 0, so counts are exact in any precision.
    dense = vals.astype(np.float64)
    for _ in range(100):
        eta = b[None] + w[None] * dense[:, :, None]
        close = (np.abs(eta) < 1e-6) & mask[:, :, None]
        if not close.any():
            break
        b += close.any(axis=0) * 1e-3
    return X, labels, b, w


def reference(X, labels, pairs):
    """Dense float64 fit (6, P), eval (3, P) sums and tolerances for them."""
    D = X.toarray().astype(np.float64)
    nz = X.toarray() != 0
    P = pairs.n_pairs
    fit, ftol = np.zeros((6, P)), np.zeros((6, P))
    ev, etol = np.zeros((3, P)), np.zeros((3, P))
    for l in range(D.shape[1]):
        v = D[nz[:, l], l]
        y = labels[nz[:, l]]
        for p in range(pairs.latent_ptr[l], pairs.latent_ptr[l + 1]):
            eta = pairs.b[p] + pairs.w[p] * v
            mu = expit(eta)
            s = mu * expit(-eta)  # not mu (1 - mu): that cancels for large eta
            spl = np.logaddexp(0.0, eta)
            terms = [mu, mu * v, s, s * v, s * v * v, spl]
            rel = 8 * F32 * (1 + np.abs(eta))
            for i, t in enumerate(terms):
                fit[i, p] = t.sum()
                ftol[i, p] = (np.abs(t) * rel).sum()
            ev[:, p] = spl.sum(), (eta > 0).sum(), ((eta > 0) & (y == pairs.classes[p])).sum()
            etol[0, p] = ftol[5, p]
    return fit, ftol, ev, etol


def check_close(got, want, tol):
    err = np.abs(got - want)
    assert np.all(err <= tol + 1e-300), f"max excess {np.max(err - tol)} at {np.argmax(err - tol)}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed,big", [(0, False), (1, True), (2, False)])
@pytest.mark.parametrize("subset", [False, True])
def test_fit_eval_match_dense(backend, seed, big, subset):
    _need(backend)
    X, labels, b, w = make_data(seed, big=big)
    keep = np.ones(b.shape, bool)
    if subset:
        keep = np.random.default_rng(seed + 10).random(b.shape) < 0.5
        keep[3] = False  # a latent with events and no pairs
    pairs = subset_pairs(b, w, keep)
    block = LatentBlock.from_csr(X, labels)
    fit, ftol, ev, etol = reference(X, labels, pairs)
    got = K.fit_sums(block, pairs, "cpu", backend=backend)
    assert got.shape == (6, pairs.n_pairs) and got.dtype == np.float64
    check_close(got, fit, ftol)
    got = K.eval_sums(block, pairs, "cpu", backend=backend)
    assert got.shape == (3, pairs.n_pairs) and got.dtype == np.float64
    check_close(got[0], ev[0], etol[0])
    np.testing.assert_array_equal(got[1:], ev[1:])


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_event_and_empty(backend):
    _need(backend)
    X = sp.csr_matrix(np.array([[0, 0, 2.0], [0, 0, 0]], np.float32))
    labels = np.array([0, 1], np.uint8)
    b = np.array([[0.5, -0.25]] * 3)
    w = np.array([[1.0, -1.0]] * 3)
    pairs = ActivePairs.all_pairs(b, w)
    block = LatentBlock.from_csr(X, labels)
    fit, ftol, ev, etol = reference(X, labels, pairs)
    got = K.fit_sums(block, pairs, "cpu", backend=backend)
    assert np.all(got[:, :4] == 0)  # empty latents contribute nothing
    check_close(got, fit, ftol)
    got = K.eval_sums(block, pairs, "cpu", backend=backend)
    np.testing.assert_array_equal(got[1:], [[0, 0, 0, 0, 1, 0], [0, 0, 0, 0, 1, 0]])
    # no pairs at all, and an empty block
    none = subset_pairs(b, w, np.zeros(b.shape, bool))
    assert K.fit_sums(block, none, "cpu", backend=backend).shape == (6, 0)
    empty = LatentBlock.from_csr(sp.csr_matrix((0, 3), dtype=np.float32), np.zeros(0, np.uint8))
    assert np.all(K.eval_sums(empty, pairs, "cpu", backend=backend) == 0)


def test_from_csr_groups_by_latent():
    X, labels, _, _ = make_data(3)
    block = LatentBlock.from_csr(sp.csr_array(X), labels)
    assert block.latent_ptr.dtype == np.int64 and block.rows.dtype == np.int32
    assert block.values.dtype == np.float32 and block.labels.dtype == np.uint8
    assert (block.n_rows, block.n_latents, block.nnz) == (X.shape[0], X.shape[1], X.nnz)
    D = X.toarray()
    for l in range(block.n_latents):
        r = block.rows[block.latent_ptr[l] : block.latent_ptr[l + 1]]
        assert np.all(np.diff(r) > 0)
        np.testing.assert_array_equal(r, np.flatnonzero(D[:, l]))
        np.testing.assert_array_equal(block.values[block.latent_ptr[l] : block.latent_ptr[l + 1]], D[r, l])
    assert block.nbytes == 8 * (X.shape[1] + 1) + 8 * X.nnz + X.shape[0]
    dup = sp.csr_matrix((np.float32([1, 2]), np.int32([0, 0]), np.int64([0, 2])), shape=(1, 2))
    blk = LatentBlock.from_csr(dup, np.zeros(1, np.uint8))
    np.testing.assert_array_equal(blk.values, [3.0])
    with pytest.raises(ValueError):
        LatentBlock.from_csr(X, labels[:-1])


LABEL_DEVICES = ["host", "cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _label_sums(where):
    """The label pass on the host (numpy, through ``kernels.label_sums``) or with the GPU
    worker's torch ops on ``where`` (on CPU here, on CUDA where there is one)."""
    if where == "host":
        return K.label_sums
    return lambda block, C: device_label_sums(block, C, where)


@pytest.mark.parametrize("where", LABEL_DEVICES)
def test_label_sums_match_dense_and_add(where):
    X, labels, _, _ = make_data(4)
    C = 6
    D = X.toarray().astype(np.float64)
    onehot = labels[:, None] == np.arange(C)
    fn = _label_sums(where)
    got = fn(LatentBlock.from_csr(X, labels), C)
    assert got.n_rows == X.shape[0]
    np.testing.assert_array_equal(got.class_rows, onehot.sum(0))
    np.testing.assert_array_equal(got.count, (D != 0).sum(0))
    np.testing.assert_allclose(got.sum_v2, (D * D).sum(0), rtol=1e-12)
    np.testing.assert_array_equal(got.pos, (D != 0).T.astype(float) @ onehot)
    np.testing.assert_allclose(got.vpos, D.T @ onehot, rtol=1e-12, atol=1e-12)
    parts = [fn(LatentBlock.from_csr(X[a:z], labels[a:z]), C) for a, z in [(0, 50), (50, 51), (51, 300)]]
    tot = parts[0] + parts[1] + parts[2]
    assert isinstance(tot, LabelSums) and tot.n_rows == got.n_rows
    for f in ("class_rows", "count", "pos"):
        assert getattr(tot, f).dtype == getattr(got, f).dtype
        np.testing.assert_array_equal(getattr(tot, f), getattr(got, f))
    np.testing.assert_allclose(tot.vpos, got.vpos, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(tot.sum_v2, got.sum_v2, rtol=1e-12)
    assert got.nbytes == 8 * (C + 2 * 14 + 2 * 14 * C)
    with pytest.raises(ValueError, match="n_classes"):
        fn(LatentBlock.from_csr(X, labels), 3)


@pytest.mark.parametrize("where", LABEL_DEVICES[1:])
def test_device_label_sums_equal_the_host_ones_and_the_same_bits(where):
    """The GPU worker's label pass: counts equal to the host's, sums to 1e-12, two runs the
    same bits (segment sums, no float atomics); kernels.label_sums takes it for CUDA."""
    X, labels, _, _ = make_data(5, n_rows=400, n_lat=20)
    block, C = LatentBlock.from_csr(X, labels), 7
    host, one = K.label_sums(block, C), device_label_sums(block, C, where)
    two = device_label_sums(block, C, where)
    for f in ("class_rows", "count", "pos"):
        np.testing.assert_array_equal(getattr(one, f), getattr(host, f))
    for f in ("sum_v2", "vpos"):
        np.testing.assert_allclose(getattr(one, f), getattr(host, f), rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(getattr(one, f), getattr(two, f))
    bad = LatentBlock(block.latent_ptr, block.rows + block.n_rows, block.values, block.labels)
    with pytest.raises(ValueError, match="rows"):
        device_label_sums(bad, C, where)
    if where == "cuda":
        np.testing.assert_array_equal(K.label_sums(block, C, "cuda").vpos, one.vpos)


def _rel_err(a, b):
    scale = np.maximum(np.abs(a), np.abs(b)).max(axis=1, keepdims=True) + 1e-300
    return np.max(np.abs(a - b) / scale)


@pytest.mark.parametrize("backend", BACKENDS)
def test_block_additivity_and_event_order(backend):
    _need(backend)
    X, labels, b, w = make_data(5, n_rows=400, big=True)
    keep = np.random.default_rng(0).random(b.shape) < 0.7
    pairs = subset_pairs(b, w, keep)
    whole = LatentBlock.from_csr(X, labels)
    for fn in (K.fit_sums, K.eval_sums):
        one = fn(whole, pairs, "cpu", backend=backend)
        cuts = [0, 90, 91, 250, 400]
        split = sum(
            fn(LatentBlock.from_csr(X[a:z], labels[a:z]), pairs, "cpu", backend=backend)
            for a, z in zip(cuts[:-1], cuts[1:])
        )
        assert _rel_err(one, split) <= 1e-12
        # permute events within each latent: the same sums up to float64 order
        perm = np.concatenate(
            [np.random.default_rng(l).permutation(np.arange(a, z)) for l, (a, z) in
             enumerate(zip(whole.latent_ptr[:-1], whole.latent_ptr[1:]))]
        ).astype(np.int64)
        shuffled = LatentBlock(whole.latent_ptr, whole.rows[perm], whole.values[perm], whole.labels)
        assert _rel_err(one, fn(shuffled, pairs, "cpu", backend=backend)) <= 1e-12


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_adds_each_block_into_one_array(backend):
    """``out=``: a pass adds its blocks into one partial; the same sums as adding partials."""
    _need(backend)
    X, labels, b, w = make_data(6, n_rows=400)
    pairs = subset_pairs(b, w, np.random.default_rng(1).random(b.shape) < 0.6)
    cuts = [0, 120, 121, 400]
    blocks = [LatentBlock.from_csr(X[a:z], labels[a:z]) for a, z in zip(cuts[:-1], cuts[1:])]
    for fn in (K.fit_sums, K.eval_sums):
        added = sum(fn(blk, pairs, "cpu", backend=backend) for blk in blocks)
        out = fn(blocks[0], pairs, "cpu", backend=backend)
        for blk in blocks[1:]:
            assert fn(blk, pairs, "cpu", backend=backend, out=out) is out
        assert _rel_err(added, out) <= 1e-12
        with pytest.raises(ValueError, match="out: expected"):
            fn(blocks[0], pairs, "cpu", backend=backend, out=out[:, :-1])


def test_concat_equals_the_block_of_the_stacked_rows():
    X, labels, _, _ = make_data(7, n_rows=300)
    cuts = [0, 50, 50, 51, 300]
    parts = [LatentBlock.from_csr(X[a:z], labels[a:z]) for a, z in zip(cuts[:-1], cuts[1:])]
    joined, whole = LatentBlock.concat(parts), LatentBlock.from_csr(X, labels)
    for name in ("latent_ptr", "rows", "values", "labels"):
        got, want = getattr(joined, name), getattr(whole, name)
        assert got.dtype == want.dtype, name
        np.testing.assert_array_equal(got, want, err_msg=name)
    with pytest.raises(ValueError, match="latents"):
        LatentBlock.concat([parts[0], LatentBlock.from_csr(X[:, :5], labels)])


def test_torch_chunking_does_not_change_results():
    X, labels, b, w = make_data(6)
    pairs = ActivePairs.all_pairs(b, w)
    block = LatentBlock.from_csr(X, labels)
    for fn in (K.fit_sums, K.eval_sums):
        ref = fn(block, pairs, "cpu", backend="torch")
        for chunk in (1, 7, 64):  # latents split across chunks, several units per chunk
            got = fn(block, pairs, "cpu", backend="torch", work_chunk=chunk)
            assert _rel_err(ref, got) <= 1e-12


def test_c_matches_torch_and_skips_stopped_pairs():
    _need("c")
    X, labels, b, w = make_data(7, n_rows=500, n_lat=20, n_cls=19, big=True)
    block = LatentBlock.from_csr(X, labels)
    full = ActivePairs.all_pairs(b, w)
    keep = np.random.default_rng(1).random(b.shape) < 0.3
    sub = subset_pairs(b, w, keep)
    for fn in (K.fit_sums, K.eval_sums):
        c_full = fn(block, full, backend="c")
        t_full = fn(block, full, backend="torch")
        _, ftol, _, etol = reference(X, labels, full)
        tol = 2 * (ftol if c_full.shape[0] == 6 else np.vstack([etol[:1], 0 * etol[1:]]))
        check_close(c_full, t_full, tol)
        # stopped pairs are absent: the subset equals the matching columns of the full set
        np.testing.assert_array_equal(fn(block, sub, backend="c"), c_full[:, keep.ravel()])
        # threads split latents only: identical results
        np.testing.assert_array_equal(fn(block, full, backend="c", threads=3), c_full)


def test_resolve_device_and_errors():
    assert K.resolve_device("cpu") == torch.device("cpu")
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert K.resolve_device(None).type == want and K.resolve_device("auto").type == want
    X, labels, b, w = make_data(8)
    block = LatentBlock.from_csr(X, labels)
    with pytest.raises(ValueError):
        K.fit_sums(block, ActivePairs.all_pairs(b[:-1], w[:-1]), "cpu")
    with pytest.raises(ValueError):
        K.fit_sums(block, ActivePairs.all_pairs(b, w), "cpu", backend="numba")
    pairs = ActivePairs.all_pairs(b, w)
    assert pairs.n_pairs == b.size and pairs.nbytes == 8 * (b.shape[0] + 1) + 20 * b.size


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_cuda_matches_cpu():
    X, labels, b, w = make_data(9, big=True)
    block = LatentBlock.from_csr(X, labels)
    pairs = ActivePairs.all_pairs(b, w)
    fit, ftol, ev, etol = reference(X, labels, pairs)
    check_close(K.fit_sums(block, pairs, "cuda"), fit, ftol)
    got = K.eval_sums(block, pairs, "cuda")
    check_close(got[0], ev[0], etol[0])
    np.testing.assert_array_equal(got[1:], ev[1:])


def test_c_portable_variant_matches_dense():
    ckernel = pytest.importorskip("probe_dask.kernels.ckernel")
    lib = ckernel.load_variant("generic")  # the baseline C path on x86-64, no AVX2; built at install
    for seed, big in ((1, True), (2, False)):
        X, labels, b, w = make_data(seed, big=big)
        pairs = ActivePairs.all_pairs(b, w)
        block = LatentBlock.from_csr(X, labels)
        fit, ftol, ev, etol = reference(X, labels, pairs)
        check_close(ckernel._run("fit", block, pairs, 1, lib=lib), fit, ftol)
        got = ckernel._run("eval", block, pairs, 1, lib=lib)
        check_close(got[0], ev[0], etol[0])
        np.testing.assert_array_equal(got[1:], ev[1:])


def test_c_library_keeps_fp_environment():
    # -ffast-math at link time would pull in crtfastmath.o and turn on flush-to-zero
    # for the whole process on load (gcc < 13); the kernel is built without it.
    _need("c")
    tiny32, tiny64 = np.float32(1e-40), np.float64(5e-324)
    assert tiny32 * np.float32(1.0) != 0 and tiny64 * 1.0 != 0
