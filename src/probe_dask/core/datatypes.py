"""The data types every layer shares: a block's events grouped by latent, the pairs a pass
computes, and the label sums of the label pass.

Pure data (numpy and scipy only): the solver, the kernels and the engine all speak these
types, and none of them owns them.

Memory per process: a :class:`LatentBlock` holds ``8 (L+1) + 8 nnz + n_rows`` bytes (int32
row + float32 value per non-zero, one label byte per row); :class:`ActivePairs` ``8 (L+1) +
20 P`` bytes; :class:`LabelSums` two ``(L, C)`` float64 arrays (79 MB at 32768 x 151).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["LatentBlock", "ActivePairs", "LabelSums", "FIT_FIELDS", "EVAL_FIELDS"]

#: Row names of the ``(6, P)`` array returned by :func:`fit_sums`.
FIT_FIELDS = ("mu", "mu_v", "s", "s_v", "s_v2", "softplus")
#: Row names of the ``(3, P)`` array returned by :func:`eval_sums`.
EVAL_FIELDS = ("softplus", "pred_pos", "true_pos")

def _check_csr(csr) -> None:
    """ValueError unless ``csr``'s offsets and indices stay inside its arrays and columns.

    scipy's compiled conversions trust them: a column index past ``n_cols`` writes out of
    bounds (a segfault, seen with a damaged store), a wild offset reads out of bounds.
    """
    n_rows, n_cols = csr.shape
    ptr, idx = np.asarray(csr.indptr), np.asarray(csr.indices)
    if ptr.shape != (n_rows + 1,):
        raise ValueError(f"CSR block: indptr of {ptr.shape[0]} entries for {n_rows} rows")
    if n_rows and (ptr[0] < 0 or ptr[-1] > idx.shape[0] or bool((ptr[1:] < ptr[:-1]).any())):
        raise ValueError(f"CSR block: indptr not non-decreasing offsets within [0, {idx.shape[0]}]")
    used = idx[int(ptr[0]):int(ptr[-1])] if n_rows else idx[:0]
    if used.size:
        # One pass: a negative int32 seen as uint32 is >= 2**31 > n_cols.
        wide = used.view(np.uint32) if used.dtype == np.int32 else used
        if int(wide.max()) >= n_cols or (wide is used and int(used.min()) < 0):
            raise ValueError(f"CSR block: column index outside [0, {n_cols})")
    if np.asarray(csr.data).shape[0] < int(ptr[-1] if n_rows else 0):
        raise ValueError("CSR block: fewer values than indptr says")


@dataclass
class LatentBlock:
    """The non-zero events of a block of rows, grouped by latent.

    Parameters
    ----------
    latent_ptr : ndarray of int64, shape (L + 1,)
        Events of latent ``l`` are positions ``latent_ptr[l]:latent_ptr[l + 1]``.
    rows : ndarray of int32, shape (nnz,)
        Block-local row of each event; ascending within a latent.
    values : ndarray of float32, shape (nnz,)
        Activation value of each event.
    labels : ndarray of uint8, shape (n_rows,)
        Class label of each row of the block.
    """

    latent_ptr: np.ndarray
    rows: np.ndarray
    values: np.ndarray
    labels: np.ndarray

    @classmethod
    def from_csr(cls, csr, labels) -> "LatentBlock":
        """Group the non-zeros of a CSR row block by latent.

        Parameters
        ----------
        csr : scipy.sparse CSR matrix or array, shape (n_rows, L)
            The block's rows. Duplicate entries are summed; explicit zeros are kept
            (they are events with ``v = 0``, exactly like the implicit zeros' math).
        labels : array_like of uint8, shape (n_rows,)
            Labels of the block's rows.

        Returns
        -------
        LatentBlock

        Raises
        ------
        ValueError
            Offsets or column indices that scipy's CSR -> CSC conversion would follow out
            of bounds (checked first, O(nnz)); the kernels never see such a block.
        """
        n_rows, _ = csr.shape
        labels = np.ascontiguousarray(labels, dtype=np.uint8)
        if labels.shape != (n_rows,):
            raise ValueError(f"labels: shape {labels.shape}, expected ({n_rows},)")
        if n_rows >= 2**31:
            raise ValueError(f"block of {n_rows} rows: int32 row index overflows")
        _check_csr(csr)
        if not csr.has_canonical_format:
            csr = csr.copy()
            csr.sum_duplicates()
        # scipy's csr -> csc conversion is a counting sort that visits rows in order,
        # so rows come out ascending within each latent.
        csc = csr.tocsc()
        return cls(
            latent_ptr=np.asarray(csc.indptr, dtype=np.int64),
            rows=np.asarray(csc.indices, dtype=np.int32),
            values=np.asarray(csc.data, dtype=np.float32),
            labels=labels,
        )

    @classmethod
    def concat(cls, blocks) -> "LatentBlock":
        """The blocks of consecutive row ranges as one block: the rows of ``blocks[1]``
        follow those of ``blocks[0]``, and so on.

        The result is the block :meth:`from_csr` makes of the stacked rows (per latent,
        every event of the first block, then of the second, ...: rows stay ascending).
        Holds the result plus one int64 index per event of the largest input.
        """
        blocks = list(blocks)
        if not blocks:
            raise ValueError("nothing to concatenate")
        if len(blocks) == 1:
            return blocks[0]
        n_lat = blocks[0].n_latents
        if any(b.n_latents != n_lat for b in blocks):
            raise ValueError(f"blocks of {sorted({b.n_latents for b in blocks})} latents")
        counts = [np.diff(b.latent_ptr) for b in blocks]
        latent_ptr = np.zeros(n_lat + 1, dtype=np.int64)
        np.cumsum(np.sum(counts, axis=0), out=latent_ptr[1:])
        n_rows = sum(b.n_rows for b in blocks)
        if n_rows >= 2**31:
            raise ValueError(f"block of {n_rows} rows: int32 row index overflows")
        rows = np.empty(int(latent_ptr[-1]), dtype=np.int32)
        values = np.empty(int(latent_ptr[-1]), dtype=np.float32)
        start = latent_ptr[:-1].copy()  # where each latent's next events go
        row0 = 0
        for block, count in zip(blocks, counts):
            # event e of latent l goes to start[l] + (e - block.latent_ptr[l])
            dest = np.repeat(start - block.latent_ptr[:-1], count) + np.arange(block.nnz)
            rows[dest] = block.rows + np.int32(row0)
            values[dest] = block.values
            start += count
            row0 += block.n_rows
        return cls(latent_ptr=latent_ptr, rows=rows, values=values,
                   labels=np.concatenate([b.labels for b in blocks]))

    def latent_slice(self, start: int, stop: int) -> "LatentBlock":
        """The events of latents ``start:stop`` only (renumbered from 0), every row kept.

        Copies: the result holds ``8 (stop - start + 1) + 8 nnz' + n_rows`` bytes of its own,
        so the block it came from can be let go. Per latent, the events and their order are
        those of this block: a kernel sums a latent of the slice exactly as of the block.
        """
        start, stop = int(start), int(stop)
        if not 0 <= start <= stop <= self.n_latents:
            raise ValueError(f"latents {start}:{stop}: outside [0, {self.n_latents}]")
        lo, hi = int(self.latent_ptr[start]), int(self.latent_ptr[stop])
        return LatentBlock(latent_ptr=self.latent_ptr[start:stop + 1] - lo,
                           rows=self.rows[lo:hi].copy(), values=self.values[lo:hi].copy(),
                           labels=self.labels.copy())

    @property
    def n_rows(self) -> int:
        """Number of rows of the block."""
        return int(self.labels.shape[0])

    @property
    def n_latents(self) -> int:
        """Number of latents (columns)."""
        return int(self.latent_ptr.shape[0] - 1)

    @property
    def nnz(self) -> int:
        """Number of non-zero events."""
        return int(self.values.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes held by the block's arrays."""
        return sum(int(a.nbytes) for a in (self.latent_ptr, self.rows, self.values, self.labels))


@dataclass
class ActivePairs:
    """The (latent, class) pairs a pass must compute, grouped by latent.

    Parameters
    ----------
    latent_ptr : ndarray of int64, shape (L + 1,)
        Pairs of latent ``l`` are positions ``latent_ptr[l]:latent_ptr[l + 1]``.
    classes : ndarray of int32, shape (P,)
        Class of each pair, ascending within a latent.
    b, w : ndarray of float64, shape (P,)
        Intercept and slope of each pair.
    """

    latent_ptr: np.ndarray
    classes: np.ndarray
    b: np.ndarray
    w: np.ndarray

    @classmethod
    def all_pairs(cls, b, w) -> "ActivePairs":
        """Every pair of ``(L, C)`` parameter arrays, latent-major.

        Parameters
        ----------
        b, w : array_like, shape (L, C)

        Returns
        -------
        ActivePairs
        """
        b = np.asarray(b, dtype=np.float64)
        w = np.asarray(w, dtype=np.float64)
        if b.ndim != 2 or b.shape != w.shape:
            raise ValueError(f"b, w: shapes {b.shape}, {w.shape}; expected equal (L, C)")
        n_lat, n_cls = b.shape
        return cls(
            latent_ptr=np.arange(n_lat + 1, dtype=np.int64) * n_cls,
            classes=np.tile(np.arange(n_cls, dtype=np.int32), n_lat),
            b=np.ascontiguousarray(b.ravel()),
            w=np.ascontiguousarray(w.ravel()),
        )

    @property
    def n_pairs(self) -> int:
        """Number of pairs ``P``."""
        return int(self.classes.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes held by the pairs' arrays."""
        return sum(int(a.nbytes) for a in (self.latent_ptr, self.classes, self.b, self.w))


@dataclass
class LabelSums:
    """Label-dependent sums of one or more blocks (constant across iterations).

    Parameters
    ----------
    n_rows : int
        Rows summed over.
    class_rows : ndarray of int64, shape (C,)
        Rows of each class.
    count : ndarray of int64, shape (L,)
        Non-zeros of each latent.
    sum_v2 : ndarray of float64, shape (L,)
        Sum of ``v**2`` over each latent's non-zeros.
    pos : ndarray of float64, shape (L, C)
        Positives of class ``c`` among the non-zeros of latent ``l``.
    vpos : ndarray of float64, shape (L, C)
        Sum of ``v`` over those positive events.
    """

    n_rows: int
    class_rows: np.ndarray
    count: np.ndarray
    sum_v2: np.ndarray
    pos: np.ndarray
    vpos: np.ndarray

    def __add__(self, other: "LabelSums") -> "LabelSums":
        if not isinstance(other, LabelSums):
            return NotImplemented
        if self.pos.shape != other.pos.shape:
            raise ValueError(f"LabelSums shapes differ: {self.pos.shape} vs {other.pos.shape}")
        return LabelSums(
            n_rows=self.n_rows + other.n_rows,
            class_rows=self.class_rows + other.class_rows,
            count=self.count + other.count,
            sum_v2=self.sum_v2 + other.sum_v2,
            pos=self.pos + other.pos,
            vpos=self.vpos + other.vpos,
        )

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays."""
        arrays = (self.class_rows, self.count, self.sum_v2, self.pos, self.vpos)
        return sum(int(a.nbytes) for a in arrays)
