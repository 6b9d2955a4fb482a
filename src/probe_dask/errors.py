"""Errors and warnings that probe-dask reports to its users.

Bad input is reported once, as one line that names the file, the field, what was found
and what was expected; the CLI prints that line and exits with status 2. An invalid
estimator parameter is such an error too (and a ``ValueError``); a fit stopped by
``max_iter`` before every pair converged is a warning.

Memory per process: nothing (exception classes only).
"""

from __future__ import annotations

import os

__all__ = ["ProbeDaskError", "InputError", "InvalidParameterError", "ConvergenceWarning"]


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


class InvalidParameterError(ProbeDaskError, ValueError):
    """A parameter of an estimator (``ProbeFitter``) has a value it does not accept; the
    message names the parameter, the value found and what is expected."""


class ConvergenceWarning(UserWarning):
    """The solver stopped at ``max_iter`` with pairs that had not met its stopping rule."""
