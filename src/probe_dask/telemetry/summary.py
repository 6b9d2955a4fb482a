"""Measured memory beside the plan's predictions: the ``summary`` event of a run.

:func:`summarize` sets the peaks telemetry measured (``telemetry.state``) beside what the
memory plan (``memory.plan.Plan``) predicted: overall, per process, and per plan stage (the
run stage whose reading measures each plan stage comes from ``stages``).

Memory per process: nothing beyond the returned dict (a few numbers per worker).
"""

from __future__ import annotations

import math

from probe_dask.stages import DRIVER_PLAN_STAGE, DRIVER_STAGES, WORKER_PLAN_STAGES, WORKER_STAGES
from probe_dask.telemetry.state import Peaks, Roster, Timeline

__all__ = ["summarize"]


def _live_bytes(buffers, stage) -> int:
    return sum(b.nbytes for b in buffers if b.live(stage))


def _ratio(a, b):
    return (a / b) if a and b else None


def _by_stage(plan, by_stage: dict) -> dict:
    """Predicted and measured peaks per plan stage, for workers and for the driver."""
    worker = {}
    for run_stage, plan_stages in WORKER_PLAN_STAGES.items():
        if run_stage in by_stage:
            want = max(_live_bytes(plan.worker, st) for st in plan_stages)
            worker["+".join(plan_stages)] = {"predicted": want, "measured": by_stage[run_stage][0]}
    driver = {}
    for plan_stage in DRIVER_STAGES:
        measured = [by_stage[run][1] for run, st in DRIVER_PLAN_STAGE.items()
                    if st == plan_stage and run in by_stage]
        if measured:
            driver[plan_stage] = {"predicted": _live_bytes(plan.driver, plan_stage),
                                  "measured": max(measured)}
    return {"worker_peak_by_stage": worker, "driver_peak_by_stage": driver,
            "worker_predicted_by_stage": {st: _live_bytes(plan.worker, st) for st in WORKER_STAGES}}


def summarize(roster: Roster, peaks: Peaks, timeline: Timeline, plan=None, *,
              driver_peak_now: int | None = None) -> dict:
    """The ``summary`` event's fields.

    Parameters
    ----------
    roster, peaks, timeline
        What telemetry has seen.
    plan : memory.plan.Plan, optional
        The plan the run followed; without it only the measured side is given.
    driver_peak_now : int, optional
        The driver's peak since its last reading (not yet in ``peaks``).
    """
    workers = {name: {"peak_rss": peak, "sampled_max_rss": roster.sampled_max.get(name),
                      "gpu_peak_allocated": peaks.gpu.get(name),
                      "memory_limit": roster.memory_limit(name)}
               for name, peak in peaks.workers.items()}
    worker_peaks = [w["peak_rss"] for w in workers.values() if w["peak_rss"]]
    measured = {"driver_peak_rss": max(peaks.driver, driver_peak_now or 0),
                "driver_sampled_max_rss": timeline.driver_sampled_max(),
                "worker_peak_rss_max": max(worker_peaks, default=None), "workers": workers}
    if peaks.gpu:
        measured["gpu_peak_allocated_max"] = max(peaks.gpu.values())
    out = {"measured": measured, "worker_restarts": roster.restarts,
           "workers_removed": sorted(roster.removed), "workers_paused": sorted(roster.paused)}
    if plan is not None:
        pred = {"worker_peak": plan.worker_peak, "driver_peak": plan.driver_peak,
                "gpu_peak": plan.gpu_peak, "worker_budget": plan.worker_budget,
                "memory_limit": plan.memory_limit, "block_nnz": plan.block_nnz,
                "persist": plan.persist}
        out["predicted"] = pred
        out["measured_over_predicted"] = {
            "worker": _ratio(measured["worker_peak_rss_max"], pred["worker_peak"]),
            "driver": _ratio(measured["driver_peak_rss"], pred["driver_peak"])}
        if peaks.gpu:
            out["measured_over_predicted"]["gpu"] = _ratio(max(peaks.gpu.values()), pred["gpu_peak"])
        out.update(_by_stage(plan, peaks.by_stage))
        out["workers_under_target"] = bool(worker_peaks) and all(
            w["peak_rss"] <= plan.target_fraction * (w["memory_limit"] or math.inf)
            for w in workers.values() if w["peak_rss"])
    out["workers_under_limit"] = all(
        (w["peak_rss"] or 0) < (w["memory_limit"] or math.inf) for w in workers.values())
    return out
