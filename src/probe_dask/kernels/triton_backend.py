"""Fused Triton kernels for the three per-block sums (fit, eval, label sums) on a GPU.

Same contract and numerics as :func:`probe_dask.kernels.fit_sums` /
:func:`~probe_dask.kernels.eval_sums` / :func:`~probe_dask.kernels.label_sums` (the C
kernel, ``kernels/ckernel/fused.c``, is the reference): ``eta = b + w v`` in float64, the
transcendental part (``exp(-|eta|)``, ``log1p``) in float32, every sum accumulated in
float64, and the decisions ``eta > 0`` taken on the float64 ``eta``.

This module imports nothing from ``probe_dask``: blocks and pairs are duck-typed (a block
has ``latent_ptr`` int64 (L+1,), ``rows`` int32 (nnz,), ``values`` float32 (nnz,),
``labels`` uint8 (n_rows,); pairs have ``latent_ptr`` int64 (L+1,), ``classes`` int32
(P,), ``b`` and ``w`` float64 (P,)). It imports without triton; :func:`available` says
whether the kernels can run (triton importable, and a CUDA device or ``TRITON_INTERPRET=1``,
which must be set before this module is imported: triton reads it when it decorates).

Design: events stay grouped by latent. A *unit* of work is a tile of ``E`` events of one
latent x a tile of ``P`` of that latent's active pairs; one Triton program computes the
``(E, P)`` matrix of ``eta`` in registers, reduces it over the events to per-pair float64
sums, and stores each pair's sums once -- or adds them atomically (float64) when the
latent's events are cut across several event tiles (so on a GPU such sums are reproducible
to float64 rounding, not bitwise). The list of units is built once per
(block, pairs) with vectorised numpy (:func:`plan`), copied to the device in one transfer,
and run as a single launch per tile shape: no host work, copies or synchronisation per
chunk. Latents with few events use a tile shape with more pairs (see ``DEFAULT_TILES``).

Memory per process, per call (``U`` = units of the work list, at most about
``(nnz / E + L) * ceil(max pairs per latent / P)``; ``P`` = pairs, ``L`` = latents):

- :func:`to_device`: device ``8 nnz + n_rows`` bytes (float32 value + int32 row per event,
  a label byte per row), held by the returned :class:`DeviceBlock` until it is dropped;
  host ``8 (L + 1)`` (its latent offsets, kept on the host for planning), plus a transient
  host copy of an array that is read-only or not contiguous.
- :func:`plan`: host ``40 U`` bytes of work list and about ``48 U`` bytes of numpy
  temporaries; device ``40 U`` (the list's copy) while the :class:`WorkList` lives.
- :func:`fit_sums` / :func:`eval_sums`: device ``16 P`` (b, w; plus ``4 P`` classes for
  eval) and the ``48 P`` (fit) or ``24 P`` (eval) float64 output, plus the block's device
  copy when a host block is passed (freed on return) and the work list when none is
  passed; host: the returned ``48 P`` / ``24 P`` bytes. Each program holds its tile's
  ``E x P`` elements in registers only: no device temporaries of size ``nnz x P``.
- :func:`label_sums_arrays`: device about ``41 nnz + 16 L C`` bytes of temporaries and
  outputs; host the outputs, ``16 L C + 16 L + 8 C`` bytes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

try:  # the module imports without triton: available() then says why not
    import triton
    import triton.language as tl

    _IMPORT_ERROR = ""
except Exception as exc:  # noqa: BLE001 -- any import failure means "unavailable"
    triton = tl = None
    _IMPORT_ERROR = f"triton not importable: {exc!r}"

__all__ = ["available", "unavailable_reason", "DeviceBlock", "to_device", "WorkList", "plan",
           "fit_sums", "eval_sums", "label_sums_arrays", "DEFAULT_TILES"]

#: ``(event_tile, pair_tile)`` shapes, ascending in ``event_tile``; a latent uses the first
#: shape whose event tile holds all its events, else the last. Powers of two (tl.arange).
#: Both hold 1024 (event x pair) elements per program; untuned (no GPU measurements yet).
DEFAULT_TILES = ((16, 64), (64, 16))
_WORK_COLS = 5  # e0, n_events, p0, n_store, n_atomic
_MAX_GRID = 2**30  # launches are split below CUDA's 2**31 - 1 grid limit


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# triton reads TRITON_INTERPRET when it decorates the kernels below, i.e. at this import.
_INTERPRETED = _interpreting()


def unavailable_reason() -> str:
    """Why the kernels cannot run here ('' when they can)."""
    if _IMPORT_ERROR:
        return _IMPORT_ERROR
    if not (torch.cuda.is_available() or _INTERPRETED):
        if _interpreting():
            return "TRITON_INTERPRET=1 was set after probe_dask's Triton kernels were imported"
        return "no CUDA device (set TRITON_INTERPRET=1 before import to run on CPU)"
    return ""


def available() -> bool:
    """Whether triton imports and can run (a CUDA device, or ``TRITON_INTERPRET=1``)."""
    return unavailable_reason() == ""


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
    """

    latent_ptr: np.ndarray
    values: torch.Tensor
    rows: torch.Tensor
    labels: torch.Tensor

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
        """Device bytes held (``8 nnz + n_rows``)."""
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
class WorkList:
    """Units of one (block, pairs): per tile shape, an int64 ``(U, 5)`` device tensor.

    Columns: first event, events in the tile, first pair, pairs to store, pairs to add
    atomically (one of the last two is 0: atomics only when the latent's events span
    several tiles).
    """

    groups: list  # [(event_tile, pair_tile, Tensor (U, 5))]
    event_ptr: np.ndarray  # the offsets it was built for (references, not copies)
    pair_ptr: np.ndarray

    def matches(self, block, pairs) -> bool:
        """Whether this list was built for the offsets of ``block`` and ``pairs`` (O(L))."""
        return all(a is b or np.array_equal(a, b) for a, b in
                   ((self.event_ptr, block.latent_ptr), (self.pair_ptr, pairs.latent_ptr)))

    @property
    def n_units(self) -> int:
        """Programs launched per pass."""
        return sum(int(t.shape[0]) for _, _, t in self.groups)


