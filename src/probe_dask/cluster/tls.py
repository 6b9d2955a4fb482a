"""TLS between driver, scheduler and workers: per-run credentials, and a joined address's.

A scheduler that other hosts can reach runs any pickled function a connected client sends
it, as the user who started it; Dask's answer is TLS with mutual authentication
(``distributed.security.Security``): every endpoint must present a certificate signed by
the cluster's certificate authority. probe-dask uses it wherever the scheduler is
reachable from another host:

- **Slurm** (:func:`run_credentials`): a fresh, private CA and certificate per run
  (``Security.temporary()``: one self-signed certificate, its key in memory). The worker
  jobs need them as files: dask-jobqueue writes them (mode 0600) into a per-run folder
  that this module creates with mode 0700 under ``probe-dask.cluster.credentials-dir``
  (default ``~/.cache/probe-dask/credentials``, on the home file system the compute nodes
  share); the job script names only their paths. :func:`release_credentials` closes
  them and removes the folder when the cluster closes (and at interpreter exit).
- **A scheduler address** (:func:`address_security`): ``tls://`` takes the user's own
  certificate files from Dask's config (``distributed.comm.tls.ca-file``,
  ``distributed.comm.tls.client.cert`` / ``.key``); ``tcp://`` to another host is allowed
  but named as unauthenticated.
- **Local clusters** keep ``tcp://127.0.0.1``: only this host can reach them.

Memory: the temporary certificate and key (a few KB) per Slurm cluster, and one finalizer
per credentials folder.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import weakref
from pathlib import Path
from urllib.parse import urlsplit

import dask.config
from distributed.security import Security

from probe_dask import config
from probe_dask.cluster.network import is_loopback_host
from probe_dask.errors import ProbeDaskError

__all__ = ["run_credentials", "watch_credentials", "release_credentials", "job_security", "address_security",
           "is_loopback_address", "INSECURE_WARNING"]

#: The line printed (CLI) or logged (library) when TLS is turned off for a Slurm cluster.
INSECURE_WARNING = ("warning: --insecure: the scheduler listens on tcp:// without encryption or "
                    "authentication; anyone who can reach its port can run code as you")

_cleanups: dict[int, weakref.finalize] = {}  # id(cluster) -> removes its credentials folder


def _credentials_root() -> Path:
    root = config.get("probe-dask.cluster.credentials-dir")
    return Path(os.path.expandvars(root)).expanduser() if root else \
        Path.home() / ".cache" / "probe-dask" / "credentials"


def run_credentials(prefix: str = "run-") -> tuple[Security, Path]:
    """A fresh CA and certificate for one run, and a private folder for their files.

    Parameters
    ----------
    prefix : str
        Start of the folder's name (a random suffix follows), e.g. ``"job-<id>-"``.

    Returns
    -------
    security : distributed.security.Security
        ``Security.temporary()``: encryption required, one self-signed certificate for the
        scheduler, workers and client.
    folder : pathlib.Path
        A new folder of mode 0700 (checked, whatever the umask) under
        ``probe-dask.cluster.credentials-dir``; pass it to ``SLURMCluster`` as
        ``shared_temp_directory`` so the worker jobs' copies land there.
        ProbeDaskError when it cannot be made private.
    """
    root = _credentials_root()
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=prefix, dir=root))  # mkdtemp: mode 0700
        st = folder.lstat()
    except OSError as exc:
        raise ProbeDaskError(f"{root}: cannot create a private folder for the run's TLS "
                             f"credentials ({exc.strerror}); set probe-dask.cluster.credentials-dir "
                             "to a folder of yours that the compute nodes share") from None
    if st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) & 0o077:
        shutil.rmtree(folder, ignore_errors=True)
        raise ProbeDaskError(f"{folder}: credentials folder is not private (mode "
                             f"{stat.S_IMODE(st.st_mode):o}); expected 700 and owned by you")
    return Security.temporary(), folder


def watch_credentials(cluster, folder: Path) -> None:
    """Remove ``folder`` when :func:`release_credentials` is called on ``cluster``, or at exit."""
    _cleanups[id(cluster)] = weakref.finalize(cluster, shutil.rmtree, str(folder), True)


def release_credentials(cluster) -> None:
    """Close the credential files dask-jobqueue holds open and remove the run's folder."""
    fin = _cleanups.pop(id(cluster), None)
    if fin is None:
        return
    for key in ("ca_file", "cert", "key"):
        handle = getattr(cluster, f"_job_{key}", None)
        if handle is not None:
            try:
                handle.close()  # deletes the file; the folder goes next
            except OSError:
                pass
    fin()


def job_security(cluster):
    """The ``Security`` the cluster's job scripts use (paths to the files), or None."""
    return getattr(cluster, "_job_kwargs", {}).get("security")


def is_loopback_address(address: str) -> bool:
    """Whether a ``scheme://host:port`` address names this host's loopback."""
    host = urlsplit(address if "://" in address else f"tcp://{address}").hostname or ""
    return is_loopback_host(host)


def address_security(address: str) -> tuple[Security | None, str | None]:
    """Security for joining ``address``, and a warning line when it is unauthenticated.

    Parameters
    ----------
    address : str
        A scheduler address.

    Returns
    -------
    security : Security or None
        For ``tls://``: built from Dask's ``distributed.comm.tls.*`` config (the user's
        certificate files). None otherwise (Dask's defaults).
    warning : str or None
        For ``tcp://`` (or ``ws://``) to another host: the line to show.

    Raises
    ------
    ProbeDaskError
        ``tls://`` without a CA file and a client certificate in the config.
    """
    if address.startswith(("tls://", "wss://")):
        need = {"distributed.comm.tls.ca-file": "the CA that signed the scheduler's certificate",
                "distributed.comm.tls.client.cert": "your client certificate (PEM)"}
        missing = [k for k in need if not dask.config.get(k, None)]
        if missing:
            raise ProbeDaskError(
                f"{address}: TLS needs {' and '.join(need[k] for k in missing)}: set "
                f"{', '.join(missing)} (and distributed.comm.tls.client.key) in your Dask "
                "config or DASK_DISTRIBUTED__COMM__TLS__... variables")
        return Security(), None
    if address.startswith(("tcp://", "ws://")) and not is_loopback_address(address):
        return None, (f"warning: {address}: joining a scheduler over plain "
                      f"{address.split('://')[0]}:// (no encryption, no authentication): anyone "
                      "on that network can connect to it and run code as its user; prefer tls://")
    return None, None
