"""Hole punching (io.holes) on this machine's real file systems: the punched bytes read as
zeros, the blocks inside them go back to the file system, the rest is untouched."""

import os
import sys

import numpy as np
import pytest

from probe_dask.io.holes import can_punch_holes, punch_hole

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="fallocate(2) hole punching is Linux's")


def _allocated(path) -> int:
    return os.stat(path).st_blocks * 512


def _punch_and_check(path):
    data = np.random.default_rng(0).integers(1, 256, 1 << 22, dtype=np.uint8)
    with open(path, "wb") as f:
        f.write(data.tobytes())
        f.flush()
        os.fsync(f.fileno())
    before = _allocated(path)
    first, n = 100_001, 2_000_003  # not block aligned: the partial blocks stay
    fd = os.open(path, os.O_WRONLY)
    try:
        assert punch_hole(fd, first, n)
        os.fsync(fd)
    finally:
        os.close(fd)
    back = np.fromfile(path, dtype=np.uint8)
    assert back.size == data.size  # the size is kept
    assert not back[first:first + n].any()
    np.testing.assert_array_equal(back[:first], data[:first])
    np.testing.assert_array_equal(back[first + n:], data[first + n:])
    # every whole 4 KiB block inside the span is given back (a larger block size frees less)
    assert before - _allocated(path) >= n - 2 * 65536
    return before


@linux_only
def test_a_punched_span_reads_zeros_and_gives_its_blocks_back(tmp_path):
    assert can_punch_holes(tmp_path)
    _punch_and_check(tmp_path / "events.f32")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.f32"]  # no probe left


@linux_only
def test_a_tmpfs_punches_too(small_disk):
    disk = small_disk(8 << 20)
    assert can_punch_holes(disk)
    _punch_and_check(disk / "events.f32")


def test_an_empty_span_changes_nothing(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"\1" * 10)
    fd = os.open(path, os.O_WRONLY)
    try:
        assert punch_hole(fd, 3, 0)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"\1" * 10
