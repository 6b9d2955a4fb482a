"""The fit on a real distributed cluster against an independent float64 reference."""

import numpy as np
import pytest
from distributed import Client, LocalCluster

from probe_dask.engine.shard import open_shard
from probe_dask.engine.fit import ProbeFitter

from probe_dask.testing.reference import dense_shard
from probe_dask.testing.reference import exact_loss, reference_fit


def _fit(client, run, block_nnz, **kw):
    shard = open_shard(run.run_dir, run.train_shard, block_nnz=block_nnz)
    fitter = ProbeFitter(max_iter=40, **kw).fit(shard.X, shard.y, n_classes=8, client=client)
    return shard, fitter


def test_every_pair_within_1e6_of_float64_optimum(local_client, tiny_run):
    shard, fitter = _fit(local_client, tiny_run, block_nnz=1500)
    assert len(shard.row_blocks) > 1
    X, y = dense_shard(tiny_run.run_dir, tiny_run.train_shard)
    ref = reference_fit(X, y, 8)
    ours = exact_loss(X, y, 8, fitter.intercept_, fitter.coef_)
    nonempty = (X != 0).any(axis=0)
    gap = (ours - ref.loss)[nonempty]
    print(f"max gap to the float64 optimum: {gap.max():.3e} over {gap.size} pairs; "
          f"passes {fitter.n_iter_}")
    assert gap.max() <= 1e-6
    assert gap.min() >= -1e-9  # the reference really is the optimum
    # empty latents sit exactly at the prior: (b0_c, 0)
    empty = ~nonempty
    if empty.any():
        assert np.all(fitter.coef_[empty] == 0)
        np.testing.assert_allclose(fitter.intercept_[empty], np.broadcast_to(ref.b[empty], fitter.intercept_[empty].shape), rtol=1e-9)
    assert fitter.converged_[nonempty].all()
    assert fitter.n_iter_ <= 20


def test_results_do_not_depend_on_row_split(local_client, tiny_run):
    nnz = open_shard(tiny_run.run_dir, tiny_run.train_shard).nnz
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=":0") as one, Client(one) as client_one:
        s1, f1 = _fit(client_one, tiny_run, block_nnz=10 * nnz)
    s7, f7 = _fit(local_client, tiny_run, block_nnz=nnz // 7 + 1)
    assert len(s1.row_blocks) == 1 and len(s7.row_blocks) >= 7
    X, y = dense_shard(tiny_run.run_dir, tiny_run.train_shard)
    for a, b in ((f1.intercept_, f7.intercept_), (f1.coef_, f7.coef_)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    l1 = exact_loss(X, y, 8, f1.intercept_, f1.coef_)
    l7 = exact_loss(X, y, 8, f7.intercept_, f7.coef_)
    np.testing.assert_allclose(l1, l7, rtol=1e-9)
    assert f1.n_iter_ == f7.n_iter_


def test_resume_from_checkpoint_gives_same_result(local_client, tiny_run, tmp_path):
    ckpt = tmp_path / "ckpt.npz"
    shard = open_shard(tiny_run.run_dir, tiny_run.train_shard, block_nnz=2000)
    full = ProbeFitter(max_iter=40).fit(shard.X, shard.y, n_classes=8, client=local_client)
    part = ProbeFitter(max_iter=3, checkpoint=ckpt, identity={"x": 1})
    part.fit(shard.X, shard.y, n_classes=8, client=local_client)
    assert ckpt.exists() and part.n_iter_ == 3
    resumed = ProbeFitter(max_iter=40, checkpoint=ckpt, identity={"x": 1})
    resumed.fit(shard.X, shard.y, n_classes=8, client=local_client)
    assert resumed.n_iter_ == full.n_iter_
    np.testing.assert_array_equal(resumed.coef_, full.coef_)
    np.testing.assert_array_equal(resumed.intercept_, full.intercept_)
    from probe_dask.errors import ProbeDaskError

    with pytest.raises(ProbeDaskError, match="other input"):
        ProbeFitter(max_iter=40, checkpoint=ckpt, identity={"x": 2}).fit(
            shard.X, shard.y, n_classes=8, client=local_client)


def test_streaming_blocks_equal_persisted(local_client, tiny_run):
    _, kept = _fit(local_client, tiny_run, block_nnz=2000, persist=True)
    _, streamed = _fit(local_client, tiny_run, block_nnz=2000, persist=False)
    assert kept.persisted_ and not streamed.persisted_
    np.testing.assert_array_equal(kept.coef_, streamed.coef_)
    np.testing.assert_array_equal(kept.intercept_, streamed.intercept_)


def test_sparse_reference_agrees_with_dense_reference(tiny_run):
    """The all-pairs sparse reference (used for whole-run gaps) equals the per-pair dense one."""
    import scipy.sparse as sp

    from probe_dask.testing.reference import sparse_reference_fit

    X, y = dense_shard(tiny_run.run_dir, tiny_run.train_shard)
    dense = reference_fit(X, y, 8)
    b, w, loss = sparse_reference_fit(sp.csc_matrix(X), y, 8)
    np.testing.assert_allclose(loss, dense.loss, rtol=0, atol=1e-10)
    np.testing.assert_allclose(exact_loss(X, y, 8, b, w), loss, rtol=0, atol=1e-12)
