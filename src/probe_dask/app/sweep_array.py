"""A sweep as a Slurm job array: task ``i`` fits run ``i`` of the sweep, on its own cluster.

``probe-dask sweep FILE ... --array`` prints an sbatch script (``--submit``: hands it to
``sbatch``) whose every array task runs the same command line with ``--task`` in place of
``--array``: ``--task`` reads ``SLURM_ARRAY_TASK_ID`` and fits that run only (its cluster
is started by the task, from the same cluster flags). Run indices are those of
``--dry-run``: the file's runs, each swept combination its own index. The tasks write no
summary (they would race on it); ``probe-dask sweep FILE ... --summarize`` builds it from
the runs' folders once the array is done.

Memory per process: the script's text.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from probe_dask.errors import InputError, ProbeDaskError

__all__ = ["ARRAY_ONLY", "TASK_ENV", "task_index", "task_argv", "array_script", "submit"]

#: The variable Slurm sets in each task of a job array.
TASK_ENV = "SLURM_ARRAY_TASK_ID"
#: Flags of the command that makes the array and not of its tasks: (option, takes a value).
ARRAY_ONLY = {"--array": False, "--submit": False, "--sbatch": True, "--array-limit": True}


def task_index(value, n_runs: int, environ=None) -> int:
    """The run a task fits: ``--task I``, or ``--task`` alone: ``$SLURM_ARRAY_TASK_ID``.

    Raises
    ------
    InputError
        Not an integer, no such run, or ``--task`` alone outside a Slurm array task.
    """
    environ = os.environ if environ is None else environ
    where = "--task"
    if value is None:  # --task alone: this array task's index
        where = f"--task: {TASK_ENV}"
        value = environ.get(TASK_ENV)
        if value is None:
            raise InputError("--task", TASK_ENV, "unset (not a Slurm array task)",
                             "--task I, or --task in a task of a job array (sweep --array)")
    try:
        index = int(value)
    except ValueError:
        raise InputError(where, "value", repr(value), f"a run index 0..{n_runs - 1}") from None
    if not 0 <= index < n_runs:
        raise InputError(where, "value", index,
                         f"a run index 0..{n_runs - 1} (the sweep has {n_runs} runs)")
    return index


def _option(token: str, options) -> str | None:
    """The option of ``options`` that ``token`` names (argparse takes unique prefixes)."""
    key = token.split("=", 1)[0]
    if not key.startswith("--"):
        return None
    if key in options:
        return key
    hits = [o for o in options if o.startswith(key)]
    return hits[0] if len(hits) == 1 else None


def task_argv(argv, option_strings) -> list[str]:
    """``argv`` (the command after ``probe-dask``) without the array's own flags, plus
    ``--task``: the command of every array task.

    ``option_strings``: every option the sweep command knows, to resolve abbreviations as
    argparse did (``--arr`` is ``--array``).
    """
    out, skip = [], False
    for token in argv:
        if skip:
            skip = False
            continue
        if token == "--":
            out.append(token)
            continue
        opt = _option(token, option_strings)
        if opt in ARRAY_ONLY:
            skip = ARRAY_ONLY[opt] and "=" not in token
            continue
        out.append(token)
    return [*out, "--task"]


def array_script(argv, option_strings, n_runs: int, *, log_dir, cwd=None, python=None,
                 job_name="probe-dask-sweep", sbatch=(), limit=None) -> str:
    """The sbatch script of the array: one task per run, each running the sweep's command
    with ``--task`` (:func:`task_argv`) from ``cwd`` with this interpreter.

    Parameters
    ----------
    argv : list of str
        The command after ``probe-dask``, as typed.
    option_strings : iterable of str
        The sweep command's options (abbreviations resolve against them).
    n_runs : int
        Tasks ``0 .. n_runs - 1``.
    log_dir : path
        Each task's output: ``LOG_DIR/<job name>-<array job id>_<task>.out``.
    cwd, python : optional
        Where the tasks start (default: here; relative paths of the command stay right) and
        the interpreter they run (default: this one, so tasks use this environment).
    sbatch : iterable of str
        More ``#SBATCH`` options, e.g. ``--partition=gpu`` or ``--time=02:00:00``.
    limit : int, optional
        At most this many tasks at once (``--array=0-N%LIMIT``).
    """
    cwd = os.getcwd() if cwd is None else os.fspath(cwd)
    python = sys.executable if python is None else python
    command = shlex.join([python, "-m", "probe_dask", *task_argv(argv, option_strings)])
    array = f"0-{n_runs - 1}" + (f"%{limit}" if limit else "")
    lines = ["#!/bin/bash",
             f"#SBATCH --job-name={job_name}",
             f"#SBATCH --array={array}",
             f"#SBATCH --output={Path(log_dir) / '%x-%A_%a.out'}",
             *(f"#SBATCH {opt}" for opt in sbatch),
             f"# probe-dask sweep: task i fits run i of {n_runs} (probe-dask sweep ... --dry-run "
             "lists them);",
             "# each task starts its own cluster. Once all are done: probe-dask sweep ... "
             "--summarize",
             "set -euo pipefail",
             f"cd {shlex.quote(cwd)}",
             f"exec {command}",
             ""]
    return "\n".join(lines)


def submit(script: str, log_dir) -> str:
    """Hand ``script`` to ``sbatch``; return the array's job id.

    Raises
    ------
    ProbeDaskError
        ``sbatch`` is not on PATH, or refused the script (its message).
    """
    if shutil.which("sbatch") is None:
        raise ProbeDaskError("sweep --submit: sbatch not on PATH; expected a Slurm login node "
                             "(or print the script with --array and submit it there)")
    Path(log_dir).mkdir(parents=True, exist_ok=True)  # Slurm does not create it
    proc = subprocess.run(["sbatch", "--parsable"], input=script, capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        why = " ".join((proc.stderr or proc.stdout).split())
        raise ProbeDaskError(f"sweep --submit: sbatch exit {proc.returncode}: {why}")
    return proc.stdout.strip().split(";")[0]
