"""Tests of cluster/connect.py: ``--scheduler`` pointed at something that is not a Dask
scheduler is one line and exit 2, in seconds (an HTTP server, the dashboard's port of a real
LocalCluster, a closed port), and a real scheduler is joined as before."""

import http.server
import socket
import threading
import time

import pytest
from distributed import LocalCluster

from probe_dask.cluster.connect import connect, probe_scheduler
from probe_dask.errors import ProbeDaskError
from probe_dask.testing.runner import run_cli

TIMEOUT = "3s"  # probe-dask.cluster.connect-timeout for these tests (default 30 s)


@pytest.fixture(scope="module")
def http_server():
    """A real HTTP server on a loopback port, served from a thread."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"tcp://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0",
                      memory_limit="2GB") as c:
        yield c


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"  # nothing listens once closed


def _dashboard(cluster) -> str:
    return f"tcp://127.0.0.1:{cluster.scheduler.http_server.port}"


def test_probe_accepts_a_real_scheduler(cluster):
    t0 = time.perf_counter()
    probe_scheduler(cluster.scheduler_address, TIMEOUT)
    client = connect(cluster.scheduler_address, TIMEOUT)
    try:
        assert client.submit(sum, [1, 2]).result() == 3
    finally:
        client.close()
    assert time.perf_counter() - t0 < 20


@pytest.mark.parametrize("target, says", [
    ("http", "an HTTP server (HTTP/1.0 200 OK"),
    ("dashboard", "an HTTP server (HTTP/1.1 "),
    ("closed", "nothing listening on port"),
])
def test_probe_names_what_answered(http_server, cluster, target, says):
    address = {"http": http_server, "dashboard": _dashboard(cluster), "closed": closed_port()}[target]
    t0 = time.perf_counter()
    with pytest.raises(ProbeDaskError) as info:
        probe_scheduler(address, TIMEOUT)
    seconds = time.perf_counter() - t0
    msg = str(info.value)
    print(f"{target}: {seconds:.1f} s: {msg}")
    assert msg.startswith(f"{address}: not a Dask scheduler: ") and says in msg and "\n" not in msg
    assert seconds < 10


def test_http_server_that_speaks_first_is_named():
    """A server that answers before it is asked (an HTTP reply to nothing) is named at once."""
    srv = socket.create_server(("127.0.0.1", 0))

    def serve():
        conn, _ = srv.accept()
        with conn:
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            time.sleep(1)

    threading.Thread(target=serve, daemon=True).start()
    address = f"tcp://127.0.0.1:{srv.getsockname()[1]}"
    t0 = time.perf_counter()
    with pytest.raises(ProbeDaskError, match=r"an HTTP server \(HTTP/1.1 400 Bad Request\)$"):
        probe_scheduler(address, 30)
    assert time.perf_counter() - t0 < 5  # a MemoryError of 3 EiB before (found 8 bytes of text)
    srv.close()


@pytest.mark.parametrize("target", ["http", "dashboard", "closed"])
def test_cli_scheduler_not_a_scheduler_is_one_line(tiny_run, http_server, cluster, target):
    address = {"http": http_server, "dashboard": _dashboard(cluster), "closed": closed_port()}[target]
    r = run_cli("fit", "--run", tiny_run.run_dir, "--train-shards", tiny_run.train_shard,
                "--test-shards", tiny_run.test_shard, "--scheduler", address,
                "--max-iter", "3", timeout=120,
                env={"DASK_PROBE_DASK__CLUSTER__CONNECT_TIMEOUT": TIMEOUT})
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("probe-dask: error")]
    print(f"{target}: exit {r.returncode} in {r.seconds:.1f} s: {errors}")
    assert r.returncode == 2, r.stderr[-3000:]
    assert len(errors) == 1 and f"{address}: not a Dask scheduler" in errors[0]
    assert "Traceback" not in r.stderr and "MemoryError" not in r.stderr
    assert r.seconds < 60
