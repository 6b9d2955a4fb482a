"""Where the dashboard listens, and the ``ssh -L`` line that reaches it from a laptop.

The dashboard shows task names, worker addresses and memory of the run; on a login node
every user of the network could watch it if it listened on all interfaces (Dask's
``":8787"``). probe-dask's drivers (local and Slurm) bind it to loopback
(``probe-dask.cluster.dashboard-address``, default ``127.0.0.1:8787``; ``--dashboard-address``
opens it explicitly), and :func:`ssh_tunnel_hint` prints the tunnel that reaches it.

Memory: nothing kept.
"""

from __future__ import annotations

import getpass
import os
import socket
from urllib.parse import urlsplit

from probe_dask import config
from probe_dask.cluster.network import is_loopback_host

__all__ = ["dashboard_address", "ssh_tunnel_hint"]


def dashboard_address(value: str | None = None) -> str:
    """``value``, else ``probe-dask.cluster.dashboard-address`` (loopback by default)."""
    return value or config.get("probe-dask.cluster.dashboard-address") or "127.0.0.1:8787"


def ssh_tunnel_hint(dashboard_link: str | None, local_port: int = 8787, env=None,
                    hostname: str | None = None) -> str | None:
    """The command a laptop runs to open ``dashboard_link`` at ``http://localhost:PORT``.

    Parameters
    ----------
    dashboard_link : str or None
        ``client.dashboard_link`` (``http://HOST:PORT/status``), as the driver sees it.
    local_port : int
        The laptop's side of the tunnel.
    env : mapping, optional
        The environment (default ``os.environ``): inside a Slurm job, ``SLURM_SUBMIT_HOST``
        (the login node) becomes the jump host, since a laptop rarely reaches compute nodes.
    hostname : str, optional
        This host's name (default ``socket.getfqdn()``).

    Returns
    -------
    str or None
        ``ssh -N -L 8787:TARGET:PORT USER@THISHOST`` (TARGET: 127.0.0.1 when the dashboard
        is on this host's loopback, which only a tunnel ending on this host reaches; else
        the link's host), with ``-J USER@LOGIN`` inside a Slurm job, then where to point
        the browser; None without a link.
    """
    if not dashboard_link:
        return None
    parts = urlsplit(dashboard_link)
    if parts.port is None:
        return None
    env = os.environ if env is None else env
    host = parts.hostname or "127.0.0.1"
    target = "127.0.0.1" if is_loopback_host(host) or host == "0.0.0.0" else host
    if ":" in target:
        target = f"[{target}]"
    user = getpass.getuser()
    here = hostname or socket.getfqdn()
    if here.startswith("localhost"):  # no DNS name: the short one is what ~/.ssh/config knows
        here = socket.gethostname()
    login = env.get("SLURM_SUBMIT_HOST") if env.get("SLURM_JOB_ID") else None
    jump = f"-J {user}@{login} " if login and login.split(".")[0] != here.split(".")[0] else ""
    return (f"ssh -N {jump}-L {local_port}:{target}:{parts.port} {user}@{here}"
            f"  (then open http://localhost:{local_port}{parts.path or '/status'})")
