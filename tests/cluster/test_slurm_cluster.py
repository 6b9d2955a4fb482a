"""SLURMCluster on a real Slurm, from the profiles of the repo's jobqueue.yaml.

Needs a running Slurm (scripts/slurm/start.sh); skipped without one unless
PROBE_DASK_REQUIRE_SLURM=1. Partition and interface are detected (or taken from the
config keys probe-dask.slurm.partition / probe-dask.slurm.interface), never hard-coded. Jobs are
kept small (1 core, 1 GiB) so that the tests fit a 2-core machine; the GPU profile runs
without its --gres directive, which a machine without GPUs cannot grant.
"""

import os
import subprocess
import time
from pathlib import Path

import dask
import pytest
from dask_jobqueue.slurm import SLURMJob
from distributed import get_worker, wait

from probe_dask import cluster as C

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(240)]

ROOT_YAML = Path(__file__).resolve().parents[2] / "jobqueue.yaml"
# Tasks below are functions of this module, pickled by reference: workers import it.
PROLOGUE = [f"export PYTHONPATH={Path(__file__).resolve().parents[2]}${{PYTHONPATH:+:$PYTHONPATH}}"]


@pytest.fixture(autouse=True)
def _clean_config(clean_dask_config):
    yield


def small(profile, tmp_path, **extra):
    """Overrides that shrink a profile to this machine (lifetime kept inside walltime)."""
    _, prof = C.slurm_profile(profile, jobqueue_config=ROOT_YAML)
    args = list(prof["worker_extra_args"])
    args[args.index("--lifetime") + 1] = "8m"
    args[args.index("--lifetime-stagger") + 1] = "1m"
    kw = dict(cores=1, memory="1GiB", walltime="00:10:00", worker_extra_args=args,
              log_directory=str(tmp_path), job_script_prologue=PROLOGUE,
              scheduler_options={"dashboard_address": ":0"})
    kw.update(extra)
    return kw


def squeue(job_ids):
    out = subprocess.run(["squeue", "-h", "-o", "%i %T", "-j", ",".join(job_ids)],
                         capture_output=True, text=True, check=False).stdout
    return dict(line.split() for line in out.splitlines() if line.strip())


def wait_gone(job_ids, timeout=20):
    deadline = time.monotonic() + timeout
    while squeue(job_ids) and time.monotonic() < deadline:
        time.sleep(0.2)
    return squeue(job_ids)


def where(i):
    w = get_worker()
    return w.address, dict(w.state.total_resources)


def square(x):
    return x * x


def worker_view():
    return (os.environ.get("DASK_CONFIG"), dask.config.get("distributed.comm.timeouts.connect"),
            dask.config.get("probe-dask.slurm-default-profile", None),
            os.environ.get("SLURM_JOB_ID"))


def user_config_view():
    return (os.environ.get("DASK_CONFIG"), dask.config.get("distributed.comm.timeouts.connect"),
            dask.config.get("probe-dask.slurm-default-profile"),
            dask.config.get("probe-dask.slurm-profiles.cpu.memory"))


def test_worker_reads_users_config_over_packaged_defaults(slurm, tmp_path):
    # The user's ~/.config/dask on the worker sets two keys that the packaged jobqueue.yaml
    # also sets: the worker must see the user's values, and still the packaged profiles.
    home = tmp_path / "home"
    (home / ".config" / "dask").mkdir(parents=True)
    (home / ".config" / "dask" / "mine.yaml").write_text(
        "distributed:\n  comm:\n    timeouts:\n      connect: 45s\n"
        "probe-dask:\n  slurm-default-profile: gpu\n")
    _, prof = C.slurm_profile("cpu")  # the packaged profiles, no file of the user's
    args = list(prof["worker_extra_args"])
    args[args.index("--lifetime") + 1] = "8m"
    args[args.index("--lifetime-stagger") + 1] = "1m"
    with C.make_cluster("slurm:cpu", jobs=1, cores=1, memory="1GiB", walltime="00:10:00",
                        worker_extra_args=args, log_directory=str(tmp_path),
                        job_script_prologue=[*PROLOGUE, f"export HOME={home}"],
                        scheduler_options={"dashboard_address": ":0"}) as (cluster, client):
        assert "DASK_CONFIG" not in cluster.job_script()
        (view,) = client.run(user_config_view).values()
        job_ids = [str(j.job_id) for j in cluster.workers.values()]
    assert view == (None, "45s", "gpu", "32GiB")
    assert wait_gone(job_ids) == {}


