"""The fit loop: solver, kernels and the cluster tied together, with checkpoints.

``ProbeFitter`` is an estimator in the scikit-learn / dask-ml style: parameters in
``__init__`` (also the client, checkpoint and progress bar), ``get_params`` /
``set_params``, parameters checked at ``fit`` (:data:`PARAMETER_CONSTRAINTS`), ``fit(X, y)``
on dask arrays returns ``self``, fitted attributes end in ``_``, and a
``ConvergenceWarning`` when ``max_iter`` stops pairs that had not converged.

One solver iteration is one pass over the row blocks for all classes together: the
parameters of the pairs still active are scattered once (``broadcast=True``, docs/architecture.md
pitfall 4), one task per worker thread sums the label-free float64 sums of its group of
blocks for those pairs (``engine.passes``), the group sums are tree-summed, and the driver
takes one trust-region step for every active pair (``kernels.step``: compiled, about
0.05 µs a pair, split over the driver's cores).

Memory per process: the driver holds the solver state (about a dozen ``(L, C)`` float64
arrays, see ``core.state``; a checkpoint is written from it, not from a copy), the
active pairs (20 bytes a pair) and one ``(6, P)`` float64 sum; each worker holds its resident
blocks (when they fit, else one block read at a time per thread; with the Triton kernels
also their device copies, up to ``probe-dask.kernels.gpu-resident-fraction`` of the GPU,
``kernels.resident``), the scattered active
pairs (about 28 bytes per pair) and two ``(6, P)`` partials per thread, whatever the
number of blocks (``passes``).
"""

from __future__ import annotations

import inspect
import math
import numbers
import os
import time
import warnings
from collections.abc import Mapping

import numpy as np
from distributed import Client, get_client
from tqdm.auto import tqdm

from probe_dask import config, kernels
from probe_dask.core.objective import ProblemConstants
from probe_dask.core.state import init_state
from probe_dask.engine.checkpoint import Checkpoint, checkpoint_identity
from probe_dask.engine.passes import (broadcast, latent_blocks, persist_blocks, run_pass,
                                     worker_threads)
from probe_dask.engine.workers import total_worker_memory
from probe_dask.errors import ConvergenceWarning, InvalidParameterError
from probe_dask.kernels.step import solver_step
from probe_dask.stages import Stage, emit

__all__ = ["ProbeFitter"]


def _block_bytes(nnz: int, n_rows: int, n_latents: int, n_blocks: int) -> int:
    """Bytes of all ``LatentBlock`` s: values, rows, latent pointers and labels."""
    return int(nnz) * 8 + int(n_rows) + n_blocks * (int(n_latents) + 1) * 8


def _driver_threads() -> int:
    """Threads of the driver's solver step: the cores this process may use, at most 8
    (the workers wait for the step, so their cores are free)."""
    return max(1, min(8, len(os.sched_getaffinity(0))))


