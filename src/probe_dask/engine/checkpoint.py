"""The fit's checkpoint file: solver state saved atomically after each pass, resumed later.

A checkpoint is one ``.npz`` holding the fields of ``core.state.TrustRegionState`` and an
``identity``: JSON of what the state belongs to (the input's identity, the number of
classes, the ridge). The fit's state lives on the workers, one latent range each
(``engine.ranges``): :meth:`Checkpoint.save_parts` writes the file from the ranges, each
field streamed range by range into the ``.npz``, in a background thread (renamed into
place, so a killed fit leaves the previous checkpoint whole) while the next pass runs, and
each range reads back its own rows when the fit resumes (:func:`load_range`).
:meth:`Checkpoint.load` reads the whole state. A file of other input or settings, or one
that cannot be read, is refused with one line naming what differs.

The next pass never waits for a write: a pass that ends while the previous write is still
going is not written (the write after it is, and the fit writes its last pass before it
returns), so a slow file system costs passes of the checkpoint, not solver time.

Memory per process: on the driver, one field of every range while it is written (8 bytes a
pair: the reads of a field are submitted together, so their round trips overlap); nothing
on the workers beyond the ranges' states. :func:`load_range` holds one whole field
(8 L C bytes) while slicing it.
"""

from __future__ import annotations

import json
import threading
import zipfile
from pathlib import Path

import numpy as np

from probe_dask.core.state import TrustRegionState
from probe_dask.errors import MachineError, ProbeDaskError
from probe_dask.io.outputs import atomic_path

__all__ = ["Checkpoint", "CheckpointMoved", "checkpoint_identity", "stored_pass", "load_range"]


def stored_pass(path) -> int | None:
    """The pass a checkpoint file holds (its ``n_iter``); None when absent or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return int(f["n_iter"])
    except Exception:  # noqa: BLE001 - absent, damaged, not ours: no pass to resume from
        return None


def checkpoint_identity(input_identity, n_classes, ridge) -> str:
    """JSON (sorted keys) of what a checkpoint's state belongs to."""
    ident = {"input": input_identity, "n_classes": int(n_classes), "ridge": float(ridge)}
    return json.dumps(ident, sort_keys=True, default=str)


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


class CheckpointMoved(RuntimeError):
    """The checkpoint a range was to start from has been replaced by a later pass's (a lost
    range recomputed from the fit's start): the fit starts every range again from the file."""


def _unreadable(path, exc) -> ProbeDaskError:
    """The one line for a checkpoint that is not ours, of an older layout, or damaged."""
    return ProbeDaskError(f"{path}: checkpoint unreadable ({type(exc).__name__}: {exc}); "
                          "rerun with --restart to ignore it")


def _read_identity(path, identity: str) -> int:
    """The pass stored at ``path`` after checking its identity and fields (ProbeDaskError
    otherwise); no field is loaded."""
    try:
        with np.load(path, allow_pickle=False) as f:
            stored = str(f["identity"])
            if stored != identity:
                raise ProbeDaskError(
                    f"{path}: checkpoint is for other input or settings "
                    f"({_identity_diff(stored, identity)}); rerun with --restart "
                    "to ignore it")
            missing = set(TrustRegionState.FLOAT_FIELDS + TrustRegionState.BOOL_FIELDS
                          + ("n_iter",)) - {k for k in f.files}
            if missing:
                raise ValueError(f"no {', '.join(sorted(missing))}")
            return int(f["n_iter"])
    except ProbeDaskError:
        raise
    except Exception as exc:  # not ours, older layout, damaged: say so, never guess
        raise _unreadable(path, exc) from None


def _read_state(path, n_iter: int, latents: slice) -> TrustRegionState:
    """The stored state of ``latents`` (copies), once its identity was checked."""
    try:
        with np.load(path, allow_pickle=False) as f:
            fields = {name: f[name][latents].copy()
                      for name in TrustRegionState.FLOAT_FIELDS + TrustRegionState.BOOL_FIELDS}
        return TrustRegionState(**fields, n_iter=int(n_iter))
    except Exception as exc:  # noqa: BLE001 - damaged after its header was read
        raise _unreadable(path, exc) from None


