"""The batch scripts, submitted with ``sbatch`` to the local Slurm, fit a run end to end.

- ``scripts/probe-dask.sbatch`` (driver job + worker jobs): the driver job (1 CPU) runs
  ``probe-dask fit --cluster slurm:cpu --jobs 1``, which submits its worker job (1 CPU,
  1.5 GiB via ``--threads 1 --memory-limit``) through the same jobqueue.yaml profile; this
  fills the 2-CPU node exactly.
- ``scripts/probe-dask-allocation.sbatch`` (one allocation): scheduler, one worker task
  (``srun``) and the driver inside a single 2-task job.

Each test waits for the job to end (``scontrol show job``, else the jobcomp file), then
checks the job's state (COMPLETED, exit code 0:0), the outputs (``probe1d_metrics.npz`` in
both inference folders: keys and shapes), the printed table, and that no job it started is
left. Jobs are submitted with ``--chdir`` into the test's folder, so every job they start
(and its log) is found by its working directory. Needs a running Slurm (marker ``slurm``).
"""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
ROOT_YAML = ROOT / "jobqueue.yaml"
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


def tiny(tmp_path):
    from probe_dask.testing.synthetic import make_run

    return make_run(tmp_path / "data", n_train_examples=8, n_test_examples=4,
                    tokens_per_example=64, d_sae=128, n_classes=8, mean_nnz_per_row=32, seed=3,
                    n_planted=4)


def check_outputs(run):
    for shard_id in (run.train_id, run.test_id):
        path = Path(run.run_dir) / "inference" / shard_id / "probe1d_metrics.npz"
        with np.load(path) as f:
            assert {"loss", "weights", "biases", "tp", "fp", "tn", "fn"} <= set(f.files)
            for key in ("loss", "weights", "biases", "tp", "fp", "tn", "fn"):
                assert f[key].shape == (run.d_sae, run.n_classes), key
            assert np.isfinite(f["loss"]).all()
            assert (f["tp"] + f["fp"] + f["tn"] + f["fn"] > 0).all()


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


def finish(job_id, tmp_path, log, timeout, capsys, label):
    t0 = time.perf_counter()
    try:
        rec = wait_done(job_id, timeout)
    finally:
        left = jobs_in(tmp_path)
        if left:
            subprocess.run(["scancel", *left], check=False)
    wall = time.perf_counter() - t0
    text = log.read_text() if log.exists() else "(no log)"
    with capsys.disabled():
        print(f"\n{label}: job {job_id} {rec.get('JobState')} exit {rec.get('ExitCode')} after "
              f"{wall:.1f} s of waiting; log {log}")
    assert rec.get("JobState") == "COMPLETED" and rec.get("ExitCode") == "0:0", \
        f"{rec}\n--- {log} ---\n{text[-4000:]}"
    assert not left, f"jobs left running: {left}"
    return text


def test_driver_job_starts_worker_jobs_from_the_profile(slurm, tmp_path, capsys):
    run = tiny(tmp_path)
    args = ["--run", run.run_dir, "--train-shards", run.train_shard,
            "--test-shards", run.test_shard, "--jobqueue-config", str(ROOT_YAML),
            "--threads", "1", "--memory-limit", "1536MiB", "--max-iter", "10"]
    job_id = submit(ROOT / "scripts" / "probe-dask.sbatch", tmp_path,
                    ["--job-name=pd-test-sbatch", "--mem=2G", "--time=00:10:00"], args,
                    {"PROBE_DASK_PROFILE": "cpu", "PROBE_DASK_JOBS": "1"})
    log = tmp_path / f"probe-dask-driver-{job_id}.out"
    text = finish(job_id, tmp_path, log, 180, capsys, "probe-dask.sbatch (driver + worker jobs)")
    check_outputs(run)
    assert "--cluster slurm:cpu --jobs 1" in text
    assert re.search(r"^\s*class\s+latent\s+train loss", text, re.M), text[-3000:]
    assert "probe-dask driver: exit status 0" in text
    # The worker ran as its own Slurm job, submitted by the driver from the same folder.
    worker_logs = [p for p in tmp_path.glob("slurm-*.out") if p.name != log.name]
    assert worker_logs, sorted(p.name for p in tmp_path.iterdir())
    assert any("distributed.nanny" in p.read_text() or "Start worker" in p.read_text()
               for p in worker_logs)


def test_one_allocation_runs_scheduler_workers_and_driver(slurm, tmp_path, capsys):
    run = tiny(tmp_path)
    args = ["--run", run.run_dir, "--train-shards", run.train_shard,
            "--test-shards", run.test_shard, "--max-iter", "10"]
    job_id = submit(ROOT / "scripts" / "probe-dask-allocation.sbatch", tmp_path,
                    ["--job-name=pd-test-alloc", "--ntasks=2", "--cpus-per-task=1",
                     "--mem-per-cpu=1536M", "--time=00:10:00"], args,
                    {"DASK_CONFIG": str(ROOT_YAML)})
    log = tmp_path / f"probe-dask-alloc-{job_id}.out"
    text = finish(job_id, tmp_path, log, 180, capsys, "probe-dask-allocation.sbatch")
    check_outputs(run)
    assert re.search(r"^\s*class\s+latent\s+train loss", text, re.M), text[-3000:]
    assert "1 worker(s) of 1 thread(s), 1536MiB each" in text, text[-3000:]
    assert "probe-dask allocation: exit status 0" in text
