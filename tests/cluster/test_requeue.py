"""A fit that reaches its walltime requeues itself on the local Slurm and resumes in the next run.

``scripts/probe-dask.sbatch`` (driver job + one worker job, as in test_sbatch.py) is
submitted with ``--signal=B:USR1@60``. Once the driver has written its first checkpoint, the
test shortens the job's walltime (``scontrol update TimeLimit``, minutes) so that Slurm's own
time-limit check (every 30 s) sends the warning signal while the fit is still running. The
first run must then: keep its checkpoint, cancel its worker job, ``scontrol requeue`` itself
and say so. Slurm holds a requeued job for about two minutes (``EligibleTime``); the test
releases it at once and gives it a longer walltime (``scontrol update StartTime=now
TimeLimit=10``: operator rights, as the CI's Slurm is run as root). The second run (same job
id, ``Restarts=1``) resumes from the checkpoint, finishes, and writes results bitwise equal
to an undisturbed local run's, run meanwhile; the results are written once.

The fit is sized so that it outlasts the signal's 30-s window: 618,496 pairs on 2.3 M
non-zeros, its ranges read from the latent-major layout on disk every pass (so the requeue
is tested on that layout), with the torch kernel (``--kernel torch``, the CPU fallback:
about 17 s a pass while most pairs are active on the CI machine, 15 passes). About 4 min in
all on a free node; longer when other jobs hold its 2 CPUs (the worker jobs queue). Needs a
running Slurm.
"""

import math
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from probe_dask.engine.checkpoint import stored_pass
from probe_dask.io.layout import CHECKPOINT_NAME, METRICS_NAME
from probe_dask.testing.faults import assert_same_results
from probe_dask.testing.runner import popen_cli
from probe_dask.testing.slurm import job_record, jobs_in, submit, wait_done
from probe_dask.testing.synthetic import make_run

ROOT = Path(__file__).resolve().parents[2]
ROOT_YAML = ROOT / "jobqueue.yaml"

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.timeout(600)]

FIT_FLAGS = ["--max-iter", "200", "--kernel", "torch", "--no-telemetry"]


def paths(root, run):
    root = Path(root)
    run_dir = root / "run"
    return {"run": run_dir, "train": root / "shards" / run.train_id,
            "test": root / "shards" / run.test_id,
            "out": [run_dir / "inference" / run.train_id, run_dir / "inference" / run.test_id]}


def seconds(hms: str) -> int:
    """``[D-]HH:MM:SS`` (Slurm's RunTime) in seconds."""
    days, _, rest = hms.rpartition("-")
    h, m, s = (int(x) for x in rest.split(":"))
    return (int(days or 0) * 24 + h) * 3600 + m * 60 + s


def wait_for(what, predicate, timeout, job_id):
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() > deadline:
            subprocess.run(["scancel", job_id], check=False)
            pytest.fail(f"{what}: not within {timeout:.0f} s; job {job_record(job_id)}")
        time.sleep(0.2)


def scontrol_update(job_id, *fields):
    r = subprocess.run(["scontrol", "update", f"JobId={job_id}", *fields], capture_output=True,
                       text=True, check=False)
    assert r.returncode == 0, f"scontrol update {fields}: {r.stderr}"


