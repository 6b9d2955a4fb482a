"""A Slurm worker job cancelled mid-fit on the local Slurm: the fit completes, same results.

The cluster is adaptive with a minimum of two jobs (``adapt(minimum_jobs=2)``, what the
jobqueue.yaml comments recommend for runs longer than a worker's lifetime). The job whose
worker is running a block of a solver pass is cancelled with ``scancel``; its persisted
blocks are recomputed on the other worker, adaptive submits a replacement job, and the
fit ends with exactly the results of an undisturbed run on the same cluster.

Needs a running Slurm (scripts/slurm/start.sh); skipped without one unless
PROBE_DASK_REQUIRE_SLURM=1. Jobs are small (1 core, 1 GiB) to fit a 2-core machine.
"""

import os
import subprocess
import time
from pathlib import Path

import pytest

from probe_dask import cluster as C
from probe_dask.app.job import open_inputs, run_job
from probe_dask.testing.synthetic import make_run

from probe_dask.testing.faults import Killer, assert_same_results

BLOCK_NNZ = 20_000  # about 8 train blocks: passes of several tasks
MAX_ITER = 200  # the fit stops when every pair has converged, well before this

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.timeout(600)]

ROOT_YAML = Path(__file__).resolve().parents[2] / "jobqueue.yaml"


@pytest.fixture(autouse=True)
def _clean_config(clean_dask_config):
    yield


def squeue(job_ids):
    out = subprocess.run(["squeue", "-h", "-o", "%i %T", "-j", ",".join(job_ids)],
                         capture_output=True, text=True, check=False).stdout
    return dict(line.split() for line in out.splitlines() if line.strip())


def job_of_workers(client) -> dict:
    """{worker address: Slurm job id}, asked of the workers themselves."""
    return client.run(os.getenv, "SLURM_JOB_ID")


def test_scancel_worker_job_mid_fit_same_results(slurm, tmp_path, capsys, small_cpu_profile):
    run = make_run(tmp_path / "data", n_train_examples=24, n_test_examples=8,
                   tokens_per_example=128, d_sae=512, n_classes=24, mean_nnz_per_row=48,
                   seed=5, n_planted=6)

    def job(client, out, callbacks=None):
        inputs = open_inputs(run.run_dir, run.train_shard, run.test_shard, block_nnz=BLOCK_NNZ,
                             out_dirs=[out / "train", out / "test"])
        return run_job(client, inputs, max_iter=MAX_ITER, callbacks=callbacks, log=lambda m: None)

    report = []
    t0 = time.perf_counter()
    with C.make_cluster("slurm:cpu", minimum_jobs=2, maximum_jobs=2, jobqueue_config=ROOT_YAML,
                        **small_cpu_profile(scheduler_options={"dashboard_address": ":0"})) as (cluster, client):
        report.append(f"2 Slurm worker jobs ready in {time.perf_counter() - t0:.1f} s")
        t1 = time.perf_counter()
        ref = job(client, tmp_path / "ref")
        ref.fitter.blocks_ = None  # release its persisted blocks: the next fit starts cold
        report.append(f"undisturbed fit+evaluate: {ref.n_iter} passes, "
                      f"{time.perf_counter() - t1:.1f} s")

        jobs = job_of_workers(client)
        assert len(set(jobs.values())) == 2, jobs
        address, victim = sorted(jobs.items())[0]
        cancelled = {}

        def cancel():
            r = subprocess.run(["scancel", victim], capture_output=True, text=True)
            cancelled.update(rc=r.returncode, err=r.stderr.strip())

        killer = Killer(client, address, cancel)

        def on_event(event, info):
            if event == "iteration" and info["n_iter"] == 2:
                killer.start()

        t1 = time.perf_counter()
        got = job(client, tmp_path / "got", callbacks=[on_event])
        seconds = time.perf_counter() - t1
        assert killer.done.wait(10) and killer.info, "the worker was never seen running a pass"
        assert cancelled["rc"] == 0, cancelled
        report.append(f"scancel {victim} (worker {address}) while it ran "
                      f"{killer.info['keys'][0]!r}; fit+evaluate went on: {got.n_iter} passes, "
                      f"{seconds:.1f} s")

        deadline = time.monotonic() + 60
        while victim in squeue([victim]) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert victim not in squeue([victim]), "the cancelled job is still in the queue"
        try:  # adaptive keeps its minimum: a new job, once the lost worker's timeout passes
            client.wait_for_workers(2, timeout=180)
        except TimeoutError:
            queue = subprocess.run(["squeue", "-h", "-o", "%i %T %r %C %m"], capture_output=True,
                                   text=True).stdout
            pytest.fail(f"no replacement worker within 180 s; jobs of this cluster "
                        f"{[j.job_id for j in cluster.workers.values()]}; squeue:\n{queue}")
        now = job_of_workers(client)
        assert victim not in now.values() and len(set(now.values())) == 2
        report.append(f"adaptive replaced job {victim} with {sorted(set(now.values()) - set(jobs.values()))}")
        all_jobs = [str(j.job_id) for j in cluster.workers.values()]
    assert got.fitter.persisted_
    assert got.n_iter == ref.n_iter
    assert (got.fitter.coef_ == ref.fitter.coef_).all()
    assert (got.fitter.intercept_ == ref.fitter.intercept_).all()
    assert_same_results([tmp_path / "ref" / s for s in ("train", "test")],
                        [tmp_path / "got" / s for s in ("train", "test")])
    deadline = time.monotonic() + 30
    while squeue(all_jobs) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert squeue(all_jobs) == {}, "closing the cluster must cancel its jobs"
    with capsys.disabled():
        print("\n" + "\n".join(report))
