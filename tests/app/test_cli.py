"""The command line, run as a user runs it: a subprocess, its exit status and output."""

import numpy as np
from distributed import Client, LocalCluster

from probe_dask.app.job import METRICS_NAME
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
