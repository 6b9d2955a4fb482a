"""The Triton kernel of ``triton_backend``'s fit and eval sums (see that module's design).

Imports without triton (``sums_kernel`` is then None and ``IMPORT_ERROR`` says why). Triton
reads ``TRITON_INTERPRET`` when it decorates the kernels below, i.e. at this import.
"""

import os

import torch

try:  # the module imports without triton: triton_backend.available() then says why not
    import triton
    import triton.language as tl

    IMPORT_ERROR = ""
except Exception as exc:  # noqa: BLE001 -- any import failure means "unavailable"
    triton = tl = None
    IMPORT_ERROR = f"triton not importable: {exc!r}"

__all__ = ["IMPORT_ERROR", "INTERPRETED", "available", "unavailable_reason", "sums_kernel"]

sums_kernel = None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


INTERPRETED = _interpreting()


def unavailable_reason() -> str:
    """Why the kernels cannot run here ('' when they can)."""
    if IMPORT_ERROR:
        return IMPORT_ERROR
    if not (torch.cuda.is_available() or INTERPRETED):
        if _interpreting():
            return "TRITON_INTERPRET=1 was set after probe_dask's Triton kernels were imported"
        return "no CUDA device (set TRITON_INTERPRET=1 before import to run on CPU)"
    return ""


def available() -> bool:
    """Whether triton imports and can run (a CUDA device, or ``TRITON_INTERPRET=1``)."""
    return unavailable_reason() == ""


