"""Atomic writes and the probe1d_metrics.npz format."""

import json
import os
import stat

import numpy as np
import pytest

from probe_dask.errors import ProbeDaskError
from probe_dask.io.outputs import (METRIC_KEYS, atomic_path, check_writable, publish_mode, write_json,
                                  write_metrics_npz)


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


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o644), (0o077, 0o600),
                                         (0o027, 0o640)])
def test_result_files_honour_the_umask_never_group_writable(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        arrays = {k: np.zeros((2, 3)) for k in METRIC_KEYS}
        npz = write_metrics_npz(tmp_path / "probe1d_metrics.npz", **arrays)
        js = write_json(tmp_path / "probe1d_classes.json", {"a": 1})
    finally:
        os.umask(old)
    for path in (npz, js):
        assert stat.S_IMODE(path.stat().st_mode) == mode, oct(path.stat().st_mode)
    assert publish_mode(umask) == mode


def test_converged_is_stored_as_bool_beside_the_seven_keys(tmp_path):
    arrays = {k: np.ones((4, 3)) for k in METRIC_KEYS}
    conv = np.arange(12).reshape(4, 3) % 2 == 0
    path = write_metrics_npz(tmp_path / "m.npz", **arrays, converged=conv)
    with np.load(path) as f:
        assert sorted(f.files) == sorted([*METRIC_KEYS, "converged"])
        assert f["converged"].dtype == np.bool_
        np.testing.assert_array_equal(f["converged"], conv)
        assert all(f[k].dtype == np.float32 for k in METRIC_KEYS)


def _refuse(constant):
    raise ValueError(f"non-standard JSON constant {constant}")


def test_json_is_strict_nan_becomes_null(tmp_path):
    obj = {"r": float("nan"), "inf": np.float64(np.inf), "arr": np.array([1.5, np.nan]),
           "n": np.int64(3)}
    path = write_json(tmp_path / "c.json", obj)
    data = json.loads(path.read_text(), parse_constant=_refuse)
    assert data == {"r": None, "inf": None, "arr": [1.5, None], "n": 3}
