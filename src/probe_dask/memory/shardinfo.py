"""What the memory plan knows of a shard: shape, nnz, widest row and ``indptr``, read cheaply.

:func:`read_shard_info` reads a ``token_acts.npz``'s headers (:mod:`probe_dask.io.npz`) and
streams its ``indptr`` out of the zip (decompressed when the member is deflated); the
``indices`` and ``data`` members are not read beyond their headers, so planning takes
seconds even for a 27 GB file and writes no store. :func:`shard_info` takes a shard in any
form the planner accepts (a folder, an opened ``engine.shard.Shard``, a ``CSRSource``).
:meth:`ShardInfo.blocks` cuts the rows with the fit's own planner
(:func:`probe_dask.io.row_blocks.row_blocks`). :func:`simulated_shard_info` is a shard of given
sizes (rows of equal width), to plan a run before its data exists.

Memory per process: a :class:`ShardInfo` holds ``indptr`` (8 bytes a row: 45 MB for 5.6
million rows) until the plan lets go of it; reading streams ``indptr`` in chunks of
``chunk_items`` entries into that one array.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from probe_dask.errors import InputError
from probe_dask.io.row_blocks import row_blocks
from probe_dask.io.labels import open_labels
from probe_dask.io.layout import activations_path
from probe_dask.io.npz import member_chunks, open_npz

__all__ = ["ShardInfo", "read_shard_info", "shard_info", "simulated_shard_info"]


@dataclasses.dataclass
class ShardInfo:
    """What the plan knows of one shard (read from headers and ``indptr`` only)."""

    path: str
    n_rows: int
    n_cols: int
    nnz: int
    max_row_nnz: int
    compressed: bool
    indptr: np.ndarray = dataclasses.field(repr=False, default=None)

    @property
    def csr_bytes(self) -> int:
        """Bytes of the whole matrix as CSR (float32 data, int32 indices, int64 indptr)."""
        return 8 * self.nnz + 8 * (self.n_rows + 1)

    def blocks(self, block_nnz: int) -> list:
        """The row blocks ``engine.shard.open_shard`` makes (``CSRSource.row_blocks``)."""
        return row_blocks(lambda r0, r1: self.indptr[r0:r1 + 1], self.n_rows, self.nnz, int(block_nnz))

    def block_stats(self, block_nnz: int) -> tuple[int, int, int]:
        """(number of blocks, largest block's non-zeros, largest block's rows)."""
        b = np.asarray(self.blocks(block_nnz), dtype=np.int64)
        nnz = self.indptr[b[:, 1]] - self.indptr[b[:, 0]]
        return int(b.shape[0]), int(nnz.max()), int((b[:, 1] - b[:, 0]).max())


def read_shard_info(npz_path, chunk_items: int = 2**22) -> ShardInfo:
    """Shape, nnz and ``indptr`` of a ``token_acts.npz``, reading nothing else.

    Raises
    ------
    InputError
        When the file is missing, not a CSR npz, or its ``indptr`` does not end at nnz.
    """
    path = os.path.abspath(os.fspath(npz_path))
    zf, header = open_npz(path)
    with zf:
        member = header.arrays["indptr"]
        indptr = np.empty(header.shape[0] + 1, np.int64)
        s = 0
        for c in member_chunks(path, zf, member, chunk_items):
            indptr[s:s + c.size] = c
            s += c.size
    if indptr[-1] != header.nnz:
        raise InputError(path, "indptr.npy[-1]", int(indptr[-1]), f"nnz = {header.nnz}")
    n_rows, n_cols = header.shape
    return ShardInfo(path, n_rows, n_cols, int(header.nnz), _max_row(indptr), member.compressed, indptr)


def simulated_shard_info(nnz: int, n_cols: int, n_rows: int, name: str = "simulated") -> ShardInfo:
    """A shard that is only sizes: ``n_rows`` rows of equal width (within one non-zero)
    holding ``nnz`` non-zeros over ``n_cols`` latents, for planning a run before having
    its data (``probe-dask plan --simulate-nnz ...``). Its ``indptr`` is built (8 bytes a
    row), nothing is read.

    Raises
    ------
    ValueError
        When a size is not positive.
    """
    nnz, n_cols, n_rows = int(nnz), int(n_cols), int(n_rows)
    if min(nnz, n_cols, n_rows) < 1:
        raise ValueError(f"simulated shard: nnz {nnz}, latents {n_cols}, rows {n_rows}; expected >= 1")
    # indptr[i] = floor(i nnz / n_rows), without the product overflowing int64
    q, rem = divmod(nnz, n_rows)
    i = np.arange(n_rows + 1, dtype=np.int64)
    indptr = i * q + (i * rem) // n_rows
    return ShardInfo(f"{name} ({n_rows:,} rows of ~{nnz / n_rows:.1f} non-zeros)", n_rows, n_cols,
                     nnz, -(-nnz // n_rows), False, indptr)


def _max_row(indptr, step=2**20) -> int:
    """Non-zeros of the widest row, without a second row-length array."""
    return max((int(np.diff(indptr[s:s + step + 1]).max()) for s in range(0, indptr.size - 1, step)),
               default=0)


def _source_info(source) -> ShardInfo:
    """ShardInfo of an opened ``CSRSource`` (its ``indptr`` read once)."""
    indptr = source.read_indptr(0, source.n_rows)
    return ShardInfo(str(source.path), int(source.n_rows), int(source.n_cols), int(source.nnz),
                     _max_row(indptr),
                     getattr(source, "kind", "") == "store", indptr)


def shard_info(obj, run):
    """(ShardInfo, LabelsSource or None) from a Shard, a CSRSource, a ShardInfo or a shard folder.

    A folder needs ``run`` (the folder holding ``inference/<shard>/``); its labels are opened
    and must have one entry per row.
    """
    if obj is None:
        return None, None
    if isinstance(obj, ShardInfo):
        return obj, None
    if hasattr(obj, "source") and hasattr(obj, "labels"):  # engine.shard.Shard
        return _source_info(obj.source), obj.labels
    if hasattr(obj, "read_indptr"):
        return _source_info(obj), None
    if run is None:
        raise ValueError("a shard folder needs run= (the folder holding inference/<shard>/)")
    labels = open_labels(obj)
    info = read_shard_info(activations_path(run, Path(obj).name))
    if info.n_rows != labels.n_rows:
        raise InputError(info.path, "shape.npy (rows)", info.n_rows, f"{labels.n_rows} rows as in {labels.path}")
    return info, labels
