"""The command line as a user runs it: ``python -m probe_dask ARGS`` in a subprocess.

Every test and benchmark that runs the CLI goes through this module, so the command, its
environment (warnings silenced, no stdin) and the check of a bad-input exit (exit status
2, exactly one line on stderr starting ``probe-dask: error: ``) are written once.

Memory per process: this process holds only the child's captured stdout and stderr (text);
the child is a separate process with its own driver and, for ``fit``, its own cluster.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping

#: The command that runs the CLI with this interpreter (the venv the tests run in).
CLI = (sys.executable, "-m", "probe_dask")

#: How every one-line error of the CLI starts (``app/cli.py`` prints it, exit status 2).
ERROR_PREFIX = "probe-dask: error: "

#: Exit status of bad input.
INPUT_ERROR_STATUS = 2


def cli_command(*args, prefix: Iterable = ()) -> list[str]:
    """The argument vector of ``python -m probe_dask ARGS``.

    Parameters
    ----------
    *args
        Command-line arguments (paths and numbers are converted with ``str``).
    prefix : iterable, optional
        A command to run the CLI under (``["unshare", "-m", ...]``, say).

    Returns
    -------
    list of str
    """
    return [*map(str, prefix), *CLI, *map(str, args)]


def cli_env(extra: Mapping[str, str] | None = None) -> dict:
    """This process's environment with Python warnings silenced, plus ``extra``."""
    return {**os.environ, "PYTHONWARNINGS": "ignore", **(extra or {})}


def run_cli(*args, timeout: float = 300, prefix: Iterable = (),
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the CLI to its end and capture its output.

    Parameters
    ----------
    *args
        Command-line arguments, e.g. ``"fit", "--run", run_dir, ...``.
    timeout : float
        Seconds before the child is killed (``subprocess.TimeoutExpired`` is raised).
    prefix : iterable, optional
        A command to run the CLI under.
    env : mapping, optional
        Variables added to the environment (see :func:`cli_env`).

    Returns
    -------
    subprocess.CompletedProcess
        With text ``stdout`` and ``stderr``, and one more attribute, ``seconds``: the wall
        time of the child.
    """
    t0 = time.perf_counter()
    proc = subprocess.run(cli_command(*args, prefix=prefix), capture_output=True, text=True,
                          timeout=timeout, env=cli_env(env), stdin=subprocess.DEVNULL)
    proc.seconds = time.perf_counter() - t0
    return proc


def popen_cli(*args, prefix: Iterable = (), env: Mapping[str, str] | None = None,
              **kwargs) -> subprocess.Popen:
    """Start the CLI and return at once (to kill it, or to sample its memory meanwhile).

    Parameters
    ----------
    *args
        Command-line arguments.
    prefix : iterable, optional
        A command to run the CLI under.
    env : mapping, optional
        Variables added to the environment (see :func:`cli_env`).
    **kwargs
        Passed to ``subprocess.Popen`` (``stdout``, ``stderr``, ``start_new_session`` ...);
        stdin is ``/dev/null`` unless given.

    Returns
    -------
    subprocess.Popen
    """
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.Popen(cli_command(*args, prefix=prefix), env=cli_env(env), **kwargs)


def stderr_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """The non-blank lines the child wrote on stderr."""
    return [line for line in (proc.stderr or "").splitlines() if line.strip()]


def assert_one_error_line(proc: subprocess.CompletedProcess, *contains: str) -> str:
    """Check a bad-input exit: status 2 and one line on stderr, ``probe-dask: error: ...``.

    Parameters
    ----------
    proc : subprocess.CompletedProcess
        A finished run of :func:`run_cli`.
    *contains : str
        Text the line must contain (a file name, a field, a flag to change).

    Returns
    -------
    str
        The error line.

    Raises
    ------
    AssertionError
        With the child's stderr, when any check fails.
    """
    if proc.returncode != INPUT_ERROR_STATUS:
        raise AssertionError(f"exit status {proc.returncode}, expected {INPUT_ERROR_STATUS}:\n"
                             f"{(proc.stderr or '')[-3000:]}")
    lines = stderr_lines(proc)
    if len(lines) != 1:
        raise AssertionError(f"expected one error line on stderr, got {len(lines)}:\n{proc.stderr}")
    line = lines[0]
    if not line.startswith(ERROR_PREFIX):
        raise AssertionError(f"the line does not start with {ERROR_PREFIX!r}: {line}")
    missing = [s for s in contains if s not in line]
    if missing:
        raise AssertionError(f"{missing} not in the error line: {line}")
    return line
