"""Checks of one CSR row block as it is read: offsets, column indices and values.

A store (or an uncompressed npz) was validated once, when it was ingested; what is read
back later can still be wrong (the store edited or damaged since, a disk error). Each block
is checked as it is read, before anything is built from it: scipy's CSR -> CSC conversion
and the C kernel index memory with these numbers, so an index past ``n_cols`` would write
or read out of bounds (a segfault), and a NaN would silently make NaN probes. A bad block
is an :class:`~probe_dask.errors.InputError` naming the file and the row.

The checks are three O(nnz) reductions over the block's fresh buffers (about 2 ms for 4 M
non-zeros on one core, a few percent of reading and grouping the block; see
``tests/io/test_store.py``).

Memory per process: a boolean mask of the block's values only when a bad value must be
located (the good path allocates nothing of block size).
"""

from __future__ import annotations

import numpy as np

from probe_dask.errors import InputError

__all__ = ["check_block"]


def _row(ptr: np.ndarray, r0: int, pos: int) -> int:
    """Row (absolute) holding value position ``pos`` of a block whose offsets are ``ptr``."""
    return r0 + int(np.searchsorted(ptr, pos, side="right")) - 1


def check_block(src, r0: int, r1: int, ptr: np.ndarray, indices: np.ndarray,
                data: np.ndarray, redo: str) -> None:
    """Raise InputError when a block's arrays cannot be those of a valid CSR block.

    Parameters
    ----------
    src : probe_dask.io.store.CSRSource
        Where the block was read (its files name the error; its shape bounds the indices).
    r0, r1 : int
        The block's rows.
    ptr : ndarray of int64, shape (r1 - r0 + 1,)
        ``indptr[r0:r1 + 1]`` as stored (not rebased).
    indices, data : ndarray
        The block's column indices and values (``ptr[-1] - ptr[0]`` of each).
    redo : str
        What the user does about it (remove the store to ingest again), ending the line.
    """
    where = {a: (getattr(src, a).file, f"{a}.npy, " if src.kind == "inplace" else "")
             for a in ("indptr", "indices", "data")}
    file, prefix = where["indptr"]
    a, b = int(ptr[0]), int(ptr[-1])
    if a < 0 or b > src.nnz or a > b or (ptr.size > 2 and bool((ptr[1:] < ptr[:-1]).any())):
        bad = int(np.argmax(ptr[1:] < ptr[:-1])) if a <= b else 0
        raise InputError(file, f"{prefix}rows {r0}:{r1}",
                         f"offsets {int(ptr[bad])} then {int(ptr[bad + 1])} at row {r0 + bad}",
                         f"non-decreasing offsets within [0, nnz = {src.nnz}] ({redo})")
    if indices.size:
        # One pass: a negative int32 seen as uint32 is >= 2**31 > n_cols.
        wide = indices.view(np.uint32) if indices.dtype == np.int32 else indices
        if int(wide.max()) >= src.n_cols or (wide is indices and int(indices.min()) < 0):
            j = int(np.argmax((indices < 0) | (indices >= src.n_cols)))
            file, prefix = where["indices"]
            raise InputError(file, f"{prefix}row {_row(ptr - a, r0, j)}",
                             f"column index {int(indices[j])}",
                             f"0 <= index < n_cols = {src.n_cols} ({redo})")
    # A float32 sum is finite when every value is (NaN and inf propagate); a sum that
    # overflows from finite values only sends us to the exact check.
    with np.errstate(over="ignore", invalid="ignore"):
        total = data.sum(dtype=np.float32) if data.size else 0.0
    if not np.isfinite(total):
        finite = np.isfinite(data)
        n_bad = data.size - int(np.count_nonzero(finite))
        if n_bad:
            j = int(np.argmin(finite))
            file, prefix = where["data"]
            raise InputError(file, f"{prefix}row {_row(ptr - a, r0, j)}",
                             f"{data[j]} ({n_bad} non-finite values in rows {r0}:{r1})",
                             f"finite values ({redo})")
