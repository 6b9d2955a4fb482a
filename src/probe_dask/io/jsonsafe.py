"""Strict JSON: values made plain for any JSON parser (NaN and infinities become ``null``).

Every JSON file probe-dask writes (``probe1d_classes.json``, the telemetry lines, ``plan
--json``) goes through :func:`strict_json` and ``json.dumps(..., allow_nan=False)``, so
Python's ``json``, ``jq`` and JavaScript all read it.

Memory per process: a plain copy of the object being converted, while it is converted.
"""

from __future__ import annotations

import json
import math
import os

__all__ = ["strict_json", "dumps_strict"]


def strict_json(obj):
    """``obj`` with numpy scalars and arrays made plain, NaN and infinities made None."""
    if isinstance(obj, dict):
        return {str(k): strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [strict_json(v) for v in obj]
    if isinstance(obj, str):
        return str(obj)  # a str enum (stages.Stage) becomes its value
    if isinstance(obj, bool) or obj is None:
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    item = getattr(obj, "item", None)  # numpy scalars and 0-d arrays
    if callable(item) and getattr(obj, "ndim", 0) == 0:
        return strict_json(item())
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):
        return strict_json(tolist())
    return str(obj)


def dumps_strict(obj, **kwargs) -> str:
    """``json.dumps`` of :func:`strict_json` ``(obj)``; a NaN left anywhere is an error."""
    return json.dumps(strict_json(obj), allow_nan=False, **kwargs)
