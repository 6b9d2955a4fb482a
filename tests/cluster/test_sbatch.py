"""The batch scripts, submitted with ``sbatch`` to the local Slurm, fit a run end to end.

- ``scripts/probe-dask.sbatch`` (driver job + worker jobs): the driver job (1 CPU) runs
  ``probe-dask fit --cluster slurm:cpu --jobs 1``, which submits its worker job (1 CPU,
  1.5 GiB via ``--threads 1 --memory-limit``) through the same jobqueue.yaml profile; this
  fills the 2-CPU node exactly.
- ``scripts/probe-dask-allocation.sbatch`` (one allocation): scheduler, one worker task
  (``srun``) and the driver inside a single 2-task job, over TLS by default: while the job
  runs, its credentials folder is private (0700, files 0600), a client with those files
  connects, a plain one and one with another CA's certificate are refused; the folder is
  gone afterwards. ``PROBE_DASK_INSECURE=1`` runs over tcp:// and warns.

Each test waits for the job to end (``scontrol show job``, else the jobcomp file), then
checks the job's state (COMPLETED, exit code 0:0), the outputs (``probe1d_metrics.npz`` in
both inference folders: keys and shapes), the printed table, and that no job it started is
left. Jobs are submitted with ``--chdir`` into the test's folder, so every job they start
(and its log) is found by its working directory. Needs a running Slurm (marker ``slurm``).
"""

import json
import re
import stat
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from probe_dask.testing.slurm import job_record, jobs_in, refused, submit, wait_done

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
ROOT_YAML = ROOT / "jobqueue.yaml"
ALLOC_SCRIPT = ROOT / "scripts" / "probe-dask-allocation.sbatch"


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


def dashboard_listen(scheduler_file, port) -> list[str]:
    """The addresses the scheduler process (on this host) listens on at the dashboard's port."""
    import psutil

    (proc,) = [p for p in psutil.process_iter(["cmdline"])
               if str(scheduler_file) in (p.info["cmdline"] or []) and
               "distributed.cli.dask_scheduler" in p.info["cmdline"]]
    return sorted(c.laddr.ip for c in proc.net_connections("inet")
                  if c.status == psutil.CONN_LISTEN and c.laddr.port == port)


def check_while_running(job_id, scheduler_file, creds_root, timeout) -> dict:
    """Once the scheduler file appears: its address, the credentials' modes, who gets in."""
    from distributed import Client
    from distributed.security import Security

    deadline = time.monotonic() + timeout
    address = None
    while address is None:
        try:
            address = json.loads(scheduler_file.read_text())["address"]
        except (OSError, ValueError, KeyError):
            state = job_record(job_id).get("JobState")
            assert state in (None, "PENDING", "RUNNING", "CONFIGURING"), \
                f"job {job_id} {state} before its scheduler file was seen"
            assert time.monotonic() < deadline, f"no scheduler file {scheduler_file}"
            time.sleep(0.2)
    seen = {"address": address}
    if not address.startswith("tls://"):
        return seen
    (folder,) = creds_root.iterdir()
    files = sorted(folder.iterdir())
    seen["folder"] = folder
    seen["modes"] = [oct(stat.S_IMODE(p.stat().st_mode)) for p in [folder, *files]]
    seen["names"] = [p.name for p in files]
    ca, cert, key = (str(folder / n) for n in ("ca.pem", "cert.pem", "key.pem"))
    mine = Security(tls_ca_file=ca, tls_client_cert=cert, tls_client_key=key,
                    require_encryption=True)
    # The job's own credentials get in (so the scheduler is up while strangers are refused).
    with Client(address, security=mine, timeout="20s") as client:
        seen["joined"] = client.scheduler_info()["address"]
        seen["plain"] = refused("tcp://" + address.split("://", 1)[1])
        seen["other CA"] = refused(address, "stranger")
        seen["still up"] = client.scheduler_info()["address"]
        seen["dashboard"] = dashboard_listen(scheduler_file,
                                             client.scheduler_info()["services"]["dashboard"])
    return seen


def submit_alloc(tmp_path, env_extra):
    run = tiny(tmp_path)
    args = ["--run", run.run_dir, "--train-shards", run.train_shard,
            "--test-shards", run.test_shard, "--max-iter", "10"]
    job_id = submit(ALLOC_SCRIPT, tmp_path,
                    ["--job-name=pd-test-alloc", "--ntasks=2", "--cpus-per-task=1",
                     "--mem-per-cpu=1536M", "--time=00:10:00"], args,
                    {"DASK_CONFIG": str(ROOT_YAML), **env_extra})
    return run, job_id


def test_one_allocation_runs_scheduler_workers_and_driver(slurm, tmp_path, capsys):
    creds_root = tmp_path / "credentials"
    run, job_id = submit_alloc(tmp_path,
                               {"DASK_PROBE_DASK__CLUSTER__CREDENTIALS_DIR": str(creds_root)})
    log = tmp_path / f"probe-dask-alloc-{job_id}.out"
    try:
        seen = check_while_running(job_id, tmp_path / f"probe-dask-scheduler-{job_id}.json",
                                   creds_root, 120)
    finally:
        text = finish(job_id, tmp_path, log, 180, capsys, "probe-dask-allocation.sbatch")
    with capsys.disabled():
        print(f"while running: {seen}")
    check_outputs(run)
    assert re.search(r"^\s*class\s+latent\s+train loss", text, re.MULTILINE), text[-3000:]
    assert "1 worker(s) of 1 thread(s), 1536MiB each" in text, text[-3000:]
    assert "probe-dask allocation: exit status 0" in text
    # TLS by default: the scheduler's address, the driver's, the private credentials.
    assert seen["address"].startswith("tls://"), seen
    assert f"scheduler: {seen['address']} " in text and f"--scheduler {seen['address']} " in text
    assert seen["names"] == ["ca.pem", "cert.pem", "key.pem"], seen
    assert seen["modes"] == ["0o700", "0o600", "0o600", "0o600"], seen
    assert seen["folder"].name.startswith(f"job-{job_id}-"), seen
    assert seen["joined"] == seen["still up"] == seen["address"], seen
    assert seen["plain"] and seen["other CA"], seen  # '' would mean they got in
    # Removed at exit, with the scheduler file.
    assert not seen["folder"].exists() and list(creds_root.iterdir()) == []
    assert not (tmp_path / f"probe-dask-scheduler-{job_id}.json").exists()
    # The dashboard listens on the node's loopback only, and the driver's link says so.
    assert seen["dashboard"] == ["127.0.0.1"], seen
    assert re.search(r"^dashboard: http://127\.0\.0\.1:\d+/status", text, re.MULTILINE), text


def test_one_allocation_insecure_runs_over_tcp_and_warns(slurm, tmp_path, capsys):
    creds_root = tmp_path / "credentials"
    run, job_id = submit_alloc(tmp_path, {"PROBE_DASK_INSECURE": "1",
                                          "DASK_PROBE_DASK__CLUSTER__CREDENTIALS_DIR":
                                              str(creds_root)})
    log = tmp_path / f"probe-dask-alloc-{job_id}.out"
    text = finish(job_id, tmp_path, log, 180, capsys, "probe-dask-allocation.sbatch (insecure)")
    check_outputs(run)
    assert "probe-dask allocation: exit status 0" in text
    assert re.search(r"^scheduler: tcp://", text, re.MULTILINE), text[-3000:]
    assert ("probe-dask-allocation.sbatch: warning: PROBE_DASK_INSECURE=1: the scheduler "
            "listens on tcp:// without encryption or authentication") in text, text[-3000:]
    assert not creds_root.exists()  # no credentials made
