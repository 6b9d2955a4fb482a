"""Building a shard's latent-major layout on disk with Dask (the files: ``io.latent_major``).

A fit whose train ranges do not fit in worker memory reads them from a latent-major layout
every pass (``engine.range_data``). :func:`latent_major_layout` reuses the layout while its
manifest names the same input, else builds it in two waves of independent tasks:

1. one task per row block: the block read and grouped by latent (``LatentBlock``), written
   as its own part; it returns the block's non-zeros per latent, summed on the driver as
   the tasks finish;
2. one task per segment of latents (about ``segment_nnz`` events, at least
   one per worker thread): every part's span of those latents interleaved in row order and
   written at its place in the layout's event files, and the parts' spans of those
   latents given back to the file system (so the build's disk stays about one layout).

``n_blocks + n_segments`` tasks in all (:func:`layout_tasks`), each a few kilobytes of
scheduler state. The layout must be on a file system every worker sees (the store of a
shard is). A build that fails or is interrupted leaves only a temporary folder, removed
here by the next build once its writer is gone (``io.tempfiles``).

Memory per process: a part task holds one CSR row block, its ``LatentBlock`` and the
block's per-latent counts (``8 L``); a segment task what ``io.latent_major.merge_segment``
says (``16 nnz_s`` plus offsets); the driver the summed counts (``8 L``) and the layout's
offsets (``8 (L + 1)``). Disk: checked against the folder's free space before the first
part is written, when the caller knows the shard's non-zeros.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import dask
import numpy as np
from distributed import as_completed

from probe_dask.io.latent_major import (SEGMENT_NNZ, LatentMajorLayout, begin_layout,
                                        check_build_disk, commit_layout, merge_segment, open_layout,
                                        segment_bounds, size_events, write_part)
from probe_dask.errors import MachineError
from probe_dask.io.tempfiles import remove_stale

__all__ = ["latent_major_layout", "layout_tasks"]


def layout_tasks(n_blocks: int, nnz: int, threads: int, segment_nnz: int = SEGMENT_NNZ) -> int:
    """Tasks of a layout's build: a part per row block and a merge per segment."""
    return int(n_blocks) + max(-(-int(nnz) // int(segment_nnz)), int(threads), 1)


def _write_block(block, building, index, row_offset):
    return write_part(building, index, block.latent_ptr, block.rows, block.values,
                      block.labels, row_offset)


def latent_major_layout(client, blocks, row_chunks, shape, path, identity, *, threads=1,
                        segment_nnz=SEGMENT_NNZ, nnz=None,
                        resources=None) -> tuple[LatentMajorLayout, float | None]:
    """The latent-major layout of a shard at ``path``, built unless one of ``identity``
    is there already.

    Parameters
    ----------
    client : distributed.Client
    blocks : list of Delayed
        The shard's ``LatentBlock`` s (``passes.latent_blocks``).
    row_chunks : tuple of int
        Rows of each block.
    shape : (int, int)
        ``(n_rows, n_latents)``.
    path : path
        The layout's folder.
    identity : dict
        JSON-able identity of the input (stored in its manifest, compared when reused).
    threads : int
        Worker threads: at least that many segment tasks.
    segment_nnz : int
        Events a merge task writes, about (a task holds ``16 segment_nnz`` bytes).
    nnz : int, optional
        The shard's non-zeros: when given, a folder without the disk the build needs is
        refused before anything is written (``io.latent_major.check_build_disk``).
    resources : dict, optional
        Worker resources each task requests.

    Returns
    -------
    (LatentMajorLayout, float or None)
        The layout, and the seconds its build took (None when reused).
    """
    path = Path(path)
    layout = open_layout(path, identity, shape)
    if layout is not None:
        return layout, None
    start = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path.parent, [path.name])  # builds of runs that died
    building = begin_layout(path, shape[0])
    try:
        if nnz is not None:
            check_build_disk(building, nnz, shape[0], shape[1], len(blocks), threads,
                             segment_nnz)
        offsets = np.concatenate(([0], np.cumsum(row_chunks)[:-1])).tolist()
        parts = [dask.delayed(_write_block)(b, building, i, int(o))
                 for i, (b, o) in enumerate(zip(blocks, offsets))]
        counts = np.zeros(int(shape[1]), dtype=np.int64)
        for future in as_completed(client.compute(parts, resources=resources)):
            counts += future.result()
            future.release()
        ptr = np.zeros(int(shape[1]) + 1, dtype=np.int64)
        np.cumsum(counts, out=ptr[1:])
        size_events(building, int(ptr[-1]))
        merges = [client.submit(merge_segment, building, len(blocks), a, z, ptr[a:z + 1],
                                resources=resources, pure=False)
                  for a, z in segment_bounds(counts, int(segment_nnz), threads)]
        client.gather(merges)
        del merges
        layout = commit_layout(building, path, identity, shape, ptr)
    except OSError as err:  # disk full, quota, permissions: one line naming the folder
        shutil.rmtree(building, ignore_errors=True)
        raise MachineError(path, err, "building the latent-major layout") from None
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return layout, time.perf_counter() - start
