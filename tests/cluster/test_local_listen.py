"""A local fit listens on loopback only: no socket of the driver's tree on a wildcard address.

The CLI's default local cluster is started as a user would start it, and its process tree
(the driver, which runs the scheduler and the dashboard, and its worker processes) is
sampled with psutil while the fit runs: every listening socket must be bound to a loopback
address, none to ``0.0.0.0`` or ``::``. The printed dashboard line and ``ssh -L`` hint
name the loopback address.
"""

import ipaddress
import socket
import subprocess
import time

import psutil
import pytest

from probe_dask.cluster import make_cluster, ssh_tunnel_hint
from probe_dask.testing.runner import popen_cli
from probe_dask.testing.synthetic import make_run

pytestmark = pytest.mark.timeout(300)


def listening(proc: psutil.Process) -> list[tuple[int, str, int]]:
    """(pid, ip, port) of every listening TCP socket of ``proc`` and its children."""
    out = []
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return out
    for p in procs:
        try:
            conns = p.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        out += [(p.pid, c.laddr.ip, c.laddr.port) for c in conns
                if c.status == psutil.CONN_LISTEN]
    return out


def test_local_fit_listens_on_loopback_only(tmp_path, capsys):
    run = make_run(tmp_path / "data", n_train_examples=16, n_test_examples=4,
                   tokens_per_example=64, d_sae=256, n_classes=8, mean_nnz_per_row=32, seed=3,
                   n_planted=4)
    proc = popen_cli("fit", "--run", run.run_dir, "--train-shards", run.train_shard,
                     "--test-shards", run.test_shard, "--workers", "2", "--no-telemetry",
                     "--max-iter", "200", "--block-nnz", "2000",
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    driver = psutil.Process(proc.pid)
    seen: dict[tuple[int, str, int], None] = {}
    samples = 0
    while proc.poll() is None:
        for sock in listening(driver):
            seen[sock] = None
        samples += 1
        time.sleep(0.1)
    out, err = proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    pids = {pid for pid, _, _ in seen}
    with capsys.disabled():
        print(f"\n{samples} samples; listening sockets of the driver's tree: "
              f"{sorted({(ip, port) for _, ip, port in seen})} in {len(pids)} processes")
    assert len(pids) >= 3, "expected the driver (scheduler) and two workers to be seen listening"
    wildcard = [s for s in seen if ipaddress.ip_address(s[1]).is_unspecified]
    assert not wildcard, f"listening on a wildcard address: {wildcard}"
    assert all(ipaddress.ip_address(ip).is_loopback for _, ip, _ in seen)
    dash = next(line for line in err.splitlines() if line.startswith("dashboard: "))
    assert dash.startswith("dashboard: http://127.0.0.1:"), dash


def test_make_cluster_local_binds_loopback():
    with make_cluster("local", n_workers=1, threads_per_worker=1) as (cluster, client):
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")
        link = client.dashboard_link
        assert link.startswith("http://127.0.0.1:"), link
        port = int(link.split(":")[2].split("/")[0])
        hint = ssh_tunnel_hint(link, hostname="login1.example.org", env={})
        assert hint.startswith(f"ssh -N -L 8787:127.0.0.1:{port} ") and "@login1.example.org" in hint
        # Reachable on loopback, not on this host's other addresses.
        others = [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
                  if a.family == socket.AF_INET and not a.address.startswith("127.")]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        for ip in others:
            with pytest.raises(OSError), socket.create_connection((ip, port), timeout=2):
                pass


def test_ssh_tunnel_hint_inside_a_slurm_job_jumps_through_the_login_node():
    env = {"SLURM_JOB_ID": "12", "SLURM_SUBMIT_HOST": "login2"}
    hint = ssh_tunnel_hint("http://127.0.0.1:40111/status", env=env, hostname="gpu07")
    assert " -J " in hint and "@login2 -L 8787:127.0.0.1:40111 " in hint and "@gpu07" in hint
    assert ssh_tunnel_hint(None) is None
    hint = ssh_tunnel_hint("http://10.0.0.5:8787/status", env={}, hostname="login1")
    assert "-L 8787:10.0.0.5:8787 " in hint and " -J " not in hint
