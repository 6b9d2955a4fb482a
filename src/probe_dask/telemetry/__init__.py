"""Telemetry of a run: memory of every process at every stage, solver stats, the memory plot."""

from probe_dask.telemetry.recorder import *  # noqa: F401,F403
from probe_dask.telemetry.recorder import __all__  # noqa: F401
