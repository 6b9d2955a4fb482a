"""The telemetry file: strict JSON lines, its writer and reader, and the names of the files
telemetry writes beside the train results.

Every line is one JSON object with ``event`` (its kind), ``time`` and ``elapsed``; NaN and
infinities are written as ``null`` (:func:`strict_json`), so any JSON parser reads it.

Memory per process: the driver holds, until :meth:`JsonlWriter.open`, the lines written
before the file's folder was known (a few events of the start of a run); nothing after.
"""

from __future__ import annotations

import json
import math
import os
import threading
from pathlib import Path

__all__ = ["TELEMETRY_NAME", "MEMORY_PLOT_NAME", "PERFORMANCE_REPORT_NAME", "strict_json",
           "read_telemetry", "JsonlWriter"]

TELEMETRY_NAME = "probe1d_telemetry.jsonl"
MEMORY_PLOT_NAME = "probe1d_memory.png"
PERFORMANCE_REPORT_NAME = "probe1d_performance.html"


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


def read_telemetry(path) -> list[dict]:
    """Every event of a telemetry file (strict JSON, one object per line)."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class JsonlWriter:
    """Thread-safe writer of strict JSON lines; lines are kept until :meth:`open`."""

    def __init__(self):
        self.path = None
        self._pending = []
        self._file = None
        self._lock = threading.Lock()

    def open(self, path) -> Path:
        """Start writing to ``path`` (created or truncated); pending lines go first."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self.path = path
            self._file = open(path, "w", encoding="utf-8")
            self._file.writelines(self._pending)
            self._pending = []
            self._file.flush()
        return path

    def write(self, record: dict) -> dict:
        """Write ``record`` as one line (made strict JSON first); returns what was written."""
        record = strict_json(record)
        line = json.dumps(record, allow_nan=False, separators=(",", ":")) + "\n"
        with self._lock:
            if self._file is None:
                self._pending.append(line)
            else:
                self._file.write(line)
                self._file.flush()
        return record

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
