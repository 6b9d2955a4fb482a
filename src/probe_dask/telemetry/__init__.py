"""Telemetry of a run: memory of every process at every stage, solver stats, the memory plot.

``jsonl`` (the file, strict JSON), ``probes`` (one process's memory reading), ``state``
(what has been seen), ``summary`` (measured vs planned), ``plot`` (the memory plot) and
``recorder`` (:class:`Telemetry`, which ties them together).
"""

from probe_dask.telemetry.jsonl import (MEMORY_PLOT_NAME, PERFORMANCE_REPORT_NAME, TELEMETRY_NAME,
                                        memory_plot_path, read_telemetry, run_telemetry,
                                        strict_json, telemetry_path)
from probe_dask.telemetry.probes import worker_memory
from probe_dask.telemetry.recorder import Telemetry

__all__ = ["Telemetry", "strict_json", "read_telemetry", "worker_memory", "TELEMETRY_NAME",
           "MEMORY_PLOT_NAME", "PERFORMANCE_REPORT_NAME", "telemetry_path", "memory_plot_path",
           "run_telemetry"]
