"""Memory readings of one process: RSS, peak RSS since the last reading, GPU bytes; and the
scheduler's view of every worker.

:func:`worker_memory` runs on every worker through ``client.run`` (and on the driver through
:func:`rss` and :func:`peak_rss`); :func:`scheduler_memory` runs on the scheduler through
``client.run_on_scheduler``. The stage peak is the kernel's ``VmHWM``, restarted at each
reading (Linux ``clear_refs``).

Memory per process: nothing (each reading is a small dict returned to the caller).
"""

from __future__ import annotations

import os
import sys

import psutil

try:
    import resource
except ImportError:  # not on Windows
    resource = None

__all__ = ["rss", "peak_rss", "reset_peak", "worker_memory", "scheduler_memory"]


def reset_peak() -> bool:
    """Restart this process's ``VmHWM`` from its current RSS (Linux ``clear_refs`` 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int | None:
    """Peak RSS of this process since the last :func:`reset_peak` (else its lifetime peak):
    ``VmHWM``, or ``ru_maxrss`` where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    if resource is None:
        return None
    try:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)
    except OSError:
        return None


def rss() -> int:
    """Resident set size of this process now."""
    return int(psutil.Process().memory_info().rss)


def worker_memory(reset: bool = False) -> dict:
    """This process's RSS, peak RSS since the last reset (``stage_peak_rss``) and, when torch
    has used CUDA here, GPU bytes; ``reset`` restarts the peak (``peak_reset``).

    Runs on the workers through ``client.run``; never imports torch itself.
    """
    out = {"pid": os.getpid(), "rss": rss(), "stage_peak_rss": peak_rss()}
    out["peak_reset"] = reset_peak() if reset else False
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            devs = range(torch.cuda.device_count())
            out["gpu_allocated"] = sum(int(torch.cuda.memory_allocated(d)) for d in devs)
            out["gpu_peak_allocated"] = max(int(torch.cuda.max_memory_allocated(d)) for d in devs)
    except Exception:  # noqa: BLE001 - telemetry never fails a run
        pass
    return out


def scheduler_memory(dask_scheduler=None) -> dict:
    """The scheduler's view of every worker (runs on the scheduler)."""
    out = {}
    for addr, ws in dask_scheduler.workers.items():
        m = ws.memory
        out[addr] = {"name": str(ws.name), "pid": ws.pid, "process": int(m.process),
                     "managed": int(m.managed), "unmanaged": int(m.unmanaged),
                     "spilled": int(m.spilled), "memory_limit": int(ws.memory_limit or 0),
                     "status": getattr(ws.status, "name", str(ws.status))}
    return out