if triton is not None:

    @triton.jit
    def store_sums(out, scratch, k, x, ip, out_stride, p_lo, n_here, s_row, max_pairs, t, rank,
                   P: tl.constexpr):
        # An uncut latent's program owns its pairs' sums: stored once, into the output. A
        # slice of a cut latent stores its partial in its own scratch row, (rank, slice, k),
        # for the fixed-order combination after the kernel. Masks are integer compares (the
        # interpreter rejects a loaded bool).
        n_out, n_scratch = tl.where(rank < 0, n_here, 0), tl.where(rank < 0, 0, n_here)
        tl.store(out + k * out_stride + p_lo + ip, x, mask=ip < n_out)
        tl.store(scratch + (s_row + k) * max_pairs + t * P + ip, x, mask=ip < n_scratch)

    @triton.jit
    def sums_kernel(units, ev_ptr, pr_ptr, values, rows, labels, classes, b_ptr, w_ptr, out,
                     scratch, out_stride, n_slices, max_pairs,
                     EVAL: tl.constexpr, E: tl.constexpr, P: tl.constexpr):
        # Program (u, t): unit u (a latent or one slice of it) x the t-th tile of P of its
        # active pairs, looping over its events E at a time; every sum is reduced in
        # float64 registers and stored once (no atomics). int64 offsets throughout.
        u = tl.program_id(0).to(tl.int64) * 3
        t = tl.program_id(1).to(tl.int64)
        lat, sl, rank = tl.load(units + u), tl.load(units + u + 1), tl.load(units + u + 2)
        e_lo, e_hi = tl.load(ev_ptr + lat), tl.load(ev_ptr + lat + 1)
        p_lo = tl.load(pr_ptr + lat) + t * P
        n_here = tl.load(pr_ptr + lat + 1) - p_lo  # <= 0: this tile has no pairs
        # A slice is a whole number of event tiles (the last one shorter), so the slices'
        # event tiles are those of the uncut latent.
        n = e_hi - e_lo
        chunk = tl.where(rank >= 0, ((n + n_slices - 1) // n_slices + E - 1) // E * E, n)
        lo = tl.minimum(e_lo + sl * chunk, e_hi)
        hi = tl.minimum(lo + chunk, e_hi)
        hi = tl.where(n_here > 0, hi, lo)  # no pairs: no events to read
        ie, ip = tl.arange(0, E), tl.arange(0, P)
        mp = ip < n_here
        b = tl.load(b_ptr + p_lo + ip, mask=mp, other=0.0)
        w = tl.load(w_ptr + p_lo + ip, mask=mp, other=0.0)
        if EVAL:
            cls = tl.load(classes + p_lo + ip, mask=mp, other=-1)
        a0 = tl.zeros([P], dtype=tl.float64)
        a1 = tl.zeros([P], dtype=tl.float64)
        a2 = tl.zeros([P], dtype=tl.float64)
        a3 = tl.zeros([P], dtype=tl.float64)
        a4 = tl.zeros([P], dtype=tl.float64)
        a5 = tl.zeros([P], dtype=tl.float64)
        for e0 in range(lo, hi, E):
            me = ie < hi - e0
            v = tl.load(values + e0 + ie, mask=me, other=0.0).to(tl.float64)
            eta = b[None, :] + w[None, :] * v[:, None]  # (E, P) float64
            x = eta.to(tl.float32)
            e = tl.exp(-tl.abs(x))  # in (0, 1]: never overflows
            if EVAL:
                th = e / (2.0 + e)
            else:
                # One reciprocal for both quotients, as in fused.c: q = 1 / ((1 + e)(2 + e)),
                # r = 1 / (1 + e) = (2 + e) q and th = e / (2 + e) = e (1 + e) q.
                ope = 1.0 + e
                tpe = 2.0 + e
                rq = 1.0 / (ope * tpe)
                r = tpe * rq
                th = e * ope * rq
            # log1p(e) = 2 atanh(th), th in [0, 1/3], as in fused.c (no libdevice)
            z = th * th
            q = z * (1.0 / 13.0) + (1.0 / 11.0)
            q = q * z + (1.0 / 9.0)
            q = q * z + (1.0 / 7.0)
            q = q * z + (1.0 / 5.0)
            q = q * z + (1.0 / 3.0)
            lp = 2.0 * th * (q * z + 1.0)
            keep = me[:, None]
            spl = tl.where(keep, tl.maximum(eta, 0.0) + lp.to(tl.float64), 0.0)
            a0 += tl.sum(spl, axis=0)
            if EVAL:
                row = tl.load(rows + e0 + ie, mask=me, other=0)
                lab = tl.load(labels + row, mask=me, other=0).to(tl.int32)
                pos = (eta > 0.0) & keep
                hit = pos & (lab[:, None] == cls[None, :])
                a1 += tl.sum(pos.to(tl.int32), axis=0).to(tl.float64)
                a2 += tl.sum(hit.to(tl.int32), axis=0).to(tl.float64)
            else:
                er = e * r
                mu = tl.where(keep, tl.where(x >= 0.0, r, er).to(tl.float64), 0.0)
                s = tl.where(keep, (er * r).to(tl.float64), 0.0)
                sv = s * v[:, None]
                a1 += tl.sum(mu, axis=0)
                a2 += tl.sum(mu * v[:, None], axis=0)
                a3 += tl.sum(s, axis=0)
                a4 += tl.sum(sv, axis=0)
                a5 += tl.sum(sv * v[:, None], axis=0)
        n_out = 3 if EVAL else 6
        s_row = (tl.maximum(rank, 0) * n_slices + sl) * n_out
        if EVAL:
            store_sums(out, scratch, 0, a0, ip, out_stride, p_lo, n_here, s_row, max_pairs, t, rank, P)
            store_sums(out, scratch, 1, a1, ip, out_stride, p_lo, n_here, s_row, max_pairs, t, rank, P)
            store_sums(out, scratch, 2, a2, ip, out_stride, p_lo, n_here, s_row, max_pairs, t, rank, P)
        else:  # output rows: mu, mu v, s, s v, s v^2, softplus
            store_sums(out, scratch, 0, a1, ip, out_stride, p_lo, n_here, s_row, max_pairs, t, rank, P)
            store_sums(out, scratch, 1, a2, ip, out_stride, p_lo, n_here, s_row, max_pairs, t, rank, P)
            store_sums(out, scratch, 2, a3, ip, out_stride, p_lo, n_here, s_row, max_pairs, t, rank, P)
            store_sums(out, scratch, 3, a4, ip, out_stride, p_lo, n_here, s_row, max_pairs, t, rank, P)
            store_sums(out, scratch, 4, a5, ip, out_stride, p_lo, n_here, s_row, max_pairs, t, rank, P)
            store_sums(out, scratch, 5, a0, ip, out_stride, p_lo, n_here, s_row, max_pairs, t, rank, P)
