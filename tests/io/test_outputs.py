"""Atomic writes and the probe1d_metrics.npz format."""

import os

import numpy as np
import pytest

from probe_dask.errors import ProbeDaskError
from probe_dask.io.outputs import METRIC_KEYS, atomic_path, check_writable, write_metrics_npz


def test_metrics_npz_keys_shapes_dtypes(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {k: rng.random((5, 3)) for k in METRIC_KEYS}
    path = write_metrics_npz(tmp_path / "probe1d_metrics.npz", **arrays)
    with np.load(path) as f:
        assert sorted(f.files) == sorted(METRIC_KEYS)
        for k in METRIC_KEYS:
            assert f[k].dtype == np.float32 and f[k].shape == (5, 3)
            np.testing.assert_allclose(f[k], arrays[k], rtol=1e-7)
    assert [p.name for p in tmp_path.iterdir()] == ["probe1d_metrics.npz"]


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.npz"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.npz"]


def test_mismatched_shapes_refused(tmp_path):
    arrays = {k: np.zeros((5, 3)) for k in METRIC_KEYS}
    arrays["tp"] = np.zeros((5, 4))
    with pytest.raises(ValueError, match="tp"):
        write_metrics_npz(tmp_path / "m.npz", **arrays)
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_read_only_folder_unprivileged(tmp_path):
    tmp_path.chmod(0o500)
    with pytest.raises(ProbeDaskError, match="not writable"):
        check_writable(tmp_path)


def test_unwritable_folder_reported(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where a folder should be: not writable even for root
    with pytest.raises(ProbeDaskError, match="not writable"):
        check_writable(blocker / "sub")
