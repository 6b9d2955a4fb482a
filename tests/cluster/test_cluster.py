"""Cluster choice without Slurm: specs, profiles, job scripts, local and address clusters."""

from pathlib import Path

import dask
import pytest
from dask_jobqueue.slurm import SLURMJob
from distributed import LocalCluster

from probe_dask import cluster as C
from probe_dask.cluster import network as N
from probe_dask.cluster import profiles as P
from probe_dask.cluster import slurm as S
from probe_dask.errors import InputError, ProbeDaskError

ROOT = Path(__file__).resolve().parents[2]
ROOT_YAML = ROOT / "jobqueue.yaml"


@pytest.fixture(autouse=True)
def clean_config(clean_dask_config):
    """Every test starts from (and leaves) the same Dask config, defaults and load history,
    with no partition or interface configured (so nothing leaks in from the environment)."""
    dask.config.set({"probe-dask.slurm.partition": None, "probe-dask.slurm.interface": None})
    yield


@pytest.fixture
def fixed_slurm():
    """Partition and interface from the config, so nothing is detected."""
    dask.config.set({"probe-dask.slurm.partition": "gpuq", "probe-dask.slurm.interface": "ib0"})


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


def test_packaged_profiles_are_the_top_level_file():
    # In the source tree the package's jobqueue.yaml is a link to the top-level file (which
    # users copy and edit); building the package copies the file itself in (test_packaging).
    packaged = ROOT / "src" / "probe_dask" / "jobqueue.yaml"
    assert packaged.is_symlink() and packaged.resolve() == ROOT_YAML.resolve()
    if C.packaged_config_path().parent == packaged.parent:  # running from the checkout
        assert C.packaged_config_path().resolve() == ROOT_YAML.resolve()


def test_user_jobqueue_settings_are_kept_under_packaged_profiles(tmp_path, monkeypatch):
    # The user's own Dask config folder (here: DASK_CONFIG, read as Dask reads it at import)
    user = tmp_path / "dask"
    user.mkdir()
    (user / "site.yaml").write_text(
        "jobqueue:\n  slurm:\n    account: lab42\n    queue: long\n"
        "    job-script-prologue: ['module load cuda/12.4']\n")
    monkeypatch.setenv("DASK_CONFIG", str(user))
    monkeypatch.setattr(dask.config, "paths", [*dask.config.paths, str(user)])
    dask.config.refresh(paths=dask.config.paths)
    name, prof = C.slurm_profile("cpu")  # no jobqueue_config: the packaged profiles join
    assert name == "cpu" and prof["memory"] == "32GiB"
    assert dask.config.get("jobqueue.slurm.account") == "lab42"
    assert dask.config.get("jobqueue.slurm.queue") == "long"
    assert dask.config.get("jobqueue.slurm.job-script-prologue") == ["module load cuda/12.4"]
    assert dask.config.get("jobqueue.slurm.name") == "probe-dask"  # unset by the user: packaged
    dask.config.refresh(paths=dask.config.paths)  # the packaged file stays a default
    assert dask.config.get("jobqueue.slurm.account") == "lab42"
    assert dask.config.get(P.PROFILES_KEY)["gpu"]["memory"] == "60GiB"

    dask.config.set({"probe-dask.slurm.interface": "ib0"})
    kw = C.slurm_cluster_kwargs("cpu")
    kw.pop("scheduler_options")
    script = SLURMJob(scheduler="tcp://127.0.0.1:8786", name="w", **kw).job_script()
    for line in ["#SBATCH -A lab42", "#SBATCH -p long", "module load cuda/12.4",
                 f"export DASK_CONFIG={user}", "#SBATCH --mem=32G"]:
        assert line in script.splitlines(), (line, script)


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


def test_dask_config_set_late_is_read(tmp_path, monkeypatch):
    # DASK_CONFIG set after dask was imported: read now (its values win), profiles kept
    (tmp_path / "late.yaml").write_text("jobqueue:\n  slurm:\n    account: late\n")
    monkeypatch.setenv("DASK_CONFIG", str(tmp_path))
    assert P.config_source() == str(tmp_path)
    assert dask.config.get("jobqueue.slurm.account") == "late"
    assert C.slurm_profile("gpu")[0] == "gpu"


def test_default_profile_falls_back_to_packaged_copy():
    name, prof = C.slurm_profile(gpu=True)
    assert name == "gpu" and prof["job_extra_directives"] == ["--gres=gpu:1"]
    assert P._loaded == [] and P.config_source() == str(C.packaged_config_path())
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
    assert S.has_gpu_resource(kw["worker_extra_args"])


