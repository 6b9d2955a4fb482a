"""A sweep's runs and their folders: where each writes, what exists there, what it fits
with; the checks and listings that open no input and start no cluster.

Used by :mod:`probe_dask.app.sweep` (which fits) and by ``--dry-run`` and ``--summarize``
(``app/sweep_command.py``). Memory per process: one entry per run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from probe_dask.app.job import JobInputs
from probe_dask.app.sweep_summary import SETTINGS_NAME, write_summary
from probe_dask.app.sweepfile import SweepRun, resolved_settings
from probe_dask.core.settings import FitSettings
from probe_dask.errors import ProbeDaskError
from probe_dask.io.layout import (
    ACTIVATIONS_NAME,
    CHECKPOINT_NAME,
    CLASSES_NAME,
    METRICS_NAME,
    inference_dir,
    require_dir,
    require_file,
)
from probe_dask.io.outputs import atomic_path

__all__ = ["SweepEntry", "SweepResult", "result_dirs", "is_complete", "write_settings",
           "check_sweep", "describe", "summarize_sweep", "named_error"]


@dataclass
class SweepEntry:
    """One run of a sweep and what the sweep knows of it.

    ``status`` is ``pending`` (to fit), ``running``, ``skipped`` (results exist),
    ``finished``, ``failed`` (``error`` says why) or ``stopped`` (SIGTERM or Ctrl-C during it).
    ``unconverged``: pairs a finished run left unconverged (``--require-converged``).
    """

    run: SweepRun
    out_dirs: list
    status: str = "pending"
    inputs: JobInputs | None = None
    error: str = ""
    seconds: float = 0.0
    unconverged: int = 0


@dataclass
class SweepResult:
    """What a sweep did; ``failed`` lists the entries that failed."""

    entries: list
    summary: Path | None = None
    best: Path | None = None
    seconds: float = 0.0
    failed: list = field(default_factory=list)


def result_dirs(run: SweepRun) -> list[Path]:
    """Where ``run`` writes: ``RUN/inference/<train_id>`` and ``RUN/inference/<test_id>``,
    or ``<run.out>/<train_id>`` and ``<run.out>/<test_id>`` for a run with its own folder."""
    shards = (run.train_shards.name, run.test_shards.name)
    if run.out is not None:
        return [run.out / s for s in shards]
    return [inference_dir(run.run, s) for s in shards]


def write_settings(run: SweepRun, out_dirs, settings: FitSettings = FitSettings()) -> Path:
    """Write :data:`SETTINGS_NAME` into the run's train folder: what it fits with.

    ``settings`` (the sweep's: ``ridge``, ``max_iter``, ``device`` for runs that do not set
    them, and the block kernel of all) go under the run's own values. The file is written
    atomically.
    """
    defaults = {"ridge": settings.ridge, "max_iter": settings.max_iter,
                "device": settings.device or "auto"}
    values = {**resolved_settings(run),
              **{k: v for k, v in defaults.items() if k not in run.options},
              "backend": settings.backend}
    doc = {"index": run.index, "run_id": run.run_id, "name": run.name, "run": str(run.run),
           "train_shards": str(run.train_shards), "test_shards": str(run.test_shards),
           "out_dirs": [str(d) for d in out_dirs], "swept": dict(run.swept), **values}
    path = Path(out_dirs[0]) / SETTINGS_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(doc, indent=1) + "\n")
    return path


def is_complete(out_dirs) -> bool:
    """Whether a run's result set exists: metrics and class table of both splits."""
    return all((Path(d) / name).is_file() for d in out_dirs for name in (METRICS_NAME, CLASSES_NAME))


def named_error(sweep_file, run: SweepRun, err: Exception) -> ProbeDaskError:
    # One line that names the sweep file, the run (index and run id) and the input at fault.
    return ProbeDaskError(f"{sweep_file}: {run.label}: {err}")


