"""Sweep files: the list of runs of a sweep, read from Python, JSON or TOML.

A sweep file lists single runs, each a dict with the keys of one ``probe-dask fit``
(``run``, ``train_shards``, ``test_shards``, optionally ``ridge``, ``max_iter``,
``block_nnz``, ``device``, ``cache_dir``, ``debug``, ``name``):

- ``*.py``: a Python file defining ``make_cfgs()`` that returns that list. It is CODE and
  runs with your rights when the sweep is read: run only sweep files you trust.
- ``*.json``: a list of those objects (or ``{"runs": [...]}``).
- ``*.toml``: ``[[runs]]`` tables (TOML has no top-level list).

Relative paths are taken from the sweep file's folder. Values given on the command line win
over the file's. Every mistake is one ``InputError`` naming the file, the run (index and
run id) and the key.

Memory per process: the list of runs (a few paths and numbers each).
"""

from __future__ import annotations

import json
import math
import os
import runpy
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from probe_dask.errors import InputError

__all__ = ["SweepRun", "read_sweep", "RUN_KEYS", "SWEEP_SUFFIXES"]

SWEEP_SUFFIXES = (".py", ".json", ".toml")
_REQUIRED = ("run", "train_shards", "test_shards")
_PATHS = ("run", "train_shards", "test_shards", "cache_dir")
_DEVICES = ("auto", "cpu", "cuda")
#: Keys a run may have, with what each must be.
RUN_KEYS = {
    "run": "a path", "train_shards": "a path", "test_shards": "a path", "cache_dir": "a path",
    "ridge": "a finite number > 0", "max_iter": "an integer >= 1",
    "block_nnz": "an integer >= 1", "device": "one of auto, cpu, cuda",
    "debug": "true or false", "name": "a non-empty string (the run id in the summary)",
}


@dataclass
class SweepRun:
    """One run of a sweep, with the command line's values laid over the file's.

    Attributes
    ----------
    index : int
        Position in the sweep file (0-based).
    run_id : str
        ``name`` if given, else the run folder's name.
    run, train_shards, test_shards : Path
        As for ``probe-dask fit``, absolute.
    options : dict
        ``ridge``, ``max_iter``, ``block_nnz``, ``device``, ``cache_dir``, ``debug`` when set.
    """

    index: int
    run_id: str
    run: Path
    train_shards: Path
    test_shards: Path
    options: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        """``run 3 (abc123)``: how messages name the run."""
        return f"run {self.index} ({self.run_id})"


def _load_python(path: Path):
    try:
        scope = runpy.run_path(str(path), run_name="probe_dask_sweep")
    except BaseException as exc:  # any failure of the user's code is bad input
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise InputError(path, "code", f"{type(exc).__name__}: {exc}",
                         "a Python file that runs and defines make_cfgs()") from None
    make_cfgs = scope.get("make_cfgs")
    if not callable(make_cfgs):
        raise InputError(path, "make_cfgs", "missing" if make_cfgs is None else repr(make_cfgs),
                         "a function make_cfgs() returning a list of dicts")
    try:
        return make_cfgs()
    except Exception as exc:
        raise InputError(path, "make_cfgs()", f"{type(exc).__name__}: {exc}",
                         "a list of dicts, one per run") from None


def _load_data(path: Path):
    try:
        if path.suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
        else:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, path.suffix[1:].upper(), f"invalid ({exc})",
                         "a list of runs ([[runs]] tables in TOML)") from None
    if isinstance(data, dict) and set(data) == {"runs"}:
        data = data["runs"]
    return data


def _check_value(path, where, key, value):
    bad = False
    if key in _PATHS or key == "name":
        bad = not isinstance(value, (str, os.PathLike)) or not str(value)
    elif key == "ridge":
        bad = (isinstance(value, bool) or not isinstance(value, (int, float))
               or not math.isfinite(value) or value <= 0)
    elif key in ("max_iter", "block_nnz"):
        bad = isinstance(value, bool) or not isinstance(value, int) or value < 1
    elif key == "device":
        bad = value not in _DEVICES
    elif key == "debug":
        bad = not isinstance(value, bool)
    if bad:
        raise InputError(path, f"{where}: {key}", repr(value), RUN_KEYS[key])


def read_sweep(path, overrides: dict | None = None) -> list[SweepRun]:
    """Read a sweep file; lay ``overrides`` (the command line's values) over every run.

    Parameters
    ----------
    path : path
        ``*.py`` (``make_cfgs()``), ``*.json`` or ``*.toml``.
    overrides : dict, optional
        Keys of :data:`RUN_KEYS` given on the command line; ``None`` values are ignored.

    Returns
    -------
    list of SweepRun

    Raises
    ------
    InputError
        A missing or unreadable file, an empty sweep, an unknown key, a missing required key,
        a value of the wrong kind, or two runs writing the same result folders.
    """
    path = Path(os.path.abspath(os.fspath(path)))
    if path.suffix not in SWEEP_SUFFIXES:
        raise InputError(path, "suffix", repr(path.suffix), "a sweep file: .py, .json or .toml")
    if not path.is_file():
        raise InputError(path, "file", "no such file", "a sweep file (.py, .json or .toml)")
    cfgs = _load_python(path) if path.suffix == ".py" else _load_data(path)
    if isinstance(cfgs, (str, bytes, dict)) or not hasattr(cfgs, "__iter__"):
        raise InputError(path, "runs", type(cfgs).__name__, "a list of dicts, one per run")
    cfgs = list(cfgs)
    if not cfgs:
        raise InputError(path, "runs", "an empty list", "at least one run")
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    runs, seen = [], {}
    for i, cfg in enumerate(cfgs):
        where = f"run {i}"
        if not isinstance(cfg, dict):
            raise InputError(path, where, type(cfg).__name__, "a dict with run, train_shards, test_shards")
        if "run" in cfg and isinstance(cfg["run"], (str, os.PathLike)):
            where = f"run {i} ({cfg.get('name') or Path(cfg['run']).name})"
        unknown = sorted(set(cfg) - set(RUN_KEYS), key=str)
        if unknown:
            raise InputError(path, f"{where}: {unknown[0]}", "an unknown key",
                             f"one of {', '.join(RUN_KEYS)}")
        for key in _REQUIRED:
            if key not in cfg and key not in overrides:
                raise InputError(path, f"{where}: {key}", "missing", RUN_KEYS[key])
        merged = {**cfg, **overrides}
        for key, value in merged.items():
            _check_value(path, where, key, value)
        for key in _PATHS:  # relative to the sweep file, as its author sees them
            if key in merged:
                merged[key] = (path.parent / os.path.expanduser(os.fspath(merged[key]))).resolve()
        run = SweepRun(i, str(merged.pop("name", None) or merged["run"].name), merged.pop("run"),
                       merged.pop("train_shards"), merged.pop("test_shards"), merged)
        key = (run.run, run.train_shards.name, run.test_shards.name)
        if key in seen:
            raise InputError(path, f"{run.label}", f"the same run and shards as run {seen[key]}",
                             "each run once (both would write the same result files)")
        seen[key] = i
        runs.append(run)
    return runs
