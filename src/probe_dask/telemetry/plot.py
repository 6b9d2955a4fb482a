"""The memory plot of a run (``probe1d_memory.png``): memory over time per process.

One panel per worker (up to 16; past that one panel for all of them) and one for the
driver: the sampled RSS, the managed and spilled bytes, the peak since the previous stage
(crosses), the memory limit, the plan's target and predicted peak, and a vertical line at
each stage of :data:`MARKED_STAGES`.

Drawn on a ``matplotlib.figure.Figure`` with its own Agg canvas: no ``matplotlib.use`` and
no pyplot, so the caller's backend (a notebook's) is left as it was.

Memory per process: the driver holds one matplotlib figure while it draws (freed after).
"""

from __future__ import annotations

from pathlib import Path

from probe_dask.stages import Stage
from probe_dask.telemetry.state import Roster, Timeline

__all__ = ["stage_markers", "plot_memory"]

#: Stages drawn as vertical lines: where the fit, each evaluation and the writing begin or end.
MARKED_STAGES = frozenset({Stage.FIT_START, Stage.FIT_END, Stage.EVALUATE_TRAIN_START,
                           Stage.EVALUATE_TRAIN_END, Stage.EVALUATE_TEST_END, Stage.WRITE_END})
_GIB = 2.0**30


def stage_markers(timeline: Timeline) -> list[tuple[float, str]]:
    """``(elapsed, stage)`` of every reading the plot marks with a vertical line."""
    return [(m.elapsed, m.stage) for m in timeline.marks if m.stage in MARKED_STAGES]


def _worker_panel(ax, shown, timeline, roster, plan) -> None:
    single = len(shown) == 1
    for n in shown:
        pts = [(s.elapsed, s.workers[n]) for s in timeline.samples if n in s.workers]
        line, = ax.plot([p[0] for p in pts], [p[1][0] / _GIB for p in pts],
                        label="RSS" if single else f"{n} RSS")
        pk = [(m.elapsed, m.workers[n]) for m in timeline.marks if m.workers.get(n)]
        if pk:
            ax.plot([p[0] for p in pk], [p[1] / _GIB for p in pk], "x", color=line.get_color(),
                    label="peak since previous stage (VmHWM)" if single else None)
        if single:
            ax.plot([p[0] for p in pts], [p[1][1] / _GIB for p in pts], ls="--",
                    color="tab:purple", label="managed")
            ax.plot([p[0] for p in pts], [p[1][2] / _GIB for p in pts], ls="-.",
                    color="tab:brown", label="spilled")
    limit = max((roster.memory_limit(n) or 0 for n in shown), default=0)
    if limit:
        ax.axhline(limit / _GIB, color="r", label="memory limit")
    if plan is not None:
        ax.axhline(plan.worker_budget / _GIB, color="orange", ls="--",
                   label=f"target {plan.target_fraction:.0%}")
        ax.axhline(plan.worker_peak / _GIB, color="g", ls=":", label="planned peak")


def _driver_panel(ax, timeline, plan) -> None:
    ax.plot([s.elapsed for s in timeline.samples], [s.driver_rss / _GIB for s in timeline.samples],
            color="k", label="driver RSS")
    pk = [(m.elapsed, m.driver_peak) for m in timeline.marks if m.driver_peak]
    if pk:
        ax.plot([p[0] for p in pk], [p[1] / _GIB for p in pk], "x", color="k",
                label="peak since previous stage (VmHWM)")
    if plan is not None:
        ax.axhline(plan.driver_peak / _GIB, color="g", ls=":", label="planned peak")


def plot_memory(path, timeline: Timeline, roster: Roster, plan=None) -> Path:
    """Draw ``timeline`` to ``path`` (PNG); ``plan`` adds the target and the planned peaks."""
    # Lazy: importing matplotlib costs about a second and tens of MB, and only the end of a
    # run with telemetry draws (the CLI imports this package for every command). A Figure
    # on its own Agg canvas, never pyplot or matplotlib.use(): the caller's backend (a
    # notebook's) and pyplot's figures are left as they were.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = sorted({n for s in timeline.samples for n in s.workers}, key=str)
    panels = (names if len(names) <= 16 else ["all workers"]) + ["driver"]
    fig = Figure(figsize=(10, 2.2 * len(panels) + 0.6))
    FigureCanvasAgg(fig)  # attaches itself as the figure's canvas
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)
    markers = stage_markers(timeline)
    for ax, panel in zip(axes[:, 0], panels):
        if panel == "driver":
            _driver_panel(ax, timeline, plan)
        else:
            _worker_panel(ax, names if panel == "all workers" else [panel], timeline, roster, plan)
        for elapsed, _ in markers:
            ax.axvline(elapsed, color="0.8", lw=0.8)
        ax.set_ylabel("GiB")
        ax.set_title(panel if panel in ("driver", "all workers") else f"worker {panel}", fontsize=9)
        ax.legend(fontsize=7, loc="upper left", ncol=3)
        ax.set_ylim(bottom=0)
    axes[-1, 0].set_xlabel("seconds since start")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)  # nothing to close: no pyplot holds the figure
    return path
