"""Writing results atomically: ``probe1d_metrics.npz`` and the per-class table.

Every file is written under a temporary name in its final folder and renamed into place,
so a reader (or a killed run) never sees a half-written result.

Memory per process: the arrays being written (seven ``(L, C)`` float32 matrices, about
140 MB at 32768 x 151) and nothing more.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from probe_dask.errors import ProbeDaskError

__all__ = ["atomic_path", "write_metrics_npz", "write_json", "METRIC_KEYS", "check_writable"]

#: Keys of ``probe1d_metrics.npz`` read by the users' notebooks (docs/formats.md).
METRIC_KEYS = ("loss", "weights", "biases", "tp", "fp", "tn", "fn")


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it to ``path`` on success.

    On failure the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_metrics_npz(path, *, loss, weights, biases, tp, fp, tn, fn) -> Path:
    """Write one split's ``probe1d_metrics.npz`` (float32 ``(n_latents, n_classes)`` arrays)."""
    arrays = dict(loss=loss, weights=weights, biases=biases, tp=tp, fp=fp, tn=tn, fn=fn)
    shape = np.shape(loss)
    for key, value in arrays.items():
        if np.shape(value) != shape:
            raise ValueError(f"{key} has shape {np.shape(value)}, expected {shape}")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **{k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()})
    return Path(path)


def write_json(path, obj) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, allow_nan=True) + "\n")
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
