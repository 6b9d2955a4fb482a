"""Errors and warnings that probe-dask reports to its users.

Bad input is reported once, as one line that names the file, the field, what was found
and what was expected; the CLI prints that line and exits with status 2. An invalid
estimator parameter is such an error too (and a ``ValueError``); a fit stopped by
``max_iter`` before every pair converged is a warning.

Memory per process: nothing (exception classes only).
"""

from __future__ import annotations

import errno
import os

__all__ = ["ProbeDaskError", "InputError", "InvalidParameterError", "PlanDoesNotFit", "MachineError",
           "ConvergenceWarning"]


class ProbeDaskError(Exception):
    """Base class of every error probe-dask reports as one line to the user."""


class InputError(ProbeDaskError):
    """Input data does not match what probe-dask expects.

    Parameters
    ----------
    path : str or os.PathLike
        The file (or folder) at fault.
    field : str
        The part of the file at fault (a member, a JSON key, a byte count).
    found : object
        What was found there.
    expected : object
        What was expected instead.
    """

    def __init__(self, path, field: str, found, expected):
        self.path = os.fspath(path)
        self.field = field
        self.found = found
        self.expected = expected
        super().__init__(f"{self.path}: {field}: found {found}; expected {expected}")

    def __reduce__(self):
        # Raised in a worker task, it is pickled to reach the driver: rebuild it from its
        # four parts (the default would call __init__ with the message alone and fail).
        return type(self), (self.path, self.field, self.found, self.expected)


class InvalidParameterError(ProbeDaskError, ValueError):
    """A parameter of an estimator (``ProbeFitter``) has a value it does not accept; the
    message names the parameter, the value found and what is expected."""


_REASONS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
            errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
            errno.EPERM: "operation not permitted", errno.EIO: "input/output error"}


class PlanDoesNotFit(ProbeDaskError):
    """The memory plan of a run does not fit the workers (its message names the limit,
    the block size and the setting to change); the CLI exits with status 4."""


class MachineError(ProbeDaskError):
    """The machine refused to write (or read) a path: disk full, quota, permission,
    read-only file system. One line naming the path and the reason; exit status 2.

    Parameters
    ----------
    path : str or os.PathLike
        The file or folder being written.
    err : OSError
        What the system said.
    doing : str
        What was being done, e.g. ``"writing the results"``.
    """

    def __init__(self, path, err, doing: str = "writing"):
        self.path, self.doing = os.fspath(path), doing
        self.errno = getattr(err, "errno", None)
        self.reason = (_REASONS.get(self.errno) or getattr(err, "strerror", None)
                       or str(err))
        super().__init__(f"{self.path}: {self.reason} (while {doing})")

    def __reduce__(self):
        return _machine_error, (self.path, self.errno, self.reason, self.doing)


def _machine_error(path, errno_, reason, doing):
    return MachineError(path, OSError(errno_, reason), doing)


class ConvergenceWarning(UserWarning):
    """The solver stopped at ``max_iter`` with pairs that had not met its stopping rule."""
