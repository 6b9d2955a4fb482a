"""Giving a file's disk blocks back while it is still open: ``fallocate(2)`` hole punching.

A latent-major layout is built from parts that hold every event once more
(``io.latent_major``): without this, building it takes twice the layout's disk. Each
merge punches the spans it has copied out of the parts, so the parts shrink as the layout
grows and the build's disk stays about one layout.

Linux only (ext4, xfs, btrfs, tmpfs and most network file systems that matter on a
cluster); elsewhere, and on a file system that refuses, :func:`punch_hole` returns False
and the caller budgets the parts' disk in full (:func:`can_punch_holes` tells it first).

Memory per process: nothing (one system call).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os

__all__ = ["punch_hole", "can_punch_holes"]

_FALLOC_FL_KEEP_SIZE, _FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
#: errno values meaning "this system or file system cannot": the caller falls back
_UNSUPPORTED = {errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.ENOTSUP}


def _load_fallocate():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        fallocate = libc.fallocate
    except (OSError, AttributeError, TypeError):  # not glibc / not Linux
        return None
    fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fallocate.restype = ctypes.c_int
    return fallocate


_fallocate = _load_fallocate()


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """Free the bytes ``[offset, offset + length)`` of the open file ``fd``: they read as
    zeros from now on, its size is unchanged. Returns False where the system or the file
    system cannot punch (nothing is changed then); other failures raise ``OSError``."""
    if length <= 0:
        return True
    if _fallocate is None:
        return False
    if _fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, int(offset), int(length)) == 0:
        return True
    err = ctypes.get_errno()
    if err in _UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err))


def can_punch_holes(folder: str | os.PathLike) -> bool:
    """Whether files in ``folder`` give blocks back when punched (tried on a small file
    there, removed after)."""
    path = os.path.join(os.fspath(folder), f".punch-probe-{os.getpid()}")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"\0" * 8192)
            return punch_hole(fd, 0, 8192)
        finally:
            os.close(fd)
    finally:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