def test_gpu_profile_job_script_from_yaml(slurm, capsys):
    from dask_jobqueue import SLURMCluster

    kw = C.slurm_cluster_kwargs("gpu", jobqueue_config=ROOT_YAML,
                                scheduler_options={"dashboard_address": ":0"})
    with SLURMCluster(**kw) as cluster:
        script = cluster.job_script()
    with capsys.disabled():
        print("\n--- job script from the gpu profile ---\n" + script)
    lines = script.splitlines()
    for line in ["#SBATCH --gres=gpu:1", "#SBATCH --mem=60G", "#SBATCH --cpus-per-task=8",
                 "#SBATCH -t 04:00:00", f"#SBATCH -p {C.detect_partition()}",
                 f"export DASK_CONFIG={ROOT_YAML}"]:
        assert line in lines
    assert "--resources GPU=1 --lifetime 220m --lifetime-stagger 5m" in script


def test_cpu_profile_scale_two_jobs(slurm, tmp_path, capsys):
    with C.make_cluster("slurm:cpu", jobs=0, jobqueue_config=ROOT_YAML,
                        **small("cpu", tmp_path)) as (cluster, client):
        assert "gres" not in cluster.job_script() and "GPU" not in cluster.job_script()
        t0 = time.perf_counter()
        cluster.scale(jobs=2)
        client.wait_for_workers(2, timeout=120)
        ready = time.perf_counter() - t0
        with capsys.disabled():
            print(f"\nscale(jobs=2) -> 2 workers ready: {ready:.2f} s")
        job_ids = [str(j.job_id) for j in cluster.workers.values()]
        assert len(set(job_ids)) == 2
        assert set(squeue(job_ids).values()) == {"RUNNING"}
        views = client.run(worker_view)
        assert len(views) == 2 and C.gpu_resources(client) is None
        for dask_config, connect, default_profile, job_id in views.values():
            # pitfall 8: Slurm-started workers read the same yaml (not a notebook setting)
            assert (dask_config, connect, default_profile) == (str(ROOT_YAML), "60s", "cpu")
            assert job_id in job_ids
        futures = client.map(square, range(20))
        wait(futures, timeout=60)
        assert sum(client.gather(futures)) == sum(x * x for x in range(20))
    assert wait_gone(job_ids) == {}, "closing the cluster must scancel its jobs"


def test_adaptive_keeps_minimum(slurm, tmp_path):
    with C.make_cluster("slurm:cpu", minimum_jobs=1, maximum_jobs=2, jobqueue_config=ROOT_YAML,
                        **small("cpu", tmp_path)) as (cluster, client):
        assert len(client.scheduler_info(n_workers=-1)["workers"]) >= 1
        assert client.submit(square, 3).result(timeout=60) == 9
        job_ids = [str(j.job_id) for j in cluster.workers.values()]
    assert wait_gone(job_ids) == {}


