"""The telemetry file: strict JSON lines, its writer and reader, and the names of the files
telemetry writes beside the train results.

Every line is one JSON object with ``event`` (its kind), ``time`` and ``elapsed``; NaN and
infinities are written as ``null`` (:func:`strict_json`), so any JSON parser reads it.

Memory per process: the driver holds, until :meth:`JsonlWriter.open`, the lines written
before the file's folder was known (a few events of the start of a run); nothing after.
"""

from __future__ import annotations

import json
import threading
from datetime import datetime, timezone
from pathlib import Path

from probe_dask.io.jsonsafe import strict_json

__all__ = ["TELEMETRY_NAME", "MEMORY_PLOT_NAME", "PERFORMANCE_REPORT_NAME", "TELEMETRY_GLOB",
           "strict_json", "telemetry_path", "memory_plot_path", "run_telemetry",
           "read_telemetry", "JsonlWriter"]

#: Names of an unstamped telemetry file and its plot (a path given by the caller).
TELEMETRY_NAME = "probe1d_telemetry.jsonl"
MEMORY_PLOT_NAME = "probe1d_memory.png"
PERFORMANCE_REPORT_NAME = "probe1d_performance.html"
#: Every run's telemetry beside the train results: ``probe1d_telemetry-<stamp>.jsonl``.
TELEMETRY_GLOB = "probe1d_telemetry-*.jsonl"


def run_stamp() -> str:
    """The UTC time now as ISO 8601 basic format, ``20261125T103000Z`` (sorts by time)."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def telemetry_path(folder) -> Path:
    """``folder/probe1d_telemetry-<stamp>.jsonl``, a name no earlier run of ``folder`` used.

    Each run keeps its own telemetry (a failing rerun must not replace the last good run's);
    two runs started within one second get ``-<stamp>-1``, ``-2`` ...
    """
    folder, stamp = Path(folder), run_stamp()
    path, n = folder / f"probe1d_telemetry-{stamp}.jsonl", 0
    while path.exists() or memory_plot_path(path).exists():
        n += 1
        path = folder / f"probe1d_telemetry-{stamp}-{n}.jsonl"
    return path


def memory_plot_path(telemetry) -> Path:
    """The memory plot beside a telemetry file: ``probe1d_memory<same suffix>.png``."""
    telemetry = Path(telemetry)
    tail = telemetry.stem.removeprefix("probe1d_telemetry") if telemetry.stem.startswith(
        "probe1d_telemetry") else f"-{telemetry.stem}"
    return telemetry.with_name(f"probe1d_memory{tail}.png")


def run_telemetry(folder) -> list[Path]:
    """Every stamped telemetry file in ``folder``, oldest first."""
    return sorted(Path(folder).glob(TELEMETRY_GLOB), key=lambda p: (p.stat().st_mtime_ns, p.name))


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
