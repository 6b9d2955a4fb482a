"""Where a run's results came from: version, command, device and kernel, dates.

:func:`provenance` is recorded in the ``summary`` of ``probe1d_classes.json`` so a result
file found months later says which probe-dask made it, with what command, on what
hardware, and when. Dates are ISO 8601 in UTC.

Memory per process: a few strings.
"""

from __future__ import annotations

import platform
import shlex
import sys
from collections import Counter
from datetime import datetime, timezone

from probe_dask._version import __version__
from probe_dask.cluster.versions import cluster_versions
from probe_dask.kernels.dispatch import choose_backend

__all__ = ["utc_now", "provenance"]


def utc_now() -> str:
    """This moment as ISO 8601 in UTC, to the second: ``2026-11-25T10:30:00Z``."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def worker_kernels(client, device=None, backend="auto") -> dict:
    """``{"c on cpu": n_workers, ...}``: the block kernel each worker runs for ``device``.

    Asked of the workers themselves (``choose_backend`` there), since a Slurm worker may
    have a GPU and a compiler that the driver lacks. Empty when asking fails.
    """
    try:
        chosen = client.run(choose_backend, device, backend)
    except Exception:  # noqa: BLE001 - provenance never stops a finished fit from being written
        return {}
    return dict(Counter(f"{name} on {dev}" for name, dev in chosen.values()))


def provenance(client, *, device=None, backend="auto", started=None, argv=None) -> dict:
    """The provenance fields of a run's summary.

    Parameters
    ----------
    client : distributed.Client
    device : str or None
        ``--device`` as given (None: auto).
    backend : str
        ``--kernel`` as given.
    started : str, optional
        When the run started (:func:`utc_now` then); ``finished`` is now.
    argv : list of str, optional
        The command (default ``sys.orig_argv``: with the interpreter and ``-m``).

    Returns
    -------
    dict
        ``version``, ``command`` (one shell-quoted string), ``argv``, ``python``,
        ``host``, ``device``, ``kernel`` (workers per kernel), ``versions`` (the compared
        packages on the driver, the scheduler and each worker: ``cluster.cluster_versions``),
        ``started``, ``finished``.
    """
    # orig_argv: the command as typed (``python -m probe_dask fit ...``), not the script path
    argv = list(getattr(sys, "orig_argv", sys.argv) if argv is None else argv)
    return {
        "version": __version__,
        "command": shlex.join(argv),
        "argv": argv,
        "python": platform.python_version(),
        "host": platform.node(),
        "device": device or "auto",
        "kernel": worker_kernels(client, device, backend),
        # what ran where (checked when the workers joined; recorded, not checked, here)
        "versions": cluster_versions(client, check=False),
        "started": started,
        "finished": utc_now(),
    }