def _stored_settings_differ(run: SweepRun, out_dirs) -> str:
    """Why the result set in ``out_dirs`` is not this run's ('' when it is): a ridge other
    than the run's, or a max_iter other than the run's while pairs were left unconverged."""
    path = Path(out_dirs[0]) / CLASSES_NAME
    try:
        summary = json.loads(path.read_text()).get("summary", {})
    except (OSError, ValueError) as exc:
        return f"{path}: unreadable ({exc}); expected the summary of a finished run"
    want = resolved_settings(run)
    differ = []
    if summary.get("ridge") != want["ridge"]:
        differ.append(f"ridge {summary.get('ridge')} (this sweep: {want['ridge']})")
    unconverged = summary.get("converged_pairs") != summary.get("pairs")
    if unconverged and summary.get("max_iter", want["max_iter"]) != want["max_iter"]:
        differ.append(f"max_iter {summary.get('max_iter')} with pairs unconverged "
                      f"(this sweep: {want['max_iter']})")
    if not differ:
        return ""
    return (f"{path}: results fitted with {', '.join(differ)}; move or delete them to refit "
            "this run, or give it the settings they were fitted with")


def check_sweep(sweep_file, runs) -> list[SweepEntry]:
    """The cheap checks of every run, opening no input and writing nothing (``--dry-run``).

    Runs whose result set exists are marked ``skipped`` when the results were fitted with
    the run's settings (ridge; max_iter where pairs were left unconverged); results of
    other settings stop the sweep here. The paths of every other run are checked (seconds
    for any number of runs).

    Raises
    ------
    ProbeDaskError
        The first bad run: ``SWEEP_FILE: run I (RUN_ID): <file>: <field>: found ...``.
    """
    entries = [SweepEntry(r, result_dirs(r)) for r in runs]
    for e in entries:
        if is_complete(e.out_dirs) and not (e.out_dirs[0] / CHECKPOINT_NAME).exists():
            why = _stored_settings_differ(e.run, e.out_dirs)
            if why:
                raise ProbeDaskError(f"{sweep_file}: {e.run.label}: {why}")
            e.status = "skipped"
    for e in entries:
        if e.status != "pending":
            continue
        r = e.run
        try:
            require_dir(r.run, "run folder", "an SAE run folder (inference/<shard_id>/token_acts.npz)")
            for shard in (r.train_shards, r.test_shards):
                require_dir(shard, "shard folder", "a saev shard folder (metadata.json, labels.bin)")
                require_file(shard / "labels.bin", "file", "the labels.bin of a saev shard")
                require_file(inference_dir(r.run, shard.name) / ACTIVATIONS_NAME, "file",
                             "the token_acts.npz of this shard in the run")
        except ProbeDaskError as err:
            raise named_error(sweep_file, r, err) from None
    return entries


def describe(entries) -> list[str]:
    """One line per run, for ``--dry-run``: label, resolved settings, results folder, and
    whether it would be fitted, resumed (a checkpoint) or skipped (results exist)."""
    lines = []
    for e in entries:
        settings = " ".join(f"{k}={'auto' if v is None else v}"
                            for k, v in resolved_settings(e.run).items())
        what = ("skip (results exist)" if e.status == "skipped" else
                "resume (checkpoint)" if (e.out_dirs[0] / CHECKPOINT_NAME).exists() else "fit")
        lines.append(f"{e.run.label}: {settings} -> {Path(e.out_dirs[0]).parent}: {what}")
    return lines


def summarize_sweep(runs, folder) -> SweepResult:
    """Write the summary of ``runs`` into ``folder`` from their folders alone, fitting
    nothing (``--summarize``, after a job array): a run with its result set is
    ``finished``; with a checkpoint ``stopped``; else ``pending`` (``error`` says when its
    results were fitted with other settings). ``failed`` lists the runs not finished."""
    entries = []
    for r in runs:
        e = SweepEntry(r, result_dirs(r))
        resuming = (e.out_dirs[0] / CHECKPOINT_NAME).exists()
        if is_complete(e.out_dirs) and not resuming:
            e.error = _stored_settings_differ(r, e.out_dirs)
            e.status = "pending" if e.error else "finished"
        elif resuming:
            e.status, e.error = "stopped", "interrupted: its checkpoint stays; rerun to resume"
        entries.append(e)
    result = SweepResult(entries, failed=[e for e in entries if e.status != "finished"])
    result.summary, result.best = write_summary(
        folder, [(e.run, e.out_dirs, e.status, e.error) for e in entries])
    return result
