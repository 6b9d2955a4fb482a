"""Results, checkpoints and stores are never group- or world-writable, whatever the umask.

Under a umask of 000 (the worst a user can set), every file probe-dask writes through
``atomic_path`` (results, the per-class JSON, and the checkpoint, which uses the same
function) and every folder and file of an ingested store must lack the group and world
write bits; while a file is being written under its temporary name it is private (0600),
and a store folder is private (0700) until it is renamed into place.
"""

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from probe_dask.io import ingest as ingest_mod
from probe_dask.io.outputs import atomic_path, write_json, write_metrics_npz
from probe_dask.io.store import open_csr
from probe_dask.testing.synthetic import make_run


@pytest.fixture
def open_umask():
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_results_and_temporaries_under_umask_000(tmp_path, open_umask):
    seen = {}
    with atomic_path(tmp_path / "probe1d_metrics.npz") as tmp:
        seen["tmp"] = mode(tmp)
        tmp.write_bytes(b"x")
    a = np.zeros((3, 2), np.float32)
    npz = write_metrics_npz(tmp_path / "m.npz", loss=a, weights=a, biases=a, tp=a, fp=a, tn=a,
                            fn=a)
    js = write_json(tmp_path / "c.json", {"x": 1})
    assert seen["tmp"] == 0o600
    for path in (tmp_path / "probe1d_metrics.npz", npz, js):
        assert mode(path) & 0o022 == 0, (path, oct(mode(path)))
        assert mode(path) & 0o444 == 0o444  # umask 000: readable by all, as asked


def test_store_under_umask_000(tmp_path, open_umask, monkeypatch):
    run = make_run(tmp_path / "data", n_train_examples=4, n_test_examples=2,
                   tokens_per_example=32, d_sae=128, n_classes=4, mean_nnz_per_row=32, seed=1,
                   compressed=True, n_planted=2)
    npz = Path(run.run_dir) / "inference" / Path(run.train_shard).name / "token_acts.npz"
    if not npz.exists():
        npz = next(Path(run.run_dir).rglob("token_acts.npz"))
    during = {}
    commit = ingest_mod._commit

    def spy(tmp, sdir):  # what the folder looked like while it was still temporary
        during["tmp"] = mode(tmp)
        return commit(tmp, sdir)

    def spy_validate(header, zf, out, chunk):
        if out is not None:
            during["building"] = mode(out)
        return validate(header, zf, out, chunk)

    validate = ingest_mod.validate
    monkeypatch.setattr(ingest_mod, "_commit", spy)
    monkeypatch.setattr(ingest_mod, "validate", spy_validate)
    cache = tmp_path / "cache"
    src = open_csr(npz, cache_dir=cache)
    assert src.shape[0] > 0
    assert during["building"] == 0o700, oct(during["building"])
    paths = [cache, *cache.rglob("*")]
    assert len(paths) >= 5
    bad = [(str(p), oct(mode(p))) for p in paths if mode(p) & 0o022]
    assert not bad, bad
