"""The fit loop: solver, kernels and the cluster tied together, with checkpoints.

``ProbeFitter`` is an estimator in the scikit-learn / dask-ml style: parameters in
``__init__`` (also the client, checkpoint and progress bar), ``get_params`` /
``set_params``, parameters checked at ``fit`` (``engine.parameters``), ``fit(X, y)``
on dask arrays returns ``self``, fitted attributes end in ``_``, and a
``ConvergenceWarning`` when ``max_iter`` stops pairs that had not converged.

Every fit runs on latent ranges (``engine.ranges``): the latents are cut into one range
per worker thread, about equal in non-zeros, and each range's solver state lives on a
worker beside the range's events. The events are either kept in that worker's memory
(``persist``: the shard and the state fit, ``ranges.persist_ranges``) or read again every
pass from the shard's latent-major layout on disk (``engine.layout``, built once per input
and reused), in bounded chunks of the latents that still have active pairs
(``engine.range_data``). A pass is one task per range: the kernel sums the range's active
pairs, the compiled step (``kernels.step``) updates them there. The driver receives a few
statistics per range, streams each pass's state to the checkpoint field by field in a
thread (the next pass runs meanwhile: a pass makes a new state and leaves the last one as it
was), and gathers the fitted parameters at the end. Nothing of size P crosses the network
per pass, and no process steps all the pairs while the others wait.

A pair's sums are its latent's events in row order whatever the layout, the number of
ranges, row blocks or workers: the results have the same bits.

Memory per process. The driver holds futures, one field of one range while a checkpoint
streams, and at the end the fitted ``b``, ``w``, ``converged`` (17 bytes a pair); while a
layout is built, the per-latent counts and offsets (``16 L``). A worker holds, per range,
what ``engine.ranges`` lists (two states of 91 bytes a pair while a pass runs, the label
sums) and the range's events in memory, or, from disk, two chunks of at most
``chunk_nnz`` events while a pass reads them
(``engine.range_data``); while the layout is built, what ``engine.layout`` says.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path

import dask
import numpy as np
from distributed import get_client
from tqdm.auto import tqdm

from probe_dask import config
from probe_dask.core.settings import FitSettings
from probe_dask.core.stats import combine_stats
from probe_dask.core.state import TrustRegionState
from probe_dask.engine.checkpoint import Checkpoint, CheckpointMoved, checkpoint_identity
from probe_dask.engine.estimator import ProbeEstimator
from probe_dask.engine.layout import latent_major_layout
from probe_dask.engine.parameters import PARAMETER_CONSTRAINTS, check_params
from probe_dask.engine.passes import latent_blocks, worker_threads
from probe_dask.engine.ranges import (advance_range, disk_ranges, field_reader, gather_latents,
                                      keeps_in_memory, persist_ranges, place_ranges,
                                      range_params, range_stats, read_ranges, resident_bytes,
                                      start_range)
from probe_dask.engine.workers import total_worker_memory
from probe_dask.errors import ConvergenceWarning
from probe_dask.stages import Stage, emit

__all__ = ["ProbeFitter", "layout_path"]


def _block_nnz(csr) -> int:
    return int(csr.nnz)


def count_nnz(client, X) -> int:
    """Non-zeros of ``X``: one small task per row block (each block is read once)."""
    tasks = [dask.delayed(_block_nnz)(b) for b in X.to_delayed().ravel()]
    return int(sum(client.compute(tasks, sync=True)))


def layout_path(layout_dir, identity) -> Path:
    """Where the latent-major layout of an input of ``identity`` lives: ``layout_dir``
    itself when given, else a folder named by the identity's token under
    ``probe-dask.engine.layout-dir`` (configuration), else under Dask's
    ``temporary-directory`` or the system's."""
    if layout_dir is not None:
        return Path(layout_dir)
    root = (config.get("probe-dask.engine.layout-dir")
            or dask.config.get("temporary-directory", None) or tempfile.gettempdir())
    return Path(root) / f"latent-major-{dask.base.tokenize(identity)}"


