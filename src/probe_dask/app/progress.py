"""What a run tells its user while it runs: progress bars on a terminal, plain lines elsewhere.

:class:`Progress` is a stage callback (``stages.emit``: the fit's and the job's events) and
the job's ``log``. On a terminal it draws tqdm bars for the ingest, the label pass, the
solver (total = pairs, advancing as pairs stop; postfix: active pairs) and the evaluation.
Anywhere else (an sbatch log, papermill, a pipe) it writes one plain line per stage and per
solver pass, and never a carriage return, so a log file reads line by line. ``quiet`` keeps
only warnings; ``log_file`` receives every line, time-stamped, whatever ``quiet`` says.

Memory per process: the driver holds the open bars and the log file's handle.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from datetime import datetime, timezone

from tqdm import tqdm as tqdm_terminal
from tqdm.auto import tqdm as tqdm_auto

from probe_dask.stages import Stage

__all__ = ["Progress"]


def is_terminal(stream) -> bool:
    """Whether ``stream`` is a terminal (a closed or odd stream is not)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class Progress:
    """Stage callback and line logger of a run.

    Parameters
    ----------
    stream : file, optional
        Where bars and lines go (default ``sys.stderr``).
    bars : bool or "notebook", optional
        Draw bars: True on a terminal, "notebook" for ``tqdm.auto`` (Jupyter widgets);
        default: whether ``stream`` is a terminal. False: plain lines.
    quiet : bool
        Write only warnings (lines starting ``WARNING``) to ``stream``.
    log_file : path, optional
        Also append every line to this file, each with its UTC time.
    logger : logging.Logger, optional
        Send every line to this logger instead (at INFO; ``log(msg, logging.WARNING)``
        for a warning): its handlers decide where lines go and ``stream``, ``quiet`` and
        ``log_file`` then apply to the bars only. The CLI passes one (``app/logs.py``).
    """

    def __init__(self, stream=None, *, bars=None, quiet=False, log_file=None, logger=None):
        self.stream = sys.stderr if stream is None else stream
        self.bars = is_terminal(self.stream) if bars is None else bars
        self.quiet = bool(quiet)
        self._file = open(log_file, "a", encoding="utf-8") if log_file else None  # noqa: SIM115
        self._bar = None
        self._lock = threading.Lock()
        self._t0 = {}
        self._active = None
        self._logger = logger

    # -- lines -----------------------------------------------------------------------------
    def log(self, msg: str, level: int | None = None) -> None:
        """Write one message (one or more lines) to the stream and the log file, or to
        the logger at ``level`` (default INFO)."""
        msg = str(msg).replace("\r", "")
        if self._logger is not None:
            self._logger.log(logging.INFO if level is None else level, msg)
            return
        self._to_file(msg)
        if self.quiet and not msg.startswith("WARNING"):
            return
        with self._lock:
            if self._bar is not None:
                self._bar.write(msg, file=self.stream)  # above the bar, which stays drawn
            else:
                print(msg, file=self.stream, flush=True)

    def _to_file(self, msg: str) -> None:
        if self._file is not None:
            stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            for line in msg.splitlines() or [""]:
                self._file.write(f"{stamp} {line}\n")
            self._file.flush()

    # -- bars ------------------------------------------------------------------------------
    def _open_bar(self, desc, total, unit, initial=0):
        self._close_bar()
        if not self.bars or self.quiet:
            return
        factory = tqdm_auto if self.bars == "notebook" else tqdm_terminal
        self._bar = factory(total=total, initial=initial, desc=desc, unit=unit,
                            file=self.stream, leave=True, dynamic_ncols=True)

    def _advance(self, n=1, **postfix):
        if self._bar is not None:
            if n:
                self._bar.update(n)
            if postfix:
                self._bar.set_postfix(**postfix)

    def _close_bar(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _line(self, msg):
        """A stage line: only without bars (the bars say it on a terminal)."""
        if self._logger is not None:
            # The bars say it on a terminal: a debug record there (kept by --log-file).
            self._logger.log(logging.DEBUG if self.bars else logging.INFO, msg)
        elif self.bars and not self.quiet:
            self._to_file(msg)  # the log file gets every line, even those the bars show
        else:
            self.log(msg)

    def _since(self, key) -> float:
        return time.perf_counter() - self._t0.pop(key, time.perf_counter())

    # -- stage callback --------------------------------------------------------------------
    def __call__(self, stage, info) -> None:
        """The stage callback: ``stages.emit`` calls it as ``progress(stage, info)``."""
        if stage == Stage.OPEN:
            self._t0["ingest"] = time.perf_counter()
            # No line yet: bad input must stay the only line of a refused run.
            self._open_bar("ingest", 1, "split pair")
        elif stage == Stage.INGEST:
            self._advance(1)
            self._close_bar()
            self._line(f"ingest: both shards opened and checked in "
                       f"{info.get('seconds', self._since('ingest')):.1f} s")
        elif stage == Stage.LABEL_COUNTS_START:
            self._t0["labels"] = time.perf_counter()
            self._open_bar("label pass", 1, "pass")
            joined = info.get("n_joined", info.get("n_blocks"))
            self._line(f"label pass: {info.get('n_blocks', '?')} blocks"
                       + (f", kept as {joined} joined blocks" if joined != info.get("n_blocks")
                          else ""))
        elif stage == Stage.RESUMED:
            self._line(f"resumed at solver pass {info.get('n_iter')}")
        elif stage == Stage.FIT_START:
            self._advance(1)
            self._close_bar()
            self._line(f"label pass: done in {self._since('labels'):.1f} s")
            self._t0["fit"] = time.perf_counter()
            total = int(info.get("n_total", info.get("n_pairs", 0)))
            active = int(info.get("n_pairs", total))
            self._active = active
            self._open_bar("solver", total, "pair", initial=total - active)
            self._advance(0, active=f"{active:,}")
            self._line(f"solver: {active:,} of {total:,} pairs to fit")
        elif stage == Stage.ITERATION:
            before = int(info.get("active_before", self._active or 0))
            after = int(info.get("active_after", before))
            self._active = after
            self._advance(before - after, active=f"{after:,}")
            self._line(f"solver pass {info.get('n_iter')}: {after:,} pairs active "
                       f"({before - after:,} stopped), {info.get('pass_seconds', 0.0):.1f} s")
        elif stage == Stage.FIT_END:
            self._close_bar()
            self._line(f"solver: {info.get('n_iter')} passes in {self._since('fit'):.1f} s; "
                       f"{int(info.get('n_active', 0)):,} pairs still active")
        elif stage == Stage.EVALUATE_TRAIN_START:
            self._open_bar("evaluate", 2, "split")
            self._line("evaluate: train split")
        elif stage == Stage.EVALUATE_TRAIN_END:
            self._advance(1)
            self._line(f"evaluate: train done in {info.get('seconds', 0.0):.1f} s; test split")
        elif stage == Stage.EVALUATE_TEST_END:
            self._advance(1)
            self._close_bar()
            self._line(f"evaluate: both splits done in {info.get('seconds', 0.0):.1f} s")
        elif stage == Stage.WRITE_END:
            self._line(f"write: {len(info.get('paths', ()))} result files in place")

    def close(self) -> None:
        """Close any open bar and the log file."""
        self._close_bar()
        if self._file is not None:
            self._file.close()
            self._file = None

