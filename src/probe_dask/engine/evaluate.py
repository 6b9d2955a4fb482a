"""Evaluation of fitted probes on a split: the pass over its row blocks.

One pass over the split's blocks (``kernels.eval_sums`` per block, summed per group of
blocks and then tree-summed, ``passes.run_pass``; for a split
whose label statistics are not known yet, ``kernels.label_sums`` in the same task) gives
the sums :func:`probe_dask.core.metrics.split_metrics` turns into loss and confusion counts.

A fit on latent ranges (``engine.ranges``) is evaluated where its ranges are
(:func:`evaluate_ranges`): one task per range computes the metrics of its pairs, on the
training ranges or on the test split cut at the same latents (:func:`persist_ranges`), and
the driver fills the ``(L, C)`` matrices range by range.

Memory per process: the driver holds the summed ``(3, L C)`` float64 totals and what
``split_metrics`` makes (a handful of ``(L, C)`` float64 matrices, about 40 MB each at
32768 x 151); workers hold what ``passes`` says (two ``(3, L C)`` partials per thread,
plus the label statistics in the label pass), plus the scattered pairs (``8 (L+1) +
20 L C`` bytes). Evaluated on ranges, the driver holds the five ``(L, C)`` matrices it
fills and one field of one range's metrics at a time; a worker, per range task, the range's
pairs (20 bytes a pair), its ``(3, P_r)`` sums and ``split_metrics``' temporaries (about 74
bytes a pair of the range).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from probe_dask import kernels
from probe_dask.core.metrics import SplitMetrics, split_metrics
from probe_dask.engine.passes import broadcast, run_pass
from probe_dask.engine.ranges import where_held

__all__ = ["LabelAndEvalSums", "label_and_eval_sums", "evaluate_split", "range_metrics",
           "evaluate_ranges"]


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


def range_metrics(data, fit, n_classes, own_labels=False, device=None, backend="auto",
                  resident=False) -> SplitMetrics:
    """The metrics of a range's pairs on ``data`` (that range's events of a split) with its
    fitted ``b, w`` (``fit``: an ``engine.ranges.RangeFit``); the split's label sums are
    the fit's (training ranges) or, with ``own_labels``, counted from ``data``."""
    label_sums = kernels.label_sums(data, n_classes) if own_labels else fit.label_sums
    b, w = fit.state.b, fit.state.w
    totals = kernels.eval_sums(data, kernels.ActivePairs.all_pairs(b, w), device,
                               backend=backend, resident=resident)
    return split_metrics(label_sums, totals, b, w)


def evaluate_ranges(client, data, fits, bounds, n_classes, *, own_labels=False, device=None,
                    resources=None, backend="auto", resident=False) -> SplitMetrics:
    """Loss and confusion counts of every pair, one task per latent range.

    Parameters
    ----------
    client : distributed.Client
    data : list of Future
        Each range's ``LatentBlock`` of the split (the fit's ``blocks_``, or the test split
        cut at the same ``bounds``: ``engine.ranges.persist_ranges``).
    fits : list of Future
        The ranges' ``RangeFit`` (``ProbeFitter.range_fits_``).
    bounds : list of (int, int)
        The ranges' latents (``ProbeFitter.ranges_``).
    n_classes : int
    own_labels : bool
        Count the split's label sums from ``data`` (test) instead of the fit's (train).
    """
    futures = [client.submit(range_metrics, d, f, n_classes, own_labels, device, backend,
                             resident, resources=resources) for d, f in zip(data, fits)]
    shape = (bounds[-1][1], int(n_classes))
    out = {name: np.empty(shape) for name in _METRIC_FIELDS}
    for future, (a, z), where in zip(futures, bounds, where_held(client, futures)):
        for name, whole in out.items():  # one field of one range at a time on the driver
            whole[a:z] = client.submit(getattr, future, name, pure=False, **where).result()
        last = client.submit(_split_constants, future, pure=False, **where).result()
        future.release()
    return SplitMetrics(**out, **last)


#: The ``(L, C)`` fields of ``SplitMetrics``.
_METRIC_FIELDS = ("loss", "tp", "fp", "tn", "fn")


def _split_constants(metrics) -> dict:
    return {"n_rows": metrics.n_rows, "class_rows": metrics.class_rows,
            "baseline_ce": metrics.baseline_ce}
