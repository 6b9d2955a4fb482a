"""What the workers offer and run (engine.workers), on a real LocalCluster: GPU resources are
requested only by GPU tasks, and every worker reports its kernel before the first pass."""

import pytest
from distributed import Client, LocalCluster, Scheduler, SpecCluster, Worker

from probe_dask.engine.workers import (check_worker_kernels, gpu_resources, task_resources,
                                       worker_capacity, worker_kernels, worker_slots)
from probe_dask.errors import ProbeDaskError
from probe_dask.kernels import ckernel, device_type, kernel_for


@pytest.fixture(scope="module")
def gpu_advertising_client():
    """Two worker processes that advertise a GPU resource (this machine has no CUDA)."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      resources={"GPU": 1}, memory_limit="2GB") as cluster, Client(cluster) as client:
        yield client


def test_cpu_tasks_do_not_request_the_gpu_resource(gpu_advertising_client):
    # CPU tasks asking for {"GPU": 1} would run one at a time on each GPU worker.
    client = gpu_advertising_client
    assert gpu_resources(client) == {"GPU": 1}
    assert task_resources(client, "cpu") is None
    assert task_resources(client, "cuda") == {"GPU": 1}
    assert task_resources(client, "cuda:0") == {"GPU": 1}
    assert task_resources(client, None) == {"GPU": 1}  # auto on GPU workers


def test_every_worker_reports_its_kernel(gpu_advertising_client):
    client = gpu_advertising_client
    found = worker_kernels(client, "cpu")
    assert set(found) == set(client.scheduler_info()["workers"])
    expected = ("c", "cpu") if ckernel.available() else ("torch", "cpu")
    assert all(v == expected for v in found.values())
    lines = []
    check_worker_kernels(client, "cpu", log=lines.append)
    name = "C kernel" if ckernel.available() else "torch fallback"
    assert lines[0] == f"kernels: 2 workers {name} on cpu"
    lines.clear()
    check_worker_kernels(client, "cpu", "torch", log=lines.append)  # asked for: no warning
    assert lines == ["kernels: 2 workers torch fallback on cpu"]


def test_cuda_on_workers_without_cuda_names_the_worker(gpu_advertising_client):
    if device_type("auto") == "cuda":
        pytest.skip("this machine has CUDA")
    client = gpu_advertising_client
    with pytest.raises(RuntimeError, match="no CUDA device"):
        kernel_for("cuda")
    found = worker_kernels(client, "cuda")
    assert all(isinstance(v, str) and "no CUDA device" in v for v in found.values())
    with pytest.raises(ProbeDaskError) as err:
        check_worker_kernels(client, "cuda")
    first = min(found)
    assert str(err.value).startswith(f"worker {first} (and 1 more workers) cannot run "
                                     "--device cuda --kernel auto: no CUDA device")
    assert "\n" not in str(err.value)


def test_capacity_and_slots_count_every_worker_thread():
    """Two workers of 2 and 3 threads: their capacity, and one slot per thread in address order."""
    workers = {name: {"cls": Worker, "options": {"nthreads": n}} for name, n in (("a", 2), ("b", 3))}
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": ":0"}}
    with SpecCluster(workers=workers, scheduler=scheduler) as cluster, Client(cluster) as client:
        client.wait_for_workers(2)
        capacity = worker_capacity(client)
        assert sorted(capacity.values()) == [2, 3]
        slots = worker_slots(client)
        assert slots == sorted(slots) and len(slots) == 5
        assert {a: slots.count(a) for a in capacity} == capacity
