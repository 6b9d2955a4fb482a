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

Sweeping a setting: a list as the value of one of :data:`SETTING_KEYS` in a run
(``"ridge": [1e-8, 1e-6]``), or ``--set ridge=1e-8,1e-6`` on the command line (for every
run; it replaces the file's value), makes one run per value, and the product of the lists
when there are several: ``2 runs x --set ridge=a,b x --set max_iter=10,30`` is 8 runs, in
the file's order, the last key varying fastest. A run with a swept setting, and a run whose
SAE run and shards another run of the sweep shares (the same run with two ridges), writes
into a folder of its own, ``OUT/results/<run_id>__<key>=<value>.../<shard_id>/`` (OUT:
``--out``, else the sweep file's folder), named by its explicit settings; any other run
writes where ``probe-dask fit`` would, ``RUN/inference/<shard_id>/``.

Memory per process: the list of runs (a few paths and numbers each, times the product).
"""

from __future__ import annotations

import itertools
import json
import os
import runpy
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from probe_dask.core.constraints import Booleans, Options, PathLike
from probe_dask.core.settings import FitSettings
from probe_dask.engine.parameters import DEVICE_CHOICES, PARAMETER_CONSTRAINTS, POSITIVE_INT
from probe_dask.errors import InputError

__all__ = ["SweepRun", "read_sweep", "parse_set", "resolved_settings", "run_settings",
           "RUN_CONSTRAINTS", "RUN_KEYS",
           "SETTING_KEYS", "RUN_DEFAULTS", "SWEEP_SUFFIXES", "RESULTS_FOLDER"]

SWEEP_SUFFIXES = (".py", ".json", ".toml")
_REQUIRED = ("run", "train_shards", "test_shards")
_PATHS = ("run", "train_shards", "test_shards", "cache_dir")
#: Keys a run may have, with what each accepts (the fit's settings as the fitter's own).
RUN_CONSTRAINTS = {
    "run": PathLike(), "train_shards": PathLike(), "test_shards": PathLike(),
    "cache_dir": PathLike(), "ridge": PARAMETER_CONSTRAINTS["ridge"],
    "max_iter": PARAMETER_CONSTRAINTS["max_iter"], "block_nnz": POSITIVE_INT,
    "device": Options(str, DEVICE_CHOICES), "debug": Booleans(words=("true", "false")),
    "name": PathLike("a non-empty string (the run id in the summary)"),
}
#: Keys a run may have, with what each must be (in words).
RUN_KEYS = {key: str(constraint) for key, constraint in RUN_CONSTRAINTS.items()}
#: Keys that can be swept (a list in the file, or ``--set KEY=V1,V2``): the fit's settings.
SETTING_KEYS = ("ridge", "max_iter", "block_nnz", "device")
#: What a run fits with when neither its sweep entry nor the command line says
#: (``block_nnz`` None: the memory plan's; ``device`` auto: CUDA on workers that have it).
RUN_DEFAULTS = {"ridge": FitSettings.ridge, "max_iter": FitSettings.max_iter, "block_nnz": None,
                "device": "auto"}
#: The folder, under the sweep's output folder, of the runs that get folders of their own.
RESULTS_FOLDER = "results"


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
    swept : dict
        The settings this run has from a swept list (``{"ridge": 1e-6}``); empty if none.
    out : Path or None
        The run's own folder (``OUT/results/<name>``) holding one folder per shard; None:
        the run's ``inference/<shard_id>`` folders.
    """

    index: int
    run_id: str
    run: Path
    train_shards: Path
    test_shards: Path
    options: dict = field(default_factory=dict)
    swept: dict = field(default_factory=dict)
    out: Path | None = None

    @property
    def name(self) -> str:
        """The run id, then its explicit settings: ``abc123__ridge=1e-06__max_iter=10``."""
        return "__".join([self.run_id, *(f"{k}={self.options[k]}" for k in SETTING_KEYS
                                         if k in self.options)])

    @property
    def label(self) -> str:
        """``run 3 (abc123)``, or ``run 3 (abc123, ridge=1e-06)`` with swept settings: how
        messages name the run."""
        swept = "".join(f", {k}={v}" for k, v in self.swept.items())
        return f"run {self.index} ({self.run_id}{swept})"


def run_settings(run: SweepRun, settings: FitSettings) -> FitSettings:
    """What ``run`` fits with: its own ``ridge``, ``max_iter`` and ``device``, else
    ``settings``' (the sweep's, with its block kernel)."""
    return settings.replace(**{k: run.options[k] for k in ("ridge", "max_iter", "device")
                               if k in run.options})


def resolved_settings(run: SweepRun) -> dict:
    """The settings ``run`` fits with: its own, else :data:`RUN_DEFAULTS`."""
    return {k: run.options.get(k, v) for k, v in RUN_DEFAULTS.items()}


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
    if not RUN_CONSTRAINTS[key].is_satisfied_by(value):
        raise InputError(path, f"{where}: {key}", repr(value), RUN_KEYS[key])


def _convert(key, text):
    # --set's values are text; each key's type is the one the file would give it.
    try:
        if key == "ridge":
            return float(text)
        if key in ("max_iter", "block_nnz"):
            return int(text)
    except ValueError:
        return text  # refused by _check_value with the key's expectation
    return text


def parse_set(text: str) -> tuple[str, list]:
    """``"ridge=1e-8,1e-6"`` -> ``("ridge", [1e-08, 1e-06])`` (``--set``'s argument).

    Raises
    ------
    InputError
        Not ``KEY=V1[,V2...]``, a key not in :data:`SETTING_KEYS`, or an empty value.
    """
    key, eq, values = text.partition("=")
    key = key.strip().replace("-", "_")
    if not eq:
        raise InputError("--set", text, "no '='", "KEY=V1,V2,... (e.g. ridge=1e-8,1e-6)")
    if key not in SETTING_KEYS:
        raise InputError("--set", text, f"the key {key!r}", f"one of {', '.join(SETTING_KEYS)}")
    items = [v.strip() for v in values.split(",")]
    if not all(items):
        raise InputError("--set", text, "an empty value", "KEY=V1,V2,... with no empty value")
    return key, [_convert(key, v) for v in items]


def _expand(path, where, cfg, sweeps):
    """Every combination of the run's swept values: (settings of the combination, swept keys)."""
    lists = {}
    for key in SETTING_KEYS:
        if key in sweeps:
            lists[key] = sweeps[key]
        elif isinstance(cfg.get(key), (list, tuple)):
            if not cfg[key]:
                raise InputError(path, f"{where}: {key}", "an empty list",
                                 f"{RUN_KEYS[key]}, or a non-empty list of them")
            lists[key] = list(cfg[key])
    for values in itertools.product(*lists.values()):
        yield dict(zip(lists, values))


def read_sweep(path, overrides: dict | None = None, sweeps: dict | None = None,
               out=None) -> list[SweepRun]:
    """Read a sweep file; lay ``overrides`` (the command line's values) over every run and
    expand the swept settings (lists in the file, ``sweeps``) into one run per combination.

    Parameters
    ----------
    path : path
        ``*.py`` (``make_cfgs()``), ``*.json`` or ``*.toml``.
    overrides : dict, optional
        Keys of :data:`RUN_KEYS` given on the command line; ``None`` values are ignored.
    sweeps : dict, optional
        Key of :data:`SETTING_KEYS` -> list of values (``--set``): swept in every run,
        instead of the file's value of that key.
    out : path, optional
        Where the runs that need folders of their own write (``OUT/results/<name>``);
        default: the sweep file's folder.

    Returns
    -------
    list of SweepRun
        Indexed 0, 1, ... in order: each file run's combinations, the last key fastest.

    Raises
    ------
    InputError
        A missing or unreadable file, an empty sweep, an unknown key, a missing required key,
        a value of the wrong kind, or two runs writing the same result folders.
    """
    path = Path(os.path.abspath(os.fspath(path)))
    cfgs = _load_runs(path)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    sweeps = dict(sweeps or {})
    both = sorted(set(sweeps) & set(overrides))
    if both:
        raise InputError("--set", both[0], f"both --set {both[0]}=... and "
                         f"--{both[0].replace('_', '-')}", "one of the two")
    runs = []
    for i, cfg in enumerate(cfgs):
        where = _check_run(path, i, cfg, overrides)
        for swept in _expand(path, where, {**cfg, **overrides}, sweeps):
            merged = {**cfg, **overrides, **swept}
            for key, value in merged.items():
                _check_value(path, where, key, value)
            for key in _PATHS:  # relative to the sweep file, as its author sees them
                if key in merged:
                    merged[key] = (path.parent / os.path.expanduser(os.fspath(merged[key]))).resolve()
            runs.append(SweepRun(len(runs), str(merged.pop("name", None) or merged["run"].name),
                                 merged.pop("run"), merged.pop("train_shards"),
                                 merged.pop("test_shards"), merged, swept))
    _place(path, runs, Path(out) if out is not None else path.parent)
    return runs


def _load_runs(path: Path) -> list:
    """The file's runs, as a non-empty list (not yet checked one by one)."""
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
    return cfgs


def _check_run(path: Path, i: int, cfg, overrides: dict) -> str:
    """Run ``i``'s keys checked (a dict, no unknown key, the required ones given here or on
    the command line); returns how messages name it: ``run 3 (abc123)``."""
    where = f"run {i}"
    if not isinstance(cfg, dict):
        raise InputError(path, where, type(cfg).__name__, "a dict with run, train_shards, test_shards")
    if RUN_CONSTRAINTS["run"].is_satisfied_by(cfg.get("run")):
        name = cfg.get("name")
        good_name = RUN_CONSTRAINTS["name"].is_satisfied_by(name)
        where = f"run {i} ({name if good_name else Path(cfg['run']).name})"
    unknown = sorted(set(cfg) - set(RUN_KEYS), key=str)
    if unknown:
        raise InputError(path, f"{where}: {unknown[0]}", "an unknown key",
                         f"one of {', '.join(RUN_KEYS)}")
    for key in _REQUIRED:
        if key not in cfg and key not in overrides:
            raise InputError(path, f"{where}: {key}", "missing", RUN_KEYS[key])
    return where


def _place(path, runs, out) -> None:
    """Give a folder of its own to each run that needs one; refuse two runs sharing folders."""
    def key(r):
        return (r.run, r.train_shards.name, r.test_shards.name)

    shared = {}
    for r in runs:
        shared[key(r)] = shared.get(key(r), 0) + 1
    seen = {}
    for r in runs:
        if r.swept or shared[key(r)] > 1:
            r.out = (out / RESULTS_FOLDER / r.name).resolve()
        # The same fit twice (whatever its name), or two fits into one folder.
        for where in ((*key(r), tuple(sorted(resolved_settings(r).items(), key=str))),
                      (r.out, *key(r)[1:]) if r.out else key(r)):
            if where in seen:
                raise InputError(path, r.label, f"the same run, shards and settings as run "
                                 f"{seen[where]}", "each run once (both would write the same "
                                 "result files, or fit the same probes twice)")
            seen[where] = r.index
