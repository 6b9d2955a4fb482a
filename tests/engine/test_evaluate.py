"""Loss and confusion counts against a dense float64 computation on the same data."""

import numpy as np
import pytest
import scipy.sparse as sp

from probe_dask import kernels
from probe_dask.core.metrics import class_table, split_metrics
from probe_dask.core.objective import baseline_cross_entropy
from probe_dask.testing.reference import dense_metrics


def random_problem(seed, N=400, L=30, C=7):
    rng = np.random.default_rng(seed)
    X = rng.exponential(1.0, (N, L)) * (rng.random((N, L)) < rng.uniform(0, 0.4, L))
    X[:, 0] = 0.0  # a latent that never fires
    X[:, 1] = 0.0
    X[5, 1] = 900.0  # a single huge non-zero
    y = rng.choice(C, size=N, p=np.r_[0.5, np.full(C - 2, 0.5 / (C - 2)), 0.0])  # last class absent
    b = rng.normal(0, 2, (L, C))
    w = rng.normal(0, 2, (L, C))
    b[:, 2] = np.abs(b[:, 2])  # some pairs predict positive on zero rows
    return X.astype(np.float32).astype(np.float64), y.astype(np.uint8), b, w


@pytest.mark.parametrize("seed", [0, 1])
def test_split_metrics_equal_dense_float64(seed):
    X, y, b, w = random_problem(seed)
    csr = sp.csr_matrix(X.astype(np.float32))
    # three blocks, summed as the pass does
    cuts = [0, 130, 131, 400]
    lsum, totals = None, None
    pairs = kernels.ActivePairs.all_pairs(b, w)
    for r0, r1 in zip(cuts[:-1], cuts[1:]):
        block = kernels.LatentBlock.from_csr(csr[r0:r1], y[r0:r1])
        part_l = kernels.label_sums(block, b.shape[1])
        part_e = kernels.eval_sums(block, pairs, device="cpu")
        lsum = part_l if lsum is None else lsum + part_l
        totals = part_e if totals is None else totals + part_e
    got = split_metrics(lsum, totals, b, w)
    loss, counts = dense_metrics(X, y, b, w)
    # float32 transcendentals inside the kernel: 1e-6 relative on the loss is the contract
    np.testing.assert_allclose(got.loss, loss, rtol=2e-6, atol=1e-9)
    for k in ("tp", "fp", "tn", "fn"):
        np.testing.assert_array_equal(getattr(got, k), counts[k], err_msg=k)
    assert np.all(got.tp + got.fp + got.tn + got.fn == X.shape[0])


def test_baseline_and_class_table():
    X, y, b, w = random_problem(3)
    csr = sp.csr_matrix(X.astype(np.float32))
    block = kernels.LatentBlock.from_csr(csr, y)
    pairs = kernels.ActivePairs.all_pairs(b, w)
    m = split_metrics(kernels.label_sums(block, b.shape[1]), kernels.eval_sums(block, pairs), b, w)
    pi = np.bincount(y, minlength=b.shape[1]) / len(y)
    with np.errstate(divide="ignore", invalid="ignore"):
        expect = -np.nan_to_num(pi * np.log(pi)) - np.nan_to_num((1 - pi) * np.log(1 - pi))
    np.testing.assert_allclose(m.baseline_ce, expect, atol=1e-6)
    table = class_table(m, m)
    assert [r["best_latent"] for r in table] == list(np.argmin(m.loss, axis=0))
    absent = b.shape[1] - 1
    assert np.isnan(table[absent]["test_probe_r"])
    c = 0
    l = table[c]["best_latent"]
    assert table[c]["train_probe_r"] == pytest.approx(1 - m.loss[l, c] / m.baseline_ce[c])


def test_baseline_clamps_empty_classes():
    ce = baseline_cross_entropy(np.array([0, 10, 20]), 20)
    assert np.all(np.isfinite(ce)) and ce[0] < 1e-6 and ce[2] < 1e-6
    assert ce[1] == pytest.approx(np.log(2))
