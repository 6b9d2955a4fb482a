"""What each ``ProbeFitter`` parameter accepts, checked at ``fit`` (as scikit-learn's
``_parameter_constraints``): one constraint object (``core.constraints``) per name, from
which the check, the error message and the tests' invalid values all come. The command
line and the sweep file check the fit's settings (``core.settings.FitSettings``) here too.

Memory per process: nothing (constants and small functions).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping

from distributed import Client

from probe_dask import config, kernels
from probe_dask.core.constraints import (NONE, AnyOf, Booleans, Callables, IndexedName, Instance,
                                         Interval, Options, PathLike, check_value)
from probe_dask.core.settings import FitSettings
from probe_dask.errors import InvalidParameterError, ProbeDaskError

__all__ = ["PARAMETER_CONSTRAINTS", "DEVICE_CHOICES", "POSITIVE_INT", "POSITIVE_REAL", "check_params", "check_settings",
           "persist_setting"]


#: The choices of ``--device`` and of a sweep file's ``device``: the fitter's own names
#: without an index (the command line picks no GPU by number).
DEVICE_CHOICES = ("auto", "cpu", "cuda")

#: An integer >= 1 (passes, non-zeros, workers, threads).
POSITIVE_INT = Interval(numbers.Integral, 1, None, closed="left")
#: A finite number > 0 (the ridge penalty, an interval in seconds).
POSITIVE_REAL = Interval(numbers.Real, 0, None, closed="neither")

#: What each ``ProbeFitter`` parameter accepts (checked at ``fit``); the error message says
#: ``expected <the constraint>``, and the tests refuse each constraint's invalid values.
PARAMETER_CONSTRAINTS = {
    "ridge": POSITIVE_REAL,
    "max_iter": POSITIVE_INT,
    "device": AnyOf(NONE, Options(str, DEVICE_CHOICES), IndexedName("cuda")),
    "backend": Options(str, kernels.BACKENDS),
    "persist": AnyOf(Options(str, ("auto",)), Booleans()),
    "chunk_nnz": AnyOf(NONE, POSITIVE_INT),
    "layout_dir": AnyOf(NONE, PathLike()),
    "resources": AnyOf(NONE, Instance(Mapping, "a dict")),
    "checkpoint": AnyOf(NONE, PathLike()),
    "identity": AnyOf(NONE, Instance(Mapping, "a dict")),
    "progress": Booleans(),
    "callbacks": AnyOf(NONE, Callables()),
    "client": AnyOf(NONE, Instance(Client, "a distributed.Client")),
    "keep_state": Booleans(),
}


def check_params(owner: str, values: Mapping, constraints=PARAMETER_CONSTRAINTS) -> None:
    """Check ``values`` (name -> value) against ``constraints``, in their order.

    Raises
    ------
    InvalidParameterError
        (a ValueError) ``<owner>: <name>: found <value>; expected <constraint>`` for the
        first value refused.
    """
    for name, constraint in constraints.items():
        if name in values and (problem := check_value(constraint, values[name])) is not None:
            raise InvalidParameterError(f"{owner}: {name}: {problem}")


def check_settings(settings: FitSettings, owner: str = "FitSettings") -> FitSettings:
    """``settings``, checked field by field (:func:`check_params`); returns it."""
    check_params(owner, settings.fitter_params())
    return settings


def persist_setting():
    """``probe-dask.engine.persist`` as ``"auto"``, True or False (a ``DASK_*`` variable
    gives a string); ProbeDaskError naming the key for anything else."""
    value = config.get("probe-dask.engine.persist")
    if isinstance(value, str) and value.strip().lower() in ("auto", "true", "false"):
        value = {"auto": "auto", "true": True, "false": False}[value.strip().lower()]
    if value == "auto" or isinstance(value, bool):
        return value
    raise ProbeDaskError(f"configuration key 'probe-dask.engine.persist': found {value!r}; "
                         "expected auto, true or false")
