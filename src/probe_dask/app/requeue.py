"""Ending a stopped command-line run: the stop line, and requeueing a Slurm job near its walltime.

The batch scripts ask Slurm for SIGUSR1 some minutes before the walltime
(``#SBATCH --signal=B:USR1@300``) and pass it to the driver. The driver stops the graceful
way (app/signals.py: the last checkpoint is kept, the cluster closed, so its worker jobs are
cancelled); then, inside a Slurm job (``SLURM_JOB_ID`` set), :func:`after_stop` puts the job
back in the queue with ``scontrol requeue``. Slurm reruns the same script with the same
arguments, and the same command resumes from the checkpoint (allowed without
``--overwrite``), so a fit longer than one walltime needs nobody to resubmit it. Outside
Slurm, or when the requeue is refused (``sbatch --no-requeue``, ``JobRequeue=0``), SIGUSR1
ends the run like SIGTERM: one line on how to resume, exit status 128 + the signal.

``scontrol requeue`` ends the running job at once: Slurm sends SIGTERM to every process of
the job (then SIGKILL after ``KillWait``). The stop line is therefore printed with the stop
signals ignored, and they stay ignored: the process is about to exit anyway.

A run whose results were committed before the signal came (``finished``) is not requeued:
its rerun would find the results and nothing to resume.

A requeued job reruns ``--restart`` too, which would throw away the checkpoint the first run
left: :func:`restart_applies` keeps ``--restart`` for the job's first run only.

Memory per process: nothing beyond the line printed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from probe_dask.app.signals import SIGNALS, Stopped, stop_line
from probe_dask.engine.checkpoint import stored_pass

__all__ = ["after_stop", "requeue_job", "restart_applies"]

#: The signal the batch scripts ask Slurm for before the walltime (``--signal=B:USR1@SECONDS``).
REQUEUE_SIGNAL = signal.SIGUSR1

#: Seconds to wait for ``scontrol requeue``: the walltime is minutes away at most.
SCONTROL_TIMEOUT = 30


def requeue_job(job_id: str, run=subprocess.run) -> str | None:
    """``scontrol requeue JOB_ID``; None when Slurm accepted it, else why not (one line)."""
    try:
        r = run(["scontrol", "requeue", str(job_id)], capture_output=True, text=True,
                timeout=SCONTROL_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{type(exc).__name__}: {exc}"
    if r.returncode != 0:
        why = " ".join((r.stderr or r.stdout or "").split()) or f"exit status {r.returncode}"
        return f"scontrol requeue {job_id}: {why}"
    return None


def _resume_clause(checkpoint) -> str:
    n = stored_pass(checkpoint) if checkpoint is not None else None
    if n is None:
        return "it will start again (no checkpoint yet)"
    return f"it will resume from pass {n} ({checkpoint})"


def after_stop(stop: Stopped, checkpoint=None, *, restart: bool = False, finished: bool = False,
               env=None, requeue=requeue_job, out=None) -> int:
    """Print the one line that ends a stopped run (requeueing its Slurm job on SIGUSR1).

    Parameters
    ----------
    stop : Stopped
        What stopped the run (its cleanup has run: the checkpoint is whole, the cluster closed).
    checkpoint : path, optional
        The run's checkpoint file (None when the stop came before the outputs were known).
    restart : bool
        The run was started with ``--restart``.
    finished : bool
        The run's results were committed before the stop.
    env : mapping, optional
        The environment (default ``os.environ``): ``SLURM_JOB_ID``.
    requeue : callable
        ``requeue(job_id) -> None or reason`` (default :func:`requeue_job`).
    out : file, optional
        Where the line goes (default ``sys.stderr``).

    Returns
    -------
    int
        The exit status: 0 when the results were already written, else 128 + the signal.
    """
    out = sys.stderr if out is None else out
    env = os.environ if env is None else env
    job_id = env.get("SLURM_JOB_ID")
    if stop.signum != REQUEUE_SIGNAL or not job_id:
        print(f"probe-dask: {stop_line(stop, checkpoint, restart)}", file=out, flush=True)
        return stop.status
    if finished:
        print(f"probe-dask: {stop.name} (walltime near) came after the results were written; "
              f"Slurm job {job_id} is not requeued", file=out, flush=True)
        return 0
    # From here on Slurm's SIGTERM (sent by the requeue itself) must not cut the line short.
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    why = requeue(job_id)
    if why is None:
        print(f"probe-dask: stopped by {stop.name} (walltime near); requeued Slurm job {job_id}: "
              f"{_resume_clause(checkpoint)}", file=out, flush=True)
    else:
        print(f"probe-dask: {stop_line(stop, checkpoint, restart)} (could not requeue: {why})",
              file=out, flush=True)
    return stop.status


def restart_applies(restart: bool, env=None) -> bool:
    """``--restart`` in a requeued Slurm job (``SLURM_RESTART_COUNT`` > 0) applies to its first run only."""
    env = os.environ if env is None else env
    try:
        restarts = int(env.get("SLURM_RESTART_COUNT") or 0)
    except ValueError:
        restarts = 0
    return bool(restart) and restarts == 0
