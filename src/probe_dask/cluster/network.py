"""What this Slurm looks like from here: partitions, nodes and the network interface.

Asks ``sinfo`` (never fails: a missing, failing or hanging command counts as no answer,
after ``probe-dask.slurm.command-timeout``) and the host's own interfaces (psutil) to pick
the default partition and the interface a scheduler on this host should bind to.

Memory: nothing kept; each call runs ``sinfo`` again.
"""

from __future__ import annotations

import ipaddress
import shutil
import socket
import subprocess

import psutil
from dask.utils import parse_timedelta

from probe_dask import config

__all__ = ["run_command", "partitions", "detect_partition", "detect_interface"]


def run_command(cmd: list[str], timeout: float | None = None) -> str | None:
    """stdout of a command, or None when it is missing, fails or hangs.

    Parameters
    ----------
    cmd : list of str
    timeout : float, optional
        Seconds; default ``probe-dask.slurm.command-timeout``.
    """
    if shutil.which(cmd[0]) is None:
        return None
    if timeout is None:
        timeout = parse_timedelta(config.get("probe-dask.slurm.command-timeout"), default="s")
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout if r.returncode == 0 else None


def partitions() -> list[str]:
    """Partition names as ``sinfo -h -o %P`` prints them (the default one ends in ``*``)."""
    out = run_command(["sinfo", "-h", "-o", "%P"])
    return [n.strip() for n in (out or "").splitlines() if n.strip()]


def detect_partition() -> str | None:
    """The partition ``sinfo -h -o %P`` marks default (``*``), or the only one, or None."""
    names = partitions()
    default = [n[:-1] for n in names if n.endswith("*")]
    if default:
        return default[0]
    return names[0] if len(names) == 1 else None


def _resolve(host: str) -> set[str]:
    try:
        return {ai[4][0] for ai in socket.getaddrinfo(host, None)}
    except (OSError, UnicodeError):
        return set()


def _interfaces() -> dict[str, set[str]]:
    return {name: {a.address.split("%")[0] for a in addrs
                   if a.family in (socket.AF_INET, socket.AF_INET6)}
            for name, addrs in psutil.net_if_addrs().items()}


def detect_interface(partition: str | None = None) -> tuple[str | None, bool]:
    """Pick the network interface for the scheduler (and maybe the workers).

    Parameters
    ----------
    partition : str, optional
        Only consider this partition's nodes.

    Returns
    -------
    interface : str or None
        Loopback when every node is this host; else the interface this host routes
        through to the first node; None when unknown (no ``sinfo``, unresolvable nodes).
    for_workers : bool
        True in the loopback case; otherwise only the scheduler binds to ``interface``
        and workers pick the address from which they reach it.
    """
    cmd = ["sinfo", "-h", "-N", "-o", "%N %o"] + (["-p", partition] if partition else [])
    nodes = [line.split() for line in (run_command(cmd) or "").splitlines() if line.strip()]
    if not nodes:
        return None, False
    ifaces = _interfaces()
    local_ips = set().union(*ifaces.values()) if ifaces else set()
    hostname = socket.gethostname()
    names = {hostname, hostname.split(".")[0], socket.getfqdn()}

    def is_local(node: list[str]) -> bool:
        ips = _resolve(node[-1])
        return node[0] in names or bool(ips) and ips <= local_ips | {"127.0.0.1", "::1"}

    if all(is_local(n) for n in nodes):
        loop = [n for n, ips in ifaces.items() if "127.0.0.1" in ips or "::1" in ips]
        return (loop[0] if loop else "lo"), True
    for node in nodes:
        for ip in sorted(_resolve(node[-1])):
            fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
            try:
                with socket.socket(fam, socket.SOCK_DGRAM) as s:
                    s.connect((ip, 9))
                    mine = s.getsockname()[0]
            except OSError:
                continue
            for name, ips in ifaces.items():
                if mine in ips:
                    return name, False
    return None, False


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this host's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
