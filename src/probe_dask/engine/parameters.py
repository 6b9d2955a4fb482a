"""What each ``ProbeFitter`` parameter accepts, checked at ``fit`` (as scikit-learn's
``_parameter_constraints``): a test and, in words, what it expects (the error message).

Memory per process: nothing (constants and small functions).
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping

import numpy as np
from distributed import Client

from probe_dask import config, kernels
from probe_dask.errors import ProbeDaskError

__all__ = ["PARAMETER_CONSTRAINTS", "persist_setting"]


def _real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def _integer(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def _device(v) -> bool:
    """None, "auto", "cpu", "cuda" or "cuda:<index>"."""
    if v is None or v in ("auto", "cpu", "cuda"):
        return True
    return isinstance(v, str) and v.startswith("cuda:") and v[5:].isdigit()


#: What each ``ProbeFitter`` parameter accepts (checked at ``fit``): a test, and what it
#: expects in words (the error message).
PARAMETER_CONSTRAINTS = {
    "ridge": (lambda v: _real(v) and math.isfinite(v) and v > 0, "a finite number > 0"),
    "max_iter": (lambda v: _integer(v) and v >= 1, "an int >= 1"),
    "device": (_device, 'None, "auto", "cpu", "cuda" or "cuda:<index>"'),
    "backend": (lambda v: isinstance(v, str) and v in kernels.BACKENDS,
                " or ".join(f'"{b}"' for b in kernels.BACKENDS)),
    "persist": (lambda v: (isinstance(v, str) and v == "auto")
                or isinstance(v, (bool, np.bool_)), '"auto", True or False'),
    "chunk_nnz": (lambda v: v is None or (_integer(v) and v >= 1), "None or an int >= 1"),
    "layout_dir": (lambda v: v is None or isinstance(v, (str, os.PathLike)), "None or a path"),
    "resources": (lambda v: v is None or isinstance(v, Mapping), "None or a dict"),
    "checkpoint": (lambda v: v is None or isinstance(v, (str, os.PathLike)), "None or a path"),
    "identity": (lambda v: v is None or isinstance(v, Mapping), "None or a dict"),
    "progress": (lambda v: isinstance(v, (bool, np.bool_)), "True or False"),
    "callbacks": (lambda v: v is None or (isinstance(v, (list, tuple))
                                          and all(callable(c) for c in v)),
                  "None or a list of callables"),
    "client": (lambda v: v is None or isinstance(v, Client), "None or a distributed.Client"),
    "keep_state": (lambda v: isinstance(v, (bool, np.bool_)), "True or False"),
}


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