def load_range(path, identity: str, n_iter: int, start: int, stop: int) -> TrustRegionState:
    """The state of latents ``start:stop`` stored at ``path`` (a range's start, on its worker).

    Raises
    ------
    CheckpointMoved
        The file holds another pass than ``n_iter``.
    ProbeDaskError
        It belongs to other input or settings, or cannot be read.
    """
    if _read_identity(path, identity) != int(n_iter):
        raise CheckpointMoved(f"{path}: no longer pass {n_iter}")
    return _read_state(path, n_iter, slice(start, stop))


def _write_streamed(f, identity, n_iter, shape, fields) -> None:
    """An ``.npz`` ``np.load`` reads like ``np.savez``'s, each ``(L, C)`` field written from
    its parts: ``fields`` yields ``(name, dtype, parts)``, ``parts`` the field's rows in
    latent order."""
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, value in (("identity", np.array(identity)),
                            ("n_iter", np.array(n_iter, dtype=np.int64))):
            with zf.open(name + ".npy", "w", force_zip64=True) as out:
                np.lib.format.write_array(out, value, allow_pickle=False)
        for name, dtype, parts in fields:
            with zf.open(name + ".npy", "w", force_zip64=True) as out:
                header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                          "fortran_order": False, "shape": tuple(shape)}
                np.lib.format.write_array_header_2_0(out, header)
                rows = 0
                for part in parts:
                    part = np.ascontiguousarray(part, dtype=dtype)
                    rows += part.shape[0]
                    out.write(part.data)
                    del part  # one range's field at a time
                if rows != shape[0]:
                    raise ValueError(f"checkpoint field {name}: {rows} rows; expected {shape[0]}")


class Checkpoint:
    """The checkpoint file at ``path`` for state of ``identity`` (see
    :func:`checkpoint_identity`).

    One write at a time: :meth:`save_parts` starts one unless one is in flight (it raises
    the last write's error, if any); :meth:`wait` makes the last one whole.
    """

    def __init__(self, path, identity: str):
        self.path = Path(path)
        self.identity = identity
        self._writer = None
        self._error = None

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> TrustRegionState:
        """The stored state; ProbeDaskError when it belongs to other input or settings or
        cannot be read."""
        return _read_state(self.path, self.stored_pass(), slice(None))

    def stored_pass(self) -> int:
        """The pass the file holds; ProbeDaskError when it belongs to other input or
        settings or cannot be read (nothing else is loaded)."""
        return _read_identity(self.path, self.identity)

    def busy(self) -> bool:
        """Whether a write is in flight."""
        return self._writer is not None and self._writer.is_alive()

    def save_parts(self, n_iter: int, shape, fetch) -> bool:
        """Write the state of pass ``n_iter`` from its latent ranges, in a thread that
        overlaps the next pass, unless a write is still in flight.

        Parameters
        ----------
        n_iter : int
        shape : (L, C)
        fetch : callable
            ``fetch(name)`` yields the field ``name`` of every range, in latent order.

        Returns
        -------
        bool
            Whether the write started (False: the previous one is still going; nothing
            waited for it).
        """
        if self.busy():
            return False
        self.wait()  # the last write's error, if any
        fields = [(name, np.float64 if name in TrustRegionState.FLOAT_FIELDS else np.bool_)
                  for name in TrustRegionState.FLOAT_FIELDS + TrustRegionState.BOOL_FIELDS]

        def write():
            try:
                with atomic_path(self.path) as tmp:
                    with open(tmp, "wb") as f:
                        _write_streamed(f, self.identity, n_iter, shape,
                                        ((n, d, fetch(n)) for n, d in fields))
            except OSError as exc:  # disk full, quota: one line naming the file, exit 2
                self._error = MachineError(self.path, exc, "writing the checkpoint; the "
                                           "previous one is kept")
            except CheckpointMoved:
                pass  # a range it read was lost: the fit restarts from the file, kept whole
            except BaseException as exc:  # raised in the fit's thread by wait()
                self._error = exc

        self._writer = threading.Thread(target=write, name="probe-dask-checkpoint", daemon=True)
        self._writer.start()
        return True

    def wait(self) -> None:
        """Wait for the write in flight, if any; raise its error."""
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        error, self._error = self._error, None
        if error is not None:
            raise error
