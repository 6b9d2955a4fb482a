"""Fused Triton kernels for the fit and eval sums of a block on a GPU (the label sums, once
per range, are in :mod:`probe_dask.kernels.labels`).

Same contract and numerics as :func:`probe_dask.kernels.fit_sums` /
:func:`~probe_dask.kernels.eval_sums` (the C kernel, ``kernels/ckernel/fused.c``, is the
reference): ``eta = b + w v`` in float64, the
transcendental part (``exp(-|eta|)``, ``log1p``) in float32, every sum accumulated in
float64, and the decisions ``eta > 0`` taken on the float64 ``eta``.

This module imports nothing from ``probe_dask`` but its kernel (``triton_jit``): blocks and pairs are duck-typed (a block
has ``latent_ptr`` int64 (L+1,), ``rows`` int32 (nnz,), ``values`` float32 (nnz,),
``labels`` uint8 (n_rows,); pairs have ``latent_ptr`` int64 (L+1,), ``classes`` int32
(P,), ``b`` and ``w`` float64 (P,)). It imports without triton; :func:`available` says
whether the kernels can run (triton importable, and a CUDA device or ``TRITON_INTERPRET=1``,
which must be set before this module is imported: triton reads it when it decorates).

Design: events stay grouped by latent. A *unit* of work is one latent with events (or,
for a giant latent of more than ``split_events`` events, one of ``n_slices`` slices of its
events); one Triton program runs a unit x a tile of ``P`` of its active pairs, looping over
the unit's events ``E`` at a time (each value loaded and converted once per program, for
all ``P`` pairs), keeps every sum per (pair, event column) in float64 registers and
reduces them over the columns once, after the loop. No atomics:
an uncut latent's program stores its pairs' sums once into the output; a slice stores its
partial once into its own row of a scratch array, and the slices of each cut latent are
added in slice order after the kernel (:func:`_combine`, a few torch ops). Results are the
same bits on every run, by construction. The units depend on the block only
(:func:`block_units`, a few torch ops on the device, made once per DeviceBlock and kept
on it); each program finds its pairs from the pairs' offsets, so planning a pass
(:func:`plan`) is O(L) host work and an O(L) copy, however many pairs stop.

Memory per process, per call (``U`` = units, at most ``L + S (n_slices - 1)`` with ``S``
cut latents; ``P`` = pairs, ``L`` = latents, ``M`` = largest pairs per latent):

- :func:`to_device`: device ``8 nnz + n_rows`` bytes (float32 value + int32 row per event,
  a label byte per row), held by the returned :class:`DeviceBlock` until it is dropped;
  host ``8 (L + 1)`` (its latent offsets); plus a transient host copy of an array that is
  read-only or not contiguous. Its units, once planned: device ``24 U + 8 S + 8 (L + 1)``.
- :func:`plan`: host ``8 L`` bytes of temporaries; device ``8 (L + 1)`` (the pairs'
  offsets) while the :class:`WorkList` lives.
- :func:`fit_sums` / :func:`eval_sums`: device ``16 P`` (b, w; plus ``4 P`` classes for
  eval), the ``48 P`` (fit) or ``24 P`` (eval) float64 output, and ``8 S n_slices M``
  times 6 (fit) or 3 (eval) bytes of scratch for the cut latents, plus the block's device
  copy when a host block is passed (freed on return); host: the returned ``48 P`` /
  ``24 P`` bytes. Each program holds its tile's ``P x E`` sums (six for fit, three for
  eval) in registers only.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from probe_dask.kernels.triton_jit import INTERPRETED as _INTERPRETED
from probe_dask.kernels.units import DEFAULT_SLICES, DEFAULT_SPLIT_EVENTS, DEFAULT_TILE
from probe_dask.kernels.triton_jit import available, unavailable_reason
from probe_dask.kernels.triton_jit import sums_kernel as _sums_kernel

__all__ = ["available", "unavailable_reason", "DeviceBlock", "to_device", "BlockUnits",
           "block_units", "WorkList", "plan", "fit_sums", "eval_sums",
           "DEFAULT_TILE", "DEFAULT_SLICES", "DEFAULT_SPLIT_EVENTS"]

_MAX_GRID = 2**30  # launches are split below CUDA's 2**31 - 1 grid limit (x)
_MAX_GRID_Y = 65535  # CUDA's limit on the second grid dimension (pair tiles)
_MIN, _MAX = np.minimum.reduce, np.maximum.reduce  # the ufuncs: no ndarray.min dispatch


def _device(device) -> torch.device:
    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type != "cuda" and not _INTERPRETED:
        raise RuntimeError(f"Triton kernels need a CUDA device (or TRITON_INTERPRET=1), not {dev}")
    return dev


def _tensor(a, dtype, dev: torch.device, pinned: bool = False) -> torch.Tensor:
    a = np.asarray(a)
    # from_numpy shares memory but warns on read-only arrays (e.g. from dask frames).
    if a.dtype == dtype and a.flags.writeable and a.flags.c_contiguous:
        host = torch.from_numpy(a)
    else:
        host = torch.from_numpy(np.ascontiguousarray(a, dtype=dtype).copy())
    if pinned and dev.type == "cuda":
        # Page-locked staging: the copy can run while the GPU computes (non_blocking, on
        # the caller's current stream); the caller synchronises that stream before use.
        return host.pin_memory().to(dev, non_blocking=True)
    return host.to(dev)


@dataclass
class DeviceBlock:
    """A block resident on the device, kept between passes by a worker.

    Parameters
    ----------
    latent_ptr : ndarray of int64, shape (L + 1,)
        Event offsets per latent, on the host (planning needs them there).
    values : Tensor of float32, shape (nnz,)
    rows : Tensor of int32, shape (nnz,)
    labels : Tensor of uint8, shape (n_rows,)
    units : BlockUnits, optional
        Its work units, made by the first :func:`plan` on it and kept for later passes.
    """

    latent_ptr: np.ndarray
    values: torch.Tensor
    rows: torch.Tensor
    labels: torch.Tensor
    units: object = None

    @property
    def device(self) -> torch.device:
        """Device holding the tensors."""
        return self.values.device

    @property
    def n_latents(self) -> int:
        """Number of latents ``L``."""
        return int(self.latent_ptr.shape[0] - 1)

    @property
    def n_rows(self) -> int:
        """Rows of the block."""
        return int(self.labels.shape[0])

    @property
    def nnz(self) -> int:
        """Non-zero events of the block."""
        return int(self.values.shape[0])

    @property
    def nbytes(self) -> int:
        """Device bytes of the block's data (``8 nnz + n_rows``; its units are counted by
        :attr:`WorkList.nbytes`)."""
        return sum(t.numel() * t.element_size() for t in (self.values, self.rows, self.labels))


def to_device(block, device=None, *, pinned: bool = False) -> DeviceBlock:
    """Copy a host block to the device (a :class:`DeviceBlock` is returned unchanged).

    Checks the offsets and that every row is below ``n_rows`` (O(nnz), once per block),
    since the kernels trust them. With ``pinned`` (on CUDA) the arrays are staged in
    page-locked host memory and copied asynchronously on the current CUDA stream: the
    caller must synchronise that stream before the block is used
    (:mod:`probe_dask.kernels.streaming` does, in its own thread and stream).
    """
    if isinstance(block, DeviceBlock):
        return block
    dev = _device(device)
    ptr = np.ascontiguousarray(block.latent_ptr, dtype=np.int64)
    nnz, n_rows = int(np.shape(block.values)[0]), int(np.shape(block.labels)[0])
    if ptr.ndim != 1 or ptr.size < 1 or ptr[0] != 0 or ptr[-1] != nnz or np.any(np.diff(ptr) < 0):
        raise ValueError(f"block.latent_ptr: not offsets from 0 to {nnz}")
    rows = np.asarray(block.rows)
    if rows.shape != (nnz,):
        raise ValueError(f"block: {rows.shape} rows for {nnz} values")
    if nnz and (rows.min() < 0 or rows.max() >= n_rows):
        raise ValueError(f"block.rows: outside [0, {n_rows})")
    return DeviceBlock(ptr, _tensor(block.values, np.float32, dev, pinned),
                       _tensor(rows, np.int32, dev, pinned),
                       _tensor(block.labels, np.uint8, dev, pinned))


@dataclass
class BlockUnits:
    """The (latent, event slice) units of a block's offsets: planned once per block.

    A latent with events is one unit, or ``n_slices`` units when it has more than
    ``split_events`` events (a giant latent, cut so that one program does not hold up the
    pass). Which of its pairs are active is not part of it: the kernel reads that per pass
    from the pairs' offsets, so the list holds while pairs stop.

    Attributes
    ----------
    units : Tensor of int64, shape (U, 3), on the device
        Per unit: latent, slice (0 for an uncut latent), rank of the latent among the cut
        ones (-1 when uncut; where its slices' partial sums go in the scratch array).
    split_latents : Tensor of int64, shape (S,), on the device
        The cut latents, in rank order.
    event_ptr : Tensor of int64, shape (L + 1,), on the device
    n_slices, split_events : int
        The rule the list was made with.
    """

    units: torch.Tensor
    split_latents: torch.Tensor
    event_ptr: torch.Tensor
    n_slices: int
    split_events: int

    @property
    def n_split(self) -> int:
        """Cut latents ``S``."""
        return int(self.split_latents.shape[0])

    @property
    def nbytes(self) -> int:
        """Device bytes held (``24 U + 8 S + 8 (L + 1)``)."""
        return sum(t.numel() * t.element_size()
                   for t in (self.units, self.split_latents, self.event_ptr))


def block_units(latent_ptr, device=None, *, n_slices: int = DEFAULT_SLICES,
                split_events: int = DEFAULT_SPLIT_EVENTS) -> BlockUnits:
    """The :class:`BlockUnits` of a block's event offsets, with a few torch ops on ``device``.

    Parameters
    ----------
    latent_ptr : array-like of int64, shape (L + 1,)
        The block's event offsets (only these are read: no events are needed).
    device : str or torch.device, optional
    n_slices : int
        Slices of a giant latent (at least 1).
    split_events : int
        A latent with more events than this is cut into ``n_slices`` slices.
    """
    if n_slices < 1 or split_events < 1:
        raise ValueError(f"n_slices {n_slices}, split_events {split_events}: expected >= 1")
    dev = _device(device)
    ptr = torch.from_numpy(np.ascontiguousarray(latent_ptr, dtype=np.int64)).to(dev)
    n_ev = ptr[1:] - ptr[:-1]
    lat = torch.nonzero(n_ev > 0).flatten()  # latents without events have no unit
    cut = n_ev[lat] > split_events if n_slices > 1 else torch.zeros_like(lat, dtype=torch.bool)
    per = torch.where(cut, n_slices, 1)
    rank = torch.where(cut, torch.cumsum(cut, 0) - 1, -1)
    first = torch.cumsum(per, 0) - per
    units = torch.stack([torch.repeat_interleave(lat, per),
                         torch.arange(int(per.sum()), device=dev) - torch.repeat_interleave(first, per),
                         torch.repeat_interleave(rank, per)], dim=1).contiguous()
    return BlockUnits(units, lat[cut].contiguous(), ptr, int(n_slices), int(split_events))


@dataclass
class WorkList:
    """What one pass of (block, pairs) runs: the block's units and the pairs' offsets.

    Planning a pass is O(L) on the host (the pairs' offsets are checked, their largest
    count per latent taken, and the array copied to the device): the units themselves come
    from the block (:class:`BlockUnits`, made once per block) and each program finds its
    pairs from the offsets, so pairs that stop change nothing of size O(units).
    """

    block: BlockUnits
    pair_ptr_dev: torch.Tensor  # (L + 1,) int64 on the device
    n_pair_tiles: int  # programs per unit: ceil(largest pairs per latent / P)
    max_pairs: int  # largest pairs per latent (the scratch array's width)
    tile: tuple  # (event_tile, pair_tile)
    event_ptr: np.ndarray  # the offsets it was built for (references, not copies)
    pair_ptr: np.ndarray

    def matches(self, block, pairs) -> bool:
        """Whether this list was built for the offsets of ``block`` and ``pairs`` (O(L))."""
        return all(a is b or np.array_equal(a, b) for a, b in
                   ((self.event_ptr, block.latent_ptr), (self.pair_ptr, pairs.latent_ptr)))

    @property
    def n_units(self) -> int:
        """Programs launched per pass (units x pair tiles)."""
        return int(self.block.units.shape[0]) * self.n_pair_tiles

    @property
    def nbytes(self) -> int:
        """Device bytes held (the block's units and the pairs' offsets)."""
        return self.block.nbytes + self.pair_ptr_dev.numel() * 8


@lru_cache(maxsize=64)  # checked once per tile: plan's fixed cost is a few microseconds
def _check_tile(tile) -> tuple:
    e, p = (int(x) for x in tile)
    if e < 1 or p < 1 or e & (e - 1) or p & (p - 1):
        raise ValueError(f"tile {tuple(tile)}: sizes must be powers of two")
    return e, p


def _units_of(block, dev, n_slices, split_events) -> BlockUnits:
    """The block's units: kept on a DeviceBlock (made on its first pass), else made now."""
    cached = getattr(block, "units", None)
    if cached is not None and (cached.n_slices, cached.split_events) == (n_slices, split_events):
        return cached
    units = block_units(block.latent_ptr, dev, n_slices=n_slices, split_events=split_events)
    if isinstance(block, DeviceBlock):
        block.units = units
    return units


def plan(block, pairs, device=None, tile=DEFAULT_TILE, *, n_slices: int = DEFAULT_SLICES,
         split_events: int = DEFAULT_SPLIT_EVENTS) -> WorkList:
    """The work list of (block, pairs): O(L) host work once the block's units exist.

    Parameters
    ----------
    block : LatentBlock-like or DeviceBlock
        Only ``latent_ptr`` is read (and, on a DeviceBlock, its units are kept).
    pairs : ActivePairs-like
    device : str or torch.device, optional
        Where the list goes (the block's device for a DeviceBlock).
    tile : (int, int)
        ``(event_tile, pair_tile)``, powers of two: a program holds ``E x P`` elements and
        loops over its latent's (or slice's) events ``E`` at a time.
    n_slices, split_events : int
        Latents of more than ``split_events`` events are cut into ``n_slices`` slices,
        whose sums are added in slice order after the kernel (see :func:`block_units`).

    Returns
    -------
    WorkList
    """
    dev = block.device if isinstance(block, DeviceBlock) else _device(device)
    tile = _check_tile(tuple(tile))
    ev_ptr = np.asarray(block.latent_ptr, dtype=np.int64)
    pr_ptr = np.asarray(pairs.latent_ptr, dtype=np.int64)
    n_pairs = int(np.shape(pairs.b)[0])
    if pr_ptr.shape != ev_ptr.shape:
        raise ValueError(f"pairs have {pr_ptr.size - 1} latents, block {ev_ptr.size - 1}")
    # This runs every pass a pair stops: each numpy call is about a microsecond, so the
    # per-latent counts are one subtraction (not np.diff) and the bounds two reductions.
    n_pr = pr_ptr[1:] - pr_ptr[:-1]
    if pr_ptr[0] != 0 or pr_ptr[-1] != n_pairs or (n_pr.size and _MIN(n_pr) < 0):
        raise ValueError(f"pairs.latent_ptr: not offsets from 0 to {n_pairs}")
    if not np.shape(pairs.w) == np.shape(pairs.classes) == (n_pairs,):
        raise ValueError("pairs: classes, b, w differ in length")
    max_pairs = int(_MAX(n_pr)) if n_pr.size else 0
    n_tiles = -(-max_pairs // tile[1])
    if n_tiles > _MAX_GRID_Y:
        raise ValueError(f"{max_pairs} pairs in one latent: more than {_MAX_GRID_Y} pair tiles")
    units = _units_of(block, dev, n_slices, split_events)
    pr_dev = torch.from_numpy(np.ascontiguousarray(pr_ptr)).to(dev)
    return WorkList(units, pr_dev, n_tiles, max_pairs, tile, ev_ptr, pr_ptr)


def _combine(out: torch.Tensor, scratch: torch.Tensor, work: WorkList) -> None:
    """Add each cut latent's slice partials in slice order into ``out`` (device ops, no sync).

    ``out`` has one spare last column that takes the padding of latents with fewer pairs
    than ``max_pairs``; ``scratch`` is ``(S, n_slices, n_out, max_pairs)``.
    """
    total = scratch[:, 0].clone()
    for s in range(1, scratch.shape[1]):  # fixed order: the same bits on every run
        total += scratch[:, s]
    lat = work.block.split_latents
    first = work.pair_ptr_dev[lat]
    j = torch.arange(work.max_pairs, device=out.device)
    spare = out.shape[1] - 1
    idx = torch.where(j[None, :] < (work.pair_ptr_dev[lat + 1] - first)[:, None],
                      first[:, None] + j[None, :], spare)  # (S, max_pairs)
    out[:, idx.reshape(-1)] = total.permute(1, 0, 2).reshape(out.shape[0], -1)


def _run(kind: str, block, pairs, device, tile, work) -> np.ndarray:
    if not available():
        raise RuntimeError(f"Triton kernels unavailable: {unavailable_reason()}")
    n_out = 6 if kind == "fit" else 3
    if work is None:
        work = plan(block, pairs, device, tile)
    n_pairs = int(np.shape(pairs.b)[0])
    if not work.matches(block, pairs):
        raise ValueError("work list built for other pairs or another block")
    dev = block.device if isinstance(block, DeviceBlock) else _device(device)
    out = torch.zeros((n_out, n_pairs + 1), dtype=torch.float64, device=dev)  # + a spare column
    if work.n_units == 0:
        return out[:, :n_pairs].contiguous().cpu().numpy()
    db = to_device(block, dev)  # no copy for a DeviceBlock
    b, w = _tensor(pairs.b, np.float64, dev), _tensor(pairs.w, np.float64, dev)
    classes = _tensor(pairs.classes, np.int32, dev) if kind == "eval" else b  # unused in fit
    units, n_sl = work.block.units, work.block.n_slices
    scratch = torch.empty((work.block.n_split, n_sl, n_out, work.max_pairs),
                          dtype=torch.float64, device=dev)
    e_tile, p_tile = work.tile
    for a in range(0, units.shape[0], _MAX_GRID):
        part = units[a:a + _MAX_GRID]
        _sums_kernel[(part.shape[0], work.n_pair_tiles)](
            part, work.block.event_ptr, work.pair_ptr_dev, db.values, db.rows, db.labels,
            classes, b, w, out, scratch, out.stride(0), n_sl, work.max_pairs,
            EVAL=kind == "eval", E=e_tile, P=p_tile)
    if work.block.n_split:
        _combine(out, scratch, work)
    return out[:, :n_pairs].contiguous().cpu().numpy()  # the one synchronisation of the pass


def fit_sums(block, pairs, device=None, *, tile=DEFAULT_TILE, work=None) -> np.ndarray:
    """Label-free sums of a solver iteration over one block, on the GPU.

    Parameters
    ----------
    block : LatentBlock-like or DeviceBlock
        A host block is copied to the device for this call only.
    pairs : ActivePairs-like
        Pairs to compute, grouped by latent like the block.
    device : str or torch.device, optional
        CUDA by default (CPU only under ``TRITON_INTERPRET=1``); ignored for a DeviceBlock.
    tile : (int, int)
        ``(event_tile, pair_tile)``, see :func:`plan` (ignored when ``work`` is given).
    work : WorkList, optional
        From :func:`plan` for the same block structure and pairs, to reuse across calls.

    Returns
    -------
    ndarray of float64, shape (6, P)
        Per pair, over its latent's events, ``[sum mu, sum mu v, sum s, sum s v,
        sum s v^2, sum softplus(eta)]`` with ``mu = sigmoid(eta)``, ``s = mu (1 - mu)``.
    """
    return _run("fit", block, pairs, device, tile, work)


def eval_sums(block, pairs, device=None, *, tile=DEFAULT_TILE, work=None) -> np.ndarray:
    """Evaluation sums over one block, on the GPU; parameters as :func:`fit_sums`.

    Returns
    -------
    ndarray of float64, shape (3, P)
        ``[sum softplus(eta), count(eta > 0), count(eta > 0 and label == class)]``.
    """
    return _run("eval", block, pairs, device, tile, work)
