"""Evaluation of fitted probes on a split: the pass over its row blocks.

A fit's training split is evaluated where its ranges are (:func:`evaluate_ranges`): one
task per range computes the metrics of its pairs on its events (in memory or read from the
layout on disk, ``engine.range_data``), and the driver fills the ``(L, C)`` matrices range
by range; so is a test split cut at the same latents (``ranges.persist_ranges``). A split
that is not laid out by latent (the test split, when it does not fit beside the ranges) is
one pass over its row blocks (:func:`evaluate_split`: ``kernels.label_sums`` and
``kernels.eval_sums`` per block in one task, summed per group of blocks and then
tree-summed, ``passes.pass_total``), whose sums
:func:`probe_dask.core.metrics.split_metrics` turns into loss and confusion counts.

Memory per process: the driver holds the five ``(L, C)`` float64 matrices it fills (40
bytes a pair, 0.2 GB at 32768 x 151) and one field of one range's (or latent slice's)
metrics at a time. A worker holds, per range task, the range's pairs (20 bytes a pair), its
``(3, P_r)`` sums and ``split_metrics``' temporaries (about 74 bytes a pair of the range);
over row blocks, what ``passes`` says (two ``(3, L C)`` partials and label statistics per
thread), the scattered pairs (``8 (L+1) + 20 L C`` bytes), and on the worker that holds
the pass's sum (40 bytes a pair) ``split_metrics`` of one latent slice at a time (about 114
bytes a pair of the slice).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from probe_dask import kernels
from probe_dask.core.datatypes import LabelSums
from probe_dask.core.metrics import SplitMetrics, split_metrics
from probe_dask.core.split import even_bounds
from probe_dask.engine.passes import broadcast, pass_total
from probe_dask.engine.range_data import range_eval_sums, range_label_sums
from probe_dask.engine.ranges import where_held

__all__ = ["LabelAndEvalSums", "evaluate_split", "evaluate_ranges"]


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


def label_and_eval_sums(block, n_classes, pairs, device=None,
                        backend="auto") -> LabelAndEvalSums:
    """``kernels.label_sums`` and ``kernels.eval_sums`` of one block, in one task."""
    return LabelAndEvalSums(kernels.label_sums(block, n_classes),
                            kernels.eval_sums(block, pairs, device, backend=backend))


def evaluate_split(client, blocks, b, w, n_classes, *, device=None, split_every=4,
                   resources=None, backend="auto", groups=None) -> SplitMetrics:
    """Loss and confusion counts of every pair on one split, in one pass over its blocks.

    The pass's sums stay on the worker that summed them, ``split_metrics`` runs there a
    slice of latents at a time, and the driver receives the five ``(L, C)`` fields slice by
    slice.

    Parameters
    ----------
    client : distributed.Client
    blocks : list of Delayed
        The split's ``LatentBlock`` s (see ``passes.latent_blocks``).
    b, w : ndarray, shape (L, C)
        Fitted parameters.
    n_classes : int
    backend : {"auto", "c", "triton", "torch"}
        The block kernel (``kernels.choose_backend``).
    groups : int, optional
        Tasks the pass cuts the blocks into (``passes.pass_total``); give the fit's
        ``worker_threads_`` so the sums' order does not depend on the cluster's size now.
        Also the number of latent slices the fields are received in.
    """
    # hash=False: a unique key. Train and test scatter identical pairs; with the content hash
    # as key, releasing the train future could drop the key the test pass is about to use.
    pairs = broadcast(client, kernels.ActivePairs.all_pairs(b, w))
    slices = []
    try:
        both = pass_total(client, blocks, label_and_eval_sums, n_classes, pairs, device=device,
                          backend=backend, split_every=split_every, resources=resources,
                          groups=groups)
        # finished where the sums are, one slice of latents at a time: the driver receives
        # the five (L, C) fields, never the sums or split_metrics' scratch
        bounds = even_bounds(b.shape[0], groups or 1)
        slices = [client.submit(_slice_metrics, both, pairs, b.shape, a, z, pure=False,
                                resources=resources) for a, z in bounds]
        both.release()
        return _receive_metrics(client, [(f, None, None) for f in slices],
                                (b.shape[0], int(n_classes)), bounds)
    finally:
        pairs.release()
        for future in slices:
            future.release()


def _slice_metrics(both: LabelAndEvalSums, pairs, shape, start, stop) -> SplitMetrics:
    """``split_metrics`` of latents ``start:stop`` of a split's summed pass, on the worker
    holding the sums (its temporaries: about 114 bytes a pair of the slice)."""
    n_lat, n_cls = shape
    ls = both.labels
    part = LabelSums(ls.n_rows, ls.class_rows, ls.count[start:stop], ls.sum_v2[start:stop],
                     ls.pos[start:stop], ls.vpos[start:stop])
    totals = both.totals.reshape(3, n_lat, n_cls)[:, start:stop].reshape(3, -1)
    b = pairs.b.reshape(shape)[start:stop]
    w = pairs.w.reshape(shape)[start:stop]
    return split_metrics(part, totals, b, w)


def range_metrics(data, fit, n_classes, own_labels=False, device=None, backend="auto",
                  resident=False) -> SplitMetrics:
    """The metrics of a range's pairs on ``data`` (that range's events of a split) with its
    fitted ``b, w`` (``fit``: an ``engine.ranges.RangeFit``); the split's label sums are
    the fit's (training ranges) or, with ``own_labels``, counted from ``data``."""
    label_sums = range_label_sums(data, n_classes) if own_labels else fit.label_sums
    b, w = fit.state.b, fit.state.w
    totals = range_eval_sums(data, kernels.ActivePairs.all_pairs(b, w), device,
                             backend=backend, resident=resident)
    return split_metrics(label_sums, totals, b, w)


