"""Where the command line's log records go: the handlers of the ``probe_dask`` logger tree.

Library modules log to ``logging.getLogger(__name__)`` and configure nothing (the way
Dask and scikit-learn leave handlers to the application). The CLI calls
:func:`configure_logging` once: our records go to stderr, as plain lines off a terminal
(an sbatch log, a pipe) and through ``tqdm.write`` on one, so a progress bar stays drawn
below them; ``-v`` shows debug records and ``-q`` only warnings. ``--log-file`` receives
every record of ours, whatever ``-q`` says, and distributed's at WARNING and above, each
time-stamped in UTC.

Memory per process: the handlers and the log file's handle.
"""

from __future__ import annotations

import logging
import sys
import time

from tqdm import tqdm

__all__ = ["configure_logging", "remove_handlers"]

#: The loggers whose WARNING and above reach ``--log-file`` besides ours.
DISTRIBUTED_LOGGERS = ("distributed", "dask_jobqueue")


class TqdmHandler(logging.StreamHandler):
    """Writes each record with ``tqdm.write``: above any open bar, which stays drawn."""

    def emit(self, record):
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - logging's own contract: report, never raise
            self.handleError(record)


class _UTCFormatter(logging.Formatter):
    converter = time.gmtime


def level_of(verbose: int = 0, quiet: bool = False) -> int:
    """The stderr level of ``-v`` (count) and ``-q``: DEBUG, INFO or WARNING."""
    if quiet:
        return logging.WARNING
    return logging.DEBUG if verbose else logging.INFO


def configure_logging(verbose: int = 0, quiet: bool = False, log_file=None, stream=None):
    """Attach the CLI's handlers to the ``probe_dask`` logger (and, with a file, distributed's).

    Parameters
    ----------
    verbose : int
        ``-v`` count: 1 or more shows debug records on stderr.
    quiet : bool
        ``-q``: warnings and errors only on stderr.
    log_file : path, optional
        Append every record of ours, and distributed's at WARNING and above, to this file.
    stream : file, optional
        Where records go (default ``sys.stderr``).

    Returns
    -------
    list of logging.Handler
        The handlers attached (pass them to :func:`remove_handlers` to undo).
    """
    stream = sys.stderr if stream is None else stream
    ours = logging.getLogger("probe_dask")
    try:
        terminal = bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        terminal = False
    console = TqdmHandler(stream) if terminal else logging.StreamHandler(stream)
    console.setLevel(level_of(verbose, quiet))
    console.setFormatter(logging.Formatter("%(message)s"))
    attached = [(ours, console)]
    if log_file is not None:
        to_file = logging.FileHandler(log_file, encoding="utf-8")
        to_file.setLevel(logging.DEBUG)
        to_file.setFormatter(_UTCFormatter("%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: "
                                           "%(message)s", datefmt="%Y-%m-%dT%H:%M:%S"))
        attached.append((ours, to_file))
        # distributed's records: WARNING and above only (its INFO is a line per worker event).
        # Its own stderr handler stays: the file is added beside it, never instead.
        warn_file = logging.FileHandler(log_file, encoding="utf-8")
        warn_file.setLevel(logging.WARNING)
        warn_file.setFormatter(to_file.formatter)
        attached += [(logging.getLogger(name), warn_file) for name in DISTRIBUTED_LOGGERS]
    for logger, handler in attached:
        logger.addHandler(handler)
    # Our records stop at our handlers: a root handler set by distributed's config would
    # print each line twice.
    ours.setLevel(logging.DEBUG if (verbose or log_file is not None) else logging.INFO)
    ours.propagate = False
    return attached


def remove_handlers(attached) -> None:
    """Detach and close what :func:`configure_logging` attached."""
    for logger, handler in attached:
        logger.removeHandler(handler)
        handler.close()
    logging.getLogger("probe_dask").propagate = True
