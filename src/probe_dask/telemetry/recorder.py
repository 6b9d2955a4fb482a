"""The telemetry recorder of a run: memory of every process at every stage, solver stats,
samples in the background, and at the end a summary and the memory plot.

:class:`Telemetry` writes one JSON object per line (``telemetry.jsonl``) to
``probe1d_telemetry.jsonl`` beside the train results:

- ``host_mem`` at each run stage of ``stages.MEASURED`` (``open``, ``ingest``, ``cluster``,
  ``label_counts_start``, ``fit_start``, every ``iteration``, ``fit_end``,
  ``evaluate_train_start``, ``evaluate_train_end``, ``evaluate_test_end``, ``write_end``,
  ``end``): for the driver and every worker its RSS, ``stage_peak_rss`` (the kernel's
  ``VmHWM`` since the previous reading: it is restarted at each one) and ``peak_rss`` (the
  largest so far); for workers also the managed / unmanaged / spilled bytes and status the
  scheduler holds, and the GPU's peak allocated bytes where torch has used CUDA there;
- ``iteration``: the solver's statistics of each pass (``engine.fit.ProbeFitter.history_``), with the names of
  the issue (``passes``, ``active_pairs``, ``max_gradient``, ``max_scaled_step``,
  ``mean_damping``, ``mean_loss``, ``pass_seconds``);
- ``sample``: every ``interval`` seconds, from a background thread, the RSS / managed /
  spilled bytes of every worker (the scheduler's view) and the driver's RSS;
- ``plan`` (the memory plan, ``Plan.to_dict``) and a final ``summary`` that sets the measured
  peaks beside the plan's predictions (``telemetry.summary``), and counts worker restarts
  and pauses.

:meth:`Telemetry.close` also draws ``probe1d_memory.png`` (``telemetry.plot``).

Memory per process: the driver holds what ``telemetry.state`` says (about 100 bytes per
worker-second of samples); workers hold nothing.
"""

from __future__ import annotations

import os
import threading
import time

from probe_dask.stages import MEASURED, Stage
from probe_dask.telemetry.jsonl import JsonlWriter, memory_plot_path
from probe_dask.telemetry.plot import plot_memory
from probe_dask.telemetry.probes import peak_rss, reset_peak, rss, scheduler_memory, worker_memory
from probe_dask.telemetry.state import Mark, Peaks, Roster, Sample, Timeline
from probe_dask.telemetry.summary import summarize

__all__ = ["Telemetry"]


