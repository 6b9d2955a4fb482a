"""What telemetry has seen of a run so far: the workers, the peaks, the memory over time.

Three small containers the recorder (``telemetry.recorder``) fills and the summary
(``telemetry.summary``) and the plot (``telemetry.plot``) read:

- :class:`Roster`: every worker the scheduler has shown, its restarts, pauses and removals;
- :class:`Peaks`: the peak RSS so far of the driver and of every worker, GPU peaks, and the
  largest stage peak of every ``host_mem`` stage;
- :class:`Timeline`: the background samples and the ``host_mem`` readings, in time order
  (what the memory plot draws).

Memory per process: the driver holds them: a few numbers per worker per sample (about 100
bytes per worker-second, thinned by half past :data:`MAX_SAMPLES` samples) and per reading;
workers hold nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = ["Sample", "Mark", "Roster", "Peaks", "Timeline"]

#: Samples kept; past this every other one is dropped, so a long run keeps bounded memory.
MAX_SAMPLES = 20_000


class Sample(NamedTuple):
    """One background sample (the scheduler's view of the workers, the driver's RSS)."""

    elapsed: float
    driver_rss: int
    workers: dict  # name -> (rss, managed, spilled)


class Mark(NamedTuple):
    """One ``host_mem`` reading: its stage and every process's peak since the previous one."""

    elapsed: float
    stage: str
    driver_peak: int | None
    workers: dict  # name -> stage peak RSS (None where the worker did not answer)


@dataclass
class Roster:
    """The workers the scheduler has shown, by name."""

    workers: dict = field(default_factory=dict)  # name -> {"address", "pid", "memory_limit"}
    restarts: int = 0
    removed: set = field(default_factory=set)
    paused: set = field(default_factory=set)
    sampled_max: dict = field(default_factory=dict)  # name -> max process memory sampled

    def update(self, view: dict) -> None:
        """Take in one view of the scheduler (``probes.scheduler_memory``).

        A worker seen again under another address or process counts as a restart.
        """
        names = set()
        for addr, w in view.items():
            name = w["name"]
            names.add(name)
            old = self.workers.get(name)
            if old is not None and (old["address"] != addr or old["pid"] != w["pid"]):
                self.restarts += 1
            self.workers[name] = {"address": addr, "pid": w["pid"], "memory_limit": w["memory_limit"]}
            if w["status"] == "paused":
                self.paused.add(name)
            self.sampled_max[name] = max(self.sampled_max.get(name, 0), w["process"])
        self.removed |= set(self.workers) - names

    def memory_limit(self, name) -> int | None:
        return self.workers.get(name, {}).get("memory_limit")


@dataclass
class Peaks:
    """Peak RSS so far, per process, and per ``host_mem`` stage."""

    driver: int = 0
    workers: dict = field(default_factory=dict)  # name -> peak RSS so far (max of stage peaks)
    gpu: dict = field(default_factory=dict)  # name -> peak GPU bytes allocated
    by_stage: dict = field(default_factory=dict)  # stage -> (max worker peak, driver peak)

    def add_driver(self, stage_peak: int | None) -> int:
        """Take in the driver's stage peak; returns its peak so far."""
        self.driver = max(self.driver, stage_peak or 0)
        return self.driver

    def add_worker(self, name, reading: dict) -> int:
        """Take in a worker's reading (``probes.worker_memory``); returns its peak so far."""
        peak = max(self.workers.get(name, 0), reading.get("stage_peak_rss") or 0)
        self.workers[name] = peak
        gpu = reading.get("gpu_peak_allocated")
        if gpu is not None:
            self.gpu[name] = max(self.gpu.get(name, 0), gpu)
        return peak

    def add_stage(self, stage, driver_peak: int | None, worker_peaks) -> None:
        """Take in the stage peaks of one ``host_mem`` reading."""
        old = self.by_stage.get(stage, (0, 0))
        worker = max((p or 0 for p in worker_peaks), default=0)
        self.by_stage[stage] = (max(old[0], worker), max(old[1], driver_peak or 0))


@dataclass
class Timeline:
    """Samples and readings in time order (seconds since the start of telemetry)."""

    samples: list = field(default_factory=list)  # Sample
    marks: list = field(default_factory=list)  # Mark

    def add_sample(self, sample: Sample) -> None:
        self.samples.append(sample)
        if len(self.samples) > MAX_SAMPLES:
            self.samples = self.samples[::2]

    def driver_sampled_max(self) -> int | None:
        return max((s.driver_rss for s in self.samples), default=None)
