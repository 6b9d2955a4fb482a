"""Stopping a command-line run on SIGTERM, SIGINT or SIGUSR1, gracefully, with one line on how to resume.

Slurm sends SIGTERM at walltime and preemption (then SIGKILL after its ``KillWait``,
30 s by default); a user presses Ctrl-C (SIGINT). Both end a run the same way: the
handler raises :class:`Stopped` in the driver's main thread, wherever it waits (ingest,
cluster start, a solver pass, evaluation, the result commit), so the stop lands within a
fraction of a second. Everything the run made is undone by the ``finally`` blocks it
already passes through: the ingest's temporary store is removed, a result set not yet
committed is discarded (or put back mid-commit), the fit waits for the checkpoint write
in flight (so the last checkpoint is whole), and closing the cluster ends the workers
(cancels the Slurm worker jobs). The CLI then prints one line naming the pass to resume
from and exits with 128 + the signal's number (143 for SIGTERM, 130 for SIGINT).
SIGUSR1 is what the batch scripts ask Slurm for before the walltime: it stops the run the
same way, then app/requeue.py puts the Slurm job back in the queue (outside Slurm it ends
the run like SIGTERM, status 138).
Further signals during that cleanup are ignored, so it is not cut short; a third one
restores the default action (a hard stop).

Handlers are installed only by the CLI (``main``), only in the main thread, and restored
afterwards: a notebook or a library caller keeps Python's own behaviour.

Memory per process: a counter.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

from probe_dask.engine.checkpoint import stored_pass

__all__ = ["SIGNALS", "Stopped", "graceful_stop", "stop_line"]

#: The signals that stop a run gracefully (SIGUSR1: Slurm's walltime warning, app/requeue.py).
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class Stopped(KeyboardInterrupt):
    """The run was stopped by ``signum``; ``status`` is the exit status (128 + signum).

    A ``KeyboardInterrupt`` so that code which already stops cleanly on Ctrl-C (tqdm,
    distributed's waits) treats SIGTERM the same way.
    """

    def __init__(self, signum: int):
        self.signum = int(signum)
        self.name = signal.Signals(self.signum).name
        self.status = 128 + self.signum
        super().__init__(self.name)


@contextmanager
def graceful_stop():
    """Within this block, SIGTERM, SIGINT and SIGUSR1 raise :class:`Stopped` (once) in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    received = []

    def handler(signum, frame):
        received.append(signum)
        if len(received) == 1:
            raise Stopped(signum)
        if len(received) >= 3:  # the user insists: the default action (termination) next
            for s in SIGNALS:
                signal.signal(s, signal.SIG_DFL)
        # the second: cleanup is under way, let it finish

    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def stop_line(stop: Stopped, checkpoint=None, restart: bool = False) -> str:
    """The one line printed when a run was stopped: what stopped it and how to resume.

    Parameters
    ----------
    stop : Stopped
    checkpoint : path, optional
        The run's checkpoint file (None when the stop came before the outputs were known).
    restart : bool
        The run was started with ``--restart`` (rerunning it so would discard the checkpoint).
    """
    n = stored_pass(checkpoint) if checkpoint is not None else None
    if n is None:
        return (f"stopped by {stop.name} before the first checkpoint; rerun the same command "
                "to start again")
    again = "the same command without --restart" if restart else "the same command"
    return f"stopped by {stop.name}; rerun {again} to resume from pass {n} ({checkpoint})"