class Telemetry:
    """JSON-lines telemetry of one run; also a ``callback(stage, info)`` for the fit and job.

    Parameters
    ----------
    path : path, optional
        The ``.jsonl`` file; events are kept until :meth:`open` when not given yet.
    interval : float
        Seconds between background samples (0: no sampling thread).
    plot : path, optional
        Where :meth:`close` draws the memory plot (default: ``probe1d_memory.png`` beside
        ``path``; False: no plot).

    Attributes
    ----------
    plan : memory.plan.Plan or None
        The plan of the run, once the job has made it.
    roster, peaks, timeline : telemetry.state.Roster, Peaks, Timeline
        What has been seen so far.
    """

    def __init__(self, path=None, *, interval: float = 1.0, plot=None):
        self.t0 = time.time()
        self.interval = float(interval)
        self.plot_path = plot
        self.client = None
        self.plan = None
        self.roster = Roster()
        self.peaks = Peaks()
        self.timeline = Timeline()
        self._writer = JsonlWriter()
        self._lock = threading.Lock()  # guards roster, peaks and timeline
        self._stop = threading.Event()
        self._sampler = None
        self._warned = False
        if path is not None:
            self.open(path)

    # -- file ------------------------------------------------------------------------------
    @property
    def path(self):
        """The ``.jsonl`` file, once open."""
        return self._writer.path

    def open(self, path) -> None:
        """Start writing to ``path`` (created or truncated); events so far go first."""
        path = self._writer.open(path)
        if self.plot_path is None:
            self.plot_path = memory_plot_path(path)

    def _elapsed(self, now=None) -> float:
        return (time.time() if now is None else now) - self.t0

    def event(self, kind: str, **fields) -> dict:
        """Write one event; returns it (as written)."""
        now = time.time()
        return self._writer.write({"event": kind, "time": now, "elapsed": round(self._elapsed(now), 4),
                                   **fields})

    def _warn(self, exc) -> None:
        if not self._warned:
            self._warned = True
            self.event("telemetry_error", error=f"{type(exc).__name__}: {exc}")

    # -- cluster ---------------------------------------------------------------------------
    def attach(self, client) -> None:
        """Watch ``client``'s workers from now on (starts the sampling thread)."""
        self.client = client
        self._scheduler_view()
        if self.interval > 0 and self._sampler is None:
            self._sampler = threading.Thread(target=self._sample_loop, name="probe-dask-telemetry",
                                             daemon=True)
            self._sampler.start()

    def _scheduler_view(self) -> dict:
        if self.client is None:
            return {}
        try:
            view = self.client.run_on_scheduler(scheduler_memory)
        except Exception as exc:  # noqa: BLE001 - telemetry never fails a run
            self._warn(exc)
            return {}
        with self._lock:
            self.roster.update(view)
        return view

    def _sample_loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        """One background sample: the scheduler's view of every worker, the driver's RSS."""
        view = self._scheduler_view()
        if not view:
            return
        drv = rss()
        ws = {w["name"]: (w["process"], w["managed"], w["spilled"]) for w in view.values()}
        with self._lock:
            self.timeline.add_sample(Sample(self._elapsed(), drv, ws))
        self.event("sample", driver_rss=drv, workers={k: {"rss": v[0], "managed": v[1], "spilled": v[2]}
                                                     for k, v in ws.items()})

    def _worker_readings(self) -> dict:
        """``host_mem``'s record of every worker: the scheduler's view and its own reading."""
        view = self._scheduler_view()
        try:
            mine = self.client.run(worker_memory, reset=True, on_error="return")
        except Exception as exc:  # noqa: BLE001
            self._warn(exc)
            mine = {}
        workers = {}
        for addr, w in view.items():
            rec = {"address": addr, "managed": w["managed"], "unmanaged": w["unmanaged"],
                   "spilled": w["spilled"], "memory_limit": w["memory_limit"],
                   "status": w["status"], "scheduler_rss": w["process"]}
            got = mine.get(addr)
            if isinstance(got, dict):
                rec.update(got)
                with self._lock:
                    rec["peak_rss"] = self.peaks.add_worker(w["name"], got)
            workers[w["name"]] = rec
        return workers

    def host_mem(self, stage: str, **fields) -> dict:
        """A ``host_mem`` event: driver and every worker, now.

        ``stage_peak_rss`` is each process's peak since the previous ``host_mem`` (the
        kernel's ``VmHWM``, restarted at every event), ``peak_rss`` its peak so far.
        """
        stage_peak = peak_rss()
        reset_peak()
        with self._lock:
            driver_peak = self.peaks.add_driver(stage_peak)
        drv = {"pid": os.getpid(), "rss": rss(), "stage_peak_rss": stage_peak, "peak_rss": driver_peak}
        workers = self._worker_readings() if self.client is not None else {}
        worker_peaks = {n: w.get("stage_peak_rss") for n, w in workers.items()}
        with self._lock:
            self.timeline.marks.append(Mark(self._elapsed(), stage, stage_peak, worker_peaks))
            self.peaks.add_stage(stage, stage_peak, worker_peaks.values())
        return self.event("host_mem", stage=stage, driver=drv, workers=workers,
                          worker_restarts=self.roster.restarts, **fields)

    # -- callbacks of fit and job ----------------------------------------------------------
    def __call__(self, stage: str, info: dict) -> None:
        try:
            self._dispatch(stage, dict(info or {}))
        except Exception as exc:  # noqa: BLE001 - telemetry never fails a run
            self._warn(exc)

    def _dispatch(self, stage, info) -> None:
        if stage == Stage.PLAN:
            plan = info.pop("plan", None)
            if plan is not None:
                self.plan = plan
                self.event(Stage.PLAN, **plan.to_dict())
        elif stage == Stage.ITERATION:
            stats = dict(info)
            stats.update(passes=info.get("n_iter"), active_pairs=info.get("active_after"),
                         max_gradient=info.get("max_grad"), max_scaled_step=info.get("max_step"),
                         mean_damping=info.get("mean_lam"))
            self.event(Stage.ITERATION, **stats)
            self.host_mem(Stage.ITERATION, n_iter=info.get("n_iter"))
        elif stage in MEASURED:
            self.host_mem(stage, **info)
        else:
            self.event(stage, **info)

    # -- the end ---------------------------------------------------------------------------
    def summary(self, **extra) -> dict:
        """Measured peaks beside the plan's predictions (also written as ``summary``)."""
        with self._lock:
            out = summarize(self.roster, self.peaks, self.timeline, self.plan,
                            driver_peak_now=peak_rss())
        out.update(extra)
        return self.event("summary", **out)

    def close(self, *, summary: bool = True, **extra) -> dict | None:
        """Stop sampling, write the last ``host_mem``, the ``summary`` and the plot."""
        self._stop.set()
        if self._sampler is not None:
            self._sampler.join(timeout=30)
            self._sampler = None
        result = None
        try:
            if self.client is not None:
                self.host_mem(Stage.END)
                self.sample()
            if summary:
                result = self.summary(**extra)
            if self.plot_path and self.timeline.samples:
                try:
                    self.plot(self.plot_path)
                except Exception as exc:  # noqa: BLE001
                    self._warn(exc)
        finally:
            self._writer.close()
        return result

    def plot(self, path):
        """Draw the memory plot to ``path`` (``telemetry.plot.plot_memory``)."""
        return plot_memory(path, self.timeline, self.roster, self.plan)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close(summary=exc[0] is None)
