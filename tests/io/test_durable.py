"""Durable writes (io/durable.py): each file synced before its rename, its folder after.

``os.fsync`` is wrapped (it still syncs) to record, for every call, which file or folder the
real descriptor names (its inode) and whether the target held that inode yet: a file synced
after its rename, or a folder synced before it, would be a crash window these tests catch.
"""

import errno
import json
import os
import stat

import numpy as np
import pytest
import scipy.sparse as sp

from probe_dask.errors import MachineError
from probe_dask.io.durable import durable_file, fsync_dir, replace_durably
from probe_dask.io.outputs import write_json, write_metrics_npz
from probe_dask.io.resultset import ResultSet
from probe_dask.io.store import open_csr, store_dir


class Syncs:
    """Every ``os.fsync`` of the test: ``(inode, is folder, size, names of watched targets
    that already existed)``, in call order."""

    def __init__(self, monkeypatch, watch=()):
        self.calls = []
        self.watch = list(watch)
        real = os.fsync

        def fsync(fd):
            st = os.fstat(fd)
            present = {str(p) for p in self.watch if os.path.lexists(p)}
            self.calls.append((st.st_ino, stat.S_ISDIR(st.st_mode), st.st_size, present))
            return real(fd)

        monkeypatch.setattr(os, "fsync", fsync)

    def index(self, path, *, before=None):
        """Position of the first sync of ``path``'s inode (``before``: also require that
        this target did not exist yet); raises if there is none."""
        ino = os.stat(path).st_ino
        for i, (n, _, _, present) in enumerate(self.calls):
            if n == ino and (before is None or str(before) not in present):
                return i
        raise AssertionError(f"{path} never synced{' before ' + str(before) if before else ''}:"
                             f" {self.calls}")

    def last_index(self, path):
        ino = os.stat(path).st_ino
        hits = [i for i, (n, _, _, _) in enumerate(self.calls) if n == ino]
        assert hits, f"{path} never synced: {self.calls}"
        return hits[-1]


def only(folder):
    return sorted(p.name for p in folder.iterdir())


def test_durable_file_syncs_the_file_then_renames_then_syncs_the_folder(tmp_path, monkeypatch):
    target = tmp_path / "out" / "result.json"
    syncs = Syncs(monkeypatch, [target])
    with durable_file(target, 0o640) as tmp:
        tmp.write_text("x" * 1000)
    # the file's own inode synced with all its bytes, while the target did not exist yet
    i_file = syncs.index(target, before=target)
    assert syncs.calls[i_file][2] == 1000 and not syncs.calls[i_file][1]
    # then the folder, once the rename had happened
    i_dir = syncs.last_index(target.parent)
    assert syncs.calls[i_dir][1] and str(target) in syncs.calls[i_dir][3]
    assert i_file < i_dir
    assert target.read_text() == "x" * 1000
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert only(target.parent) == ["result.json"]