def test_walltime_signal_requeues_and_the_fit_resumes_identically(slurm, tmp_path, capsys,
                                                                 monkeypatch):
    # ranges read from the layout on disk every pass, by the torch kernel: passes slow enough
    # (about 17 s) that the walltime signal comes before the fit ends. Both runs (and
    # sbatch's job) inherit it.
    monkeypatch.setenv("DASK_PROBE_DASK__ENGINE__PERSIST", "false")
    run = make_run(tmp_path / "data", n_train_examples=384, n_test_examples=8,
                   tokens_per_example=128, d_sae=4096, n_classes=151, mean_nnz_per_row=48,
                   seed=5, n_planted=6)
    shutil.copytree(run.root, tmp_path / "ref")
    job_dir, ref_dir = paths(run.root, run), paths(tmp_path / "ref", run)

    # The undisturbed run, locally and meanwhile (bitwise equal results need no Slurm).
    with open(tmp_path / "ref.err", "w") as err:
        ref = popen_cli("fit", "--run", ref_dir["run"], "--train-shards", ref_dir["train"],
                        "--test-shards", ref_dir["test"], "--cluster", "local", "--workers", "1",
                        "--threads", "1", *FIT_FLAGS, stdout=subprocess.DEVNULL, stderr=err)
    try:
        t0 = time.monotonic()
        args = ["--run", job_dir["run"], "--train-shards", job_dir["train"],
                "--test-shards", job_dir["test"], "--jobqueue-config", str(ROOT_YAML),
                "--threads", "1", "--memory-limit", "1536MiB", *FIT_FLAGS]
        job = submit(ROOT / "scripts" / "probe-dask.sbatch", tmp_path,
                     ["--job-name=pd-test-requeue", "--mem=2G", "--time=10",
                      "--signal=B:USR1@60"], list(map(str, args)),
                     {"PROBE_DASK_PROFILE": "cpu", "PROBE_DASK_JOBS": "1"})
        log = tmp_path / f"probe-dask-driver-{job}.out"
        ckpt = job_dir["out"][0] / CHECKPOINT_NAME

        # Run 1: after its first checkpoint, the walltime comes near: end >= 45 s from now,
        # so Slurm's check (signal when end - 60 - 30 s is past) fires within about 30 s.
        wait_for("first checkpoint", lambda: (stored_pass(ckpt) or 0) >= 1, 180, job)
        elapsed = seconds(job_record(job)["RunTime"])
        minutes = math.ceil((elapsed + 45) / 60)
        scontrol_update(job, f"TimeLimit={minutes}")
        t_short = time.monotonic()

        # Slurm signals, the driver requeues the job: pending again, Restarts=1.
        rec = wait_for("requeue", lambda: (r := job_record(job)).get("Restarts") == "1"
                       and r.get("JobState") == "PENDING" and r, 150, job)
        t_requeued = time.monotonic()
        at = stored_pass(ckpt)
        text1 = log.read_text()
        left = [j for j in jobs_in(tmp_path) if j != job]
        assert not left, f"worker jobs left by the first run: {left}\n{text1[-3000:]}"
        assert at is not None and at >= 1, f"no checkpoint kept\n{text1[-3000:]}"
        assert not any((d / METRICS_NAME).exists() for d in job_dir["out"]), \
            f"the first run wrote results (the fit ended before the walltime signal)\n{text1[-3000:]}"
        hold = rec.get("Reason")
        scontrol_update(job, "StartTime=now", "TimeLimit=10")

        final = wait_done(job, 300)  # its worker job may queue behind other tests' jobs
        left = jobs_in(tmp_path)
        assert ref.wait(timeout=400) == 0, (tmp_path / "ref.err").read_text()[-3000:]
    finally:
        if ref.poll() is None:
            ref.kill()
        left_now = jobs_in(tmp_path)
        if left_now:
            subprocess.run(["scancel", *left_now], check=False)
    text = log.read_text()
    with capsys.disabled():
        print(f"\nrequeue: job {job}: first checkpoint after {elapsed} s of run 1, walltime "
              f"set to {minutes} min; requeued {t_requeued - t_short:.0f} s later at pass {at} "
              f"(Slurm's hold: {hold}); run 2 ended {final.get('JobState')} "
              f"{time.monotonic() - t_requeued:.0f} s after the requeue; "
              f"{time.monotonic() - t0:.0f} s in all")
    assert final.get("JobState") == "COMPLETED" and final.get("ExitCode") == "0:0", \
        f"{final}\n{text[-4000:]}"
    assert final.get("Restarts") == "1", final
    assert not left, f"jobs left running: {left}"

    first, _, second = text.partition("probe-dask driver: job " + job + " (run 2)")
    assert second, text[-4000:]
    assert "walltime near (SIGUSR1)" in first, first[-3000:]
    assert re.search(rf"^probe-dask: stopped by SIGUSR1 \(walltime near\); requeued Slurm job "
                     rf"{job}: it will resume from pass {at} ", first, re.MULTILINE), first[-3000:]
    assert f"resuming from checkpoint at pass {at} " in second, second[-3000:]
    assert "probe-dask driver: exit status 0" in second
    # The results are written once, by the second run.
    assert text.count("write: 4 result files in place") == 1, text[-4000:]
    assert "write:" not in first
    assert not ckpt.exists()
    assert_same_results(ref_dir["out"], job_dir["out"])