def plan(block, pairs, device=None, tiles=DEFAULT_TILES) -> WorkList:
    """The work list of (block, pairs), built once with vectorised numpy and copied once.

    Parameters
    ----------
    block : LatentBlock-like or DeviceBlock
    pairs : ActivePairs-like
    device : str or torch.device, optional
        Where the list goes (the block's device for a DeviceBlock).
    tiles : sequence of (int, int)
        ``(event_tile, pair_tile)`` powers of two, ascending in ``event_tile``.

    Returns
    -------
    WorkList
    """
    dev = block.device if isinstance(block, DeviceBlock) else _device(device)
    ev_ptr = np.asarray(block.latent_ptr, dtype=np.int64)
    pr_ptr = np.asarray(pairs.latent_ptr, dtype=np.int64)
    n_pairs = int(np.shape(pairs.b)[0])
    if pr_ptr.shape != ev_ptr.shape:
        raise ValueError(f"pairs have {pr_ptr.size - 1} latents, block {ev_ptr.size - 1}")
    if pr_ptr[0] != 0 or pr_ptr[-1] != n_pairs or np.any(np.diff(pr_ptr) < 0):
        raise ValueError(f"pairs.latent_ptr: not offsets from 0 to {n_pairs}")
    if not np.shape(pairs.w) == np.shape(pairs.classes) == (n_pairs,):
        raise ValueError("pairs: classes, b, w differ in length")
    for e, p in tiles:
        if e < 1 or p < 1 or e & (e - 1) or p & (p - 1):
            raise ValueError(f"tile {(e, p)}: sizes must be powers of two")
    if list(tiles) != sorted(tiles):
        raise ValueError(f"tiles {tiles}: not ascending in event tile")
    n_ev, n_pr = np.diff(ev_ptr), np.diff(pr_ptr)
    active = np.flatnonzero((n_ev > 0) & (n_pr > 0))
    shape_of = np.minimum(np.searchsorted([e for e, _ in tiles], n_ev[active]), len(tiles) - 1)
    groups = []
    for g, (e_tile, p_tile) in enumerate(tiles):
        lat = active[shape_of == g]
        if lat.size == 0:
            continue
        n_et, n_pt = -(-n_ev[lat] // e_tile), -(-n_pr[lat] // p_tile)
        per = n_et * n_pt
        u_lat = np.repeat(lat, per)  # latent-major: programs of a latent run together
        j = np.arange(u_lat.size) - np.repeat(np.cumsum(per) - per, per)
        pt = np.repeat(n_pt, per)
        work = np.empty((u_lat.size, _WORK_COLS), dtype=np.int64)
        work[:, 0] = ev_ptr[u_lat] + (j // pt) * e_tile
        work[:, 1] = np.minimum(e_tile, ev_ptr[u_lat + 1] - work[:, 0])
        work[:, 2] = pr_ptr[u_lat] + (j % pt) * p_tile
        k = np.minimum(p_tile, pr_ptr[u_lat + 1] - work[:, 2])
        cut = np.repeat(n_et > 1, per)
        work[:, 3] = np.where(cut, 0, k)
        work[:, 4] = np.where(cut, k, 0)
        groups.append((e_tile, p_tile, torch.from_numpy(work).to(dev)))
    return WorkList(groups, ev_ptr, pr_ptr)


if triton is not None:

    @triton.jit
    def _put(dst, x, store, atomic):
        # Masks are integer compares, not a loaded bool: the interpreter rejects the latter.
        tl.store(dst, x, mask=store)
        tl.atomic_add(dst, x, mask=atomic)

    @triton.jit
    def _sums_kernel(work, values, rows, labels, classes, b_ptr, w_ptr, out, n_pairs,
                     EVAL: tl.constexpr, E: tl.constexpr, P: tl.constexpr):
        # One unit: E events of a latent x P of its pairs; int64 offsets throughout.
        u = tl.program_id(0).to(tl.int64) * 5
        e0, ne = tl.load(work + u), tl.load(work + u + 1)
        p0, n_store, n_atomic = tl.load(work + u + 2), tl.load(work + u + 3), tl.load(work + u + 4)
        ie, ip = tl.arange(0, E), tl.arange(0, P)
        me, mp = ie < ne, ip < n_store + n_atomic
        v = tl.load(values + e0 + ie, mask=me, other=0.0).to(tl.float64)
        b = tl.load(b_ptr + p0 + ip, mask=mp, other=0.0)
        w = tl.load(w_ptr + p0 + ip, mask=mp, other=0.0)
        eta = b[None, :] + w[None, :] * v[:, None]  # (E, P) float64
        x = eta.to(tl.float32)
        e = tl.exp(-tl.abs(x))  # in (0, 1]: never overflows
        # log1p(e) = 2 atanh(t), t = e / (2 + e) in [0, 1/3], as in fused.c (no libdevice)
        t = e / (2.0 + e)
        z = t * t
        q = z * (1.0 / 13.0) + (1.0 / 11.0)
        q = q * z + (1.0 / 9.0)
        q = q * z + (1.0 / 7.0)
        q = q * z + (1.0 / 5.0)
        q = q * z + (1.0 / 3.0)
        lp = 2.0 * t * (q * z + 1.0)
        keep = me[:, None]
        spl = tl.where(keep, tl.maximum(eta, 0.0) + lp.to(tl.float64), 0.0)
        dst = out + p0 + ip
        store, atomic = ip < n_store, ip < n_atomic
        if EVAL:
            row = tl.load(rows + e0 + ie, mask=me, other=0)
            lab = tl.load(labels + row, mask=me, other=0).to(tl.int32)
            cls = tl.load(classes + p0 + ip, mask=mp, other=-1)
            pos = (eta > 0.0) & keep
            hit = pos & (lab[:, None] == cls[None, :])
            _put(dst, tl.sum(spl, axis=0), store, atomic)
            _put(dst + n_pairs, tl.sum(pos.to(tl.int32), axis=0).to(tl.float64), store, atomic)
            _put(dst + 2 * n_pairs, tl.sum(hit.to(tl.int32), axis=0).to(tl.float64), store, atomic)
        else:
            r = 1.0 / (1.0 + e)
            er = e * r
            mu = tl.where(keep, tl.where(x >= 0.0, r, er).to(tl.float64), 0.0)
            s = tl.where(keep, (er * r).to(tl.float64), 0.0)
            sv = s * v[:, None]
            _put(dst, tl.sum(mu, axis=0), store, atomic)
            _put(dst + n_pairs, tl.sum(mu * v[:, None], axis=0), store, atomic)
            _put(dst + 2 * n_pairs, tl.sum(s, axis=0), store, atomic)
            _put(dst + 3 * n_pairs, tl.sum(sv, axis=0), store, atomic)
            _put(dst + 4 * n_pairs, tl.sum(sv * v[:, None], axis=0), store, atomic)
            _put(dst + 5 * n_pairs, tl.sum(spl, axis=0), store, atomic)


def _run(kind: str, block, pairs, device, tiles, work) -> np.ndarray:
    if not available():
        raise RuntimeError(f"Triton kernels unavailable: {unavailable_reason()}")
    n_out = 6 if kind == "fit" else 3
    if work is None:
        work = plan(block, pairs, device, tiles)
    n_pairs = int(np.shape(pairs.b)[0])
    if not work.matches(block, pairs):
        raise ValueError("work list built for other pairs or another block")
    dev = block.device if isinstance(block, DeviceBlock) else _device(device)
    out = torch.zeros((n_out, n_pairs), dtype=torch.float64, device=dev)
    if work.n_units == 0:
        return out.cpu().numpy()
    db = to_device(block, dev)  # no copy for a DeviceBlock
    b, w = _tensor(pairs.b, np.float64, dev), _tensor(pairs.w, np.float64, dev)
    classes = _tensor(pairs.classes, np.int32, dev) if kind == "eval" else b  # unused in fit
    for e_tile, p_tile, units in work.groups:
        for a in range(0, units.shape[0], _MAX_GRID):
            part = units[a:a + _MAX_GRID]
            _sums_kernel[(part.shape[0],)](part, db.values, db.rows, db.labels, classes, b, w,
                                           out, n_pairs, EVAL=kind == "eval", E=e_tile, P=p_tile)
    return out.cpu().numpy()  # the one synchronisation of the pass


def fit_sums(block, pairs, device=None, *, tiles=DEFAULT_TILES, work=None) -> np.ndarray:
    """Label-free sums of a solver iteration over one block, on the GPU.

    Parameters
    ----------
    block : LatentBlock-like or DeviceBlock
        A host block is copied to the device for this call only.
    pairs : ActivePairs-like
        Pairs to compute, grouped by latent like the block.
    device : str or torch.device, optional
        CUDA by default (CPU only under ``TRITON_INTERPRET=1``); ignored for a DeviceBlock.
    tiles : sequence of (int, int)
        Tile shapes, see :func:`plan` (ignored when ``work`` is given).
    work : WorkList, optional
        From :func:`plan` for the same block structure and pairs, to reuse across calls.

    Returns
    -------
    ndarray of float64, shape (6, P)
        Per pair, over its latent's events, ``[sum mu, sum mu v, sum s, sum s v,
        sum s v^2, sum softplus(eta)]`` with ``mu = sigmoid(eta)``, ``s = mu (1 - mu)``.
    """
    return _run("fit", block, pairs, device, tiles, work)


def eval_sums(block, pairs, device=None, *, tiles=DEFAULT_TILES, work=None) -> np.ndarray:
    """Evaluation sums over one block, on the GPU; parameters as :func:`fit_sums`.

    Returns
    -------
    ndarray of float64, shape (3, P)
        ``[sum softplus(eta), count(eta > 0), count(eta > 0 and label == class)]``.
    """
    return _run("eval", block, pairs, device, tiles, work)


def label_sums_arrays(block, n_classes: int, device=None) -> dict:
    """Label-dependent sums of one block (``kernels.label_sums``), with torch on the device.

    Returns
    -------
    dict
        ``n_rows`` (int), ``class_rows`` int64 (C,), ``count`` int64 (L,), ``sum_v2``
        float64 (L,), ``pos`` and ``vpos`` float64 (L, C): the fields of
        ``kernels.LabelSums`` (``LabelSums(**result)``).
    """
    db = to_device(block, device)
    dev, n_lat, C = db.device, db.n_latents, int(n_classes)
    if db.n_rows and int(db.labels.max()) >= C:
        raise ValueError(f"label {int(db.labels.max())} >= n_classes {C}")
    count = np.diff(db.latent_ptr)
    lat = torch.repeat_interleave(torch.arange(n_lat, device=dev), torch.from_numpy(count).to(dev))
    v = db.values.double()
    sum_v2 = torch.zeros(n_lat, dtype=torch.float64, device=dev).index_add_(0, lat, v * v)
    key = lat * C + db.labels[db.rows.long()].long()
    pos = torch.bincount(key, minlength=n_lat * C).double()
    vpos = torch.zeros(n_lat * C, dtype=torch.float64, device=dev).index_add_(0, key, v)
    return {
        "n_rows": db.n_rows,
        "class_rows": torch.bincount(db.labels.long(), minlength=C).cpu().numpy().astype(np.int64),
        "count": count.astype(np.int64),
        "sum_v2": sum_v2.cpu().numpy(),
        "pos": pos.view(n_lat, C).cpu().numpy(),
        "vpos": vpos.view(n_lat, C).cpu().numpy(),
    }
