"""The fit loop: solver, kernels and the cluster tied together, with checkpoints.

``ProbeFitter`` is an estimator in the scikit-learn / dask-ml style: parameters in
``__init__`` (also the client, checkpoint and progress bar), ``get_params`` /
``set_params``, parameters checked at ``fit`` (``engine.parameters``), ``fit(X, y)``
on dask arrays returns ``self``, fitted attributes end in ``_``, and a
``ConvergenceWarning`` when ``max_iter`` stops pairs that had not converged.

One solver iteration is one pass over the data for all classes together, in one of two
layouts, chosen by whether the blocks stay in worker memory (``persist``):

- persisted: the blocks are cut by latent range, one range per worker thread
  (``engine.ranges``), and each range's solver state lives beside its events on the same
  worker. A pass is one task per range: the kernel sums the range's active pairs, the
  compiled step (``kernels.step``) updates them there. The driver receives a few statistics
  per range, streams each pass's state to the checkpoint field by field in a thread (the
  next pass runs meanwhile: a pass makes a new state and leaves the last one as it was), and
  gathers the fitted parameters at the end. Nothing of size P crosses the network per pass,
  and no process steps all the pairs while the others wait.
- read from disk every pass: the parameters of the pairs still active are scattered once
  (``broadcast=True``, docs/architecture.md pitfall 4), one task per worker thread sums
  its group of row blocks (``engine.passes``), the group sums are tree-summed, and the
  driver takes one trust-region step for every active pair (about 0.05 µs a pair, split
  over the driver's cores).

Both give the same pairs' sums up to the order of additions (persisted: every latent's
events in row order, exactly as one block), checked to 1e-9 by the tests.

Memory per process. Persisted: the driver holds one field of one range while a checkpoint
streams, and at the end the fitted ``b``, ``w``, ``converged`` (17 bytes a pair; plus the
label sums, 16 bytes a pair, when ``nnz`` was not given and a row pass counted them); each
worker holds its ranges' events and, per range, what ``engine.ranges`` lists (two states of
91 bytes a pair while a pass runs). Read from disk:
the driver holds the solver state (about a dozen ``(L, C)`` float64 arrays, ``core.state``;
a checkpoint is written from it, not from a copy), the active pairs (20 bytes a pair) and
one ``(6, P)`` float64 sum; each worker holds one block read at a time per thread (with the
Triton kernels also its device copy, the next one streamed in, ``kernels.streaming``), the
scattered active pairs (about 28 bytes per pair) and two ``(6, P)`` partials per thread,
whatever the number of blocks (``passes``).
"""

from __future__ import annotations

import os
import time
import warnings

import numpy as np
from distributed import get_client
from tqdm.auto import tqdm

from probe_dask import config, kernels
from probe_dask.core.objective import ProblemConstants
from probe_dask.core.solver import combine_stats
from probe_dask.core.state import TrustRegionState, init_state
from probe_dask.engine.checkpoint import Checkpoint, CheckpointMoved, checkpoint_identity
from probe_dask.engine.estimator import ProbeEstimator
from probe_dask.engine.parameters import PARAMETER_CONSTRAINTS
from probe_dask.engine.passes import broadcast, latent_blocks, run_pass, worker_threads
from probe_dask.engine.ranges import (advance_range, field_reader, gather_rows, persist_ranges,
                                      place_ranges, range_bounds, range_params, range_stats,
                                      read_ranges, start_range)
from probe_dask.engine.workers import total_worker_memory
from probe_dask.errors import ConvergenceWarning, InvalidParameterError
from probe_dask.kernels.step import solver_step
from probe_dask.stages import Stage, emit

__all__ = ["ProbeFitter"]


#: Worker bytes per pair of a fit on persisted ranges besides the blocks: two states (91
#: bytes each: while a pass runs, or while the last one streams to the checkpoint) and the
#: label sums the constants share (32).
RANGE_BYTES_PER_PAIR = 2 * 91 + 32


