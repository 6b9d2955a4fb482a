"""A result set commits as one: a failure at any file (a write, a rename, a full disk)
leaves the whole previous set in place and no temporary behind."""

import errno
import os
import subprocess

import numpy as np
import pytest

from probe_dask.errors import MachineError, ProbeDaskError
from probe_dask.io import resultset
from probe_dask.io.outputs import write_json, write_metrics_npz
from probe_dask.io.resultset import ResultSet, check_targets

NAMES = ("probe1d_metrics.npz", "probe1d_classes.json")


def _targets(root):
    return [root / split / name for split in ("train", "test") for name in NAMES]


def _write(target, tag, size=4):
    def write(tmp):
        if target.suffix == ".npz":
            a = np.full((size, 3), tag, np.float32)
            write_metrics_npz(tmp, loss=a, weights=a, biases=a, tp=a, fp=a, tn=a, fn=a)
        else:
            write_json(tmp, {"ridge": tag})
    return write


def _commit(root, tag, size=4):
    with ResultSet() as rs:
        for t in _targets(root):
            rs.stage(t, _write(t, tag, size))
        return rs.commit()


def _snapshot(root):
    """Every file under root (hidden ones too): name -> bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_commit_writes_the_whole_set(tmp_path):
    assert _commit(tmp_path, 1.0) == _targets(tmp_path)
    old = _snapshot(tmp_path)
    assert sorted(old) == sorted(str(t.relative_to(tmp_path)) for t in _targets(tmp_path))
    _commit(tmp_path, 2.0)  # over an older set: no backup left once committed
    new = _snapshot(tmp_path)
    assert sorted(new) == sorted(old) and all(new[k] != old[k] for k in old)


@pytest.mark.parametrize("k", range(4))
def test_rename_failure_at_each_file_restores_the_old_set(tmp_path, monkeypatch, k):
    _commit(tmp_path, 1.0)
    old = _snapshot(tmp_path)
    calls = []

    def failing_replace(src, dst):
        calls.append(dst)
        if len(calls) == k + 1:
            raise OSError(errno.EIO, "Input/output error")
        os.replace(src, dst)

    monkeypatch.setattr(resultset, "_replace", failing_replace)
    with pytest.raises(MachineError) as info:
        _commit(tmp_path, 2.0)
    assert str(info.value).startswith(f"{_targets(tmp_path)[k]}: input/output error")
    assert "previous results are back in place" in str(info.value)
    assert _snapshot(tmp_path) == old  # whole old set, no temporary, no backup


@pytest.mark.parametrize("k", range(4))
def test_signal_during_commit_restores_the_old_set(tmp_path, monkeypatch, k):
    _commit(tmp_path, 1.0)
    old = _snapshot(tmp_path)
    calls = []

    def interrupted_replace(src, dst):
        calls.append(dst)
        if len(calls) == k + 1:
            raise KeyboardInterrupt  # what app/signals.py raises on SIGTERM / SIGINT
        os.replace(src, dst)

    monkeypatch.setattr(resultset, "_replace", interrupted_replace)
    with pytest.raises(KeyboardInterrupt):
        _commit(tmp_path, 2.0)
    assert _snapshot(tmp_path) == old


@pytest.mark.parametrize("k", range(4))
def test_disk_full_at_each_write_keeps_the_old_set(tmp_path, k):
    _commit(tmp_path, 1.0)
    old = _snapshot(tmp_path)
    targets = _targets(tmp_path)

    def full(tmp):
        with open(tmp, "wb") as f:
            f.write(b"x" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(MachineError) as info, ResultSet() as rs:
        for i, t in enumerate(targets):
            rs.stage(t, full if i == k else _write(t, 2.0))
        rs.commit()
    assert str(info.value) == f"{targets[k]}: no space left on device (while writing the results)"
    assert _snapshot(tmp_path) == old


def test_first_set_failing_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def failing_replace(src, dst):
        calls.append(dst)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        os.replace(src, dst)

    monkeypatch.setattr(resultset, "_replace", failing_replace)
    with pytest.raises(MachineError, match="no space left on device"):
        _commit(tmp_path, 2.0)
    assert _snapshot(tmp_path) == {}


def _tmpfs(path, size):
    path.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       check=False, capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")


def test_real_full_disk_keeps_the_old_set(tmp_path):
    root = tmp_path / "small"
    _tmpfs(root, "256k")
    try:
        _commit(root, 1.0)  # a few kB
        old = _snapshot(root)
        with pytest.raises(MachineError) as info:
            _commit(root, 2.0, size=20_000)  # 7 x 20000 x 3 float32 = 1.7 MB a file
        line = str(info.value)
        assert line.startswith(f"{root / 'train' / NAMES[0]}: no space left on device")
        assert "\n" not in line
        assert _snapshot(root) == old
    finally:
        subprocess.run(["umount", str(root)], check=False)


def test_check_targets_refuses_a_folder_in_the_way(tmp_path):
    targets = _targets(tmp_path)
    check_targets(targets)  # nothing there: fine (and the folders now exist)
    for t in targets:
        t.mkdir()
        with pytest.raises(ProbeDaskError) as info:
            check_targets(targets)
        assert str(info.value) == (f"{t}: found a folder; expected a regular file or nothing "
                                   "(a result is written there): move it away")
        t.rmdir()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["test", "train"]


def test_check_targets_refuses_an_unwritable_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where the folder should be: unwritable even for root
    with pytest.raises(ProbeDaskError, match="output folder is not writable"):
        check_targets([blocker / "sub" / NAMES[0]])
