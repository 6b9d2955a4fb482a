"""Paths given by the user: existence checks that suggest the closest existing path.

A typo in a shard id or a run folder should cost one line that says what is there
instead (``did you mean .../4b0c69be``), not a traceback about ``metadata.json``.

Memory per process: a directory listing at a time.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from probe_dask.errors import InputError

__all__ = ["require_dir", "require_file", "missing_hint", "inference_dir", "activations_path",
           "ACTIVATIONS_NAME", "METRICS_NAME", "CLASSES_NAME", "CHECKPOINT_NAME",
           "LATENT_MAJOR_NAME"]

#: The SAE activations of a shard, inside ``<run>/inference/<shard_id>/``.
ACTIVATIONS_NAME = "token_acts.npz"
#: The results of a split, beside its activations (what the users' notebooks read).
METRICS_NAME = "probe1d_metrics.npz"
#: The per-class table of a run, beside each split's metrics.
CLASSES_NAME = "probe1d_classes.json"
#: The solver's state after each pass, in the train split's folder until the results exist.
CHECKPOINT_NAME = ".probe1d_checkpoint.npz"
#: The latent-major layout of a train shard, inside its store (``io.latent_major``).
LATENT_MAJOR_NAME = "latent-major"


def inference_dir(run_dir, shard_id) -> Path:
    """``<run>/inference/<shard_id>``: a shard's activations and its results (saev layout)."""
    return Path(run_dir) / "inference" / str(shard_id)


def activations_path(run_dir, shard_id) -> Path:
    """Path of ``token_acts.npz`` of a shard inside a run (saev layout)."""
    return inference_dir(run_dir, shard_id) / ACTIVATIONS_NAME

_SHOWN = 6  # names of a folder listed when nothing in it is close


def _listdir(folder: Path) -> list[str]:
    try:
        return sorted(n for n in os.listdir(folder) if not n.startswith("."))
    except OSError:
        return []


def closest_existing(path) -> tuple[Path, list[str]]:
    """The existing path nearest to ``path``.

    Walks up to the deepest ancestor of ``path`` that exists, then down again one missing
    component at a time, taking the closest name (``difflib``) while one is close enough.

    Returns
    -------
    closest : pathlib.Path
        An existing path.
    names : list of str
        When ``closest`` is a folder where no name was close to the next missing
        component, the first few names it holds (else empty).
    """
    p = Path(os.path.abspath(os.fspath(path)))
    parts = p.parts
    i = len(parts)
    while i > 1 and not Path(*parts[:i]).exists():
        i -= 1
    base = Path(*parts[:i])
    for name in parts[i:]:
        children = _listdir(base) if base.is_dir() else []
        match = difflib.get_close_matches(name, children, n=1, cutoff=0.6)
        if not match:
            return base, children[:_SHOWN] + (["..."] if len(children) > _SHOWN else [])
        base = base / match[0]
    return base, []


def missing_hint(path) -> str:
    """``"closest existing path: X"`` (with a few names X holds when none is close)."""
    closest, names = closest_existing(path)
    hint = f"closest existing path: {closest}"
    if names:
        hint += f" (holds {', '.join(names)})"
    elif closest.is_dir() and not _listdir(closest):
        hint += " (empty folder)"
    return hint


def _require(path, field, expected, is_kind, kind, other):
    p = Path(os.path.abspath(os.fspath(path)))
    if is_kind(p):
        return p
    if p.exists():
        raise InputError(p, field, f"a {other}, not a {kind}", expected)
    raise InputError(p, field, f"no such {kind}", f"{expected}; {missing_hint(p)}")


def require_dir(path, field: str, expected: str) -> Path:
    """Return ``path`` when it is a folder; else raise ``InputError`` with a suggestion."""
    return _require(path, field, expected, Path.is_dir, "folder", "file")


def require_file(path, field: str, expected: str) -> Path:
    """Return ``path`` when it is a file; else raise ``InputError`` with a suggestion."""
    return _require(path, field, expected, Path.is_file, "file", "folder")
