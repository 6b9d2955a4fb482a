"""The command line, run as a user runs it: a subprocess, its exit status and output."""

import numpy as np
import pytest
from distributed import Client, LocalCluster

from probe_dask.app.job import METRICS_NAME
from probe_dask.kernels import device_type
from probe_dask.testing.runner import assert_one_error_line, run_cli


def copy_run(run, tmp_path):
    import shutil

    shutil.copytree(run.root, tmp_path / "run-copy")
    root = tmp_path / "run-copy"
    return root / "run", root / "shards" / run.train_id, root / "shards" / run.test_id


def test_fit_joins_a_running_scheduler_and_starts_none(tiny_run, tmp_path):
    run_dir, train, test = copy_run(tiny_run, tmp_path)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        workers_before = set(client.scheduler_info()["workers"])
        done_before = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.transition_counter)
        proc = run_cli("fit", "--run", run_dir, "--train-shards", train, "--test-shards", test,
                       "--scheduler", cluster.scheduler_address, "--max-iter", 40)
        assert proc.returncode == 0, proc.stderr[-2000:]
        # the work ran on this cluster's workers, and no other cluster was started
        done_after = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.transition_counter)
        assert done_after > done_before + 50
        assert set(client.scheduler_info()["workers"]) == workers_before
        assert f"dashboard: {client.dashboard_link}" in proc.stderr
    assert "best" not in proc.stderr.splitlines()[-1]  # the table goes to stdout
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:2] == ["class", "latent"] and len(lines) > tiny_run.n_classes
    for shard in (train, test):
        with np.load(run_dir / "inference" / shard.name / METRICS_NAME) as f:
            assert f["loss"].shape == (tiny_run.d_sae, tiny_run.n_classes)


def test_bad_input_is_one_line_and_exit_2(tiny_run, tmp_path):
    run_dir, train, test = copy_run(tiny_run, tmp_path)
    (train / "labels.bin").write_bytes(b"\x00" * 10)
    proc = run_cli("fit", "--run", run_dir, "--train-shards", train, "--test-shards", test)
    assert_one_error_line(proc, "labels.bin", "10")
    assert not list(run_dir.rglob(METRICS_NAME))


def test_device_cuda_without_cuda_stops_before_the_first_pass(tiny_run, tmp_path):
    # Fails on the old code: an AssertionError ("Torch not compiled with CUDA") in the
    # first pass, exit 1, after the cluster started.
    if device_type("auto") == "cuda":
        pytest.skip("this machine has CUDA")
    run_dir, train, test = copy_run(tiny_run, tmp_path)
    proc = run_cli("fit", "--run", run_dir, "--train-shards", train, "--test-shards", test,
                   "--workers", 1, "--device", "cuda", "--no-telemetry")
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("probe-dask: error: ")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-3000:]
    assert "worker tcp://" in errors[0] and "no CUDA device" in errors[0], errors[0]
    assert "Traceback" not in proc.stderr and "solver passes" not in proc.stderr
    assert not list(run_dir.rglob(METRICS_NAME))


@pytest.mark.triton
def test_kernel_triton_end_to_end_equals_the_c_kernel(tiny_run, tmp_path):
    # Triton on CPU under its interpreter (slow: about a second a pass here): the whole job
    # on one worker, against the C kernel's.
    results = {}
    for kernel in ("c", "triton"):
        run_dir, train, test = copy_run(tiny_run, tmp_path / kernel)
        proc = run_cli("fit", "--run", run_dir, "--train-shards", train, "--test-shards", test,
                       "--workers", 1, "--device", "cpu", "--kernel", kernel, "--max-iter", 40,
                       "--no-telemetry", env={"TRITON_INTERPRET": "1"}, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        name = {"c": "C kernel", "triton": "Triton kernels"}[kernel]
        assert f"kernels: 1 worker {name} on cpu" in proc.stderr
        results[kernel] = [dict(np.load(run_dir / "inference" / s.name / METRICS_NAME))
                           for s in (train, test)]
    # Both fits stop within the solver's tolerance of the same optimum, by different float32
    # roundings: train losses (at the optimum, second order in the parameters) agree to 1e-6;
    # test losses are first order in them (measured: 1.6e-6 at most): 1e-5.
    for (c_split, t_split), atol, moved in zip(zip(results["c"], results["triton"]),
                                               (1e-6, 1e-5), (0, 1)):
        np.testing.assert_allclose(t_split["loss"], c_split["loss"], rtol=0, atol=atol)
        for k in ("tp", "fp", "tn", "fn"):
            # a count moves only where a row's eta is at 0 within those differences
            assert np.abs(t_split[k].astype(np.int64) - c_split[k]).max() <= moved, k
