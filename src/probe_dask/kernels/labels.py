"""The label pass: a block's label-dependent sums, on the host (numpy) or on a GPU (torch).

Both give :class:`probe_dask.core.datatypes.LabelSums` of one block: per latent the count of
its events and the sum of their squared values, per (latent, class) the events and the sum
of values of the rows of that class, and the rows per class. Counts are exact in both;
the float64 sums differ only by the order of additions, which is fixed in both (no atomics
on the GPU: the same bits on every run).

torch is imported by :func:`device_label_sums` only, when it runs: a CPU worker that imports
this module (every worker does, through ``kernels``) never loads it.

Memory per process, per call (``L`` latents, ``C`` classes): the result, ``16 L C + 16 L +
8 C`` bytes on the host; :func:`host_label_sums` about ``33 nnz + 8 L C`` bytes of
temporaries; :func:`device_label_sums` about ``64 nnz + 24 L C`` bytes on the device (plus
the block's ``8 nnz + n_rows`` bytes when a host block is copied for the call).
"""

from __future__ import annotations

import numpy as np

from probe_dask.core.datatypes import LabelSums

__all__ = ["host_label_sums", "device_label_sums"]


def _check_labels(max_label: int, n_classes: int) -> None:
    if max_label >= n_classes:
        raise ValueError(f"label {max_label} >= n_classes {n_classes}")


def host_label_sums(block, n_classes: int) -> LabelSums:
    """Label-dependent sums of one block on the host, in O(nnz) work and no one-hot labels.

    Parameters
    ----------
    block : LatentBlock-like
        ``latent_ptr``, ``rows``, ``values`` and ``labels`` are read.
    n_classes : int
        ``C``; every label must be below it.

    Returns
    -------
    LabelSums
    """
    n_lat, n_rows = len(block.latent_ptr) - 1, len(block.labels)  # any block-like
    if n_rows:
        _check_labels(int(block.labels.max()), n_classes)
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
    return LabelSums(n_rows, class_rows, count.astype(np.int64), sum_v2, pos, vpos)


def device_label_sums(block, n_classes: int, device) -> LabelSums:
    """:func:`host_label_sums` with torch ops on ``device`` (a GPU worker's label pass).

    Parameters
    ----------
    block : LatentBlock or triton_backend.DeviceBlock
        A host block is copied to ``device`` for the call; a device block's tensors are used
        where they are (``latent_ptr`` is read on the host in both).
    n_classes : int
    device : str or torch.device

    Returns
    -------
    LabelSums
        On the host; equal to :func:`host_label_sums` (counts exactly, the float64 sums up
        to the order of additions).
    """
    import torch  # here, not at import: CPU workers never load torch for this module

    dev = torch.device(device)
    ptr = np.asarray(block.latent_ptr, dtype=np.int64)
    n_lat, C = ptr.shape[0] - 1, int(n_classes)
    values, rows, labels = (torch.as_tensor(np.ascontiguousarray(a) if isinstance(a, np.ndarray)
                                            else a, device=dev)
                            for a in (block.values, block.rows, block.labels))
    n_rows = int(labels.shape[0])
    if n_rows:
        _check_labels(int(labels.max()), C)
    if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= n_rows):
        raise ValueError(f"block.rows: outside [0, {n_rows})")  # CUDA would assert, not raise
    count = np.diff(ptr)
    lengths = torch.from_numpy(count).to(dev)
    lat = torch.repeat_interleave(torch.arange(n_lat, device=dev), lengths)
    v = values.double()
    # Segment sums (CUB's segmented reduction on CUDA), not index_add_: float64 atomics
    # would add in a different order on each run. Events are grouped by latent, so the
    # latents' segments are the offsets; the (latent, class) segments follow a stable sort.
    sum_v2 = torch.segment_reduce(v * v, "sum", lengths=lengths)
    key = lat * C + labels[rows.long()].long()
    per_key = torch.bincount(key, minlength=n_lat * C)  # integer counts: exact in any order
    pos = per_key.double()
    vpos = torch.segment_reduce(v[torch.argsort(key, stable=True)], "sum", lengths=per_key)
    class_rows = torch.bincount(labels.long(), minlength=C)
    return LabelSums(n_rows, class_rows.cpu().numpy().astype(np.int64), count.astype(np.int64),
                     sum_v2.cpu().numpy(), pos.view(n_lat, C).cpu().numpy(),
                     vpos.view(n_lat, C).cpu().numpy())