def _block_bytes(nnz: int, n_rows: int, n_latents: int, n_blocks: int) -> int:
    """Bytes of all ``LatentBlock`` s: values, rows, latent pointers and labels."""
    return int(nnz) * 8 + int(n_rows) + n_blocks * (int(n_latents) + 1) * 8


def _driver_threads() -> int:
    """Threads of the driver's solver step: the cores this process may use, at most 8
    (the workers wait for the step, so their cores are free)."""
    return max(1, min(8, len(os.sched_getaffinity(0))))


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
        and the Triton kernels on CUDA. With Triton, persisted blocks stay on the GPU
        between passes (``kernels.resident``).
    persist : {"auto", True, False}
        Keep the blocks in worker memory between passes, cut by latent range with the
        solver state beside them (``engine.ranges``). ``"auto"`` keeps them when they and
        the state take less than ``probe-dask.engine.persist-fraction`` (configuration) of
        the workers' memory, else re-reads them from disk every pass (bounded memory
        whatever the shard size).
    split_every : int
        Fan-in of the reduction trees.
    resources : dict, optional
        Worker resources each block task requests, e.g. ``{"GPU": 1}``.
    checkpoint : path, optional
        Solver state is written there atomically after every iteration, and a fit
        resumes from it when its ``identity`` matches.
    identity : dict, optional
        JSON-able description of the input (file identities, classes, ridge) stored in
        the checkpoint; a checkpoint with another identity is refused.
    progress : bool
        Show a progress bar over solver iterations (stderr).
    callbacks : list of callable, optional
        Each is called as ``callback(stage, info)`` (``stages.emit``) at
        ``label_counts_start``, ``resumed``, ``fit_start``, every ``iteration`` and ``fit_end``.
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
    label_sums_ : kernels.LabelSums or None
        Label statistics of the training data; None on persisted ranges when ``nnz`` was
        given (each range keeps its own: the driver holds no ``(L, C)`` label sums).
    constants_ : core.objective.ProblemConstants or None
        From ``label_sums_`` (None with it).
    state_ : core.state.TrustRegionState or None
        The solver state at the end (what a checkpoint holds); None with
        ``keep_state=False``.
    n_classes_ : int
    history_ : list of dict
        Per-iteration solver statistics, with the pass wall time.
    blocks_ : list
        The training data: persisted, one future per latent range (its ``LatentBlock``);
        else the delayed row blocks, read again by each pass.
    persisted_ : bool
        Whether the fit ran on persisted latent ranges.
    ranges_ : list of (int, int) or None
        The latent ranges (persisted), one per worker thread.
    range_fits_ : list of Future or None
        Each range's final ``engine.ranges.RangeFit`` (persisted), held on the workers for
        ``evaluate.evaluate_ranges``; drop it to free them.
    worker_threads_ : int
        Worker threads when the fit started: every pass cuts the blocks into that many
        groups, one task each (``engine.passes``); pass it to ``evaluate_split`` so the
        evaluation sums in the same order whatever the cluster became.
    """

    def __init__(self, ridge=1e-8, max_iter=30, *, device=None, backend="auto", persist="auto",
                 split_every=4, resources=None, checkpoint=None, identity=None, progress=False,
                 callbacks=None, client=None, keep_state=True):
        self.ridge = ridge
        self.max_iter = max_iter
        self.device = device
        self.backend = backend
        self.persist = persist
        self.split_every = split_every
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
        for name, (accepts, expected) in PARAMETER_CONSTRAINTS.items():
            value = getattr(self, name)
            if not accepts(value):
                raise InvalidParameterError(f"ProbeFitter: {name}: found {value!r}; "
                                            f"expected {expected}")

    # -- helpers ---------------------------------------------------------------------------
    def _pass(self, client, blocks, kernel, *args, **kwargs):
        return run_pass(client, blocks, kernel, *args, split_every=self.split_every,
                        resources=self.resources, groups=self.worker_threads_, **kwargs)

    def _progress_bar(self, n_iter):
        if not self.progress:
            return None
        return tqdm(total=self.max_iter, initial=min(n_iter, self.max_iter),
                    desc="solver passes", unit="pass")

    def _fit_rows(self, client, blocks, n_classes, checkpoint, sizes):
        """The fit on blocks read from disk every pass: one task per group of row blocks
        (``engine.passes``), and the driver, which holds the solver state, steps every
        active pair. Returns ``(state, pairs still active)``."""
        if self.label_sums_ is None:
            emit(self.callbacks, Stage.LABEL_COUNTS_START, n_blocks=len(blocks),
                 n_joined=len(blocks))
            self.label_sums_ = self._pass(client, blocks, kernels.label_sums, n_classes)
        self.blocks_ = blocks
        self.constants_ = constants = ProblemConstants.from_label_sums(self.label_sums_,
                                                                       ridge=self.ridge)
        state = None
        if checkpoint is not None and checkpoint.exists():
            state = checkpoint.load()
            emit(self.callbacks, Stage.RESUMED, n_iter=state.n_iter, path=str(self.checkpoint))
        if state is None:
            state = init_state(constants)
        emit(self.callbacks, Stage.FIT_START, **sizes, persisted=False,
             n_pairs=int(state.active.sum()), n_total=int(state.active.size))
        bar = self._progress_bar(state.n_iter)
        try:
            while state.n_iter < self.max_iter:
                pairs = state.active_pairs()
                if pairs.n_pairs == 0:
                    break
                start = time.perf_counter()
                # (non-zero x active pair) units this pass costs: what its time is spent on
                work_units = int(np.diff(pairs.latent_ptr) @ self.label_sums_.count)
                pairs_future = broadcast(client, pairs)
                del pairs  # the workers have them: no driver copy while the pass runs
                try:
                    sums = self._pass(client, blocks, kernels.fit_sums, pairs_future,
                                      device=self.device, backend=self.backend)
                finally:
                    pairs_future.release()
                if checkpoint is not None:
                    checkpoint.wait()  # the last write reads the state: finish it first
                stats = solver_step(constants, state, sums, threads=_driver_threads())
                del sums  # let go before the next pass's sums arrive
                stats["pass_seconds"] = time.perf_counter() - start
                stats["work_units"] = work_units
                self.history_.append(stats)
                if checkpoint is not None:
                    checkpoint.save(state)
                emit(self.callbacks, Stage.ITERATION, **stats)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(active=state.n_active)  # no (L, C) sync per pass
        finally:
            if bar is not None:
                bar.close()
        self.coef_, self.intercept_, self.converged_ = state.w, state.b, state.converged
        self.n_iter_ = int(state.n_iter)
        return state, state.n_active

    def _start_ranges(self, client, data, bounds, n_classes, checkpoint):
        """Every range's first ``RangeFit`` (from the checkpoint when there is one), and
        the pass it is at."""
        resume, n_iter = None, 0
        if checkpoint is not None and checkpoint.exists():
            n_iter = checkpoint.stored_pass()
            resume = (str(checkpoint.path), checkpoint.identity, n_iter)
        fits = [client.submit(start_range, d, n_classes, self.ridge, a, z, resume,
                              resources=self.resources)
                for d, (a, z) in zip(data, bounds)]
        return fits, n_iter

    def _fit_ranges(self, client, blocks, n_classes, shape, checkpoint, sizes):
        """The fit on persisted latent ranges (``engine.ranges``): one task per range and
        pass sums and steps the range's pairs where its events and state are; the driver
        sees statistics only. Returns ``(state or None, pairs still active)``."""
        count = None if self.label_sums_ is None else self.label_sums_.count
        self.ranges_ = bounds = range_bounds(shape[0], self.worker_threads_, count)
        self.blocks_ = data = persist_ranges(client, blocks, bounds)
        if count is None:  # the ranges count their labels as they start
            emit(self.callbacks, Stage.LABEL_COUNTS_START, n_blocks=len(blocks),
                 n_joined=len(data))
        fits, n_iter = self._start_ranges(client, data, bounds, n_classes, checkpoint)
        # the driver needs no (L, C) constants here: each range keeps its own
        self.constants_ = None
        if n_iter:
            emit(self.callbacks, Stage.RESUMED, n_iter=n_iter, path=str(self.checkpoint))
        counts = read_ranges(client, fits, range_stats)
        n_active = sum(c["n_active"] for c in counts)
        emit(self.callbacks, Stage.FIT_START, **sizes, persisted=True, n_pairs=n_active,
             n_total=shape[0] * shape[1])
        options = dict(device=self.device, backend=self.backend, resident=True)
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
                    parts = read_ranges(client, new, range_stats)
                except CheckpointMoved:  # a lost range restarted from a replaced checkpoint
                    checkpoint.wait()
                    fits, n_iter = self._start_ranges(client, data, bounds, n_classes, checkpoint)
                    self.history_ = [h for h in self.history_ if h["n_iter"] <= n_iter]
                    continue
                fits = new
                stats = combine_stats(parts)
                stats["work_units"] = sum(int(p["work_units"]) for p in parts)
                stats["pass_seconds"] = time.perf_counter() - start
                n_iter, n_active = stats["n_iter"], stats["active_after"]
                self.history_.append(stats)
                if checkpoint is not None:
                    checkpoint.save_parts(n_iter, shape, field_reader(client, fits))
                emit(self.callbacks, Stage.ITERATION, **stats)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(active=n_active)
        finally:
            if bar is not None:
                bar.close()
        self.range_fits_ = fits
        self.n_iter_ = int(n_iter)
        params = gather_rows(client, fits, bounds, shape, range_params,
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
            CSR row blocks (``array.open_shard``), chunked by rows only.
        y : dask.array.Array of uint8, shape (n_rows,)
            Class of each row, same row chunks as ``X``.
        n_classes : int, optional
            Default: ``max(y) + 1``.
        nnz : int, optional
            Non-zeros of ``X`` when known (``Shard.nnz``): whether blocks stay in worker
            memory is then decided before the first pass, which saves reading every block
            twice. Otherwise the label pass counts them first.

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
        blocks = latent_blocks(X, y)
        n_row_blocks = len(blocks)
        have = total_worker_memory(client)
        # Fixed for the whole fit: the groups, hence the order of the sums, stay the same
        # when workers come and go (a lost worker's rerun gives the same bits).
        self.worker_threads_ = worker_threads(client) or len(blocks)
        shape = (int(X.shape[1]), int(n_classes))

        def decide(nnz):
            need = _block_bytes(nnz, X.shape[0], X.shape[1], len(blocks))
            # persisted, the solver state lives beside the blocks (engine.ranges)
            state = RANGE_BYTES_PER_PAIR * shape[0] * shape[1]
            auto = isinstance(self.persist, str)  # "auto", the only string accepted
            fraction = config.get("probe-dask.engine.persist-fraction")
            keep = need + state <= fraction * have if auto else self.persist
            return need, bool(keep)

        self.label_sums_ = None
        if nnz is None:  # the label pass counts them (and gives the ranges' balance)
            emit(self.callbacks, Stage.LABEL_COUNTS_START, n_blocks=n_row_blocks,
                 n_joined=n_row_blocks)
            self.label_sums_ = self._pass(client, blocks, kernels.label_sums, n_classes)
            nnz = int(self.label_sums_.count.sum())
        need, self.persisted_ = decide(nnz)
        checkpoint = None
        if self.checkpoint is not None:
            checkpoint = Checkpoint(self.checkpoint,
                                    checkpoint_identity(self.identity, n_classes, self.ridge))
        self.history_ = []
        self.ranges_ = self.range_fits_ = None
        try:
            if self.persisted_:
                state = self._fit_ranges(client, blocks, n_classes, shape, checkpoint,
                                         dict(block_bytes=need, worker_memory=have))
            else:
                state = self._fit_rows(client, blocks, n_classes, checkpoint,
                                       dict(block_bytes=need, worker_memory=have))
        finally:
            if checkpoint is not None:
                checkpoint.wait()  # the last checkpoint is whole before fit returns

        state, n_active = state
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
