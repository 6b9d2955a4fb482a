"""The login-node warning (the ssh tunnel line: tests/cluster/test_local_listen.py)."""

import shutil

from probe_dask.app.reach import login_node_warning


def test_local_cluster_on_a_login_node_is_warned():
    on_path = lambda name: "/usr/bin/sinfo"  # noqa: E731 - sinfo present
    warning = login_node_warning("local", env={}, which=on_path)
    assert warning.startswith("WARNING") and "--cluster slurm:PROFILE" in warning
    assert login_node_warning("local", env={"SLURM_JOB_ID": "7"}, which=on_path) is None
    assert login_node_warning("slurm:gpu", env={}, which=on_path) is None
    assert login_node_warning("local", env={}, which=lambda name: None) is None
    # this machine: warned exactly when Slurm's sinfo is installed
    assert (login_node_warning("local", env={}) is None) == (shutil.which("sinfo") is None)
