"""Slurm profiles: where ``jobqueue.yaml`` comes from and how it joins Dask's config.

``jobqueue.yaml`` holds dask-jobqueue's ``jobqueue: slurm:`` settings, probe-dask's named
profiles (``probe-dask: slurm-profiles:``, each laid over ``jobqueue: slurm:``) and
worker settings (``distributed:``). The copy in the package (the repository's top-level
``jobqueue.yaml``, copied in when the package is built) joins Dask's *defaults* the first
time a profile is needed, with ``dask.config.update_defaults``: it lies UNDER the user's
own settings (``~/.config/dask``, ``DASK_CONFIG``, ``DASK_*`` variables,
``dask.config.set``), so an ``account``, ``queue`` or ``job-script-prologue`` set there is
kept. A file named explicitly (``jobqueue_config=``, ``--jobqueue-config``) is merged over
the config: its values win, as the caller asked for that file.

Slurm-started workers (a notebook's ``dask.config.set`` never reaches them) get the same
layers: the packaged copy joins their defaults through a preload
(:mod:`probe_dask.cluster.worker_config`), under their ``~/.config/dask``; a user's file
(the explicit one, else ``$DASK_CONFIG``) is exported as ``DASK_CONFIG`` in the job
script, so it is read over the rest there too.

Memory: the parsed packaged file (once laid into the defaults) and the paths of the
explicit files merged so far.
"""

from __future__ import annotations

import copy
import os
from importlib import resources
from pathlib import Path

import dask.config

# dask_jobqueue registers its defaults first: the packaged file lies over them
from probe_dask.cluster.jobqueue_import import dask_jobqueue  # noqa: F401
from probe_dask.errors import InputError

__all__ = ["PROFILES_KEY", "packaged_config_path", "lay_packaged_defaults", "load_jobqueue_config",
           "config_source", "slurm_profile"]

PROFILES_KEY = "probe-dask.slurm-profiles"
DEFAULT_PROFILE_KEY = "probe-dask.slurm-default-profile"
_loaded: list[str] = []  # explicit jobqueue config paths merged by load_jobqueue_config, latest last
_packaged: dict = {}  # "config": the packaged file as laid into dask.config.defaults


def packaged_config_path() -> Path:
    """Path of the ``jobqueue.yaml`` shipped in the package (the repository's, built in)."""
    return Path(str(resources.files("probe_dask").joinpath("jobqueue.yaml")))


def _read(path: Path) -> dict:
    try:
        return dask.config.collect(paths=[str(path)], env={})
    except ValueError as exc:
        raise InputError(path, "YAML", str(exc).splitlines()[-1], "a valid YAML mapping") from None


def lay_packaged_defaults() -> Path:
    """Add the packaged ``jobqueue.yaml`` to Dask's defaults, once; return its path.

    Settings the user made (any key whose value differs from the defaults before) are
    kept; keys nobody set take the packaged values.
    """
    path = packaged_config_path()
    packaged = _packaged.get("config")
    if packaged is None:
        packaged = _packaged["config"] = _read(path)
    if not any(d is packaged for d in dask.config.defaults):
        dask.config.defaults.append(packaged)
    # Laid again on every call: ``dask.config.refresh`` rebuilds the config from the
    # defaults in order, earliest first, so dask-jobqueue's own defaults would win over ours.
    # "new-defaults" replaces only values still equal to the other defaults: a user's
    # setting (any file, variable or dask.config.set) is never touched.
    others = dask.config.merge(*(d for d in dask.config.defaults if d is not packaged))
    dask.config.update(dask.config.config, copy.deepcopy(packaged), priority="new-defaults",
                       defaults=others)
    return path


def load_jobqueue_config(path: str | os.PathLike) -> Path:
    """Merge a ``jobqueue.yaml`` (or every YAML/JSON file of a folder) into Dask's config.

    Values in the file win over values already there, earlier ``dask.config.set`` included.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    pathlib.Path
        The absolute path, which job scripts export as ``DASK_CONFIG``.
    """
    p = Path(path).expanduser().resolve()
    if not p.exists():
        raise InputError(p, "jobqueue config", "no such file or folder", "a jobqueue.yaml")
    dask.config.update(dask.config.config, _read(p), priority="new")
    _loaded.append(str(p))
    return p


def config_source(jobqueue_config=None) -> str:
    """Make sure the profiles are in Dask's config; return the path workers should read.

    Parameters
    ----------
    jobqueue_config : str or os.PathLike, optional
        Explicit file or folder, merged over the config.

    Returns
    -------
    str
        The explicit file (this call's or an earlier one's), else ``$DASK_CONFIG`` (read
        now if it was set after Dask was imported), else the packaged copy.
    """
    packaged = lay_packaged_defaults()
    if jobqueue_config is not None:
        return str(load_jobqueue_config(jobqueue_config))
    if _loaded:
        return _loaded[-1]
    env = os.environ.get("DASK_CONFIG")
    if not env:
        return str(packaged)
    if env not in dask.config.paths:  # set after dask was imported: dask has not read it
        return str(load_jobqueue_config(env))
    return os.path.abspath(env)


def slurm_profile(name: str | None = None, *, jobqueue_config=None,
                  gpu: bool | None = None) -> tuple[str, dict]:
    """Look up a named Slurm profile (InputError naming file and profiles if missing).

    Parameters
    ----------
    name : str, optional
        Default: "gpu" if ``gpu`` is True, "cpu" if False, else
        ``probe-dask.slurm-default-profile``.
    jobqueue_config : str or os.PathLike, optional
        Explicit ``jobqueue.yaml`` (file or folder) to load first.
    gpu : bool, optional

    Returns
    -------
    name : str
    profile : dict
        A copy, keys as ``SLURMCluster`` keywords (``name`` becomes ``job_name``); keys it
        leaves out come from ``jobqueue.slurm``.
    """
    source = config_source(jobqueue_config)
    profiles = dask.config.get(PROFILES_KEY, None) or {}
    if name is None:
        name = {True: "gpu", False: "cpu"}.get(gpu) or dask.config.get(DEFAULT_PROFILE_KEY, "cpu")
    if name not in profiles or not isinstance(profiles[name], dict):
        raise InputError(source, PROFILES_KEY, f"no profile {name!r}",
                         "one of: " + (", ".join(sorted(profiles)) or "(none defined)"))
    out = {}
    for key, value in profiles[name].items():
        key = key.replace("-", "_")
        out["job_name" if key == "name" else key] = copy.deepcopy(value)
    return name, out
