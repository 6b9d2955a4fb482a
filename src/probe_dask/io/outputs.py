"""Writing results atomically: ``probe1d_metrics.npz`` and the per-class table.

Every file is written under a temporary name in its final folder, synced, and renamed
into place (its folder synced after), so a reader, a killed run or a crashed node never
sees a half-written result. Files get the mode a plain
``open`` would give them under the user's umask, never group- or world-writable
(:func:`publish_mode`), so lab-mates can read results; JSON is strict (``null`` for NaN).

Memory per process: the array being written (one ``(L, C)`` float32 matrix, about 20 MB
at 32768 x 151) and nothing more.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from probe_dask.errors import ProbeDaskError
from probe_dask.io.jsonsafe import dumps_strict
from probe_dask.io.durable import durable_file

__all__ = ["atomic_path", "write_metrics_npz", "write_json", "METRIC_KEYS", "check_writable",
           "current_umask", "publish_mode"]

#: Keys of ``probe1d_metrics.npz`` read by the users' notebooks (docs/formats.md).
METRIC_KEYS = ("loss", "weights", "biases", "tp", "fp", "tn", "fn")


def current_umask() -> int:
    """This process's umask, read without changing it where Linux allows (``/proc``)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: read by setting (briefly) and restoring it
    os.umask(mask)
    return mask


def publish_mode(umask=None) -> int:
    """Mode of a result file: ``0o666 & ~umask``, and never group- or world-writable.

    ``mkstemp`` creates ``-rw-------`` files whatever the umask; results are meant to be
    read by the group (umask 0022 gives 0644), yet not replaced by anyone else.
    """
    umask = current_umask() if umask is None else umask
    return 0o666 & ~umask & ~0o022


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it to ``path`` on success, durably.

    The file gets :func:`publish_mode`, is synced, renamed, and its folder synced
    (:func:`~probe_dask.io.durable.durable_file`). On failure the temporary file is removed
    and ``path`` is left as it was.
    """
    with durable_file(path, publish_mode()) as tmp:
        yield tmp


def write_metrics_npz(path, *, loss, weights, biases, tp, fp, tn, fn, converged=None) -> Path:
    """Write one split's ``probe1d_metrics.npz``.

    The seven :data:`METRIC_KEYS` are float32 ``(n_latents, n_classes)`` arrays, as the
    notebooks read them; ``converged`` (same shape), when given, is stored as a bool array
    ``converged``: whether each pair met the solver's stopping rule.
    """
    arrays = dict(loss=loss, weights=weights, biases=biases, tp=tp, fp=fp, tn=tn, fn=fn)
    shape = np.shape(loss)
    extra = {} if converged is None else {"converged": converged}
    for key, value in {**arrays, **extra}.items():
        if np.shape(value) != shape:
            raise ValueError(f"{key} has shape {np.shape(value)}, expected {shape}")
    dtypes = {**{k: np.float32 for k in arrays}, **{k: np.bool_ for k in extra}}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED,
                                                   allowZip64=True) as zf:
            # what np.savez writes, one converted array at a time (20 MB at 32768 x 151,
            # not all seven at once)
            for key, value in {**arrays, **extra}.items():
                with zf.open(key + ".npy", "w", force_zip64=True) as out:
                    np.lib.format.write_array(out, np.asarray(value, dtype=dtypes[key]),
                                              allow_pickle=False)
    return Path(path)


def write_json(path, obj) -> Path:
    """Write ``obj`` as indented strict JSON (NaN and infinities as ``null``), atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(dumps_strict(obj, indent=1) + "\n")
    return Path(path)


def check_writable(folder) -> None:
    """Raise ``ProbeDaskError`` now if results cannot be written into ``folder``.

    Called before any fitting, so a read-only output folder costs seconds, not hours.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".probe-dask-write-test.", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        raise ProbeDaskError(
            f"{folder}: output folder is not writable ({err.strerror}); "
            "results are written into each split's inference folder, so fix its permissions"
        ) from None