def test_detected_interface_scheduler_only(monkeypatch):
    dask.config.set({"probe-dask.slurm.partition": "p"})
    monkeypatch.setattr(S, "detect_interface", lambda partition: ("eth7", False))
    kw = C.slurm_cluster_kwargs("cpu", jobqueue_config=ROOT_YAML)
    assert kw["interface"] is None and kw["scheduler_options"]["interface"] == "eth7"


def test_detect_interface_local_and_unknown(monkeypatch):
    import socket

    host = socket.gethostname()
    monkeypatch.setattr(N, "run_command", lambda cmd, timeout=None: f"{host} {host}\n")
    assert C.detect_interface() == ("lo", True)
    monkeypatch.setattr(N, "run_command", lambda cmd, timeout=None: "node1 node1.invalid\n")
    assert C.detect_interface() == (None, False)
    monkeypatch.setattr(N, "run_command", lambda cmd, timeout=None: "debug*\ngpu\n")
    assert C.detect_partition() == "debug"
    monkeypatch.setattr(N, "run_command", lambda cmd, timeout=None: None)
    assert C.detect_partition() is None and C.detect_interface() == (None, False)


def test_lifetime_must_end_before_walltime(fixed_slurm):
    with pytest.raises(ProbeDaskError, match="walltime 00:10:00"):
        C.slurm_cluster_kwargs("gpu", jobqueue_config=ROOT_YAML, walltime="00:10:00")
    assert S._walltime_seconds("1-02:00:00") == 93600
    assert S._walltime_seconds("90") == 5400 and S._walltime_seconds("10:30") == 630


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
    with pytest.raises(ProbeDaskError, match="nothing listening on port 9"):
        C.make_cluster("tcp://127.0.0.1:9", timeout=1)


def test_packaged_profiles_reach_workers_by_preload_not_dask_config(fixed_slurm):
    # No file of the user's: nothing is exported as DASK_CONFIG (it would be read over
    # ~/.config/dask); the packaged defaults come from the preload, under the user's files.
    kw = C.slurm_cluster_kwargs("cpu")
    assert not any("DASK_CONFIG" in line for line in kw["job_script_prologue"])
    assert kw["worker_extra_args"][-2:] == ["--preload-nanny", S.WORKER_PRELOAD]
    kw.pop("scheduler_options")
    script = SLURMJob(scheduler="tcp://127.0.0.1:8786", name="w", **kw).job_script()
    assert "DASK_CONFIG" not in script
    assert f"--preload-nanny {S.WORKER_PRELOAD}" in script
    no_nanny = C.slurm_cluster_kwargs("cpu", nanny=False)["worker_extra_args"]
    assert no_nanny[-2:] == ["--preload", S.WORKER_PRELOAD]
    # Idempotent: a profile that already names the preload keeps one copy.
    again = C.slurm_cluster_kwargs("cpu", worker_extra_args=kw["worker_extra_args"])
    assert again["worker_extra_args"].count(S.WORKER_PRELOAD) == 1


def test_worker_preload_lays_packaged_defaults_under_user_files(tmp_path):
    # A fresh interpreter as a Slurm worker's nanny is: the user's ~/.config/dask read at
    # import, then the preload module imported. Keys both set: the user's; others: packaged.
    import json
    import os
    import subprocess
    import sys

    from probe_dask.cluster import worker_config

    assert worker_config.MODULE == S.WORKER_PRELOAD
    user = tmp_path / "home" / ".config" / "dask"
    user.mkdir(parents=True)
    (user / "site.yaml").write_text("distributed:\n  comm:\n    timeouts:\n      connect: 45s\n"
                                    "probe-dask:\n  slurm-default-profile: gpu\n")
    code = ("import dask, importlib, json; before = dask.config.get('distributed.comm.timeouts."
            "connect'); importlib.import_module(%r); g = dask.config.get; print(json.dumps("
            "[before, g('distributed.comm.timeouts.connect'), g('probe-dask.slurm-default-profile'),"
            " g('probe-dask.slurm-profiles.cpu.memory')]))" % S.WORKER_PRELOAD)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    env["HOME"] = str(tmp_path / "home")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, timeout=120).stdout
    assert json.loads(out.splitlines()[-1]) == ["45s", "45s", "gpu", "32GiB"]
