"""Package versions of driver, scheduler and workers: recorded, compared, one clear line.

Real clusters: a LocalCluster's workers (this environment), and a ``dask worker`` process
started from another environment, one where probe-dask's installed metadata says 9.9.9
(a ``probe_dask-9.9.9.dist-info`` first on its ``PYTHONPATH``, as an older or newer
install on the compute nodes would be), joining a scheduler by address.
"""

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from distributed import Client, LocalCluster

from probe_dask import cluster as C
from probe_dask.cluster.versions import PACKAGES, check_versions
from probe_dask.errors import ProbeDaskError

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture
def scheduler():
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=":0") as cluster:
        yield cluster


def test_cluster_versions_records_every_endpoint(scheduler):
    with Client(scheduler) as client:
        versions = C.cluster_versions(client)
        (addr,) = client.scheduler_info()["workers"]
    assert set(versions) == {"driver", "scheduler", "workers"} and list(versions["workers"]) == [addr]
    expected = {"dask": version("dask"), "distributed": version("distributed"),
                "numpy": version("numpy"), "probe_dask": version("probe-dask"),
                "python": ".".join(map(str, sys.version_info))}
    for where in (versions["driver"], versions["scheduler"], versions["workers"][addr]):
        assert set(where) == set(PACKAGES)
        assert {k: where[k] for k in expected} == expected
    json.dumps(versions)  # goes into probe1d_classes.json as is


def test_worker_from_another_environment_is_one_clear_line(scheduler, tmp_path):
    other = tmp_path / "site"
    meta = other / "probe_dask-9.9.9.dist-info"
    meta.mkdir(parents=True)
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: probe-dask\nVersion: 9.9.9\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(other), str(SRC)])}
    worker = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker",
                               scheduler.scheduler_address, "--nthreads", "1", "--no-nanny",
                               "--no-dashboard", "--host", "127.0.0.1"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with Client(scheduler) as client:
            client.wait_for_workers(2, timeout=60)
            ours = {w.worker_address for w in scheduler.workers.values()}
            (addr,) = set(client.scheduler_info()["workers"]) - ours
        with pytest.raises(ProbeDaskError) as err:
            C.make_cluster(scheduler.scheduler_address, n_workers=2, wait_timeout=30)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"version mismatch: probe_dask 9.9.9 on worker {addr} but "
                          f"{version('probe-dask')} on the driver"), msg


def test_python_patch_releases_agree_minor_releases_do_not():
    base = dict.fromkeys(PACKAGES, "1.0")
    drv = {**base, "python": "3.12.3.final.0"}
    check_versions({"driver": drv, "scheduler": None,
                    "workers": {"w1": {**base, "python": "3.12.7.final.0"}}})
    # numpy is not the scheduler's concern (it runs no tasks); a worker's numpy is.
    check_versions({"driver": drv, "scheduler": {**drv, "numpy": "2.0"}, "workers": {}})
    with pytest.raises(ProbeDaskError, match=r"^version mismatch: python 3.13.0.final.0 on "
                                             r"worker w2 \(and 1 more\) but 3.12.3.final.0"):
        check_versions({"driver": drv, "scheduler": drv, "workers": {
            "w1": drv, "w2": {**base, "python": "3.13.0.final.0"},
            "w3": {**base, "python": "3.11.9.final.0"}}})
    with pytest.raises(ProbeDaskError, match="dask not installed on scheduler but 1.0 on"):
        check_versions({"driver": drv, "scheduler": {**drv, "dask": None}, "workers": {}})


def test_installed_dask_stack_is_inside_the_tested_ranges():
    # pyproject.toml's ranges for the cluster stack must name what this suite runs with.
    import tomllib

    from packaging.requirements import Requirement

    root = Path(__file__).resolve().parents[2]
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    reqs = {r.name: r for r in map(Requirement, deps)}
    for name in ("dask", "distributed", "dask-jobqueue"):
        spec = reqs[name].specifier
        assert any(s.operator == "<" for s in spec), f"{name}: no upper bound in {spec}"
        assert spec.contains(version(name)), f"{name} {version(name)} outside {spec}"
