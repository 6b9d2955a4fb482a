"""Command-line values checked where they are parsed: a bad flag is one line and exit 2.

``argparse`` calls these ``type=`` functions on each value; an ``ArgumentTypeError`` becomes
``probe-dask: error: argument --ridge: ...`` (see :class:`OneLineParser`), before anything
starts. Memory per process: nothing beyond the parsed values.
"""

from __future__ import annotations

import argparse
import math
import sys

from dask.utils import parse_bytes

__all__ = ["OneLineParser", "positive_int", "positive_float", "memory_limit"]


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr (no usage block), exit 2."""

    def error(self, message):
        command = self.prog.split()[0]
        sys.stderr.write(f"{command}: error: {message} (see {self.prog} --help)\n")
        sys.exit(2)


def positive_int(text: str) -> int:
    """An integer >= 1 (workers, threads, jobs, passes, non-zeros per block)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"found {text!r}; expected an integer >= 1") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"found {value}; expected an integer >= 1")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (the ridge penalty, an interval in seconds)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"found {text!r}; expected a number > 0") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"found {text}; expected a finite number > 0")
    return value


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
