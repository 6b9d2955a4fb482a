"""The fit loop: solver, kernels and the cluster tied together, with checkpoints.

``ProbeFitter`` is an estimator in the scikit-learn / dask-ml style: parameters in
``__init__``, ``fit(X, y)`` on dask arrays returns ``self``, fitted attributes end in ``_``.

One solver iteration is one pass over the row blocks for all classes together: the
parameters of the pairs still active are scattered once (``broadcast=True``, design.md
pitfall 4), each block returns its label-free float64 sums for those pairs, the sums are
tree-summed, and the driver takes one trust-region step for every active pair.

Memory per process: the driver holds the solver state (about a dozen ``(L, C)`` float64
arrays, see ``solver``), one copy of it while a checkpoint is being written, and one
``(6, P)`` float64 sum; each worker holds its resident
blocks (when they fit, else one block read per task), the scattered active pairs (about
28 bytes per pair) and the pass's partials (``passes``).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
from distributed import get_client
from tqdm.auto import tqdm

from probe_dask import kernels

from probe_dask.core import solver
from probe_dask.errors import ProbeDaskError
from probe_dask.io.outputs import atomic_path
from probe_dask.engine.passes import latent_blocks, run_pass
from probe_dask.engine.workers import total_worker_memory

__all__ = ["ProbeFitter"]

#: Fraction of the cluster's total worker memory that resident blocks may take.
PERSIST_FRACTION = 0.4


def _block_bytes(nnz: int, n_rows: int, n_latents: int, n_blocks: int) -> int:
    """Bytes of all ``LatentBlock`` s: values, rows, latent pointers and labels."""
    return int(nnz) * 8 + int(n_rows) + n_blocks * (int(n_latents) + 1) * 8


def _identity_diff(stored: str, want: str) -> str:
    """Which entries of two checkpoint identities (JSON) differ, as a short phrase."""
    try:
        old, new = json.loads(stored), json.loads(want)
        flat = [{**{f"input.{k}": v for k, v in (d.get("input") or {}).items()},
                 **{k: v for k, v in d.items() if k != "input"}} for d in (old, new)]
        keys = sorted(k for k in set(flat[0]) | set(flat[1]) if flat[0].get(k) != flat[1].get(k))
    except (ValueError, AttributeError):
        keys = []
    return f"differs in {', '.join(keys)}" if keys else f"stored {stored}"


class ProbeFitter:
    """Fit a 1D logistic-regression probe for every (latent, class) pair.

    Parameters
    ----------
    ridge : float
        Penalty on ``w**2 + (b - b0_c)**2`` (solver.md).
    max_iter : int
        Most solver passes over the data.
    device : str, optional
        ``"cpu"``, ``"cuda"`` or None (each worker picks CUDA when it has a GPU).
    persist : {"auto", True, False}
        Keep blocks in worker memory between passes. ``"auto"`` keeps them when they
        take less than ``PERSIST_FRACTION`` of the workers' memory, else re-reads them
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
        Each is called as ``callback(event, info)`` at each stage and iteration.

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
    constants_ : solver.ProblemConstants
    history_ : list of dict
        Per-iteration solver statistics, with the pass wall time.
    blocks_ : list
        The training blocks (persisted when they fit), reusable for evaluation.
    persisted_ : bool
    """

    def __init__(self, ridge=1e-8, max_iter=30, *, device=None, persist="auto", split_every=4,
                 resources=None, checkpoint=None, identity=None, progress=False, callbacks=None):
        self.ridge = ridge
        self.max_iter = max_iter
        self.device = device
        self.persist = persist
        self.split_every = split_every
        self.resources = resources
        self.checkpoint = checkpoint
        self.identity = identity
        self.progress = progress
        self.callbacks = callbacks

    # -- helpers ---------------------------------------------------------------------------
    def _emit(self, event, **info):
        for callback in self.callbacks or ():
            callback(event, info)

    def _pass(self, client, blocks, kernel, *args, **kwargs):
        return run_pass(client, blocks, kernel, *args, split_every=self.split_every,
                        resources=self.resources, **kwargs)

    def _identity_json(self, n_classes):
        ident = {"input": self.identity, "n_classes": int(n_classes), "ridge": float(self.ridge)}
        return json.dumps(ident, sort_keys=True, default=str)

    def _load_checkpoint(self, n_classes):
        path = Path(self.checkpoint)
        try:
            with np.load(path, allow_pickle=False) as f:
                stored = str(f["identity"])
                want = self._identity_json(n_classes)
                if stored != want:
                    raise ProbeDaskError(
                        f"{path}: checkpoint is for other input or settings "
                        f"({_identity_diff(stored, want)}); rerun with --restart to ignore it")
                state = solver.TrustRegionState.from_dict(
                    {k: f[k] for k in f.files if k != "identity"})
        except ProbeDaskError:
            raise
        except Exception as exc:  # not ours, older layout, damaged: say so, never guess
            raise ProbeDaskError(f"{path}: checkpoint unreadable ({type(exc).__name__}: {exc}); "
                                 "rerun with --restart to ignore it") from None
        return state

    def _save_checkpoint(self, state, n_classes):
        """Write a copy of ``state`` atomically, in a thread that overlaps the next pass.

        One write at a time: the previous one is waited for first (and its error, if any,
        raised here). On the demo (4096 x 151 pairs, 54 MB of state) an inline write held
        the driver about 0.12 s per pass (+15-20 % fit wall time on 2 cores); in the
        background the driver waits about 0.03 s per pass (the copy).
        """
        self._wait_checkpoint()
        arrays = state.to_dict()  # copies: the next step updates the state in place
        identity = np.array(self._identity_json(n_classes))
        path = Path(self.checkpoint)

        def write():
            try:
                with atomic_path(path) as tmp:
                    with open(tmp, "wb") as f:
                        np.savez(f, identity=identity, **arrays)
            except BaseException as exc:  # raised in the fit's thread by _wait_checkpoint
                self._checkpoint_error = exc

        self._checkpoint_error = None
        self._checkpoint_writer = threading.Thread(target=write, name="probe-dask-checkpoint",
                                                   daemon=True)
        self._checkpoint_writer.start()

    def _wait_checkpoint(self):
        """Wait for the checkpoint being written, if any; raise its error."""
        writer = getattr(self, "_checkpoint_writer", None)
        if writer is not None:
            writer.join()
            self._checkpoint_writer = None
        error, self._checkpoint_error = getattr(self, "_checkpoint_error", None), None
        if error is not None:
            raise error

    # -- fitting ---------------------------------------------------------------------------
    def fit(self, X, y, n_classes=None, client=None, nnz=None):
        """Fit every pair on activations ``X`` and labels ``y``.

        Parameters
        ----------
        X : dask.array.Array, shape (n_rows, n_latents)
            CSR row blocks (``array.open_shard``), chunked by rows only.
        y : dask.array.Array of uint8, shape (n_rows,)
            Class of each row, same row chunks as ``X``.
        n_classes : int, optional
            Default: ``max(y) + 1``.
        client : distributed.Client, optional
            Default: the current client.
        nnz : int, optional
            Non-zeros of ``X`` when known (``Shard.nnz``): whether blocks stay in worker
            memory is then decided before the first pass, which saves reading every block
            twice. Otherwise the label pass counts them first.

        Returns
        -------
        self
        """
        client = client or get_client()
        if n_classes is None:
            n_classes = int(y.max().compute()) + 1
        blocks = latent_blocks(X, y)
        have = total_worker_memory(client)

        def decide(nnz):
            need = _block_bytes(nnz, X.shape[0], X.shape[1], len(blocks))
            keep = self.persist if self.persist != "auto" else need <= PERSIST_FRACTION * have
            return need, bool(keep)

        persist = None
        if nnz is not None:
            need, persist = decide(nnz)
            if persist:
                blocks = client.persist(blocks)
        self._emit("label_sums_start", n_blocks=len(blocks))
        self.label_sums_ = self._pass(client, blocks, kernels.label_sums, n_classes)
        if persist is None:
            need, persist = decide(self.label_sums_.count.sum())
            if persist:
                blocks = client.persist(blocks)
        self.persisted_ = bool(persist)
        self.blocks_ = blocks
        self.constants_ = constants = solver.ProblemConstants.from_label_sums(
            self.label_sums_, ridge=self.ridge)

        state = None
        if self.checkpoint is not None and Path(self.checkpoint).exists():
            state = self._load_checkpoint(n_classes)
            self._emit("resumed", n_iter=state.n_iter, path=str(self.checkpoint))
        if state is None:
            state = solver.init_state(constants)
        self.history_ = []
        self._emit("fit_start", block_bytes=need, worker_memory=have, persisted=self.persisted_,
                   n_pairs=int(state.active.sum()))

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
                pairs_future = client.scatter(pairs, broadcast=True, hash=False)
                try:
                    sums = self._pass(client, blocks, kernels.fit_sums, pairs_future,
                                      device=self.device)
                finally:
                    pairs_future.release()
                stats = solver.step(constants, state, sums)
                stats["pass_seconds"] = time.perf_counter() - start
                # (non-zero x active pair) units this pass cost: what its time is spent on
                stats["work_units"] = int(np.diff(pairs.latent_ptr) @ self.label_sums_.count)
                self.history_.append(stats)
                if self.checkpoint is not None:
                    self._save_checkpoint(state, n_classes)
                self._emit("iteration", **stats)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(active=int(state.active.sum()))
        finally:
            if bar is not None:
                bar.close()
            self._wait_checkpoint()  # the last checkpoint is whole before fit returns

        self.state_ = state
        self.coef_ = state.w
        self.intercept_ = state.b
        self.converged_ = state.converged
        self.n_iter_ = int(state.n_iter)
        self.n_classes_ = int(n_classes)
        self._emit("fit_end", n_iter=self.n_iter_, n_active=int(state.active.sum()))
        return self
