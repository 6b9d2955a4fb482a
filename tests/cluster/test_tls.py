"""TLS on the real local Slurm: the default cluster lets in only holders of the run's key.

A fit runs on a ``SLURMCluster`` started the default way (TLS, per-run credentials); with
the cluster up, a plain ``Client`` (no certificate) and one presenting another CA's
certificate (``Security.temporary()``) both fail to connect to the scheduler's address.
The credentials' folder is private while the cluster runs and gone after it closes.
``--insecure`` runs over tcp:// and prints its warning line. Jobs are 1 core, 1 GiB.
"""

import os
import socket
import ssl
import stat
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from distributed import LocalCluster
from distributed.security import Security

from probe_dask import cluster as C
from probe_dask.app.job import open_inputs, run_job
from probe_dask.cluster.tls import address_security, is_loopback_address, run_credentials
from probe_dask.errors import ProbeDaskError
from probe_dask.testing.runner import run_cli, stderr_lines
from probe_dask.testing.slurm import refused
from probe_dask.testing.synthetic import make_run

ROOT_YAML = Path(__file__).resolve().parents[2] / "jobqueue.yaml"


@pytest.fixture(autouse=True)
def _clean_config(clean_dask_config):
    yield


def tiny(tmp_path):
    return make_run(tmp_path / "data", n_train_examples=8, n_test_examples=4,
                    tokens_per_example=64, d_sae=128, n_classes=8, mean_nnz_per_row=32, seed=3,
                    n_planted=4)


