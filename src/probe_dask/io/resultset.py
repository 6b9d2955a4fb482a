"""Committing a job's result files as one set: all of the new set, or all of the old.

A job writes several files into two folders (each split's ``probe1d_metrics.npz`` and
``probe1d_classes.json``). Each file is first written whole under a private temporary
name in its final folder (:func:`~probe_dask.io.tempfiles.temp_file`); only when every
file of the set is written (and synced to disk) does :meth:`ResultSet.commit` rename them
into place (each folder synced after its renames, :mod:`probe_dask.io.durable`), keeping
each previous file under a backup name (a hard link, so the target never goes missing)
until the last rename has succeeded. If any write or rename fails, or the run is stopped
(SIGTERM raises in the driver) before the commit ends, the renamed files are put back
and every temporary is removed: the folders hold the whole old set, or the whole new one.
(Between two renames of one commit, a few milliseconds, a reader could see both; a run
SIGKILLed in that window leaves that mix and its ``.bak`` files, which the next run
removes.) :func:`check_targets` finds, before any fitting, what would make a commit fail:
a folder or other non-file in the way of a target, an unwritable folder.

A write or rename the machine refuses (disk full, quota, permission) is reported as
:class:`~probe_dask.errors.MachineError`: one line naming the file.

Memory per process: a list of paths; the writers hold what they write.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from probe_dask.errors import MachineError, ProbeDaskError
from probe_dask.io.durable import fsync_dir, fsync_path
from probe_dask.io.tempfiles import temp_file

__all__ = ["ResultSet", "check_targets"]

# The renames of the commit step; a module attribute so tests can make one of them fail.
_replace = os.replace


def check_targets(paths) -> None:
    """Raise ``ProbeDaskError`` now if any result file could not be put at ``paths``.

    Each target must be absent or a regular file (a symbolic link to one is replaced by
    the new file), and its folder writable (checked by creating and removing a file).
    """
    for path in map(Path, paths):
        try:
            st = path.lstat()
        except (FileNotFoundError, NotADirectoryError):
            st = None  # nothing there yet (or no folder: the writability check says so)
        except OSError as err:
            raise MachineError(path, err, "checking where results go") from None
        if st is not None and stat.S_ISLNK(st.st_mode):
            st = path.stat() if path.exists() else None
        if st is not None and not stat.S_ISREG(st.st_mode):
            kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise ProbeDaskError(f"{path}: found {kind}; expected a regular file or nothing "
                                 "(a result is written there): move it away")
        folder = path.parent
        probe = temp_file(path)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            raise ProbeDaskError(f"{folder}: output folder is not writable ({err.strerror}); "
                                 "results are written into each split's inference folder, "
                                 "so fix its permissions") from None


class ResultSet:
    """Files written under temporary names, then committed together.

    Use as a context manager: leaving it without :meth:`commit` (an error, a signal)
    removes every temporary and leaves the targets as they were.

    Examples
    --------
    >>> with ResultSet() as rs:                               # doctest: +SKIP
    ...     rs.stage(a, lambda tmp: write_json(tmp, obj_a))
    ...     rs.stage(b, lambda tmp: write_json(tmp, obj_b))
    ...     rs.commit()
    """

    def __init__(self):
        self._staged = {}  # target -> temporary, in staging order
        self.committed = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if not self.committed:
            self.discard()
        return False

    def stage(self, target, write) -> Path:
        """Write one file of the set: ``write(tmp)`` writes it at ``tmp``, beside ``target``.

        A file staged twice for one target keeps the last one. An ``OSError`` of the write
        becomes :class:`MachineError` naming ``target``.
        """
        target = Path(target)
        tmp = temp_file(target)
        try:
            write(tmp)
            if not tmp.exists():
                raise RuntimeError(f"{write!r} wrote nothing at {tmp}")
            fsync_path(tmp)  # its bytes on disk before the commit's rename publishes it
        except OSError as err:
            _unlink(tmp)
            raise MachineError(target, err, "writing the results") from None
        except BaseException:
            _unlink(tmp)
            raise
        old = self._staged.pop(target, None)
        if old is not None:
            _unlink(old)
        self._staged[target] = tmp
        return target

    def commit(self) -> list[Path]:
        """Rename every staged file into place; on any failure put the previous set back.

        Returns
        -------
        list of Path
            The targets, in staging order.

        Raises
        ------
        MachineError
            A rename the machine refused (the previous set is back in place).
        """
        done = []  # (target, backup or None): renamed into place so far
        try:
            for target, tmp in self._staged.items():
                backup = _backup(target)
                try:
                    _replace(tmp, target)
                except BaseException:
                    if backup is not None and os.path.lexists(target):
                        _unlink(backup)  # a link: the previous file never left
                    elif backup is not None:
                        os.replace(backup, target)  # renamed aside: put it back
                    raise
                done.append((target, backup))
            # the renames on disk before the old set goes: a crash now keeps the new set
            for folder in dict.fromkeys(t.parent for t, _ in done):
                fsync_dir(folder)
        except BaseException as exc:
            failed = target
            self._rollback(done)
            self.discard()
            if isinstance(exc, OSError):
                raise MachineError(failed, exc, "committing the results; the previous "
                                   "results are back in place") from None
            raise
        self.committed = True
        for _, backup in done:  # the new set is whole: the old one can go
            if backup is not None:
                _unlink(backup)
        self._staged = {}
        return [t for t, _ in done]

    def discard(self) -> None:
        """Remove every staged temporary (the targets are not touched)."""
        for tmp in self._staged.values():
            _unlink(tmp)
        self._staged = {}

    @staticmethod
    def _rollback(done) -> None:
        for target, backup in reversed(done):
            try:
                if backup is None:
                    os.unlink(target)  # there was no previous file
                else:
                    os.replace(backup, target)
            except FileNotFoundError:
                pass


def _backup(target: Path) -> Path | None:
    """Keep the file at ``target`` (if any) under a backup name; None when there is none.

    A hard link keeps ``target`` in place (a reader never finds it missing); where links
    are not supported the file is renamed to the backup instead.
    """
    if not os.path.lexists(target):
        return None
    backup = temp_file(target, "bak")
    try:
        os.link(target, backup, follow_symlinks=False)
    except FileNotFoundError:
        return None
    except OSError:
        os.replace(target, backup)
    return backup


def _unlink(path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
