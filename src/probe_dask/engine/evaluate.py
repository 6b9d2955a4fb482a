"""Evaluation of fitted probes on a split: the pass over its row blocks.

One pass over the split's blocks (``kernels.eval_sums`` per block, summed per group of
blocks and then tree-summed, ``passes.run_pass``; for a split
whose label statistics are not known yet, ``kernels.label_sums`` in the same task) gives
the sums :func:`probe_dask.core.metrics.split_metrics` turns into loss and confusion counts.

Memory per process: the driver holds the summed ``(3, L C)`` float64 totals and what
``split_metrics`` makes (a handful of ``(L, C)`` float64 matrices, about 40 MB each at
32768 x 151); workers hold what ``passes`` says (two ``(3, L C)`` partials per thread,
plus the label statistics in the label pass), plus the scattered pairs (``8 (L+1) +
20 L C`` bytes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from probe_dask import kernels
from probe_dask.core.metrics import SplitMetrics, split_metrics
from probe_dask.engine.passes import broadcast, run_pass

__all__ = ["LabelAndEvalSums", "label_and_eval_sums", "evaluate_split"]


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


def label_and_eval_sums(block, n_classes, pairs, device=None, backend="auto",
                        resident=False) -> LabelAndEvalSums:
    """``kernels.label_sums`` and ``kernels.eval_sums`` of one block, in one task."""
    return LabelAndEvalSums(kernels.label_sums(block, n_classes),
                            kernels.eval_sums(block, pairs, device, backend=backend,
                                              resident=resident))


def evaluate_split(client, blocks, b, w, n_classes, *, label_sums=None, device=None,
                   split_every=4, resources=None, backend="auto", resident=False,
                   groups=None) -> SplitMetrics:
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
    backend : {"auto", "c", "triton", "torch"}
        The block kernel (``kernels.choose_backend``).
    resident : bool
        Triton: use (and keep) the blocks' device copies, for persisted blocks (the fit's).
    groups : int, optional
        Tasks the pass cuts the blocks into (``passes.run_pass``); give the fit's
        ``worker_threads_`` so the sums' order does not depend on the cluster's size now.
    """
    # hash=False: a unique key. Train and test scatter identical pairs; with the content hash
    # as key, releasing the train future could drop the key the test pass is about to use.
    pairs = broadcast(client, kernels.ActivePairs.all_pairs(b, w))
    try:
        if label_sums is None:
            both = run_pass(client, blocks, label_and_eval_sums, n_classes, pairs, device=device,
                            backend=backend, resident=resident, split_every=split_every,
                            resources=resources, groups=groups)
            label_sums, totals = both.labels, both.totals
        else:
            totals = run_pass(client, blocks, kernels.eval_sums, pairs, device=device,
                              backend=backend, resident=resident, split_every=split_every,
                              resources=resources, groups=groups)
    finally:
        pairs.release()
    return split_metrics(label_sums, totals, b, w)