def tls_without_certificate(address, ca_pem) -> str:
    """A raw TLS connection that trusts ``ca_pem`` but shows no certificate; why it failed."""
    host, port = address.split("://", 1)[1].rsplit(":", 1)
    ctx = ssl.create_default_context(cadata=ca_pem)
    ctx.check_hostname = False  # Dask's temporary certificate names "dask-internal"
    try:
        with socket.create_connection((host, int(port)), timeout=5) as raw:
            with ctx.wrap_socket(raw) as conn:
                conn.sendall(b"\0" * 8)
                data = conn.recv(1)  # TLS 1.3: the server's refusal arrives here
                return "" if data else "closed by the scheduler"
    except (ssl.SSLError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"


@pytest.mark.slurm
@pytest.mark.timeout(300)
def test_default_slurm_cluster_is_tls_and_rejects_strangers(slurm, tmp_path, capsys,
                                                          small_cpu_profile):
    import dask

    creds = tmp_path / "creds"
    dask.config.set({"probe-dask.cluster.credentials-dir": str(creds)})
    run = tiny(tmp_path)
    inputs = open_inputs(run.run_dir, run.train_shard, run.test_shard,
                         out_dirs=[tmp_path / "train", tmp_path / "test"])
    with C.make_cluster("slurm:cpu", jobs=1, jobqueue_config=ROOT_YAML,
                        **small_cpu_profile("8m", "00:10:00")) as (cluster, client):
        address = cluster.scheduler_address
        assert address.startswith("tls://"), address
        script = cluster.job_script()
        assert "--tls-key" in script and "PRIVATE KEY" not in script
        (folder,) = creds.iterdir()
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        files = sorted(folder.iterdir())
        assert len(files) == 3 and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
        assert all(f.stat().st_uid == os.getuid() for f in [folder, *files])

        result = run_job(client, inputs, max_iter=30, log=lambda m: None)
        with np.load(result.train_metrics) as f:
            assert f["loss"].shape == (run.d_sae, run.n_classes)
            assert np.isfinite(f["loss"]).all()

        t0 = time.perf_counter()
        plain = refused(address)  # Dask's defaults: no certificate at all
        # Speaks TLS and trusts our CA, but has no certificate: mutual authentication refuses.
        no_cert = tls_without_certificate(address, Path(C.job_security(cluster).tls_ca_file).read_text())
        stranger = refused(address, "stranger")  # another CA's certificate
        tcp = refused(address.replace("tls://", "tcp://"))
        with capsys.disabled():
            print(f"\nTLS fit: {result.n_iter} passes; {address}:\n  plain client -> {plain[:100]}"
                  f"\n  our CA, no certificate -> {no_cert[:100]}\n  other CA -> {stranger[:100]}"
                  f"\n  tcp:// -> {tcp[:100]}\n  ({time.perf_counter() - t0:.1f} s)")
        assert plain and no_cert and stranger and tcp
        # The cluster's own client is still served.
        assert client.submit(sum, [1, 2, 3]).result(timeout=30) == 6
    assert not folder.exists(), "the run's credentials must be removed when the cluster closes"


@pytest.mark.slurm
@pytest.mark.timeout(300)
def test_insecure_cli_runs_over_tcp_and_warns(slurm, tmp_path):
    run = tiny(tmp_path)
    _, prof = C.slurm_profile("cpu", jobqueue_config=ROOT_YAML)
    args = list(prof["worker_extra_args"])
    args[args.index("--lifetime") + 1] = "8m"
    args[args.index("--lifetime-stagger") + 1] = "1m"
    small = tmp_path / "jobqueue.yaml"
    small.write_text(yaml.safe_dump({"probe-dask": {"slurm-profiles": {"cpu": {
        "cores": 1, "memory": "1GiB", "walltime": "00:10:00", "worker-extra-args": args,
        "log-directory": str(tmp_path)}}}}))
    proc = run_cli("fit", "--run", run.run_dir, "--train-shards", run.train_shard,
                   "--test-shards", run.test_shard, "--cluster", "slurm:cpu", "--jobs", "1",
                   "--jobqueue-config", small, "--insecure", "--no-telemetry", timeout=240)
    lines = stderr_lines(proc)
    assert proc.returncode == 0, "\n".join(lines[-20:])
    assert sum("warning: --insecure" in line for line in lines) == 1
    logs = "".join(p.read_text() for p in tmp_path.glob("*.err"))
    assert "tcp://" in logs and "tls://" not in logs, logs[-2000:]


def test_address_security_reads_dask_tls_config(tmp_path):
    import dask

    with pytest.raises(ProbeDaskError, match="distributed.comm.tls.ca-file"):
        address_security("tls://10.1.2.3:8786")
    sec = Security.temporary()
    ca = tmp_path / "ca.pem"
    ca.write_text(sec.tls_ca_file)
    with dask.config.set({"distributed.comm.tls.ca-file": str(ca),
                          "distributed.comm.tls.client.cert": str(ca),
                          "distributed.comm.tls.client.key": str(ca)}):
        got, warning = address_security("tls://10.1.2.3:8786")
    assert warning is None and got.tls_ca_file == str(ca) and got.tls_client_cert == str(ca)
    assert address_security("tcp://127.0.0.1:8786") == (None, None)
    _, warning = address_security("tcp://10.1.2.3:8786")
    assert "no encryption, no authentication" in warning
    assert is_loopback_address("tcp://[::1]:1") and not is_loopback_address("tcp://node7:1")


def test_run_credentials_are_private_files_named_by_a_security(tmp_path):
    # What SLURMCluster gets: a Security of file paths (dask-jobqueue copies nothing).
    import dask

    dask.config.set({"probe-dask.cluster.credentials-dir": str(tmp_path / "creds")})
    security, folder = run_credentials()
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["ca.pem", "cert.pem", "key.pem"]
    assert all(stat.S_IMODE((folder / f).stat().st_mode) == 0o600 for f in files)
    tls = security.get_tls_config_for_role("worker")
    assert (tls["ca_file"], tls["cert"], tls["key"]) == tuple(
        str(folder / f) for f in ("ca.pem", "cert.pem", "key.pem"))
    assert security.require_encryption
    # The files are a working credential: the key matches the certificate, the CA is it.
    ctx = ssl.create_default_context(cafile=tls["ca_file"])
    ctx.load_cert_chain(tls["cert"], tls["key"])
    with LocalCluster(n_workers=0, security=security, host="127.0.0.1",
                      dashboard_address=":0") as cluster:
        assert C.job_security(cluster) is security  # files, TLS required: usable by jobs
    with LocalCluster(n_workers=0, host="127.0.0.1", dashboard_address=":0") as cluster:
        assert C.job_security(cluster) is None  # no TLS
