"""Independent dense float64 reference for the probe objective (tests only).

Nothing here uses ``probe_dask`` but the ``core.datatypes.LabelSums`` container: the objective is
evaluated over all ``N`` rows of a dense ``X`` (no closed form for zero rows, no sums), and every pair is minimised by its own plain
Newton iteration with a backtracking line search. Problems are tiny; memory is a few
dense ``(N, L)`` / ``(N, C)`` float64 arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import json
from pathlib import Path

import scipy.sparse as sp

from probe_dask.core.datatypes import ActivePairs, LabelSums
from probe_dask.io.layout import activations_path


def _sigmoid(x):
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def dense_label_sums(X, y, n_classes):
    """Label pass over a dense ``X`` (N, L) and labels ``y`` (N,)."""
    X = np.asarray(X, dtype=np.float64)
    onehot = (np.asarray(y)[:, None] == np.arange(n_classes)).astype(np.float64)
    nz = (X != 0).astype(np.float64)
    # The container is shared with the kernels (torch-free); what fills it is computed here.
    return LabelSums(n_rows=X.shape[0], class_rows=onehot.sum(0).astype(np.int64),
                     count=nz.sum(0).astype(np.int64), sum_v2=(X * X).sum(0),
                     pos=nz.T @ onehot, vpos=X.T @ onehot)


def dense_sums(X, b, w):
    """The six solver sums of every pair over its latent's non-zero events.

    Returns
    -------
    ndarray of float64, shape (6, L, C)
        ``[sum mu, sum mu v, sum s, sum s v, sum s v^2, sum softplus(eta)]``.
    """
    X = np.asarray(X, dtype=np.float64)
    n_lat, n_cls = b.shape
    out = np.zeros((6, n_lat, n_cls))
    for l in range(n_lat):
        v = X[X[:, l] != 0, l][:, None]
        eta = b[l] + w[l] * v
        mu = _sigmoid(eta)
        s = mu * (1.0 - mu)
        for i, term in enumerate((mu, mu * v, s, s * v, s * v * v, np.logaddexp(0.0, eta))):
            out[i, l] = term.sum(0)
    return out


def prior_logit(y, n_classes, eps=1e-8):
    """``b0_c = logit(clamp(mean(y == c), eps, 1 - eps))``."""
    pi = np.clip(np.bincount(np.asarray(y), minlength=n_classes) / len(y), eps, 1 - eps)
    return np.log(pi / (1 - pi))


def pair_loss(x, yc, b0, ridge, b, w):
    """Exact F of one pair over all rows (``b``, ``w`` scalars or broadcastable arrays)."""
    b, w = np.asarray(b, float), np.asarray(w, float)
    eta = b[..., None] + w[..., None] * x
    data = np.mean(np.logaddexp(0.0, eta) - yc * eta, axis=-1)
    return data + 0.5 * ridge * (w * w + (b - b0) ** 2)


def pair_grad_hess(x, yc, b0, ridge, b, w):
    """Exact gradient (2,) and Hessian (2, 2) of one pair over all rows."""
    mu = _sigmoid(b + w * x)
    s = mu * (1 - mu)
    r = mu - yc
    g = np.array([r.mean() + ridge * (b - b0), (r * x).mean() + ridge * w])
    h = np.array([[s.mean() + ridge, (s * x).mean()],
                  [(s * x).mean(), (s * x * x).mean() + ridge]])
    return g, h


def fit_pair(x, yc, b0, ridge, tol=1e-12, max_iter=100):
    """Minimise one pair's F by Newton with Armijo backtracking.

    Stops when ``max(|g_b|, |g_w| / qx) < tol`` (qx: RMS of x over its non-zeros) or after
    ``max_iter`` iterations.

    Returns
    -------
    b, w, loss, grad, n_iter
    """
    nz = x[x != 0]
    qx = max(np.sqrt(np.mean(nz * nz)), 1e-6) if nz.size else 1.0
    b, w = float(b0), 0.0
    f = float(pair_loss(x, yc, b0, ridge, b, w))
    for it in range(1, max_iter + 1):
        g, h = pair_grad_hess(x, yc, b0, ridge, b, w)
        grad = max(abs(g[0]), abs(g[1]) / qx)
        if grad < tol:
            return b, w, f, grad, it - 1
        # Solve in scaled coordinates (b, qx w) so huge or tiny values stay conditioned.
        scale = np.array([1.0, qx])
        d = np.linalg.solve(h / np.outer(scale, scale), g / scale) / scale
        slope = float(g @ d)
        t = 1.0
        while True:
            f_new = float(pair_loss(x, yc, b0, ridge, b - t * d[0], w - t * d[1]))
            if f_new <= f - 1e-4 * t * slope:
                break
            t *= 0.5
            if t < 1e-12:
                # No resolvable decrease: accept the Newton step only when its model gain
                # is below float64 resolution of F, i.e. we are already at the optimum.
                if slope < 1e-24:
                    t = 1.0
                    f_new = float(pair_loss(x, yc, b0, ridge, b - d[0], w - d[1]))
                    break
                return b, w, f, grad, it
        b, w, f = b - t * d[0], w - t * d[1], f_new
    g, _ = pair_grad_hess(x, yc, b0, ridge, b, w)
    return b, w, f, max(abs(g[0]), abs(g[1]) / qx), max_iter


@dataclass
class ReferenceFit:
    """Reference optimum of every pair, arrays of shape (L, C)."""

    b: np.ndarray
    w: np.ndarray
    loss: np.ndarray
    grad: np.ndarray
    n_iter: np.ndarray


def reference_fit(X, y, n_classes, ridge=1e-8, eps=1e-8, pairs=None, **kw):
    """Fit pairs (all, or the ``(l, c)`` list ``pairs``) of a dense problem.

    Pairs not fitted hold NaN.
    """
    X = np.asarray(X, dtype=np.float64)
    b0 = prior_logit(y, n_classes, eps)
    shape = (X.shape[1], n_classes)
    out = ReferenceFit(*(np.full(shape, np.nan) for _ in range(4)),
                       n_iter=np.zeros(shape, int))
    if pairs is None:
        pairs = [(l, c) for l in range(shape[0]) for c in range(n_classes)]
    for l, c in pairs:
        yc = (np.asarray(y) == c).astype(np.float64)
        res = fit_pair(X[:, l], yc, b0[c], ridge, **kw)
        for arr, val in zip((out.b, out.w, out.loss, out.grad, out.n_iter), res):
            arr[l, c] = val
    return out


def exact_loss(X, y, n_classes, b, w, ridge=1e-8, eps=1e-8):
    """Exact F of every pair at ``(b, w)`` (L, C), over all rows."""
    X = np.asarray(X, dtype=np.float64)
    b0 = prior_logit(y, n_classes, eps)
    out = np.empty(b.shape)
    for c in range(n_classes):
        yc = (np.asarray(y) == c).astype(np.float64)
        for l in range(X.shape[1]):
            out[l, c] = pair_loss(X[:, l], yc, b0[c], ridge, b[l, c], w[l, c])
    return out


def _latent_stats(csc, y, l, n_classes, P):
    """Non-zero values of latent ``l``, its zero-row count, positives and their value sums per
    class, and the positives among its zero rows."""
    lo, hi = csc.indptr[l], csc.indptr[l + 1]
    v = csc.data[lo:hi].astype(np.float64)
    lab = y[csc.indices[lo:hi]]
    n0 = csc.shape[0] - v.size
    pos = np.bincount(lab, minlength=n_classes).astype(np.float64)
    vpos = np.bincount(lab, weights=v, minlength=n_classes)
    return v, n0, pos, vpos, np.clip(P - pos, 0, n0)


def sparse_reference_fit(csc, y, n_classes, ridge=1e-8, eps=1e-8, tol=1e-13, max_iter=300):
    """Optimum of every pair of a sparse problem, by plain Newton with Armijo backtracking.

    Independent of ``probe_dask.solver``: float64 per-event math on the exact objective,
    one latent at a time, vectorised over classes; zero rows in closed form. Fast enough for
    all pairs of a few-million-non-zero run (work ~ nnz x classes x iterations).

    Parameters
    ----------
    csc : scipy.sparse.csc_matrix, shape (N, L)
    y : ndarray of int, shape (N,)

    Returns
    -------
    b, w, loss : ndarray, shape (L, C)
    """
    N, L = csc.shape
    C = n_classes
    b0 = prior_logit(y, C, eps)
    P = np.bincount(y, minlength=C).astype(np.float64)
    out_b, out_w, out_f = (np.empty((L, C)) for _ in range(3))
    sp = lambda t: np.logaddexp(0.0, t)  # noqa: E731
    for l in range(L):
        v, n0, pos, vpos, pz = _latent_stats(csc, y, l, C, P)

        def f(b, w):
            eta = b[None, :] + v[:, None] * w[None, :]
            nll = sp(eta).sum(0) - b * pos - w * vpos + pz * sp(-b) + (n0 - pz) * sp(b)
            return nll / N + 0.5 * ridge * (w * w + (b - b0) ** 2)

        b, w = b0.copy(), np.zeros(C)
        fb = f(b, w)
        for _ in range(max_iter):
            eta = b[None, :] + v[:, None] * w[None, :]
            mu = _sigmoid(eta)
            s = mu * (1 - mu)
            mu0 = _sigmoid(b)
            g0 = (mu.sum(0) + n0 * mu0 - P) / N + ridge * (b - b0)
            g1 = ((mu * v[:, None]).sum(0) - vpos) / N + ridge * w
            h0 = (s.sum(0) + n0 * mu0 * (1 - mu0)) / N + ridge
            h1 = (s * v[:, None]).sum(0) / N
            h2 = (s * (v * v)[:, None]).sum(0) / N + ridge
            det = h0 * h2 - h1 * h1
            db = (h2 * g0 - h1 * g1) / det
            dw = (h0 * g1 - h1 * g0) / det
            dec = g0 * db + g1 * dw  # g^T H^-1 g
            if np.all(dec <= 2 * tol):
                break
            t = np.ones(C)
            for _ in range(60):  # Armijo on every class at once
                fn = f(b - t * db, w - t * dw)
                ok = (fn <= fb - 1e-4 * t * dec) | (dec <= 2 * tol)
                if ok.all():
                    break
                t = np.where(ok, t, 0.5 * t)
            step = dec > 2 * tol
            b = np.where(step, b - t * db, b)
            w = np.where(step, w - t * dw, w)
            fb = f(b, w)
        out_b[l], out_w[l], out_f[l] = b, w, fb
    return out_b, out_w, out_f


def sparse_objective(csc, y, n_classes, b, w, ridge=1e-8, eps=1e-8):
    """The exact penalised objective F of every pair at ``(b, w)`` (L, C), float64."""
    N, L = csc.shape
    b0 = prior_logit(y, n_classes, eps)
    P = np.bincount(y, minlength=n_classes).astype(np.float64)
    out = np.empty((L, n_classes))
    for l in range(L):
        v, n0, pos, vpos, pz = _latent_stats(csc, y, l, n_classes, P)
        bl, wl = np.asarray(b[l], np.float64), np.asarray(w[l], np.float64)
        eta = bl[None, :] + v[:, None] * wl[None, :]
        nll = (np.logaddexp(0, eta).sum(0) - bl * pos - wl * vpos + pz * np.logaddexp(0, -bl)
               + (n0 - pz) * np.logaddexp(0, bl))
        out[l] = nll / N + 0.5 * ridge * (wl * wl + (bl - b0) ** 2)
    return out


def dense_shard(run_dir, shard_dir):
    """(X float64 dense, y uint8) of a small shard, read with scipy (independent of our store)."""
    shard_dir = Path(shard_dir)
    X = sp.load_npz(activations_path(run_dir, shard_dir.name))
    meta = json.loads((shard_dir / "metadata.json").read_text())
    y = np.fromfile(shard_dir / "labels.bin", dtype=np.uint8)
    assert y.size == meta["n_examples"] * meta["content_tokens_per_example"]
    return np.asarray(X.toarray(), dtype=np.float64), y


def dense_metrics(X, y, b, w):
    """Loss and tp/fp/tn/fn of every pair, densely, in float64 (the reference)."""
    N, L = X.shape
    C = b.shape[1]
    Y = (y[:, None] == np.arange(C)[None, :]).astype(np.float64)  # (N, C), small test only
    loss = np.empty((L, C))
    counts = {k: np.empty((L, C)) for k in ("tp", "fp", "tn", "fn")}
    for l in range(L):
        eta = b[l][None, :] + X[:, l][:, None] * w[l][None, :]
        loss[l] = (np.logaddexp(0, eta) - Y * eta).mean(axis=0)
        pred = eta > 0
        counts["tp"][l] = (pred & (Y == 1)).sum(0)
        counts["fp"][l] = (pred & (Y == 0)).sum(0)
        counts["tn"][l] = (~pred & (Y == 0)).sum(0)
        counts["fn"][l] = (~pred & (Y == 1)).sum(0)
    return loss, counts


def subset_pairs(b, w, keep):
    """``ActivePairs`` of the (L, C) mask ``keep`` (latent-major, classes ascending)."""
    lat, cls = np.nonzero(keep)
    ptr = np.concatenate([[0], np.cumsum(keep.sum(axis=1))]).astype(np.int64)
    return ActivePairs(ptr, cls.astype(np.int32), b[lat, cls].copy(), w[lat, cls].copy())
