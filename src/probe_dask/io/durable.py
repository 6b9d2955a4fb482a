"""Durable writes: a file's bytes on disk before its rename, the rename on disk after it.

``rename(2)`` is atomic but not durable: after a node crash (power, kernel panic) a file
renamed into place can exist with no bytes in it, and a rename can be lost altogether,
unless the file is ``fsync``ed before the rename and its folder after it. Every result,
checkpoint and store of probe-dask is published through this module:

- :func:`durable_file` yields a fresh temporary path beside the target (named by
  :func:`~probe_dask.io.tempfiles.temp_file`, so a later run removes it if this one dies);
  when the block ends it syncs the file, renames it onto the target and syncs the folder.
  On any failure the temporary is removed and the target left as it was.
- :func:`replace_durably` does the same for a temporary written some other way (a whole
  folder too: it is synced, not its files; :func:`fsync_tree` syncs those).
- :func:`fsync_path` and :func:`fsync_dir` are the two syncs.

Memory per process: nothing beyond one folder listing (:func:`fsync_tree`).
"""

from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from pathlib import Path

from probe_dask.io.tempfiles import temp_file

__all__ = ["durable_file", "replace_durably", "fsync_path", "fsync_dir", "fsync_tree"]


def fsync_path(path) -> None:
    """Flush the file (or folder) at ``path`` to disk: ``fsync`` on a fresh descriptor.

    ``fsync`` on any descriptor of a file flushes all of its dirty pages, so a file written
    and closed elsewhere is synced here.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path) -> None:
    """Flush folder ``path``'s entries (the names created, renamed or removed in it).

    Some file systems cannot sync a folder (``EINVAL``: some network and FUSE mounts);
    there the rename is as durable as the file system makes it, and the write goes on.
    """
    try:
        fsync_path(path)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise


def fsync_tree(folder) -> None:
    """Sync every regular file directly inside ``folder``, then ``folder`` itself."""
    with os.scandir(folder) as entries:
        files = [e.path for e in entries if e.is_file(follow_symlinks=False)]
    for path in files:
        fsync_path(path)
    fsync_dir(folder)


def replace_durably(tmp, target) -> None:
    """Rename ``tmp`` onto ``target`` durably: sync ``tmp``, rename, sync the folder.

    ``tmp`` and ``target`` must be in one folder (one file system, one folder to sync). A
    folder ``tmp`` is synced itself; sync its files first (:func:`fsync_tree`).
    """
    fsync_path(tmp)
    os.replace(tmp, target)
    fsync_dir(Path(target).parent)


@contextmanager
def durable_file(path, mode: int | None = None):
    """Yield a temporary path beside ``path``; publish it there durably when the block ends.

    Parameters
    ----------
    path : path
        The target. Its folder is created if missing.
    mode : int, optional
        Permission bits the file gets before the rename (default: ``0o600``, as created).

    Yields
    ------
    Path
        An empty file, private to this user, to write (open it by name).

    Examples
    --------
    >>> with durable_file(folder / "result.json", 0o644) as tmp:   # doctest: +SKIP
    ...     tmp.write_text(text)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_file(path)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)
        replace_durably(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # also when the sync or the rename failed
        raise

