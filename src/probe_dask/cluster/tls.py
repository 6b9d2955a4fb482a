"""TLS between driver, scheduler and workers: per-run credentials, and a joined address's.

A scheduler that other hosts can reach runs any pickled function a connected client sends
it, as the user who started it; Dask's answer is TLS with mutual authentication
(``distributed.security.Security``): every endpoint must present a certificate signed by
the cluster's certificate authority. probe-dask uses it wherever the scheduler is
reachable from another host:

- **Slurm** (:func:`run_credentials`): a fresh, private CA and certificate per run
  (``Security.temporary()``: one self-signed certificate). The worker jobs need them as
  files: this module writes them (mode 0600) into a per-run folder it creates with mode
  0700 under ``probe-dask.cluster.credentials-dir`` (default
  ``~/.cache/probe-dask/credentials``, on the home file system the compute nodes share)
  and hands ``SLURMCluster`` a ``Security`` of those paths, so dask-jobqueue copies
  nothing and the job script names only the paths. :func:`release_credentials` removes
  the folder when the cluster closes (and at interpreter exit). Only public API of
  dask-jobqueue is used: the ``security=`` keyword.
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

__all__ = ["CREDENTIAL_FILES", "run_credentials", "watch_credentials", "release_credentials", "job_security", "address_security",
           "is_loopback_address", "INSECURE_WARNING"]

#: The line printed (CLI) or logged (library) when TLS is turned off for a Slurm cluster.
INSECURE_WARNING = ("warning: --insecure: the scheduler listens on tcp:// without encryption or "
                    "authentication; anyone who can reach its port can run code as you")

_cleanups: dict[int, weakref.finalize] = {}  # id(cluster) -> removes its credentials folder
_securities: dict[int, Security] = {}  # id(cluster) -> the file-based Security its jobs use
#: Credential file names in a run's folder: the CA, the certificate, the private key.
CREDENTIAL_FILES = {"ca_file": "ca.pem", "cert": "cert.pem", "key": "key.pem"}


def _credentials_root() -> Path:
    root = config.get("probe-dask.cluster.credentials-dir")
    return Path(os.path.expandvars(root)).expanduser() if root else \
        Path.home() / ".cache" / "probe-dask" / "credentials"


def _write_private(path: Path, text: str) -> None:
    # O_EXCL | O_NOFOLLOW: never write through a file or link someone placed there first;
    # fchmod: exactly 0600 whatever the umask (the umask could also leave it unreadable).
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(fd, 0o600)
        f.write(text)


def run_credentials(prefix: str = "run-") -> tuple[Security, Path]:
    """A fresh CA and certificate for one run, written as files into a private folder.

    Parameters
    ----------
    prefix : str
        Start of the folder's name (a random suffix follows), e.g. ``"job-<id>-"``.

    Returns
    -------
    security : distributed.security.Security
        Encryption required; CA, certificate and key of ``Security.temporary()`` (one
        self-signed certificate for scheduler, workers and client) given as the paths of
        the folder's ``ca.pem``, ``cert.pem`` and ``key.pem`` (mode 0600), so the same
        object serves the scheduler here and the job scripts.
    folder : pathlib.Path
        A new folder of mode 0700 (checked, whatever the umask) under
        ``probe-dask.cluster.credentials-dir``. ProbeDaskError when it cannot be made
        private.
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
    pem = Security.temporary().get_tls_config_for_role("worker")  # in-memory PEM text
    paths = {key: folder / name for key, name in CREDENTIAL_FILES.items()}
    try:
        for key, path in paths.items():
            _write_private(path, pem[key])
    except OSError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise ProbeDaskError(f"{folder}: cannot write the run's TLS credentials "
                             f"({exc.strerror or exc})") from None
    ca, cert, key = (str(paths[k]) for k in ("ca_file", "cert", "key"))
    security = Security(tls_ca_file=ca, tls_client_cert=cert, tls_client_key=key,
                        tls_scheduler_cert=cert, tls_scheduler_key=key,
                        tls_worker_cert=cert, tls_worker_key=key, require_encryption=True)
    return security, folder


def watch_credentials(cluster, folder: Path, security: Security | None = None) -> None:
    """Remove ``folder`` when :func:`release_credentials` is called on ``cluster``, or at exit.

    ``security`` (the one given to ``cluster``) is what :func:`job_security` returns.
    """
    _cleanups[id(cluster)] = weakref.finalize(cluster, shutil.rmtree, str(folder), True)
    if security is not None:
        _securities[id(cluster)] = security


def release_credentials(cluster) -> None:
    """Remove the run's credentials folder (its files with it)."""
    _securities.pop(id(cluster), None)
    fin = _cleanups.pop(id(cluster), None)
    if fin is not None:
        fin()


def job_security(cluster):
    """The ``Security`` the cluster's job scripts use (paths to the files), or None.

    The per-run credentials of :func:`run_credentials` when this module made them; else
    the cluster's own (public) ``security`` when it requires TLS and names files, not key
    material; else None (no TLS, or credentials only dask-jobqueue holds as files).
    """
    security = _securities.get(id(cluster))
    if security is not None:
        return security
    security = getattr(cluster, "security", None)
    if security is None or not security.require_encryption:
        return None
    tls = security.get_tls_config_for_role("worker")
    return None if any(v and "\n" in v for v in tls.values()) else security


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
