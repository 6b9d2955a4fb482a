"""Command-line values checked where they are parsed: a bad flag is one line and exit 2.

``argparse`` calls these ``type=`` functions on each value; an ``ArgumentTypeError`` becomes
``probe-dask: error: argument --ridge: ...`` (see :class:`OneLineParser`), before anything
starts. The fit's flags say what they expect in the words of the fitter's own parameter
constraints (``engine.parameters``). Memory per process: nothing beyond the parsed values.
"""

from __future__ import annotations

import argparse
import sys

from dask.utils import parse_bytes

from probe_dask.engine.parameters import POSITIVE_INT, POSITIVE_REAL

__all__ = ["OneLineParser", "positive_int", "positive_float", "memory_limit"]


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr (no usage block), exit 2."""

    def error(self, message):
        command = self.prog.split()[0]
        sys.stderr.write(f"{command}: error: {message} (see {self.prog} --help)\n")
        sys.exit(2)


def _checked(convert, constraint, text: str):
    """``convert(text)``, accepted by ``constraint``; else an ``ArgumentTypeError`` that
    says what was found and what ``constraint`` expects."""
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"found {text!r}; expected {constraint}") from None
    if not constraint.is_satisfied_by(value):
        raise argparse.ArgumentTypeError(f"found {text}; expected {constraint}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (workers, threads, jobs, passes, non-zeros per block)."""
    return _checked(int, POSITIVE_INT, text)


def positive_float(text: str) -> float:
    """A finite number > 0 (the ridge penalty, an interval in seconds)."""
    return _checked(float, POSITIVE_REAL, text)


def memory_limit(text: str) -> str:
    """A memory size Dask understands (``4GB``, ``512MiB``, ``2e9``); returned as given."""
    try:
        value = parse_bytes(text)
    except (ValueError, TypeError):
        raise argparse.ArgumentTypeError(
            f"found {text!r}; expected a memory size such as 4GB or 512MiB") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"found {text!r}; expected a size > 0")
    return text
