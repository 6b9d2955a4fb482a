"""Tests of synthetic.py: demo runs in the users' layout."""

import json
import os
import re
import time
import zipfile

import numpy as np
import pytest
import scipy.sparse as sp

from probe_dask.io.labels import open_labels, read_metadata
from probe_dask.io.store import open_csr
from probe_dask.testing.synthetic import NNZ_MAX, NNZ_MIN, make_run

SMALL = dict(n_train_examples=24, n_test_examples=8, tokens_per_example=64, d_sae=1024, n_classes=151)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run"), seed=3, **SMALL)


@pytest.fixture(scope="module")
def train(run):
    labels = np.fromfile(os.path.join(run.train_shard, "labels.bin"), np.uint8)
    return sp.load_npz(run.train_acts), labels


def test_layout(run):
    assert re.fullmatch("[0-9a-f]{8}", run.train_id) and re.fullmatch("[0-9a-f]{8}", run.test_id)
    assert run.train_id != run.test_id
    assert run.shards_dir == os.path.join(run.root, "shards")
    assert run.run_dir == os.path.join(run.root, "run")
    splits = [(run.train_id, run.train_shard, 24), (run.test_id, run.test_shard, 8)]
    for sid, shard, n_examples in splits:
        assert shard == os.path.join(run.shards_dir, sid)
        meta = json.load(open(os.path.join(shard, "metadata.json")))
        for key in ("family", "ckpt", "layers", "cls_token", "d_model", "max_tokens_per_shard", "data",
                    "dataset", "pixel_agg", "dtype", "protocol"):
            assert key in meta
        assert meta["n_examples"] == n_examples and meta["content_tokens_per_example"] == 64
        assert read_metadata(shard).n_rows == n_examples * 64
        assert open_labels(shard).n_rows == n_examples * 64
        acts = os.path.join(run.run_dir, "inference", sid, "token_acts.npz")
        assert acts == run.acts_path(sid)
        m = sp.load_npz(acts)
        assert m.shape == (n_examples * 64, 1024) and m.dtype == np.float32
        with zipfile.ZipFile(acts) as zf:
            assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_DEFLATED}
            assert {i.filename for i in zf.infolist()} == {"indices.npy", "indptr.npy", "format.npy",
                                                           "shape.npy", "data.npy"}
    leftovers = [n for n in os.listdir(os.path.dirname(run.train_acts)) if n.endswith((".tmp", ".part"))]
    assert not leftovers


def test_store_reads_it(run, train):
    m, _ = train
    src = open_csr(run.train_acts)
    assert src.shape == m.shape and src.nnz == m.nnz
    block = src.read_rows(100, 700)
    assert (block != m[100:700]).nnz == 0


def test_rows_values_and_latents(run, train):
    m, labels = train
    nnz = np.diff(m.indptr)
    assert (nnz == 0).any()  # ignored patches
    assert labels[nnz == 0].max() == 0
    assert NNZ_MIN <= nnz[nnz > 0].min() and nnz.max() <= NNZ_MAX
    assert 60 < nnz[nnz > 0].mean() < 130
    assert m.has_canonical_format
    assert (m.data > 0).all() and np.isfinite(m.data).all()
    assert m.data.max() > 20 * np.median(m.data)  # heavy tail
    freq = np.bincount(m.indices, minlength=m.shape[1])
    dead = np.array(run.dead)
    assert dead.size > 0 and freq[dead].sum() == 0
    alive = np.sort(freq[freq > 0])[::-1]
    assert alive[0] > 10 * np.median(alive)  # power law: a few latents fire on most rows
    assert alive[0] > 0.5 * m.shape[0] and np.median(alive) < 0.1 * m.shape[0]


def test_classes_imbalanced(run, train):
    _, labels = train
    counts = np.bincount(labels, minlength=151)
    assert counts.argmax() == 0
    assert labels.max() == 150  # every class in train, so n_classes = max + 1
    assert counts[1] > 10 * np.median(counts)
    test_labels = open_labels(run.test_shard).read(0, 8 * 64)
    assert test_labels.max() < 151


def test_planted_latents_predict_their_class(run, train):
    m, labels = train
    csc = m.tocsc()
    assert len(run.planted) >= 4
    for latent, cls in run.planted:
        assert cls != 0 and latent not in run.dead
        rows = csc.indices[csc.indptr[latent]:csc.indptr[latent + 1]]
        assert rows.size >= 5
        assert (labels[rows] == cls).mean() > 0.7
        assert (labels[rows] == cls).mean() > 5 * (labels == cls).mean()


def test_deterministic_under_seed(run, train, tmp_path):
    again = make_run(tmp_path / "a", seed=3, **SMALL)
    other = make_run(tmp_path / "b", seed=4, **SMALL)
    m, labels = train
    m2 = sp.load_npz(again.train_acts)
    assert again.train_id == run.train_id and again.planted == run.planted
    for a in ("indptr", "indices", "data"):
        np.testing.assert_array_equal(getattr(m, a), getattr(m2, a))
    np.testing.assert_array_equal(labels, open_labels(again.train_shard).read(0, labels.size))
    assert other.train_id != run.train_id
    assert not np.array_equal(sp.load_npz(other.train_acts).indptr, m.indptr)


def test_uncompressed_same_arrays(train, tmp_path):
    raw = make_run(tmp_path, seed=3, compressed=False, **SMALL)
    with zipfile.ZipFile(raw.train_acts) as zf:
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}
    m, _ = train
    m2 = sp.load_npz(raw.train_acts)
    assert (m != m2).nnz == 0
    src = open_csr(raw.train_acts)
    assert src.kind == "inplace" and (src.read_rows(0, m.shape[0]) != m).nnz == 0


def test_rejects_bad_arguments(tmp_path):
    for bad in (dict(d_sae=64), dict(n_classes=300), dict(n_classes=1), dict(mean_nnz_per_row=500)):
        with pytest.raises(ValueError):
            make_run(tmp_path, n_train_examples=1, n_test_examples=1, **bad)


@pytest.mark.slow
def test_five_million_nonzeros_in_a_few_seconds(tmp_path):
    t = time.perf_counter()
    r = make_run(tmp_path, n_train_examples=200, n_test_examples=8, seed=1)
    seconds = time.perf_counter() - t
    src = open_csr(r.train_acts)
    print(f"\n{src.nnz / 1e6:.1f} M non-zeros written in {seconds:.1f} s")
    assert src.nnz > 4.5e6
    assert seconds < 20  # a few seconds on a free core; slack for a shared machine
