"""The solver's per-pair state: what one trust-region iteration reads and writes.

:class:`TrustRegionState` holds the parameters, damping, logit budget and the memory of
the last step of every (latent, class) pair; :func:`init_state` starts every pair at its
prior. A checkpoint is this state as plain arrays (:meth:`TrustRegionState.to_dict`).

Memory per process (``L`` latents, ``C`` classes): 11 float64 and 3 bool ``(L, C)``
arrays, 91 bytes a pair (0.45 GB at 32768 x 151); :meth:`~TrustRegionState.active_pairs`
adds ``8 (L+1) + 20 P`` bytes for the ``P`` active pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from probe_dask.core.datatypes import ActivePairs
from probe_dask.core.objective import newton_decrement, pair_derivatives
from probe_dask.core.tuning import DELTA, LAM_INIT

__all__ = ["TrustRegionState", "init_state"]


@dataclass
class TrustRegionState:
    """Per-pair solver state; every array has shape (L, C).

    Parameters
    ----------
    b, w, lam : ndarray of float64
        Parameters and damping (in ``[LAM_MIN, LAM_MAX]``).
    pred_prev, loss_prev : ndarray of float64
        Predicted reduction of the last step (NaN: none, the next lagged ratio is skipped);
        F where the last pass evaluated the pair (for a stopped pair: its final F).
    grad, decrement : ndarray of float64
        ``max(|g0|, |g1| / qx)`` and the Newton decrement where last evaluated.
    budget : ndarray of float64
        Logit budget of the next step (scaled units; starts at ``DELTA``).
    step_b, step_u, quad_prev : ndarray of float64
        Last step taken, in scaled coordinates (``b -= step_b``, ``qx w -= step_u``), and
        its quadratic model term ``d^T H d``: what a lagged backtrack needs.
    clipped_prev, active, converged : ndarray of bool
        Last step hit the logit budget; still iterating; met the stopping rule (pairs of
        empty latents count as converged).
    n_iter : int
        Steps taken.
    """

    b: np.ndarray
    w: np.ndarray
    lam: np.ndarray
    pred_prev: np.ndarray
    loss_prev: np.ndarray
    grad: np.ndarray
    decrement: np.ndarray
    budget: np.ndarray
    step_b: np.ndarray
    step_u: np.ndarray
    quad_prev: np.ndarray
    clipped_prev: np.ndarray
    active: np.ndarray
    converged: np.ndarray
    n_iter: int = 0

    FLOAT_FIELDS: ClassVar[tuple] = ("b", "w", "lam", "pred_prev", "loss_prev", "grad",
                                     "decrement", "budget", "step_b", "step_u", "quad_prev")
    BOOL_FIELDS: ClassVar[tuple] = ("clipped_prev", "active", "converged")

    def __post_init__(self):
        # C-contiguous, so that ravel() is a view step() can write through;
        for name in self.FLOAT_FIELDS + self.BOOL_FIELDS:
            dtype = np.float64 if name in self.FLOAT_FIELDS else np.bool_
            # Own, writable arrays: a broadcast view (L = 1) is contiguous but read-only, and
            # a view would change what it views. An array already so is kept, not copied
            # (init_state's fresh arrays: no second copy of the state at the start).
            value = np.require(getattr(self, name), dtype=dtype,
                               requirements=["C_CONTIGUOUS", "WRITEABLE", "OWNDATA"])
            if value.ndim != 2 or value.shape != np.shape(self.b):
                raise ValueError(f"{name}: shape {value.shape}; expected {np.shape(self.b)} (L, C)")
            setattr(self, name, value)
        self.n_iter = int(self.n_iter)

    @property
    def n_active(self) -> int:
        """Pairs the next pass must compute."""
        return int(np.count_nonzero(self.active))

    def active_index(self):
        """The active pairs, latent-major, classes ascending: ``latent_ptr`` int64 (L+1,),
        ``classes`` int32 (P,) and ``flat`` int64 (P,), their index in raveled (L, C)."""
        flat = np.flatnonzero(self.active)
        latent_ptr = np.zeros(self.active.shape[0] + 1, dtype=np.int64)
        np.cumsum(np.count_nonzero(self.active, axis=1), out=latent_ptr[1:])
        return latent_ptr, (flat % self.active.shape[1]).astype(np.int32), flat

    def active_pairs(self):
        """The pairs the next pass must compute, as ``core.datatypes.ActivePairs``."""
        latent_ptr, classes, flat = self.active_index()
        return ActivePairs(latent_ptr=latent_ptr, classes=classes,
                           b=self.b.ravel()[flat], w=self.w.ravel()[flat])

    def copy(self) -> "TrustRegionState":
        """A state of its own (every array copied once)."""
        return self.latent_slice(0, self.b.shape[0])

    def latent_slice(self, start: int, stop: int) -> "TrustRegionState":
        """The pairs of latents ``start:stop`` as a state of their own (copies)."""
        return TrustRegionState(**{name: getattr(self, name)[start:stop].copy()
                                   for name in self.FLOAT_FIELDS + self.BOOL_FIELDS},
                                n_iter=self.n_iter)

    def to_dict(self, copy=True) -> dict:
        """Every field as a plain array (``n_iter`` 0-d int64), for ``np.savez``: copies,
        or with ``copy=False`` the state's own arrays."""
        out = {name: getattr(self, name).copy() if copy else getattr(self, name)
               for name in self.FLOAT_FIELDS + self.BOOL_FIELDS}
        out["n_iter"] = np.array(self.n_iter, dtype=np.int64)
        return out

    @classmethod
    def from_dict(cls, d) -> "TrustRegionState":
        """Inverse of :meth:`to_dict`; missing or extra keys raise ValueError."""
        names = set(cls.FLOAT_FIELDS + cls.BOOL_FIELDS) | {"n_iter"}
        if set(d) != names:
            raise ValueError(f"state keys: found {sorted(d)}; expected {sorted(names)}")
        return cls(**{k: np.array(v) for k, v in d.items() if k != "n_iter"},
                   n_iter=int(np.asarray(d["n_iter"])))


def init_state(constants) -> TrustRegionState:
    """Every pair at ``(b0_c, 0)``; pairs of empty latents stay there, converged, with
    their closed-form F, gradient and decrement filled in."""
    k, shape = constants, constants.shape
    active = np.broadcast_to((k.count > 0)[:, None], shape).copy()
    st = TrustRegionState(
        b=np.broadcast_to(k.b0, shape), w=np.zeros(shape), lam=np.full(shape, LAM_INIT),
        pred_prev=np.full(shape, np.nan), loss_prev=np.full(shape, np.nan),
        grad=np.full(shape, np.nan), decrement=np.full(shape, np.nan),
        budget=np.full(shape, DELTA), step_b=np.zeros(shape), step_u=np.zeros(shape),
        quad_prev=np.full(shape, np.nan), clipped_prev=np.zeros(shape, bool), active=active,
        converged=~active)
    flat = np.flatnonzero(~active)
    latent, cls = np.divmod(flat, shape[1])
    d = pair_derivatives(k, latent, cls, k.b0[cls], np.zeros(flat.size), np.zeros((6, flat.size)))
    st.loss_prev.ravel()[flat] = d.loss
    st.grad.ravel()[flat] = np.maximum(np.abs(d.g0), np.abs(d.g1) / k.qx[latent])
    st.decrement.ravel()[flat] = newton_decrement(d, k.qx[latent])
    return st
