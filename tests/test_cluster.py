"""Cluster choice without Slurm: specs, profiles, job scripts, local and address clusters."""

import copy
import filecmp
from pathlib import Path

import dask
import pytest
from dask_jobqueue.slurm import SLURMJob
from distributed import LocalCluster

from probe_dask.cluster import start as C
from probe_dask.errors import InputError, ProbeDaskError

ROOT_YAML = Path(__file__).resolve().parents[1] / "jobqueue.yaml"


@pytest.fixture(autouse=True)
def clean_config(monkeypatch):
    """Every test starts from (and leaves) the same Dask config, env and load history."""
    saved = copy.deepcopy(dask.config.config)
    monkeypatch.setattr(C, "_loaded", [])
    for var in ("DASK_CONFIG", C.PARTITION_ENV, C.INTERFACE_ENV):
        monkeypatch.delenv(var, raising=False)
    yield
    dask.config.config.clear()
    dask.config.config.update(saved)


@pytest.fixture
def fixed_slurm(monkeypatch):
    """Partition and interface from the env, so nothing is detected."""
    monkeypatch.setenv(C.PARTITION_ENV, "gpuq")
    monkeypatch.setenv(C.INTERFACE_ENV, "ib0")


@pytest.mark.parametrize("spec, expected", [
    ("local", C.ClusterSpec("local")),
    ("slurm", C.ClusterSpec("slurm")),
    ("slurm:gpu", C.ClusterSpec("slurm", profile="gpu")),
    (" slurm:cpu ", C.ClusterSpec("slurm", profile="cpu")),
    ("tcp://10.0.0.5:8786", C.ClusterSpec("address", address="tcp://10.0.0.5:8786")),
    ("tls://host:8786", C.ClusterSpec("address", address="tls://host:8786")),
])
def test_parse_spec(spec, expected):
    assert C.parse_spec(spec) == expected


@pytest.mark.parametrize("spec", ["", "slurm:", "pbs", "10.0.0.5:8786", "tcp://", "Local"])
def test_parse_spec_rejects(spec):
    with pytest.raises(ProbeDaskError, match="expected 'local', 'slurm'"):
        C.parse_spec(spec)


def test_packaged_yaml_is_the_repo_yaml():
    assert filecmp.cmp(C.packaged_config_path(), ROOT_YAML, shallow=False), \
        "src/probe_dask/jobqueue.yaml must be a copy of jobqueue.yaml: cp jobqueue.yaml src/probe_dask/"


def test_load_merges_without_replacing_jobqueue_section():
    import dask_jobqueue  # noqa: F401  (registers jobqueue defaults)

    C.load_jobqueue_config(ROOT_YAML)
    assert dask.config.get("jobqueue.slurm.name") == "probe-dask"
    assert dask.config.get("jobqueue.slurm.shebang") == "#!/usr/bin/env bash"  # default kept
    assert dask.config.get("jobqueue.pbs", None) is not None  # other schedulers kept
    assert dask.config.get("distributed.comm.timeouts.connect") == "60s"


def test_missing_profile_names_file_and_profiles():
    with pytest.raises(InputError) as err:
        C.slurm_profile("a100", jobqueue_config=ROOT_YAML)
    msg = str(err.value)
    assert str(ROOT_YAML) in msg and "'a100'" in msg and "cpu, gpu" in msg


def test_missing_jobqueue_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        C.slurm_profile("gpu", jobqueue_config=tmp_path / "nope.yaml")


def test_dask_config_without_profiles_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DASK_CONFIG", str(tmp_path))
    with pytest.raises(InputError, match="probe-dask.slurm-profiles"):
        C.slurm_profile("gpu")


def test_default_profile_falls_back_to_packaged_copy():
    name, prof = C.slurm_profile(gpu=True)
    assert name == "gpu" and prof["job_extra_directives"] == ["--gres=gpu:1"]
    assert C._loaded == [str(C.packaged_config_path())]
    assert C.slurm_profile()[0] == "cpu"


def test_gpu_profile_job_script(fixed_slurm):
    kw = C.slurm_cluster_kwargs("gpu", jobqueue_config=ROOT_YAML)
    assert kw["queue"] == "gpuq" and kw["interface"] == "ib0"
    kw.pop("scheduler_options")
    script = SLURMJob(scheduler="tcp://127.0.0.1:8786", name="w", **kw).job_script()
    for line in ["#SBATCH -J probe-dask", "#SBATCH -p gpuq", "#SBATCH --cpus-per-task=8",
                 "#SBATCH --mem=60G", "#SBATCH -t 04:00:00", "#SBATCH --gres=gpu:1",
                 f"export DASK_CONFIG={ROOT_YAML}"]:
        assert line in script.splitlines(), (line, script)
    assert "--resources GPU=1 --lifetime 220m --lifetime-stagger 5m" in script
    assert "--nthreads 8" in script and "--interface ib0" in script


