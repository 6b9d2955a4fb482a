"""Names of probe-dask's temporary files and folders, and removing those of dead runs.

Every temporary a run makes beside a target carries a tag ``<host>.<pid>-<rand>``: a file
``.<name>.<tag>.tmp`` (or ``.bak``, a result set's backup), a store folder
``<store>.tmp-<tag>`` (or ``.old-<tag>``). A run that dies (SIGKILL, a node that fails)
cannot remove its own; the next run of the same folders removes those whose writer is
gone: written on this host by a PID that no longer exists. Temporaries of another host
(a shared file system) are left alone: their PIDs cannot be checked from here.

Memory per process: nothing beyond one folder listing at a time.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import uuid
from pathlib import Path

__all__ = ["remove_stale", "temp_dir", "temp_file"]

# Host names may hold dots (FQDN) and other characters: keep a tag that parses back.
HOST = re.sub(r"[^A-Za-z0-9-]", "_", socket.gethostname().split(".")[0]) or "host"

_TAG = r"(?P<host>[A-Za-z0-9_-]+)\.(?P<pid>\d+)-[0-9a-f]{8}"
_FILE = re.compile(rf"^\.(?P<name>.+)\.{_TAG}\.(?:tmp|bak)$")
_DIR = re.compile(rf"^(?P<name>.+)\.(?:tmp|old)-{_TAG}$")
# A store tagged without its host (``<store>.tmp-<pid>-<rand>``, as older releases wrote it)
# is cleaned as this host's.
_DIR_LEGACY = re.compile(r"^(?P<name>.+)\.(?:tmp|old)-(?P<pid>\d+)-[0-9a-f]{8}$")


def run_tag() -> str:
    """A fresh tag of this process: ``<host>.<pid>-<8 hex digits>``."""
    return f"{HOST}.{os.getpid()}-{uuid.uuid4().hex[:8]}"


def temp_file(path, kind: str = "tmp") -> Path:
    """A fresh temporary name beside ``path``: ``.<name>.<tag>.<kind>`` (``tmp`` or ``bak``)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{run_tag()}.{kind}")


def temp_dir(path, kind: str = "tmp") -> str:
    """A fresh temporary name for a folder ``path``: ``<path>.<kind>-<tag>`` (``tmp``, ``old``)."""
    return f"{os.fspath(path)}.{kind}-{run_tag()}"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (of any user)."""
    if pid <= 0:
        return True  # not a PID we wrote: never treat as dead
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, another user's
    return True


def _dead(host: str | None, pid: str) -> bool:
    if host is not None and host != HOST:
        return False
    pid = int(pid)
    return pid != os.getpid() and not pid_alive(pid)


def remove_stale(folder, names=None) -> list[str]:
    """Remove temporaries in ``folder`` whose writer (this host, that PID) is gone.

    Parameters
    ----------
    folder : path
    names : iterable of str, optional
        Only temporaries of these targets (file or folder names); default: any.

    Returns
    -------
    list of str
        The paths removed.
    """
    names = None if names is None else set(names)
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed  # no folder yet, or unreadable: nothing of ours to remove
    for entry in entries:
        m = _FILE.match(entry.name) or _DIR.match(entry.name)
        host = m["host"] if m else None
        if m is None:
            m = _DIR_LEGACY.match(entry.name)
        if m is None or (names is not None and m["name"] not in names):
            continue
        if not _dead(host, m["pid"]):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(entry.path)
        except FileNotFoundError:
            pass  # another run removed it first
        except OSError:
            pass  # cannot remove it (permissions): leave it, the run goes on
    return removed
