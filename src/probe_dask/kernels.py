"""Per-block math: label sums, fit sums and evaluation sums over the non-zeros of a block.

A block of rows is held as a :class:`LatentBlock`: its non-zero events grouped by latent
(the CSC layout of the block), so that every per-latent sum is a reduction over a
contiguous run of events. The parameters of the pairs still being fitted travel as
:class:`ActivePairs`, also grouped by latent, so stopped pairs cost nothing and latents
without pairs are skipped.

Two backends compute :func:`fit_sums` and :func:`eval_sums`:

- ``'c'``: a fused CPU kernel (:mod:`probe_dask.ckernel`), compiled on first use and used
  by default on CPU when it is available (about 1.7 ns per non-zero x pair for the fit
  pass on one AVX2 core, 1.3 ns for eval).
- ``'torch'``: chunked torch ops, on CPU (the fallback, about 20 to 30 ns per element) or
  CUDA unchanged.

Numerics (both backends): ``eta = b + w v`` is formed in float64 (``v`` promoted), the
transcendental part (``exp(-|eta|)``, ``log1p``) is float32, every accumulation is
float64, and the decision ``eta > 0`` is taken on the float64 ``eta``. Results therefore
do not depend on how rows are split into blocks, beyond float64 summation order. Each
float32 term is within a few ``2**-24 (1 + |eta|)`` relative of its exact value (the
rounding of ``|eta|`` to float32 dominates); values below about 1e-38 flush to 0.

Memory per process, per call:

- the block itself, ``LatentBlock.nbytes`` = ``8 (L+1) + 8 nnz + n_rows`` bytes
  (int32 row + float32 value per non-zero, one label byte per row); the torch backend on
  CUDA also holds a device copy of it during the call;
- the pairs, ``ActivePairs.nbytes`` = ``8 (L+1) + 20 P`` bytes (plus a device copy on CUDA);
- the partials returned: ``48 P`` (fit) or ``24 P`` (eval) bytes; :func:`label_sums`
  returns two ``(L, C)`` float64 arrays (``16 L C`` bytes, 79 MB at 32768 x 151) and
  needs about ``33 nnz + 8 L C`` bytes of temporaries;
- temporaries of the torch backend: one chunk of at most ``2 work_chunk`` (event x pair)
  elements at a time, about 100 bytes each (``work_chunk`` is 2**18 on CPU, 2**22 on CUDA:
  at most about 50 MB / 800 MB); of the C backend: about 40 KB of stack per thread.
"""

from __future__ import annotations

from dataclasses import dataclass

import glob
import os

import numpy as np

from . import ckernel

__all__ = [
    "LatentBlock",
    "ActivePairs",
    "LabelSums",
    "label_sums",
    "fit_sums",
    "eval_sums",
    "resolve_device",
    "device_type",
    "FIT_FIELDS",
    "EVAL_FIELDS",
]

#: Row names of the ``(6, P)`` array returned by :func:`fit_sums`.
FIT_FIELDS = ("mu", "mu_v", "s", "s_v", "s_v2", "softplus")
#: Row names of the ``(3, P)`` array returned by :func:`eval_sums`.
EVAL_FIELDS = ("softplus", "pred_pos", "true_pos")

