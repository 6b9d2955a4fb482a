"""Telemetry of a run: memory of every process at every stage, solver stats, a memory plot.

:class:`Telemetry` writes one JSON object per line (strict JSON: NaN and infinities become
``null``) to ``probe1d_telemetry.jsonl`` beside the train results:

- ``host_mem`` at each stage (``open``, ``ingest``, ``cluster``, ``label_counts_start``,
  ``fit_start``, every ``iteration``, ``fit_end``, ``evaluate_train_start``,
  ``evaluate_train_end``, ``evaluate_test_end``, ``write_end``, ``end``): for the driver and
  every worker its RSS, ``stage_peak_rss`` (the kernel's ``VmHWM`` since the previous
  event: it is restarted at each one, Linux ``clear_refs``) and ``peak_rss`` (the largest so
  far); for workers also the managed / unmanaged / spilled bytes and status the scheduler
  holds, and the GPU's peak allocated bytes where torch has used CUDA there;
- ``iteration``: the solver's statistics of each pass (``fit.history_``), with the names of
  the issue (``passes``, ``active_pairs``, ``max_gradient``, ``max_scaled_step``,
  ``mean_damping``, ``mean_loss``, ``pass_seconds``);
- ``sample``: every ``interval`` seconds, from a background thread, the RSS / managed /
  spilled bytes of every worker (the scheduler's view) and the driver's RSS;
- ``plan`` (the memory plan, ``plan.Plan.to_dict``) and a final ``summary`` that sets the
  measured peaks beside the plan's predictions, and counts worker restarts and pauses.

:meth:`Telemetry.close` also draws the samples as ``probe1d_memory.png`` (one panel per
worker and one for the driver, with the limit, the target and the predicted peak).

Memory per process: the driver keeps the samples (a few numbers per worker per sample;
about 100 bytes per worker-second); workers hold nothing.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from pathlib import Path

from probe_dask.memory.plan import DRIVER_STAGES, WORKER_STAGES

__all__ = ["Telemetry", "strict_json", "read_telemetry", "worker_memory", "scheduler_memory",
           "TELEMETRY_NAME", "MEMORY_PLOT_NAME", "PERFORMANCE_REPORT_NAME"]

TELEMETRY_NAME = "probe1d_telemetry.jsonl"
MEMORY_PLOT_NAME = "probe1d_memory.png"
PERFORMANCE_REPORT_NAME = "probe1d_performance.html"
_MAX_SAMPLES = 20_000  # thinned by half past this, so a long run keeps bounded memory


def strict_json(obj):
    """``obj`` with numpy scalars and arrays made plain, NaN and infinities made None."""
    if isinstance(obj, dict):
        return {str(k): strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [strict_json(v) for v in obj]
    if isinstance(obj, (str, bool)) or obj is None:
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


def _reset_peak() -> bool:
    """Restart this process's ``VmHWM`` from its current RSS (Linux ``clear_refs`` 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss() -> int | None:
    """Peak RSS of this process since the last :func:`_reset_peak` (else its lifetime peak):
    ``VmHWM``, or ``ru_maxrss`` where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)
    except (ImportError, OSError):
        return None


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def worker_memory(reset: bool = False) -> dict:
    """This process's RSS, peak RSS since the last reset (``stage_peak_rss``) and, when torch
    has used CUDA here, GPU bytes; ``reset`` restarts the peak (``peak_reset``).

    Runs on the workers through ``client.run``; never imports torch itself.
    """
    out = {"pid": os.getpid(), "rss": _rss(), "stage_peak_rss": _peak_rss()}
    out["peak_reset"] = _reset_peak() if reset else False
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


def read_telemetry(path) -> list[dict]:
    """Every event of a telemetry file (strict JSON, one object per line)."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class Telemetry:
    """JSON-lines telemetry of one run; also a ``callback(event, info)`` for the fit and job.

    Parameters
    ----------
    path : path, optional
        The ``.jsonl`` file; events are buffered until :meth:`open` when not given yet.
    interval : float
        Seconds between background samples (0: no sampling thread).
    plot : path, optional
        Where :meth:`close` draws the memory plot (default: ``probe1d_memory.png`` beside
        ``path``; False: no plot).
    """

    def __init__(self, path=None, *, interval: float = 1.0, plot=None):
        self.t0 = time.time()
        self.interval = float(interval)
        self.plot_path = plot
        self.path = None
        self.client = None
        self.plan = None
        self.samples = []  # (elapsed, driver_rss, {name: (rss, managed, spilled)})
        self.stages = []  # (elapsed, stage)
        self.workers = {}  # name -> {"address", "pid", "memory_limit"}
        self.restarts = 0
        self.removed = set()
        self.paused = set()
        self.worker_peaks = {}  # name -> peak RSS so far (max of the stage peaks)
        self.gpu_peaks = {}  # name -> peak GPU bytes allocated
        self.driver_peak = 0
        self.stage_peaks = {}  # host_mem stage -> (max worker stage peak, driver stage peak)
        self.stage_marks = []  # (elapsed, driver stage peak, {name: worker stage peak})
        self.sampled_max = {}  # name -> max sampled process memory
        self._lines = []
        self._file = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self._warned = False
        if path is not None:
            self.open(path)

    # -- file ------------------------------------------------------------------------------
    def open(self, path) -> None:
        """Start writing to ``path`` (created or truncated); buffered events go first."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self.path = path
            self._file = open(path, "w", encoding="utf-8")
            for line in self._lines:
                self._file.write(line)
            self._lines = []
            self._file.flush()
        if self.plot_path is None:
            self.plot_path = path.with_name(MEMORY_PLOT_NAME)

    def event(self, kind: str, **fields) -> dict:
        """Write one event; returns it (as written)."""
        now = time.time()
        rec = strict_json({"event": kind, "time": now, "elapsed": round(now - self.t0, 4), **fields})
        line = json.dumps(rec, allow_nan=False, separators=(",", ":")) + "\n"
        with self._lock:
            if self._file is None:
                self._lines.append(line)
            else:
                self._file.write(line)
                self._file.flush()
        return rec

    # -- cluster ---------------------------------------------------------------------------
    def attach(self, client) -> None:
        """Watch ``client``'s workers from now on (starts the sampling thread)."""
        self.client = client
        self._scheduler_view()
        if self.interval > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._sample_loop, name="probe-dask-telemetry",
                                            daemon=True)
            self._thread.start()

    def _warn(self, exc) -> None:
        if not self._warned:
            self._warned = True
            self.event("telemetry_error", error=f"{type(exc).__name__}: {exc}")

    def _scheduler_view(self) -> dict:
        if self.client is None:
            return {}
        try:
            view = self.client.run_on_scheduler(scheduler_memory)
        except Exception as exc:  # noqa: BLE001 - telemetry never fails a run
            self._warn(exc)
            return {}
        with self._lock:
            names = {}
            for addr, w in view.items():
                name = w["name"]
                names[name] = addr
                old = self.workers.get(name)
                if old is not None and (old["address"] != addr or old["pid"] != w["pid"]):
                    self.restarts += 1
                self.workers[name] = {"address": addr, "pid": w["pid"], "memory_limit": w["memory_limit"]}
                if w["status"] == "paused":
                    self.paused.add(name)
                self.sampled_max[name] = max(self.sampled_max.get(name, 0), w["process"])
            self.removed |= set(self.workers) - set(names)
        return view

    def _sample_loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        """One background sample: the scheduler's view of every worker, the driver's RSS."""
        view = self._scheduler_view()
        if not view:
            return
        el = time.time() - self.t0
        drv = _rss()
        ws = {w["name"]: (w["process"], w["managed"], w["spilled"]) for w in view.values()}
        with self._lock:
            self.samples.append((el, drv, ws))
            if len(self.samples) > _MAX_SAMPLES:
                self.samples = self.samples[::2]
        self.event("sample", driver_rss=drv, workers={k: {"rss": v[0], "managed": v[1], "spilled": v[2]}
                                                     for k, v in ws.items()})

    def host_mem(self, stage: str, **fields) -> dict:
        """A ``host_mem`` event: driver and every worker, now.

        ``stage_peak_rss`` is each process's peak since the previous ``host_mem`` (the
        kernel's ``VmHWM``, restarted at every event), ``peak_rss`` its peak so far.
        """
        stage_peak = _peak_rss()
        _reset_peak()
        self.driver_peak = max(self.driver_peak, stage_peak or 0)
        drv = {"pid": os.getpid(), "rss": _rss(), "stage_peak_rss": stage_peak,
               "peak_rss": self.driver_peak}
        workers = {}
        if self.client is not None:
            view = self._scheduler_view()
            try:
                mine = self.client.run(worker_memory, reset=True, on_error="return")
            except Exception as exc:  # noqa: BLE001
                self._warn(exc)
                mine = {}
            for addr, w in view.items():
                name = w["name"]
                rec = {"address": addr, "managed": w["managed"], "unmanaged": w["unmanaged"],
                       "spilled": w["spilled"], "memory_limit": w["memory_limit"],
                       "status": w["status"], "scheduler_rss": w["process"]}
                got = mine.get(addr)
                if isinstance(got, dict):
                    rec.update(got)
                    peak = max(self.worker_peaks.get(name, 0), got.get("stage_peak_rss") or 0)
                    self.worker_peaks[name] = rec["peak_rss"] = peak
                    gpu = got.get("gpu_peak_allocated")
                    if gpu is not None:
                        self.gpu_peaks[name] = max(self.gpu_peaks.get(name, 0), gpu)
                workers[name] = rec
        with self._lock:
            self.stages.append((time.time() - self.t0, stage))
            self.stage_marks.append((time.time() - self.t0, stage_peak,
                                     {n: w.get("stage_peak_rss") for n, w in workers.items()}))
            got = [w.get("stage_peak_rss") or 0 for w in workers.values()]
            old = self.stage_peaks.get(stage, (0, 0))
            self.stage_peaks[stage] = (max(old[0], max(got, default=0)), max(old[1], stage_peak or 0))
        return self.event("host_mem", stage=stage, driver=drv, workers=workers,
                          worker_restarts=self.restarts, **fields)

    # -- callbacks of fit and job ----------------------------------------------------------
    def __call__(self, event: str, info: dict) -> None:
        try:
            self._dispatch(event, dict(info or {}))
        except Exception as exc:  # noqa: BLE001 - telemetry never fails a run
            self._warn(exc)

    def _dispatch(self, event, info):
        if event == "plan":
            plan = info.pop("plan", None)
            if plan is not None:
                self.plan = plan
                self.event("plan", **plan.to_dict())
            return
        if event == "iteration":
            stats = dict(info)
            stats.update(passes=info.get("n_iter"), active_pairs=info.get("active_after"),
                         max_gradient=info.get("max_grad"), max_scaled_step=info.get("max_step"),
                         mean_damping=info.get("mean_lam"))
            self.event("iteration", **stats)
            self.host_mem("iteration", n_iter=info.get("n_iter"))
            return
        stage = {"label_sums_start": "label_counts_start", "fit_start": "fit_start",
                 "fit_end": "fit_end"}.get(event)
        if stage is None and event.startswith(("evaluate", "write")):
            stage = event
        if stage is not None:
            self.host_mem(stage, **info)
        else:
            self.event(event, **info)

    # -- the end ---------------------------------------------------------------------------
    #: Which pass of the plan each ``host_mem`` stage's peak covers (it is the peak since
    #: the previous event): fit_start closes the label pass, evaluate_test_end the test's.
    PLAN_STAGES = {"fit_start": "label_train", "iteration": "fit", "evaluate_train_end": "eval_train",
                   "evaluate_test_end": "label_test+eval_test"}

    DRIVER_PLAN_STAGES = {"open": ("open", "ingest"), "plan": ("label_counts_start",),
                          "fit_start": ("fit_start",), "iteration": ("iteration",),
                          "evaluate": ("evaluate_train_end", "evaluate_test_end"),
                          "write": ("write_end",)}

    def summary(self, **extra) -> dict:
        """Measured peaks beside the plan's predictions (also written as ``summary``)."""
        workers = {name: {"peak_rss": peak, "sampled_max_rss": self.sampled_max.get(name),
                          "gpu_peak_allocated": self.gpu_peaks.get(name),
                          "memory_limit": self.workers.get(name, {}).get("memory_limit")}
                   for name, peak in self.worker_peaks.items()}
        peaks = [w["peak_rss"] for w in workers.values() if w["peak_rss"]]
        measured = {"driver_peak_rss": max(self.driver_peak, _peak_rss() or 0),
                    "driver_sampled_max_rss": max((s[1] for s in self.samples), default=None),
                    "worker_peak_rss_max": max(peaks, default=None), "workers": workers}
        if self.gpu_peaks:
            measured["gpu_peak_allocated_max"] = max(self.gpu_peaks.values())
        out = {"measured": measured, "worker_restarts": self.restarts,
               "workers_removed": sorted(self.removed), "workers_paused": sorted(self.paused)}
        if self.plan is not None:
            p = self.plan
            pred = {"worker_peak": p.worker_peak, "driver_peak": p.driver_peak, "gpu_peak": p.gpu_peak,
                    "worker_budget": p.worker_budget, "memory_limit": p.memory_limit,
                    "block_nnz": p.block_nnz, "persist": p.persist}
            out["predicted"] = pred
            ratio = lambda a, b: (a / b) if a and b else None  # noqa: E731
            out["measured_over_predicted"] = {
                "worker": ratio(measured["worker_peak_rss_max"], pred["worker_peak"]),
                "driver": ratio(measured["driver_peak_rss"], pred["driver_peak"])}
            if self.gpu_peaks:
                out["measured_over_predicted"]["gpu"] = ratio(max(self.gpu_peaks.values()), pred["gpu_peak"])
            by_stage = {}
            for stage, plan_stage in self.PLAN_STAGES.items():
                if stage in self.stage_peaks:
                    want = max(sum(b.nbytes for b in p.worker if b.live(st)) for st in plan_stage.split("+"))
                    by_stage[plan_stage] = {"predicted": want, "measured": self.stage_peaks[stage][0]}
            out["worker_peak_by_stage"] = by_stage
            drv = {st: sum(b.nbytes for b in p.driver if b.live(st)) for st in DRIVER_STAGES}
            out["driver_peak_by_stage"] = {
                plan_stage: {"predicted": drv[plan_stage],
                             "measured": max(self.stage_peaks[st][1] for st in stages if st in self.stage_peaks)}
                for plan_stage, stages in self.DRIVER_PLAN_STAGES.items()
                if any(st in self.stage_peaks for st in stages)}
            out["worker_predicted_by_stage"] = {st: sum(b.nbytes for b in p.worker if b.live(st))
                                                for st in WORKER_STAGES}
            out["workers_under_target"] = bool(peaks) and all(
                w["peak_rss"] <= p.target_fraction * (w["memory_limit"] or math.inf)
                for w in workers.values() if w["peak_rss"])
        out["workers_under_limit"] = all(
            (w["peak_rss"] or 0) < (w["memory_limit"] or math.inf) for w in workers.values())
        out.update(extra)
        return self.event("summary", **out)

    def close(self, *, summary: bool = True, **extra) -> dict | None:
        """Stop sampling, write the last ``host_mem``, the ``summary`` and the plot."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        result = None
        try:
            if self.client is not None:
                self.host_mem("end")
                self.sample()
            if summary:
                result = self.summary(**extra)
            if self.plot_path and self.samples:
                try:
                    self.plot(self.plot_path)
                except Exception as exc:  # noqa: BLE001
                    self._warn(exc)
        finally:
            with self._lock:
                if self._file is not None:
                    self._file.close()
                    self._file = None
        return result

    def plot(self, path) -> Path:
        """Memory over time, one panel per worker (up to 16) and one for the driver."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        names = sorted({n for s in self.samples for n in s[2]}, key=str)
        per_worker = len(names) <= 16
        panels = (names if per_worker else ["all workers"]) + ["driver"]
        fig, axes = plt.subplots(len(panels), 1, figsize=(10, 2.2 * len(panels) + 0.6),
                                 sharex=True, squeeze=False)
        gib = 2.0**30
        t = [s[0] for s in self.samples]
        for ax, panel in zip(axes[:, 0], panels):
            if panel == "driver":
                ax.plot(t, [s[1] / gib for s in self.samples], color="k", label="driver RSS")
                pk = [(el, d) for el, d, _ in self.stage_marks if d]
                if pk:
                    ax.plot([p[0] for p in pk], [p[1] / gib for p in pk], "x", color="k",
                            label="peak since previous stage (VmHWM)")
                if self.plan is not None:
                    ax.axhline(self.plan.driver_peak / gib, color="g", ls=":", label="planned peak")
            else:
                shown = names if panel == "all workers" else [panel]
                for n in shown:
                    pts = [(s[0], s[2][n]) for s in self.samples if n in s[2]]
                    line, = ax.plot([p[0] for p in pts], [p[1][0] / gib for p in pts],
                                    label="RSS" if len(shown) == 1 else f"{n} RSS")
                    pk = [(el, w[n]) for el, _, w in self.stage_marks if w.get(n)]
                    if pk:
                        ax.plot([p[0] for p in pk], [p[1] / gib for p in pk], "x", color=line.get_color(),
                                label="peak since previous stage (VmHWM)" if len(shown) == 1 else None)
                    if len(shown) == 1:
                        ax.plot([p[0] for p in pts], [p[1][1] / gib for p in pts], ls="--",
                                color="tab:purple", label="managed")
                        ax.plot([p[0] for p in pts], [p[1][2] / gib for p in pts], ls="-.",
                                color="tab:brown", label="spilled")
                limit = max((self.workers.get(n, {}).get("memory_limit") or 0 for n in shown), default=0)
                if limit:
                    ax.axhline(limit / gib, color="r", label="memory limit")
                if self.plan is not None:
                    ax.axhline(self.plan.worker_budget / gib, color="orange", ls="--",
                               label=f"target {self.plan.target_fraction:.0%}")
                    ax.axhline(self.plan.worker_peak / gib, color="g", ls=":", label="planned peak")
            for el, st in self.stages:
                if st in ("fit_start", "fit_end", "write") or st.startswith("evaluate"):
                    ax.axvline(el, color="0.8", lw=0.8)
            ax.set_ylabel("GiB")
            ax.set_title(panel if panel in ("driver", "all workers") else f"worker {panel}", fontsize=9)
            ax.legend(fontsize=7, loc="upper left", ncol=3)
            ax.set_ylim(bottom=0)
        axes[-1, 0].set_xlabel("seconds since start")
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=90)
        plt.close(fig)
        return path

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close(summary=exc[0] is None)
