"""dask-jobqueue, imported without the SIGINT handler its import installs.

``import dask_jobqueue`` (0.9.0) imports ``dask_jobqueue.runner``, which sets, at import, a
SIGINT handler that calls ``sys.exit()``, for its runners (dask/dask-jobqueue#696; moved
into the runners upstream, #697, after the 0.9.0 release). In every process that imports
probe-dask that would turn Ctrl-C, or a notebook's "interrupt kernel", into
``SystemExit``; and an import from any thread but the main one (a Dask task, a workflow
tool) fails with "signal only works in main thread". probe-dask uses no runner, so the
import below leaves SIGINT as it was, from any thread. Once a release with the fix is the
lowest version ``pyproject.toml`` allows, this module can go.

Memory per process: nothing.
"""

from __future__ import annotations

import signal

__all__ = ["dask_jobqueue", "SLURMCluster"]

_set_handler = signal.signal


def _keep_sigint(signum, handler):
    """``signal.signal`` while dask_jobqueue is imported: SIGINT stays as it was."""
    if signum == signal.SIGINT:
        return signal.getsignal(signum)
    return _set_handler(signum, handler)


# Swapped for the one import only (under the import lock; the module is imported once).
signal.signal = _keep_sigint
try:
    import dask_jobqueue
    from dask_jobqueue import SLURMCluster
finally:
    signal.signal = _set_handler