def test_durable_file_replacing_an_old_file(tmp_path, monkeypatch):
    target = tmp_path / "result.json"
    target.write_text("old")
    old_ino = target.stat().st_ino
    syncs = Syncs(monkeypatch)
    with durable_file(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and target.stat().st_ino != old_ino
    assert syncs.index(target) < syncs.last_index(tmp_path)


def test_durable_file_leaves_no_temporary_when_the_writer_fails(tmp_path, monkeypatch):
    target = tmp_path / "result.json"
    target.write_text("old")
    syncs = Syncs(monkeypatch)
    with pytest.raises(RuntimeError, match="killed"):
        with durable_file(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert only(tmp_path) == ["result.json"]
    assert syncs.calls == []  # nothing published, so nothing synced


def test_durable_file_leaves_no_temporary_when_the_sync_fails(tmp_path, monkeypatch):
    target = tmp_path / "result.json"
    target.write_text("old")

    def fsync(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError, match="Input/output"):
        with durable_file(target) as tmp:
            tmp.write_text("new")
    # the unsynced file was never renamed: the old result stands, no temporary is left
    assert target.read_text() == "old"
    assert only(tmp_path) == ["result.json"]


def test_fsync_dir_tolerates_folders_that_cannot_be_synced(tmp_path, monkeypatch):
    def fsync(fd):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "fsync", fsync)
    fsync_dir(tmp_path)  # a mount that cannot sync folders: the write goes on

    def fsync_eio(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", fsync_eio)
    with pytest.raises(OSError, match="Input/output"):
        fsync_dir(tmp_path)  # a real disk error is not swallowed


def test_replace_durably_a_folder(tmp_path, monkeypatch):
    tmp = tmp_path / ".store.tmp"
    tmp.mkdir()
    (tmp / "a").write_text("a")
    target = tmp_path / "store"
    syncs = Syncs(monkeypatch, [target])
    replace_durably(tmp, target)
    assert (target / "a").read_text() == "a"
    assert syncs.index(target, before=target) < syncs.last_index(tmp_path)


def test_results_are_written_durably(tmp_path, monkeypatch):
    """write_metrics_npz and write_json (atomic_path, also the checkpoint's writer)."""
    npz, js = tmp_path / "probe1d_metrics.npz", tmp_path / "probe1d_classes.json"
    syncs = Syncs(monkeypatch, [npz, js])
    arrays = {k: np.full((4, 3), 0.5) for k in ("loss", "weights", "biases", "tp", "fp", "tn", "fn")}
    write_metrics_npz(npz, **arrays)
    write_json(js, {"a": 1})
    for target in (npz, js):
        i = syncs.index(target, before=target)
        assert syncs.calls[i][2] == target.stat().st_size  # synced whole
        assert i < syncs.last_index(tmp_path)
    assert json.loads(js.read_text()) == {"a": 1}
    assert only(tmp_path) == ["probe1d_classes.json", "probe1d_metrics.npz"]


def test_result_set_syncs_every_file_and_both_folders(tmp_path, monkeypatch):
    a, b = tmp_path / "train" / "m.json", tmp_path / "test" / "m.json"
    a.parent.mkdir()
    b.parent.mkdir()
    a.write_text("old")
    syncs = Syncs(monkeypatch, [b])
    with ResultSet() as rs:
        rs.stage(a, lambda tmp: tmp.write_text("new a"))
        rs.stage(b, lambda tmp: tmp.write_text("new b"))
        rs.commit()
    assert a.read_text() == "new a" and b.read_text() == "new b"
    for target in (a, b):
        assert syncs.index(target) < syncs.last_index(target.parent)
    assert syncs.index(b, before=b) >= 0
    assert only(a.parent) == ["m.json"] and only(b.parent) == ["m.json"]


def test_result_set_sync_failure_is_a_machine_error_and_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "m.json"
    target.write_text("old")

    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(MachineError, match="m.json"):
        with ResultSet() as rs:
            rs.stage(target, lambda tmp: tmp.write_text("new"))
    assert target.read_text() == "old"
    assert only(tmp_path) == ["m.json"]


def test_store_files_and_manifest_are_synced_before_the_store_is_renamed(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    m = sp.random(50, 40, density=0.1, format="csr", dtype=np.float32, random_state=rng)
    path = tmp_path / "token_acts.npz"
    sp.save_npz(path, m, compressed=True)  # compressed: ingested into a store
    sdir = store_dir(path)
    syncs = Syncs(monkeypatch, [sdir])
    src = open_csr(path)
    assert src.kind == "store"
    names = sorted(os.listdir(sdir))
    assert names == ["data.f32", "indices.i32", "indptr.i64", "store.json"]
    for name in names:
        i = syncs.index(os.path.join(sdir, name), before=sdir)
        assert syncs.calls[i][2] == os.path.getsize(os.path.join(sdir, name))
    i_store = syncs.index(sdir, before=sdir)  # the folder's own entries, before its rename
    i_parent = syncs.last_index(tmp_path)
    assert i_store < i_parent and sdir in syncs.calls[i_parent][3]
    np.testing.assert_array_equal(src.read_rows(0, 50).toarray(), m.toarray())
