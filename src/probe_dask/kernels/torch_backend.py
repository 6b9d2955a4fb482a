"""The torch backend of the block kernels: chunked torch ops on any device (CUDA or CPU).

Split from ``kernels`` so that a CPU worker using the C kernel never imports torch (about
200 MB of resident memory per worker). Same contract as ``kernels.fit_sums`` /
``kernels.eval_sums``.

Memory per process: one chunk of at most ``2 work_chunk`` (event x pair) elements of
temporaries (float64 eta and sums, float32 transcendentals) on the device, the block's
arrays copied to the device, and the ``(6, P)`` or ``(3, P)`` float64 output.
"""

from __future__ import annotations

import numpy as np

__all__ = ["torch_sums", "CPU_WORK_CHUNK", "CUDA_WORK_CHUNK"]

#: (event x pair) elements per chunk of temporaries, on CPU and on CUDA.
CPU_WORK_CHUNK = 2**18
CUDA_WORK_CHUNK = 2**22

def _bucket(k):
    """Pair counts rounded up to few distinct widths: 1, 2, 4, 8, 16, then multiples of 16."""
    small = 2 ** np.ceil(np.log2(np.maximum(k, 1))).astype(np.int64)
    return np.where(k <= 16, small, -(-k // 16) * 16)


def _plan(ev_ptr, pair_ptr, work_chunk):
    """Yield the torch chunks: ``(width, lat, e0, n)`` arrays of units, one chunk at a time.

    A unit is an event slice of one latent with all its pairs; the latents of a chunk share
    the padded pair count ``width`` (:func:`_bucket`), so a chunk's work is an
    ``(events, width)`` matrix. Latents whose events x width exceed ``work_chunk`` are
    cut into event slices; units are grouped so that a chunk holds at most ``work_chunk``
    elements plus its last unit. Latents without events or without pairs yield nothing.
    """
    n_ev, n_pr = np.diff(ev_ptr), np.diff(pair_ptr)
    active = np.flatnonzero((n_ev > 0) & (n_pr > 0))
    widths = _bucket(n_pr[active])
    for width in np.unique(widths):
        lat = active[widths == width]
        size = max(work_chunk // int(width), 1)
        n_slices = -(-n_ev[lat] // size)
        u_lat = np.repeat(lat, n_slices)
        j = np.arange(u_lat.size) - np.repeat(np.cumsum(n_slices) - n_slices, n_slices)
        e0 = ev_ptr[u_lat] + j * size
        n = np.minimum(e0 + size, ev_ptr[u_lat + 1]) - e0
        cost = n * width
        chunk_id = (np.cumsum(cost) - cost) // work_chunk
        cuts = np.concatenate([[0], np.flatnonzero(np.diff(chunk_id)) + 1, [u_lat.size]])
        for c0, c1 in zip(cuts[:-1], cuts[1:]):
            yield int(width), u_lat[c0:c1], e0[c0:c1], n[c0:c1]


def _tensor(torch, a: np.ndarray, device):
    # from_numpy shares memory but warns on read-only arrays (e.g. from dask frames).
    if a.flags.writeable and a.flags.c_contiguous:
        return torch.from_numpy(a).to(device)
    return torch.tensor(a, device=device)


def torch_sums(kind, block, pairs, dev, work_chunk):
    """Chunked torch version of the sums, on any device.

    Each chunk is a matrix of (events of its units) x (padded pair slots): eta is an outer
    broadcast ``b[unit] + w[unit] * v``, and the sums over each unit's events are
    contiguous segment reductions along the event axis (no atomics on CUDA). Padding slots
    point to one extra, discarded output column.
    """
    # torch is imported on first use, not with this module: a CPU worker on the C kernel
    # never loads it (about 200 MB of resident memory per worker).
    import torch

    n_out, n_pairs = (6 if kind == "fit" else 3), pairs.n_pairs
    if work_chunk is None:
        work_chunk = CUDA_WORK_CHUNK if dev.type == "cuda" else CPU_WORK_CHUNK
    out = torch.zeros((n_out, n_pairs + 1), dtype=torch.float64, device=dev)
    n_pr = np.diff(pairs.latent_ptr)
    if not np.any((np.diff(block.latent_ptr) > 0) & (n_pr > 0)):
        return out[:, :n_pairs].cpu().numpy()
    vals = _tensor(torch, block.values, dev)
    zero = torch.zeros(1, dtype=torch.float64, device=dev)
    b = torch.cat([_tensor(torch, pairs.b, dev), zero])
    w = torch.cat([_tensor(torch, pairs.w, dev), zero])
    if kind == "eval":
        rows, labels = _tensor(torch, block.rows, dev), _tensor(torch, block.labels, dev).int()
        classes = torch.cat([_tensor(torch, pairs.classes, dev), torch.full((1,), -1, device=dev,
                                                                     dtype=torch.int32)])
    for width, lat, e0, n in _plan(block.latent_ptr, pairs.latent_ptr, int(work_chunk)):
        slot = np.arange(width)
        pidx = np.where(slot < n_pr[lat][:, None], pairs.latent_ptr[lat][:, None] + slot, n_pairs)
        pidx = torch.from_numpy(pidx.ravel()).to(dev)
        unit = np.repeat(np.arange(lat.size), n)
        ev = torch.from_numpy(np.arange(unit.size) + np.repeat(e0 - (np.cumsum(n) - n), n)).to(dev)
        unit = torch.from_numpy(unit).to(dev)
        lengths = torch.from_numpy(n).to(dev)
        v = vals[ev].double()[:, None]
        eta = b[pidx].view(-1, width)[unit] + w[pidx].view(-1, width)[unit] * v
        # exp(-|eta|) never overflows; float32 is enough for the transcendental part.
        e = torch.exp(-eta.abs().float())
        softplus = eta.clamp(min=0) + torch.log1p(e).double()
        if kind == "fit":
            r = 1.0 / (1.0 + e)
            er = e * r
            mu = torch.where(eta >= 0, r, er).double()
            s = (er * r).double()
            del e, r, er
            sv = s * v
            parts = [mu, mu * v, s, sv, sv * v, softplus]
        else:
            pos = eta > 0
            hit = pos & (labels[rows[ev]][:, None] == classes[pidx].view(-1, width)[unit])
            parts = [softplus, pos.double(), hit.double()]
        del eta
        for i, x in enumerate(parts):
            if dev.type == "cpu":  # row-wise adds: faster than segment_reduce on CPU
                seg = torch.zeros((lat.size, width), dtype=torch.float64).index_add_(0, unit, x)
            else:  # contiguous segments: no atomics contending on one unit's row
                seg = torch.segment_reduce(x, "sum", lengths=lengths, axis=0)
            out[i].index_add_(0, pidx, seg.ravel())
    return out[:, :n_pairs].cpu().numpy()
