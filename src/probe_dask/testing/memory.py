"""Peak RSS of a process tree, sampled from outside: the driver, its workers, and the rest.

A :class:`TreeSampler` watches one process (a ``probe-dask fit`` child, say) and every
process below it from a background thread, every ``interval`` seconds, with psutil, and
keeps the largest RSS it saw for each process. Processes get a role: ``driver`` (the
watched process), ``worker`` (a direct child started by ``multiprocessing``'s spawn, as
LocalCluster's nannies start workers) or ``other`` (the resource tracker, a worker's own
fork running the C compiler, ...: they share pages with their parent and are not counted
as workers). Sampling misses peaks shorter than the interval; the telemetry's kernel
high-water marks do not, so benchmarks report both.

Memory per process: one small record per process seen (pid, role, command tail, peak).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import psutil


@dataclass
class ProcessPeak:
    """What the sampler saw of one process.

    Attributes
    ----------
    pid : int
    role : str
        ``"driver"``, ``"worker"`` or ``"other"``.
    cmd : str
        The last 120 characters of its command line.
    peak_rss : int
        Largest RSS sampled, bytes.
    first, last : float
        Seconds since the sampler started when it was first and last seen.
    """

    pid: int
    role: str
    cmd: str
    peak_rss: int = 0
    first: float = 0.0
    last: float = 0.0


def process_role(proc: psutil.Process, root_pid: int, cmd: str) -> str:
    """``driver``, ``worker`` or ``other`` (see the module docstring)."""
    if proc.pid == root_pid:
        return "driver"
    if "spawn_main" in cmd and "resource_tracker" not in cmd and proc.ppid() == root_pid:
        return "worker"
    return "other"


class TreeSampler:
    """Sample the RSS of process ``pid`` and of all its descendants in a thread.

    Use as a context manager around the wait for the process, or call :meth:`start` and
    :meth:`stop`::

        with TreeSampler(proc.pid, interval=0.1) as sampler:
            proc.wait()
        sampler.driver_peak, sampler.worker_peaks

    Parameters
    ----------
    pid : int
        The process to watch (the root of the tree).
    interval : float
        Seconds between samples.
    """

    def __init__(self, pid: int, interval: float = 0.1):
        self.pid = pid
        self.interval = interval
        self.peaks: dict[int, ProcessPeak] = {}
        self._root = psutil.Process(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"rss-sampler-{pid}", daemon=True)
        self._t0 = time.perf_counter()

    # ------------------------------------------------------------------ running

    def start(self) -> TreeSampler:
        """Start the sampling thread; return self."""
        self._t0 = time.perf_counter()
        self._thread.start()
        return self

    def stop(self) -> TreeSampler:
        """Stop the sampling thread (after its current sample); return self."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        return self

    def __enter__(self) -> TreeSampler:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def sample(self) -> bool:
        """Sample every process of the tree once; False when the root has gone."""
        try:
            procs = [self._root, *self._root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return False
        now = round(time.perf_counter() - self._t0, 2)
        for p in procs:
            try:
                rss = p.memory_info().rss
                seen = self.peaks.get(p.pid)
                if seen is None:
                    cmd = " ".join(p.cmdline())
                    seen = self.peaks[p.pid] = ProcessPeak(
                        p.pid, process_role(p, self.pid, cmd), cmd[-120:], first=now)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            seen.peak_rss = max(seen.peak_rss, rss)
            seen.last = now
        return True

    def _loop(self) -> None:
        while self.sample() and not self._stop.wait(self.interval):
            pass

    # ------------------------------------------------------------------ results

    def by_role(self, role: str) -> list[ProcessPeak]:
        """The processes of one role, in the order they were first seen."""
        return [p for p in self.peaks.values() if p.role == role]

    @property
    def driver_peak(self) -> int:
        """Peak RSS of the watched process, bytes (0 if never sampled)."""
        root = self.peaks.get(self.pid)
        return root.peak_rss if root else 0

    @property
    def worker_peaks(self) -> list[int]:
        """Peak RSS of each worker process, bytes, largest first."""
        return sorted((p.peak_rss for p in self.by_role("worker")), reverse=True)

    def as_dict(self) -> dict:
        """JSON-able summary: driver and worker peaks, and every process seen."""
        return {"interval": self.interval, "driver_peak": self.driver_peak,
                "worker_peaks": self.worker_peaks,
                "processes": {str(p.pid): vars(p).copy() for p in self.peaks.values()}}