class ProbeFitter(ProbeEstimator):
    """Fit a 1D logistic-regression probe for every (latent, class) pair.

    Parameters
    ----------
    ridge : float
        Penalty on ``w**2 + (b - b0_c)**2`` (docs/solver.md).
    max_iter : int
        Most solver passes over the data.
    device : str, optional
        ``"cpu"``, ``"cuda"``, or None / ``"auto"`` (each worker picks CUDA when it has a
        GPU).
    backend : {"auto", "c", "triton", "torch"}
        The block kernel (``kernels.choose_backend``): ``"auto"`` runs the C kernel on CPU
        and the Triton kernels on CUDA. With Triton, ranges kept in memory stay on the GPU
        between passes (``kernels.resident``).
    persist : {"auto", True, False}
        Keep the ranges' events in worker memory between passes (``ranges.persist_ranges``),
        else read them from the shard's latent-major layout on disk every pass. ``"auto"``
        keeps them when they and the state take at most ``probe-dask.engine.persist-fraction``
        (configuration) of the workers' memory (``ranges.keeps_in_memory``).
    chunk_nnz : int, optional
        Most events a range read from disk holds at once (whole latents), also the size of
        the layout build's merge tasks; default ``probe-dask.engine.range-chunk-nnz``. The
        job passes its memory plan's block size.
    layout_dir : path, optional
        The folder of the latent-major layout when the ranges are read from disk (see
        :func:`layout_path`; built there unless it holds the layout of this input already).
        It must be on a file system every worker sees.
    resources : dict, optional
        Worker resources each range task requests, e.g. ``{"GPU": 1}``.
    checkpoint : path, optional
        Solver state is written there atomically after every iteration, and a fit
        resumes from it when its ``identity`` matches.
    identity : dict, optional
        JSON-able description of the input (file identities, classes, ridge) stored in
        the checkpoint and in the layout's manifest; a checkpoint with another identity is
        refused, a layout with another is built again. Default: the dask names of ``X`` and
        ``y``.
    progress : bool
        Show a progress bar over solver iterations (stderr).
    callbacks : list of callable, optional
        Each is called as ``callback(stage, info)`` (``stages.emit``) at ``layout_start``,
        ``resumed``, ``fit_start``, every ``iteration`` and ``fit_end``.
    client : distributed.Client, optional
        Where to fit. Default: the current client (``distributed.get_client()``) at ``fit``.
    keep_state : bool
        Keep the whole solver state after the fit (``state_``). False keeps only what the
        results need (``coef_``, ``intercept_``, ``converged_``) and lets the rest go: 72
        bytes a pair, 0.36 GB at 32768 x 151, that the evaluation then does not hold.

    Attributes
    ----------
    coef_ : ndarray, shape (n_latents, n_classes)
        Fitted weights ``w``.
    intercept_ : ndarray, shape (n_latents, n_classes)
        Fitted intercepts ``b``.
    converged_ : ndarray of bool, shape (n_latents, n_classes)
        Pairs stopped by the solver's own criterion.
    n_iter_ : int
        Solver passes made (resumed passes included).
    state_ : core.state.TrustRegionState or None
        The solver state at the end (what a checkpoint holds); None with
        ``keep_state=False``.
    n_classes_ : int
    history_ : list of dict
        Per-iteration solver statistics, with the pass wall time and the event bytes the
        ranges read from disk (``bytes_read``).
    blocks_ : list of Future
        Each range's events: its ``LatentBlock`` (in memory) or its ``DiskRange``.
    persisted_ : bool
        Whether the ranges kept their events in worker memory.
    block_bytes_ : int
        Worker bytes the ranges would take in memory (``ranges.resident_bytes``): what
        ``persist="auto"`` compared with ``worker_memory_``.
    worker_memory_ : int
        The workers' memory limits together when the fit started.
    layout_ : io.latent_major.LatentMajorLayout or None
        The layout the ranges read (None in memory).
    layout_seconds_ : float or None
        Seconds the layout's build took (None when reused or in memory).
    ranges_ : list of (int, int)
        The latent ranges, one per worker thread.
    range_fits_ : list of Future
        Each range's final ``engine.ranges.RangeFit``, held on the workers for
        ``evaluate.evaluate_ranges``; drop it to free them.
    worker_threads_ : int
        Worker threads when the fit started: the number of ranges; pass it to
        ``evaluate_split`` so an evaluation over row blocks sums in the same order whatever
        the cluster became.
    """

    def __init__(self, ridge=FitSettings.ridge, max_iter=FitSettings.max_iter, *,
                 device=FitSettings.device, backend=FitSettings.backend, persist="auto",
                 chunk_nnz=None, layout_dir=None, resources=None, checkpoint=None, identity=None,
                 progress=False, callbacks=None, client=None, keep_state=True):
        self.ridge = ridge
        self.max_iter = max_iter
        self.device = device
        self.backend = backend
        self.persist = persist
        self.chunk_nnz = chunk_nnz
        self.layout_dir = layout_dir
        self.resources = resources
        self.checkpoint = checkpoint
        self.identity = identity
        self.progress = progress
        self.callbacks = callbacks
        self.client = client
        self.keep_state = keep_state

    def _validate_params(self) -> None:
        """InvalidParameterError (a ValueError) naming the first parameter that
        :data:`PARAMETER_CONSTRAINTS` does not accept."""
        check_params("ProbeFitter", self.get_params(), PARAMETER_CONSTRAINTS)

    # -- helpers ---------------------------------------------------------------------------
    def _progress_bar(self, n_iter):
        if not self.progress:
            return None
        return tqdm(total=self.max_iter, initial=min(n_iter, self.max_iter),
                    desc="solver passes", unit="pass")

    def _ranges(self, client, X, y, shape, nnz):
        """The ranges' events (futures) and bounds: kept in memory, or a layout on disk
        built (or reused) first."""
        blocks = latent_blocks(X, y)
        n_ranges = self.worker_threads_
        need = resident_bytes(nnz, X.shape[0], shape[0], shape[1], n_ranges)
        self.persisted_ = keeps_in_memory(self.persist, need, self.worker_memory_,
                                          config.get("probe-dask.engine.persist-fraction"))
        self.layout_ = self.layout_seconds_ = None
        self.block_bytes_ = need
        # the ranges count their labels as they start, after their events are in place
        emit(self.callbacks, Stage.LABEL_COUNTS_START, n_blocks=len(blocks),
             n_joined=len(blocks), persisted=self.persisted_)
        if self.persisted_:
            return persist_ranges(client, blocks, n_ranges=n_ranges)
        identity = self.identity if self.identity is not None else {"X": X.name, "y": y.name}
        chunk_nnz = int(self.chunk_nnz or config.get("probe-dask.engine.range-chunk-nnz"))
        self.layout_, self.layout_seconds_ = latent_major_layout(
            client, blocks, X.chunks[0], (int(X.shape[0]), shape[0]),
            layout_path(self.layout_dir, identity), identity, threads=n_ranges,
            segment_nnz=chunk_nnz, nnz=nnz, resources=self.resources)
        return disk_ranges(client, self.layout_, n_ranges, chunk_nnz)

    def _start_ranges(self, client, data, bounds, n_classes, checkpoint):
        """Every range's first ``RangeFit`` (from the checkpoint when there is one), and
        the pass it is at."""
        resume, n_iter = None, 0
        if checkpoint is not None and checkpoint.exists():
            n_iter = checkpoint.stored_pass()
            resume = (str(checkpoint.path), checkpoint.identity, n_iter)
        fits = [client.submit(start_range, d, n_classes, self.ridge, a, z, resume, self.device,
                              resources=self.resources)
                for d, (a, z) in zip(data, bounds)]
        return fits, n_iter

    def _fit_ranges(self, client, data, bounds, n_classes, shape, checkpoint):
        """The fit's one loop: one task per range and pass sums and steps the range's pairs
        where its state is; the driver sees statistics only. Returns ``(state or None,
        pairs still active)``."""
        fits, n_iter = self._start_ranges(client, data, bounds, n_classes, checkpoint)
        if n_iter:
            emit(self.callbacks, Stage.RESUMED, n_iter=n_iter, path=str(self.checkpoint))
        counts = read_ranges(client, fits, range_stats)
        n_active = sum(c["n_active"] for c in counts)
        emit(self.callbacks, Stage.FIT_START, persisted=self.persisted_, n_pairs=n_active,
             n_total=shape[0] * shape[1], block_bytes=self.block_bytes_,
             worker_memory=self.worker_memory_, layout_seconds=self.layout_seconds_)
        options = dict(device=self.device, backend=self.backend, resident=True)
        saved = n_iter  # the last pass the checkpoint holds (or is writing)
        bar = self._progress_bar(n_iter)
        try:
            while n_iter < self.max_iter and n_active:
                start = time.perf_counter()
                # a lost worker's ranges, recomputed on a survivor, go to threads to spare
                data, places = place_ranges(client, data, fits)
                self.blocks_ = data
                new = [client.submit(advance_range, d, f, **options, resources=self.resources,
                                     **where) for d, f, where in zip(data, fits, places)]
                try:
                    parts = read_ranges(client, new, range_stats, places=places)
                except CheckpointMoved:  # a lost range restarted from a replaced checkpoint
                    checkpoint.wait()
                    fits, n_iter = self._start_ranges(client, data, bounds, n_classes, checkpoint)
                    self.history_ = [h for h in self.history_ if h["n_iter"] <= n_iter]
                    continue
                fits = new
                stats = combine_stats(parts)
                for key in ("work_units", "bytes_read", "active_latents"):
                    stats[key] = sum(int(p[key]) for p in parts)
                for key in ("sums_seconds", "range_seconds"):  # ranges run side by side
                    stats[key] = max(float(p[key]) for p in parts)
                stats["pass_seconds"] = time.perf_counter() - start
                n_iter, n_active = stats["n_iter"], stats["active_after"]
                self.history_.append(stats)
                if checkpoint is not None and checkpoint.save_parts(
                        n_iter, shape, field_reader(client, fits)):
                    saved = n_iter
                emit(self.callbacks, Stage.ITERATION, **stats)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(active=n_active)
        finally:
            if bar is not None:
                bar.close()
        if checkpoint is not None and saved != n_iter:  # a write skipped the last pass
            checkpoint.wait()
            checkpoint.save_parts(n_iter, shape, field_reader(client, fits))
        self.range_fits_ = fits
        self.n_iter_ = int(n_iter)
        params = gather_latents(client, fits, bounds, shape, range_params,
                              (np.float64, np.float64, np.bool_))
        self.intercept_, self.coef_, self.converged_ = params
        state = None
        if self.keep_state:
            fields = TrustRegionState.FLOAT_FIELDS + TrustRegionState.BOOL_FIELDS
            read = field_reader(client, fits)
            state = TrustRegionState(
                **{name: np.concatenate(list(read(name))) for name in fields}, n_iter=n_iter)
        return state, n_active

    # -- fitting ---------------------------------------------------------------------------
    def fit(self, X, y, n_classes=None, nnz=None):
        """Fit every pair on activations ``X`` and labels ``y``.

        Parameters
        ----------
        X : dask.array.Array, shape (n_rows, n_latents)
            CSR row blocks (``engine.shard.open_shard``), chunked by rows only.
        y : dask.array.Array of uint8, shape (n_rows,)
            Class of each row, same row chunks as ``X``.
        n_classes : int, optional
            Default: ``max(y) + 1``.
        nnz : int, optional
            Non-zeros of ``X`` when known (``Shard.nnz``); otherwise counted first (one
            read of every block), to decide whether the ranges stay in memory.

        Returns
        -------
        self

        Raises
        ------
        InvalidParameterError
            (a ValueError) A parameter has a value it does not accept.

        Warns
        -----
        ConvergenceWarning
            ``max_iter`` passes were made and pairs are still iterating.
        """
        self._validate_params()
        client = self.client if self.client is not None else get_client()
        if n_classes is None:
            n_classes = int(y.max().compute()) + 1
        if nnz is None:
            nnz = count_nnz(client, X)
        self.worker_memory_ = total_worker_memory(client)
        # Fixed for the whole fit: the ranges, hence every sum, stay the same when workers
        # come and go (a lost worker's rerun gives the same bits).
        self.worker_threads_ = worker_threads(client) or len(X.chunks[0])
        shape = (int(X.shape[1]), int(n_classes))
        checkpoint = None
        if self.checkpoint is not None:
            checkpoint = Checkpoint(self.checkpoint,
                                    checkpoint_identity(self.identity, n_classes, self.ridge))
        self.history_ = []
        self.range_fits_ = None
        try:
            self.blocks_, self.ranges_ = self._ranges(client, X, y, shape, nnz)
            state, n_active = self._fit_ranges(client, self.blocks_, self.ranges_, n_classes,
                                               shape, checkpoint)
        finally:
            if checkpoint is not None:
                checkpoint.wait()  # the last checkpoint is whole before fit returns

        self.state_ = state if self.keep_state else None
        del state  # with keep_state=False, only coef_, intercept_ and converged_ stay
        self.n_classes_ = int(n_classes)
        n_pairs = shape[0] * shape[1]
        emit(self.callbacks, Stage.FIT_END, n_iter=self.n_iter_, n_active=n_active)
        if n_active and self.n_iter_ >= self.max_iter:
            warnings.warn(f"ProbeFitter: max_iter={self.max_iter} passes made; {n_active:,} "
                          f"of {n_pairs:,} pairs had not converged (raise max_iter)",
                          ConvergenceWarning, stacklevel=2)
        return self
