"""Logging and exit statuses of the command line, run as a user runs it (a subprocess)."""

import time

import psutil
import pytest
from distributed import LocalCluster

from probe_dask.testing.runner import popen_cli, run_cli

from tests.app.test_cli import copy_run

FIT_HELP_STATUSES = ["0  done", "1  failed", "2  usage or input error",
                     "3  pairs left unconverged", "4  the memory plan does not fit"]


def _fit_args(tiny_run, tmp_path):
    run_dir, train, test = copy_run(tiny_run, tmp_path)
    return ["fit", "--run", run_dir, "--train-shards", train, "--test-shards", test,
            "--workers", 1, "--no-telemetry"]


def test_v_after_the_subcommand_shows_the_workers_ready_line(tiny_run, tmp_path):
    # Fails on the old code: "-v" was unrecognized (exit 2), and no logging record showed.
    # Joining a running scheduler waits for --workers (cluster/spec.py logs the line).
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster:
        proc = run_cli(*_fit_args(tiny_run, tmp_path), "--scheduler", cluster.scheduler_address,
                       "--max-iter", 40, "-v")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert any(ln.startswith("1 workers ready in ") for ln in proc.stderr.splitlines()), \
        proc.stderr[-3000:]


def test_debug_and_quiet_are_accepted_before_and_after_the_subcommand(tiny_run, tmp_path):
    before = run_cli("--debug", "-q", *_fit_args(tiny_run, tmp_path / "a"), "--max-iter", 40)
    after = run_cli(*_fit_args(tiny_run, tmp_path / "b"), "--max-iter", 40, "--debug", "-q")
    for proc in (before, after):
        assert proc.returncode == 0, proc.stderr[-3000:]
        # -q: no progress lines, whichever side of "fit" it was given
        assert "dashboard:" not in proc.stderr and "workers ready" not in proc.stderr


def test_unconverged_with_require_converged_is_exit_3(tiny_run, tmp_path):
    proc = run_cli(*_fit_args(tiny_run, tmp_path), "--max-iter", 1, "--require-converged")
    assert proc.returncode == 3, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("probe-dask: error: ")]
    assert len(errors) == 1 and "did not converge" in errors[0], proc.stderr[-3000:]


def test_a_plan_that_does_not_fit_is_exit_4(tiny_run, tmp_path):
    run_dir, train, test = copy_run(tiny_run, tmp_path)
    # One block of this run needs far more than 1 MB: the plan cannot fit any worker.
    proc = run_cli("plan", "--run", run_dir, "--train-shards", train, "--test-shards", test,
                   "--workers", 1, "--memory-limit", "1MB")
    assert proc.returncode == 4, (proc.returncode, proc.stderr[-3000:])
    assert proc.stderr.startswith("probe-dask: error: "), proc.stderr[-3000:]


def test_usage_error_is_exit_2():
    proc = run_cli("plan", "--no-such-flag")
    assert proc.returncode == 2 and "--no-such-flag" in proc.stderr


@pytest.mark.parametrize("command", ["demo", "fit", "plan", "sweep", "report"])
def test_every_subcommand_help_has_a_description_an_example_and_the_exit_codes(command):
    proc = run_cli(command, "--help")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    usage_end = text.index("\n\n") + 2
    assert not text[usage_end:].startswith(("options:", "positional")), "no description"
    assert f"example:\n  probe-dask {command}" in text
    for status in FIT_HELP_STATUSES:
        assert status in text, (command, status)
    for flag in ("-v, --verbose", "-q, --quiet", "--debug", "--log-file"):
        assert flag in text, (command, flag)


def test_sweep_help_claims_no_default_the_sweep_file_overrides():
    text = " ".join(run_cli("sweep", "--help").stdout.split())
    assert "(default 30)" not in text and "(default 1e-8)" not in text
    assert "most solver passes (default: each run's value from the sweep file (else 30))" in text


def test_log_file_collects_our_records_and_a_distributed_warning(tiny_run, tmp_path):
    # A worker killed during the run: its nanny (in the driver's process, a LocalCluster)
    # logs "Restarting worker" at WARNING: distributed's record must reach the file.
    log_file = tmp_path / "run.log"
    proc = popen_cli(*_fit_args(tiny_run, tmp_path), "--max-iter", 200, "-v",
                     "--log-file", log_file, stderr=open(tmp_path / "stderr", "w"),
                     stdout=open(tmp_path / "stdout", "w"), text=True)
    try:
        deadline = time.monotonic() + 120
        while "dashboard:" not in (tmp_path / "stderr").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, \
                (tmp_path / "stderr").read_text()[-3000:]
            time.sleep(0.05)
        workers = [p for p in psutil.Process(proc.pid).children(recursive=True)
                   if "multiprocessing" in " ".join(p.cmdline())
                   and "resource_tracker" not in " ".join(p.cmdline())]
        assert workers, "no worker process found"
        for p in workers:
            p.kill()
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = log_file.read_text().splitlines()
    assert any(" INFO probe_dask.app.progress: dashboard: " in ln for ln in lines), lines
    distributed = [ln for ln in lines if " WARNING distributed." in ln or " ERROR distributed." in ln]
    assert distributed, (tmp_path / "stderr").read_text()[-3000:]
    # distributed's INFO records stay out of the file (one a worker event)
    assert not any(" INFO distributed." in ln for ln in lines)
    # every line is time-stamped in UTC
    assert all(ln[:4].isdigit() and ln[23] == "Z" for ln in lines if ln[:1].isdigit())