def test_gpu_resource_routes_tasks(slurm, tmp_path, capsys):
    _, gpu_prof = C.slurm_profile("gpu", jobqueue_config=ROOT_YAML)
    no_gres = [d for d in gpu_prof["job_extra_directives"] if not d.startswith("--gres")]
    extra_job = None
    with C.make_cluster("slurm:gpu", gpu=True, jobs=1, jobqueue_config=ROOT_YAML,
                        **small("gpu", tmp_path, job_extra_directives=no_gres)) as (cluster, client):
        script = cluster.job_script()
        assert "--gres" not in script and "--resources GPU=1" in script
        assert C.gpu_resources(client) == {"GPU": 1}
        gpu_addr = next(iter(client.scheduler_info(n_workers=-1)["workers"]))
        # A CPU-profile job joins the same scheduler: a mixed cluster.
        cpu_kw = C.slurm_cluster_kwargs("cpu", jobqueue_config=ROOT_YAML, **small("cpu", tmp_path))
        cpu_kw.pop("scheduler_options")
        script_path = tmp_path / "cpu-worker.sh"
        # It joins with the run's TLS credentials (the files the cluster's own jobs use).
        script_path.write_text(SLURMJob(scheduler=cluster.scheduler_address, name="cpu-extra",
                                        security=C.job_security(cluster), protocol="tls://",
                                        **cpu_kw).job_script())
        try:
            extra_job = subprocess.run(["sbatch", "--parsable", str(script_path)],
                                       capture_output=True, text=True, check=True
                                       ).stdout.strip().split(";")[0]
            client.wait_for_workers(2, timeout=120)
            infos = client.scheduler_info(n_workers=-1)["workers"]
            assert {a: i["resources"] for a, i in infos.items()} == {
                a: ({"GPU": 1} if a == gpu_addr else {}) for a in infos}
            assert C.gpu_resources(client) is None  # not every worker has a GPU
            futures = [client.submit(where, i, resources={"GPU": 1}, pure=False)
                       for i in range(40)]
            wait(futures, timeout=60)
            ran = client.gather(futures)
            assert {addr for addr, _ in ran} == {gpu_addr}
            assert all(res == {"GPU": 1} for _, res in ran)
            with capsys.disabled():
                print(f"\n40 GPU-resource tasks, all on {gpu_addr}; "
                      f"workers: { {a: i['resources'] for a, i in infos.items()} }")
        finally:
            if extra_job:
                subprocess.run(["scancel", extra_job], check=False)
        job_ids = [str(j.job_id) for j in cluster.workers.values()]
    assert wait_gone(job_ids + [extra_job]) == {}


def test_gpu_directive_rejected_on_a_node_without_gpus(slurm, tmp_path):
    gres = subprocess.run(["sinfo", "-h", "-o", "%G"], capture_output=True, text=True).stdout
    if "gpu" in gres:
        pytest.skip("this Slurm has GPUs: the unmodified gpu profile is accepted")
    from probe_dask.errors import ProbeDaskError

    with pytest.raises(ProbeDaskError, match=r"'gpu': Slurm rejects its job script .*gres"):
        C.make_cluster("slurm:gpu", jobs=1, jobqueue_config=ROOT_YAML, wait_timeout=20,
                       **small("gpu", tmp_path, job_name="pd-test-gres"))
    assert squeue_named("pd-test-gres") == ""


def squeue_named(name):
    return subprocess.run(["squeue", "-h", "-n", name, "-o", "%i %T"], capture_output=True,
                          text=True, check=False).stdout.strip()


def test_workers_not_joining_times_out_and_cancels(slurm, tmp_path):
    from probe_dask.errors import ProbeDaskError

    t0 = time.perf_counter()
    with pytest.raises(ProbeDaskError, match=r"only 0 of 1 Dask workers .* PENDING BeginTime"):
        C.make_cluster("slurm:cpu", jobs=1, jobqueue_config=ROOT_YAML, wait_timeout=3,
                       **small("cpu", tmp_path, job_name="pd-test-pending",
                               job_extra_directives=["--begin=now+1hour"]))
    assert time.perf_counter() - t0 < 30
    deadline = time.monotonic() + 20
    while squeue_named("pd-test-pending") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert squeue_named("pd-test-pending") == "", "a failed start must cancel its jobs"
