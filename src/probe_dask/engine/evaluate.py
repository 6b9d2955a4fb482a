"""Evaluation of fitted probes on a split: loss, confusion counts, probe R.

Loss and confusion counts are one pass over the split's row blocks (``kernels.eval_sums``
tree-summed) plus closed forms for the rows where a latent is zero, as solver.md says:
a zero row has logit ``b`` and is predicted positive when ``b > 0``.

Memory per process: the driver holds a handful of ``(L, C)`` float64 matrices (sums,
loss, four counts: about 40 MB each at 32768 x 151); workers hold what ``passes`` says.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from probe_dask import kernels
from probe_dask.engine.passes import run_pass

__all__ = ["SplitMetrics", "LabelAndEvalSums", "split_metrics", "label_and_eval_sums",
           "evaluate_split", "baseline_cross_entropy", "class_table"]

EPS = 1e-8


def _softplus(x):
    return np.logaddexp(0.0, x)


def baseline_cross_entropy(class_rows, n_rows):
    """Cross-entropy of each class's prior alone, ``-(pi log pi + (1-pi) log(1-pi))``.

    ``pi`` is clamped to ``[eps, 1 - eps]`` as in the solver.
    """
    pi = np.clip(np.asarray(class_rows, dtype=np.float64) / max(n_rows, 1), EPS, 1 - EPS)
    return -(pi * np.log(pi) + (1 - pi) * np.log1p(-pi))


@dataclass
class SplitMetrics:
    """Metrics of every (latent, class) pair on one split; arrays are ``(L, C)``."""

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
    label_sums : kernels.LabelSums
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
    pos_zero = np.clip(class_rows - pos, 0.0, n_zero)  # positives among the zero rows
    neg_zero = n_zero - pos_zero

    nll = sp_nz - b * pos - w * vpos + pos_zero * _softplus(-b) + neg_zero * _softplus(b)
    loss = nll / max(N, 1)

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


@dataclass
class LabelAndEvalSums:
    """A block's label statistics and evaluation sums, additive across blocks.

    For a split whose label statistics are not known yet (test): both come out of one pass,
    so its blocks are read and grouped by latent once, not twice.
    """

    labels: kernels.LabelSums
    totals: np.ndarray

    def __add__(self, other: "LabelAndEvalSums") -> "LabelAndEvalSums":
        return LabelAndEvalSums(self.labels + other.labels, self.totals + other.totals)

    @property
    def nbytes(self) -> int:
        return int(self.labels.nbytes + self.totals.nbytes)


def label_and_eval_sums(block, n_classes, pairs, device=None) -> LabelAndEvalSums:
    """``kernels.label_sums`` and ``kernels.eval_sums`` of one block, in one task."""
    return LabelAndEvalSums(kernels.label_sums(block, n_classes),
                            kernels.eval_sums(block, pairs, device))


def evaluate_split(client, blocks, b, w, n_classes, *, label_sums=None, device=None,
                   split_every=4, resources=None) -> SplitMetrics:
    """Loss and confusion counts of every pair on one split, in one pass over its blocks.

    Parameters
    ----------
    client : distributed.Client
    blocks : list of Delayed
        The split's ``LatentBlock`` s (see ``passes.latent_blocks``).
    b, w : ndarray, shape (L, C)
        Fitted parameters.
    n_classes : int
    label_sums : kernels.LabelSums, optional
        Already-summed label statistics of this split (the fit has them for train).
    """
    # hash=False: a unique key. Train and test scatter identical pairs; with the content hash
    # as key, releasing the train future could drop the key the test pass is about to use.
    pairs = client.scatter(kernels.ActivePairs.all_pairs(b, w), broadcast=True, hash=False)
    try:
        if label_sums is None:
            both = run_pass(client, blocks, label_and_eval_sums, n_classes, pairs, device=device,
                            split_every=split_every, resources=resources)
            label_sums, totals = both.labels, both.totals
        else:
            totals = run_pass(client, blocks, kernels.eval_sums, pairs, device=device,
                              split_every=split_every, resources=resources)
    finally:
        pairs.release()
    return split_metrics(label_sums, totals, b, w)


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
