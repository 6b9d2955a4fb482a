"""A 1-D array stored raw in a file at a byte offset, read a slice at a time.

The arrays of an uncompressed npz lie raw inside the zip, and the ingested store's
``indptr.i64``, ``indices.i32`` and ``data.f32`` are raw files: :class:`ArrayRef` names
either, and reads a slice of it into a fresh buffer.

Memory per process: an :class:`ArrayRef` holds a path and three numbers; a read holds
exactly the slice asked for (``np.fromfile``, never ``np.memmap``: mapped pages count in a
worker's RSS, which the nanny and Slurm's cgroup watch).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from probe_dask.errors import InputError

__all__ = ["ArrayRef"]


@dataclasses.dataclass(frozen=True)
class ArrayRef:
    """A 1-D array stored raw in a file at a byte offset (a zip member or a store file)."""

    file: str
    offset: int
    dtype: str
    count: int

    def read(self, start: int, count: int) -> np.ndarray:
        """Read ``count`` items from item ``start`` into a fresh buffer."""
        dt = np.dtype(self.dtype)
        if count <= 0:
            return np.empty(0, dt)
        out = np.fromfile(self.file, dtype=dt, count=count, offset=self.offset + start * dt.itemsize)
        if out.size != count:
            raise InputError(self.file, "size", f"{out.size} items at item {start}",
                             f"{count} (file truncated since it was opened?)")
        return out