def test_cpu_profile_has_no_gpu(fixed_slurm):
    kw = C.slurm_cluster_kwargs("cpu", jobqueue_config=ROOT_YAML)
    kw.pop("scheduler_options")
    script = SLURMJob(scheduler="tcp://127.0.0.1:8786", name="w", **kw).job_script()
    assert "gres" not in script and "GPU" not in script and "--lifetime 220m" in script


def test_overrides_and_env_precedence(fixed_slurm):
    kw = C.slurm_cluster_kwargs("gpu", jobqueue_config=ROOT_YAML, queue="other",
                                job_extra_directives=[], cores=2,
                                scheduler_options={"dashboard_address": ":0"})
    assert kw["queue"] == "other" and kw["job_extra_directives"] == [] and kw["cores"] == 2
    assert kw["scheduler_options"] == {"dashboard_address": ":0"}
    assert C._has_gpu_resource(kw["worker_extra_args"])


def test_detected_interface_scheduler_only(monkeypatch):
    monkeypatch.setenv(C.PARTITION_ENV, "p")
    monkeypatch.setattr(C, "detect_interface", lambda partition: ("eth7", False))
    kw = C.slurm_cluster_kwargs("cpu", jobqueue_config=ROOT_YAML)
    assert kw["interface"] is None and kw["scheduler_options"]["interface"] == "eth7"


def test_detect_interface_local_and_unknown(monkeypatch):
    import socket

    host = socket.gethostname()
    monkeypatch.setattr(C, "_run", lambda cmd, timeout=15: f"{host} {host}\n")
    assert C.detect_interface() == ("lo", True)
    monkeypatch.setattr(C, "_run", lambda cmd, timeout=15: "node1 node1.invalid\n")
    assert C.detect_interface() == (None, False)
    monkeypatch.setattr(C, "_run", lambda cmd, timeout=15: "debug*\ngpu\n")
    assert C.detect_partition() == "debug"
    monkeypatch.setattr(C, "_run", lambda cmd, timeout=15: None)
    assert C.detect_partition() is None and C.detect_interface() == (None, False)


def test_lifetime_must_end_before_walltime(fixed_slurm):
    with pytest.raises(ProbeDaskError, match="walltime 00:10:00"):
        C.slurm_cluster_kwargs("gpu", jobqueue_config=ROOT_YAML, walltime="00:10:00")
    assert C._walltime_seconds("1-02:00:00") == 93600
    assert C._walltime_seconds("90") == 5400 and C._walltime_seconds("10:30") == 630


def test_gpu_flag_must_match_profile(fixed_slurm):
    with pytest.raises(ProbeDaskError, match="lacks a GPU"):
        C.slurm_cluster_kwargs("cpu", jobqueue_config=ROOT_YAML, gpu=True)


def test_slurm_without_sbatch(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ProbeDaskError, match="sbatch not found"):
        C.make_cluster("slurm:gpu")


def test_jobs_only_for_slurm():
    with pytest.raises(ProbeDaskError, match="use n_workers"):
        C.make_cluster("local", jobs=2)


def _inc(x):
    return x + 1


def test_local_cluster_runs_tasks():
    with C.make_cluster("local", n_workers=1, threads_per_worker=1, memory_limit="1GiB",
                        dashboard_address=":0") as (cluster, client):
        assert type(cluster).__name__ == "LocalCluster"
        assert client.submit(_inc, 1).result() == 2
        workers = client.scheduler_info(n_workers=-1)["workers"]
        assert len(workers) == 1
        assert [w["memory_limit"] for w in workers.values()] == [2**30]
        assert C.gpu_resources(client) is None


def test_local_cluster_gpu_resource():
    with C.make_cluster("local", gpu=True, threads_per_worker=1,
                        dashboard_address=":0") as (cluster, client):
        assert C.gpu_resources(client) == {"GPU": 1}
        assert client.submit(_inc, 1, resources={"GPU": 1}).result() == 2


def test_address_joins_without_starting_anything():
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=":0") as existing:
        handle = C.make_cluster(existing.scheduler_address, n_workers=1)
        cluster, client = handle
        assert cluster is None
        assert client.scheduler.address == existing.scheduler_address
        assert client.submit(_inc, 41).result() == 42
        assert len(client.scheduler_info(n_workers=-1)["workers"]) == 1
        handle.close()
        assert len(existing.scheduler.workers) == 1  # the existing cluster lives on


def test_address_unreachable():
    with pytest.raises(ProbeDaskError, match="cannot reach the scheduler"):
        C.make_cluster("tcp://127.0.0.1:9", timeout=1)