def evaluate_ranges(client, data, fits, bounds, n_classes, *, own_labels=False, device=None,
                    resources=None, backend="auto", resident=False) -> SplitMetrics:
    """Loss and confusion counts of every pair, one task per latent range.

    Parameters
    ----------
    client : distributed.Client
    data : list of Future
        Each range's events of the split: the fit's ``blocks_`` (in memory or from disk,
        ``engine.range_data``), or the test split cut at the same ``bounds``
        (``engine.ranges.persist_ranges``).
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
    try:
        return _receive_metrics(client, [(f, None, None) for f in futures],
                                (bounds[-1][1], int(n_classes)), bounds)
    finally:
        for future in futures:
            future.release()


#: The ``(L, C)`` fields of ``SplitMetrics``.
_METRIC_FIELDS = ("loss", "tp", "fp", "tn", "fn")


def _metric_rows(metrics, name, start, stop):
    field = getattr(metrics, name)
    return field if start is None else field[start:stop]


def _split_constants(metrics) -> dict:
    return {"n_rows": metrics.n_rows, "class_rows": metrics.class_rows,
            "baseline_ce": metrics.baseline_ce}


def _receive_metrics(client, pieces, shape, bounds=None) -> SplitMetrics:
    """The ``SplitMetrics`` of ``shape`` whose rows are spread over ``pieces``: ``(future,
    start, stop)``, the rows ``start:stop`` of a future's metrics (None: all of its rows,
    which are ``bounds[i]``). One field of one piece at a time on the driver, each read
    where it is held."""
    out = {name: np.empty(shape) for name in _METRIC_FIELDS}
    rows = bounds or [(a, z) for _, a, z in pieces]
    places = where_held(client, [f for f, _, _ in pieces])
    for (future, a, z), (start, stop), where in zip(pieces, rows, places):
        for name, whole in out.items():
            whole[start:stop] = client.submit(_metric_rows, future, name, a, z, pure=False,
                                              **where).result()
    last = client.submit(_split_constants, pieces[-1][0], pure=False, **places[-1]).result()
    return SplitMetrics(**out, **last)
