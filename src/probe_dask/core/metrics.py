"""Evaluation metrics of fitted probes on a split, from its summed kernel outputs.

:func:`split_metrics` turns a split's label sums and summed ``kernels.eval_sums`` into
the loss and confusion counts of every pair: the non-zero events come from the sums, the
rows where a latent is zero in closed form (their logit is ``b``, so they are predicted
positive when ``b > 0``), with the objective's own formulas
(:mod:`probe_dask.core.objective`). :func:`class_table` summarises them per class. Pure
numpy; the pass that produces the sums is ``engine.evaluate``.

Memory per process: a :class:`SplitMetrics` holds five float64 ``(L, C)`` matrices (loss
and four counts, 40 bytes a pair: 40 MB each at 32768 x 151); :func:`split_metrics` peaks
at about 74 bytes a pair while computing them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from probe_dask.core.objective import baseline_cross_entropy, mean_nll, zero_row_positives

__all__ = ["SplitMetrics", "split_metrics", "class_table"]


@dataclass
class SplitMetrics:
    """Metrics of every (latent, class) pair on one split; arrays are ``(L, C)``.

    Attributes
    ----------
    loss : ndarray of float64
        Mean negative log-likelihood (no ridge term).
    tp, fp, tn, fn : ndarray of float64
        Confusion counts of the prediction ``b + w x > 0``.
    n_rows : int
    class_rows : ndarray, shape (C,)
        Rows of each class.
    baseline_ce : ndarray of float64, shape (C,)
        Cross-entropy of each class's prior alone.
    """

    loss: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    tn: np.ndarray
    fn: np.ndarray
    n_rows: int
    class_rows: np.ndarray
    baseline_ce: np.ndarray


def split_metrics(label_sums, eval_totals, b, w) -> SplitMetrics:
    """Combine the summed kernel outputs of a split into loss and confusion counts.

    Parameters
    ----------
    label_sums : core.datatypes.LabelSums
        Summed over the split's blocks.
    eval_totals : ndarray, shape (3, L*C)
        Summed ``kernels.eval_sums`` over all pairs in latent-major order:
        softplus sum, predicted-positive count and true-positive count over non-zeros.
    b, w : ndarray, shape (L, C)
        Fitted intercepts and weights.
    """
    L, C = b.shape
    N = int(label_sums.n_rows)
    sp_nz, pp_nz, tp_nz = (np.asarray(t, dtype=np.float64).reshape(L, C) for t in eval_totals)
    pos = label_sums.pos
    vpos = label_sums.vpos
    n_nz = label_sums.count.astype(np.float64)[:, None]
    n_zero = N - n_nz
    class_rows = label_sums.class_rows.astype(np.float64)[None, :]
    pos_zero = zero_row_positives(class_rows, pos, n_zero)
    neg_zero = n_zero - pos_zero
    loss = mean_nll(sp_nz, b, w, pos, vpos, pos_zero, n_zero, N)

    zero_positive = b > 0  # a zero row has logit b
    tp = tp_nz + np.where(zero_positive, pos_zero, 0.0)
    fp = (pp_nz - tp_nz) + np.where(zero_positive, neg_zero, 0.0)
    fn = (pos - tp_nz) + np.where(zero_positive, 0.0, pos_zero)
    tn = (n_nz - pos - (pp_nz - tp_nz)) + np.where(zero_positive, 0.0, neg_zero)
    return SplitMetrics(
        loss=loss, tp=tp, fp=fp, tn=tn, fn=fn, n_rows=N,
        class_rows=label_sums.class_rows.copy(),
        baseline_ce=baseline_cross_entropy(label_sums.class_rows, N),
    )


def class_table(train: SplitMetrics, test: SplitMetrics | None = None) -> list[dict]:
    """Per-class summary: best latent on train, its losses, baselines and probe R.

    The best latent of class ``c`` is ``argmin`` of the train loss over latents (what the
    users' notebooks take). Probe R is ``1 - loss / baseline``; it is NaN for a split where
    the class never occurs (its baseline is zero up to clamping).
    """
    best = np.argmin(train.loss, axis=0)
    rows = []
    for c, l in enumerate(best):
        row = {"class": c, "best_latent": int(l), "train_rows": int(train.class_rows[c])}
        for name, split in (("train", train), ("test", test)):
            if split is None:
                continue
            loss = float(split.loss[l, c])
            base = float(split.baseline_ce[c])
            present = split.class_rows[c] > 0
            row[f"{name}_loss"] = loss
            row[f"{name}_baseline_ce"] = base
            row[f"{name}_probe_r"] = float(1.0 - loss / base) if present else float("nan")
        if test is not None:
            row["test_rows"] = int(test.class_rows[c])
        rows.append(row)
    return rows
