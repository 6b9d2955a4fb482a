"""Cutting a CSR matrix into contiguous row blocks of about a given number of non-zeros.

One planner for both the fit (``CSRSource.row_blocks``, over ``indptr`` on disk) and the
memory plan (``ShardInfo.blocks``, over ``indptr`` in memory), so the blocks planned are
the blocks run. It sees the matrix only through ``read_indptr(r0, r1)``, which returns
``indptr[r0:r1 + 1]``.

Memory per process: ``indptr`` is scanned ``chunk_rows`` entries at a time (8 bytes each);
the result is one ``(r0, r1)`` pair per block.
"""

from __future__ import annotations

import numpy as np

__all__ = ["row_blocks"]


def row_blocks(read_indptr, n_rows: int, nnz: int, target_nnz: int, max_rows: int | None = None,
               chunk_rows: int = 2**23) -> list[tuple[int, int]]:
    """Plan contiguous row blocks of about ``target_nnz`` non-zeros each.

    Blocks cover ``[0, n_rows)``, never split a row, and are balanced: the cut points are
    the row boundaries nearest to ``k * nnz / n_blocks``. A single row wider than
    ``target_nnz`` is a block of its own. ``max_rows`` (optional) further splits blocks
    holding many empty rows.

    Parameters
    ----------
    read_indptr : callable
        ``read_indptr(r0, r1)`` returns ``indptr[r0:r1 + 1]`` (int64, not rebased).
    n_rows, nnz : int
        Rows and non-zeros of the matrix (``indptr[-1] == nnz``).
    target_nnz : int
        Non-zeros wanted per block (positive).
    max_rows : int, optional
        Most rows per block.
    chunk_rows : int
        ``indptr`` entries read at a time while looking for the cut points.

    Returns
    -------
    list of (int, int)
        ``(r0, r1)`` pairs, half-open.
    """
    if int(target_nnz) < 1:
        raise ValueError(f"target_nnz must be a positive int, got {target_nnz!r}")
    n_blocks = max(1, -(-nnz // int(target_nnz)))
    targets = (np.arange(1, n_blocks, dtype=np.int64) * nnz) // n_blocks
    cuts = _nearest_boundaries(read_indptr, n_rows, targets, chunk_rows)
    bounds = np.unique(np.concatenate([[0], cuts, [n_rows]])).tolist()
    blocks = list(zip(bounds[:-1], bounds[1:]))
    if max_rows:
        split = []
        for r0, r1 in blocks:
            k = -(-(r1 - r0) // int(max_rows))
            edges = np.linspace(r0, r1, k + 1).round().astype(int).tolist()
            split += list(zip(edges[:-1], edges[1:]))
        blocks = split
    return [(int(r0), int(r1)) for r0, r1 in blocks]


def _nearest_boundaries(read_indptr, n_rows: int, targets: np.ndarray, chunk_rows: int) -> np.ndarray:
    """The row boundary nearest to each target (ascending, in (0, nnz)), scanning in chunks."""
    out = np.empty(targets.size, np.int64)
    step = max(1, int(chunk_rows))
    ti = 0
    for s in range(0, n_rows, step):
        if ti == targets.size:
            break
        v = read_indptr(s, min(n_rows, s + step))
        tj = int(np.searchsorted(targets, v[-1], side="right"))
        t = targets[ti:tj]
        i = np.searchsorted(v, t, side="left")  # v[i-1] < t <= v[i], 1 <= i
        out[ti:tj] = s + np.where(t - v[i - 1] < v[i] - t, i - 1, i)
        ti = tj
    return out