_CPU_WORK_CHUNK = 2**18
_CUDA_WORK_CHUNK = 2**22


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
        """
        n_rows, _ = csr.shape
        labels = np.ascontiguousarray(labels, dtype=np.uint8)
        if labels.shape != (n_rows,):
            raise ValueError(f"labels: shape {labels.shape}, expected ({n_rows},)")
        if n_rows >= 2**31:
            raise ValueError(f"block of {n_rows} rows: int32 row index overflows")
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


def label_sums(block: LatentBlock, n_classes: int) -> LabelSums:
    """Label-dependent sums of one block, in O(nnz) work and no one-hot labels.

    Parameters
    ----------
    block : LatentBlock
    n_classes : int
        ``C``; every label must be below it.

    Returns
    -------
    LabelSums
    """
    n_lat = block.n_latents
    if block.n_rows and int(block.labels.max()) >= n_classes:
        raise ValueError(f"label {int(block.labels.max())} >= n_classes {n_classes}")
    count = np.diff(block.latent_ptr)
    lat = np.repeat(np.arange(n_lat, dtype=np.int64), count)
    v = block.values.astype(np.float64)
    # bincount accumulates its weights in float64.
    sum_v2 = np.bincount(lat, weights=v * v, minlength=n_lat)
    key = lat * n_classes + block.labels[block.rows]
    size = n_lat * n_classes
    pos = np.bincount(key, minlength=size).astype(np.float64).reshape(n_lat, n_classes)
    vpos = np.bincount(key, weights=v, minlength=size).reshape(n_lat, n_classes)
    class_rows = np.bincount(block.labels, minlength=n_classes).astype(np.int64)
    return LabelSums(block.n_rows, class_rows, count.astype(np.int64), sum_v2, pos, vpos)


def _cuda_possible() -> bool:
    # CUDA needs the NVIDIA driver's device nodes (or WSL's /dev/dxg); without them there is
    # no GPU, and importing torch only to learn that would cost each worker ~200 MB.
    return bool(glob.glob("/dev/nvidia[0-9]*")) or os.path.exists("/dev/dxg")


def device_type(device=None) -> str:
    """``"cuda"`` or ``"cpu"`` (or another torch device type) without importing torch
    unless a GPU may be present."""
    if device is None or (isinstance(device, str) and device == "auto"):
        return resolve_device(device).type if _cuda_possible() else "cpu"
    return device.split(":")[0] if isinstance(device, str) else device.type


def resolve_device(device=None):
    """The torch device to compute on: ``None``/``'auto'`` = CUDA if available, else CPU."""
    import torch

    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def fit_sums(block, pairs, device=None, *, backend="auto", work_chunk=None, threads=1):
    """Label-free sums of a solver iteration over one block.

    Parameters
    ----------
    block : LatentBlock
    pairs : ActivePairs
        Pairs to compute; must have ``block.n_latents`` latents.
    device : str or torch.device, optional
        See :func:`resolve_device`.
    backend : {'auto', 'c', 'torch'}
        ``'auto'`` uses the C kernel on CPU when it is available, torch otherwise.
    work_chunk : int, optional
        Torch backend: (event x pair) elements per chunk of temporaries.
    threads : int
        C backend: threads splitting the latents of this call (each releases the GIL).

    Returns
    -------
    ndarray of float64, shape (6, P)
        Per pair, over the non-zero events of its latent with ``eta = b + w v``:
        ``[sum mu, sum mu v, sum s, sum s v, sum s v^2, sum softplus(eta)]`` with
        ``mu = sigmoid(eta)``, ``s = mu (1 - mu)`` (rows named in :data:`FIT_FIELDS`).
    """
    return _dispatch("fit", block, pairs, device, backend, work_chunk, threads)


def eval_sums(block, pairs, device=None, *, backend="auto", work_chunk=None, threads=1):
    """Evaluation sums over one block.

    Parameters are those of :func:`fit_sums`.

    Returns
    -------
    ndarray of float64, shape (3, P)
        Per pair, over the non-zero events of its latent: ``[sum softplus(eta),
        count(eta > 0), count(eta > 0 and label of the event's row == pair's class)]``.
    """
    return _dispatch("eval", block, pairs, device, backend, work_chunk, threads)


def _check(kind: str, block: LatentBlock, pairs: ActivePairs) -> None:
    # O(L + P) (plus O(nnz) rows for eval) checks, because the C kernel trusts offsets.
    if pairs.latent_ptr.shape[0] != block.latent_ptr.shape[0]:
        raise ValueError(
            f"pairs have {pairs.latent_ptr.shape[0] - 1} latents, block {block.n_latents}"
        )
    for name, ptr, n in (("block", block.latent_ptr, block.nnz), ("pairs", pairs.latent_ptr, pairs.n_pairs)):
        if ptr[0] != 0 or ptr[-1] != n or np.any(np.diff(ptr) < 0):
            raise ValueError(f"{name}.latent_ptr: not offsets from 0 to {n}")
    if block.rows.shape != block.values.shape:
        raise ValueError(f"block: {block.rows.shape[0]} rows for {block.nnz} values")
    if not pairs.b.shape == pairs.w.shape == pairs.classes.shape:
        raise ValueError("pairs: classes, b, w differ in length")
    if kind == "eval" and block.nnz and (block.rows.min() < 0 or block.rows.max() >= block.n_rows):
        raise ValueError(f"block.rows: outside [0, {block.n_rows})")


def _dispatch(kind, block, pairs, device, backend, work_chunk, threads):
    _check(kind, block, pairs)
    if backend not in ("auto", "c", "torch"):
        raise ValueError(f"backend={backend!r}; expected 'auto', 'c' or 'torch'")
    dev_type = device_type(device)
    if backend != "torch" and dev_type == "cpu":
        if ckernel.available():
            fn = ckernel.fit_sums if kind == "fit" else ckernel.eval_sums
            return fn(block, pairs, threads=threads)
        if backend == "c":
            raise RuntimeError(f"C kernel unavailable: {ckernel.unavailable_reason()}")
    elif backend == "c":
        raise ValueError(f"backend='c' runs on CPU only, not {device}")
    from .kernels_torch import torch_sums  # torch is imported only when this path runs

    return torch_sums(kind, block, pairs, resolve_device(device), work_chunk)
