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

__all__ = ["IMPORT_ERROR", "INTERPRETED", "NOT_SPECIALIZED", "available", "unavailable_reason",
           "sums_kernel"]

sums_kernel = None
#: Arguments of ``sums_kernel`` that only move bounds (the output's stride, n_pairs + 1;
#: slices per cut latent; the scratch width): triton would otherwise compile a variant for
#: each of them equal to 1 or divisible by 16, i.e. mid-job, as pairs stop. The variants
#: left are EVAL x (E, P), compiled at worker start (``kernels.warmup``).
NOT_SPECIALIZED = ("out_stride", "n_slices", "max_pairs")


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
    def unit_bounds(units, ev_ptr, pr_ptr, n_slices, E: tl.constexpr, P: tl.constexpr):
        # Program (u, t)'s events [lo, hi) and its pairs' first index and count (<= 0: this
        # tile has no pairs). A slice is a whole number of event tiles (the last one
        # shorter), so the slices' event tiles are those of the uncut latent.
        u = tl.program_id(0).to(tl.int64) * 3
        t = tl.program_id(1).to(tl.int64)
        lat, sl, rank = tl.load(units + u), tl.load(units + u + 1), tl.load(units + u + 2)
        e_lo, e_hi = tl.load(ev_ptr + lat), tl.load(ev_ptr + lat + 1)
        p_lo = tl.load(pr_ptr + lat) + t * P
        n_here = tl.load(pr_ptr + lat + 1) - p_lo
        n = e_hi - e_lo
        chunk = tl.where(rank >= 0, ((n + n_slices - 1) // n_slices + E - 1) // E * E, n)
        lo = tl.minimum(e_lo + sl * chunk, e_hi)
        hi = tl.minimum(lo + chunk, e_hi)
        hi = tl.where(n_here > 0, hi, lo)  # no pairs: no events to read
        return lo, hi, p_lo, n_here, sl, rank

    @triton.jit
    def shared_reciprocal(e):
        # One reciprocal for both quotients, as in fused.c: q = 1 / ((1 + e)(2 + e)) gives
        # r = 1 / (1 + e) = (2 + e) q and th = e / (2 + e) = e (1 + e) q.
        ope = 1.0 + e
        tpe = 2.0 + e
        q = 1.0 / (ope * tpe)
        return tpe * q, e * ope * q

    @triton.jit
    def log1p_of(th):
        # log1p(e) = 2 atanh(th), th = e / (2 + e) in [0, 1/3], as in fused.c (no libdevice)
        z = th * th
        poly = z * (1.0 / 13.0) + (1.0 / 11.0)
        poly = poly * z + (1.0 / 9.0)
        poly = poly * z + (1.0 / 7.0)
        poly = poly * z + (1.0 / 5.0)
        poly = poly * z + (1.0 / 3.0)
        return 2.0 * th * (poly * z + 1.0)

    @triton.jit(do_not_specialize=NOT_SPECIALIZED)
    def sums_kernel(units, ev_ptr, pr_ptr, values, rows, labels, classes, b_ptr, w_ptr, out,
                     scratch, out_stride, n_slices, max_pairs,
                     EVAL: tl.constexpr, E: tl.constexpr, P: tl.constexpr):
        # Program (u, t): unit u (a latent or one slice of it) x the t-th tile of P of its
        # active pairs, looping over its events E at a time. The tile is (P, E), pairs down
        # and events across: each event value is loaded and converted to float64 once per
        # program and used for the P pairs (several per thread). Every sum is accumulated
        # per (pair, event column) in float64 registers and reduced over the columns once,
        # after the loop (no cross-thread reduction per step), then stored once (no
        # atomics). int64 offsets throughout.
        lo, hi, p_lo, n_here, sl, rank = unit_bounds(units, ev_ptr, pr_ptr, n_slices, E, P)
        t = tl.program_id(1).to(tl.int64)
        ie, ip = tl.arange(0, E), tl.arange(0, P)
        mp = ip < n_here
        b = tl.load(b_ptr + p_lo + ip, mask=mp, other=0.0)[:, None]  # (P, 1)
        w = tl.load(w_ptr + p_lo + ip, mask=mp, other=0.0)[:, None]
        if EVAL:
            cls = tl.load(classes + p_lo + ip, mask=mp, other=-1)[:, None]
        a0 = tl.zeros([P, E], dtype=tl.float64)
        a1 = tl.zeros([P, E], dtype=tl.float64)
        a2 = tl.zeros([P, E], dtype=tl.float64)
        a3 = tl.zeros([P, E], dtype=tl.float64)
        a4 = tl.zeros([P, E], dtype=tl.float64)
        a5 = tl.zeros([P, E], dtype=tl.float64)
        c1 = tl.zeros([P, E], dtype=tl.int32)  # eval's counts: exact
        c2 = tl.zeros([P, E], dtype=tl.int32)
        for e0 in range(lo, hi, E):
            me = ie < hi - e0
            v = tl.load(values + e0 + ie, mask=me, other=0.0).to(tl.float64)[None, :]  # (1, E)
            keep = me[None, :]
            eta = b + w * v  # (P, E) float64
            x = eta.to(tl.float32)
            e = tl.exp(-tl.abs(x))  # in (0, 1]: never overflows
            if EVAL:
                th = e / (2.0 + e)
            else:
                r, th = shared_reciprocal(e)
            lp = log1p_of(th)
            a0 += tl.where(keep, tl.maximum(eta, 0.0) + lp.to(tl.float64), 0.0)
            if EVAL:
                row = tl.load(rows + e0 + ie, mask=me, other=0)
                lab = tl.load(labels + row, mask=me, other=0).to(tl.int32)[None, :]
                pos = (eta > 0.0) & keep
                c1 += pos.to(tl.int32)
                c2 += (pos & (lab == cls)).to(tl.int32)
            else:
                er = e * r
                mu = tl.where(keep, tl.where(x >= 0.0, r, er).to(tl.float64), 0.0)
                s = tl.where(keep, (er * r).to(tl.float64), 0.0)
                sv = s * v
                a1 += mu
                a2 += mu * v
                a3 += s
                a4 += sv
                a5 += sv * v
        n_out = 3 if EVAL else 6
        s_row = (tl.maximum(rank, 0) * n_slices + sl) * n_out
        if EVAL:
            a1 = c1.to(tl.float64)
            a2 = c2.to(tl.float64)
            store_sums(out, scratch, 0, tl.sum(a0, axis=1), ip, out_stride, p_lo, n_here, s_row, max_pairs, t, rank, P)
            store_sums(out, scratch, 1, tl.sum(a1, axis=1), ip, out_stride, p_lo, n_here, s_row, max_pairs, t, rank, P)
            store_sums(out, scratch, 2, tl.sum(a2, axis=1), ip, out_stride, p_lo, n_here, s_row, max_pairs, t, rank, P)
        else:  # output rows: mu, mu v, s, s v, s v^2, softplus
            store_sums(out, scratch, 0, tl.sum(a1, axis=1), ip, out_stride, p_lo, n_here, s_row, max_pairs, t, rank, P)
            store_sums(out, scratch, 1, tl.sum(a2, axis=1), ip, out_stride, p_lo, n_here, s_row, max_pairs, t, rank, P)
            store_sums(out, scratch, 2, tl.sum(a3, axis=1), ip, out_stride, p_lo, n_here, s_row, max_pairs, t, rank, P)
            store_sums(out, scratch, 3, tl.sum(a4, axis=1), ip, out_stride, p_lo, n_here, s_row, max_pairs, t, rank, P)
            store_sums(out, scratch, 4, tl.sum(a5, axis=1), ip, out_stride, p_lo, n_here, s_row, max_pairs, t, rank, P)
            store_sums(out, scratch, 5, tl.sum(a0, axis=1), ip, out_stride, p_lo, n_here, s_row, max_pairs, t, rank, P)