def _real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def _integer(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def _device(v) -> bool:
    """None, "auto", "cpu", "cuda" or "cuda:<index>"."""
    if v is None or v in ("auto", "cpu", "cuda"):
        return True
    return isinstance(v, str) and v.startswith("cuda:") and v[5:].isdigit()


#: What each ``ProbeFitter`` parameter accepts (checked at ``fit``): a test, and what it
#: expects in words (the error message).
PARAMETER_CONSTRAINTS = {
    "ridge": (lambda v: _real(v) and math.isfinite(v) and v > 0, "a finite number > 0"),
    "max_iter": (lambda v: _integer(v) and v >= 1, "an int >= 1"),
    "device": (_device, 'None, "auto", "cpu", "cuda" or "cuda:<index>"'),
    "backend": (lambda v: isinstance(v, str) and v in kernels.BACKENDS,
                " or ".join(f'"{b}"' for b in kernels.BACKENDS)),
    "persist": (lambda v: (isinstance(v, str) and v == "auto")
                or isinstance(v, (bool, np.bool_)), '"auto", True or False'),
    "split_every": (lambda v: _integer(v) and v >= 2, "an int >= 2"),
    "resources": (lambda v: v is None or isinstance(v, Mapping), "None or a dict"),
    "checkpoint": (lambda v: v is None or isinstance(v, (str, os.PathLike)), "None or a path"),
    "identity": (lambda v: v is None or isinstance(v, Mapping), "None or a dict"),
    "progress": (lambda v: isinstance(v, (bool, np.bool_)), "True or False"),
    "callbacks": (lambda v: v is None or (isinstance(v, (list, tuple))
                                          and all(callable(c) for c in v)),
                  "None or a list of callables"),
    "client": (lambda v: v is None or isinstance(v, Client), "None or a distributed.Client"),
    "keep_state": (lambda v: isinstance(v, (bool, np.bool_)), "True or False"),
}


class ProbeFitter:
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
        Keep blocks in worker memory between passes. ``"auto"`` keeps them when they
        take less than ``probe-dask.engine.persist-fraction`` (configuration) of the workers' memory, else re-reads them
        from disk every pass (bounded memory whatever the shard size).
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
    label_sums_ : kernels.LabelSums
        Label statistics of the training data.
    constants_ : core.objective.ProblemConstants
    state_ : core.state.TrustRegionState or None
        The solver state at the end (what a checkpoint holds); None with
        ``keep_state=False``.
    n_classes_ : int
    history_ : list of dict
        Per-iteration solver statistics, with the pass wall time.
    blocks_ : list
        The training blocks (persisted when they fit, then joined per worker thread up to
        ``probe-dask.engine.join-nnz`` non-zeros: ``passes.coalesce_blocks``), reusable for
        evaluation.
    persisted_ : bool
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

    # -- parameters (scikit-learn's estimator API, without depending on it) ----------------
    @classmethod
    def _get_param_names(cls) -> list[str]:
        """The parameters of ``__init__``, sorted (as ``sklearn.base.BaseEstimator``)."""
        params = inspect.signature(cls.__init__).parameters.values()
        return sorted(p.name for p in params if p.name != "self" and p.kind != p.VAR_KEYWORD)

    def get_params(self, deep=True) -> dict:
        """Every ``__init__`` parameter and its value (``deep`` is accepted for
        scikit-learn's API; no parameter is an estimator)."""
        return {name: getattr(self, name) for name in self._get_param_names()}

    def set_params(self, **params) -> "ProbeFitter":
        """Set parameters by name (checked at ``fit``); returns ``self``. An unknown name
        raises InvalidParameterError (a ValueError)."""
        valid = self._get_param_names()
        for name, value in params.items():
            if name not in valid:
                raise InvalidParameterError(f"ProbeFitter: no parameter {name!r}; expected one "
                                            f"of {', '.join(valid)}")
            setattr(self, name, value)
        return self

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

        def decide(nnz):
            need = _block_bytes(nnz, X.shape[0], X.shape[1], len(blocks))
            auto = isinstance(self.persist, str)  # "auto", the only string accepted
            keep = need <= config.get("probe-dask.engine.persist-fraction") * have if auto else self.persist
            return need, bool(keep)

        def persist_joined(blocks, nnz):
            # Joined per worker thread up to join-nnz: the pass costs the kernel, not the cut.
            per_unit = int(config.get("probe-dask.engine.join-nnz")) // max(1, math.ceil(
                int(nnz) / len(blocks)))
            return persist_blocks(client, blocks, self.worker_threads_, per_unit=per_unit)

        persist = None
        if nnz is not None:
            need, persist = decide(nnz)
            if persist:
                blocks = persist_joined(blocks, nnz)
        emit(self.callbacks, Stage.LABEL_COUNTS_START, n_blocks=n_row_blocks,
             n_joined=len(blocks))
        self.label_sums_ = self._pass(client, blocks, kernels.label_sums, n_classes)
        if persist is None:
            need, persist = decide(self.label_sums_.count.sum())
            if persist:
                blocks = persist_joined(blocks, self.label_sums_.count.sum())
        self.persisted_ = bool(persist)
        self.blocks_ = blocks
        self.constants_ = constants = ProblemConstants.from_label_sums(self.label_sums_,
                                                                       ridge=self.ridge)

        state, checkpoint = None, None
        if self.checkpoint is not None:
            checkpoint = Checkpoint(self.checkpoint,
                                    checkpoint_identity(self.identity, n_classes, self.ridge))
        if checkpoint is not None and checkpoint.exists():
            state = checkpoint.load()
            emit(self.callbacks, Stage.RESUMED, n_iter=state.n_iter, path=str(self.checkpoint))
        if state is None:
            state = init_state(constants)
        self.history_ = []
        emit(self.callbacks, Stage.FIT_START, block_bytes=need, worker_memory=have,
             persisted=self.persisted_, n_pairs=int(state.active.sum()),
             n_total=int(state.active.size))

        bar = None
        if self.progress:
            bar = tqdm(total=self.max_iter, initial=min(state.n_iter, self.max_iter),
                       desc="solver passes", unit="pass")
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
                                      device=self.device, backend=self.backend,
                                      resident=self.persisted_)
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
            if checkpoint is not None:
                checkpoint.wait()  # the last checkpoint is whole before fit returns

        self.state_ = state if self.keep_state else None
        self.coef_ = state.w
        self.intercept_ = state.b
        self.converged_ = state.converged
        self.n_iter_ = int(state.n_iter)
        self.n_classes_ = int(n_classes)
        emit(self.callbacks, Stage.FIT_END, n_iter=self.n_iter_, n_active=int(state.active.sum()))
        n_active, n_pairs = state.n_active, state.active.size
        del state  # with keep_state=False, only coef_, intercept_ and converged_ stay
        if n_active and self.n_iter_ >= self.max_iter:
            warnings.warn(f"ProbeFitter: max_iter={self.max_iter} passes made; {n_active:,} "
                          f"of {n_pairs:,} pairs had not converged (raise max_iter)",
                          ConvergenceWarning, stacklevel=2)
        return self
