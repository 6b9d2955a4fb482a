"""Driving a real Slurm from tests: submit a batch script, read a job's record, wait for it.

Used by the Slurm tests (``tests/cluster``) on the single-node Slurm that
``scripts/slurm/start.sh`` starts. Memory per process: a job record (a few hundred bytes).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

__all__ = ["job_record", "wait_done", "jobs_in", "submit", "refused"]

#: Where scripts/slurm/start.sh keeps Slurm's state (its jobcomp.txt outlives scontrol).
JOBCOMP_ENV = "PD_SLURM_DIR"


def job_record(job_id: str) -> dict:
    """``scontrol show job`` fields of a job, or its jobcomp line once Slurm forgot it."""
    r = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True,
                       check=False)
    text = r.stdout if r.returncode == 0 and "JobState=" in r.stdout else ""
    if not text:
        comp = Path(os.environ.get(JOBCOMP_ENV, "/tmp/pdslurm")) / "jobcomp.txt"
        if comp.exists():
            text = next((line for line in comp.read_text().splitlines()
                         if line.startswith(f"JobId={job_id} ")), "")
    return dict(re.findall(r"(\w+)=(\S*)", text))


def wait_done(job_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        rec = job_record(job_id)
        if rec.get("JobState") not in (None, "PENDING", "RUNNING", "CONFIGURING", "COMPLETING",
                                       "SUSPENDED"):
            return rec
        if time.monotonic() > deadline:
            subprocess.run(["scancel", job_id], check=False)
            pytest.fail(f"job {job_id} did not finish within {timeout:.0f} s: {rec}")
        time.sleep(0.5)


def jobs_in(folder: Path) -> list[str]:
    """Jobs still queued or running whose working directory is ``folder``."""
    out = subprocess.run(["squeue", "-h", "-o", "%i %Z"], capture_output=True, text=True,
                         check=False).stdout
    return [line.split()[0] for line in out.splitlines()
            if len(line.split()) > 1 and Path(line.split()[1]) == folder]


def submit(script, tmp_path, sbatch_flags, args, env_extra=None):
    env = dict(os.environ)
    # The worker jobs must run this environment: its probe-dask and its python.
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env["PROBE_DASK"] = str(Path(sys.executable).parent / "probe-dask")
    env.update(env_extra or {})
    cmd = ["sbatch", "--parsable", f"--chdir={tmp_path}", *sbatch_flags, str(script), *args]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().split(";")[0]


_ATTEMPT = """
import sys
from distributed import Client
from distributed.security import Security
kw = {"security": Security.temporary()} if sys.argv[2] == "stranger" else {}
try:
    Client(sys.argv[1], timeout="4s", **kw).close()
except Exception as exc:
    print(f"{type(exc).__name__}: {exc}")
    sys.exit(1)
print("connected")
"""


def refused(address, who="plain", limit=60) -> str:
    """Connect a ``distributed.Client`` to ``address`` (``who``: "plain", no certificate;
    "stranger", another CA's, ``Security.temporary()``) in a process of its own; return why
    it failed, or '' when it connected (the caller's test then fails).

    In a process of its own: a refused TLS attempt was seen to hang in the test's process
    for minutes now and then, never connecting. One that has not connected within ``limit``
    seconds counts as refused, and is killed.
    """
    try:
        r = subprocess.run([sys.executable, "-c", _ATTEMPT, str(address), who],
                           capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return f"not connected within {limit} s"
    out = (r.stdout.strip().splitlines() or [""])[-1]
    return "" if r.returncode == 0 and out == "connected" else (out or r.stderr[-300:])
