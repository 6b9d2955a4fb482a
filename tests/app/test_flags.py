"""Every flag is checked where it is parsed: one line on stderr, exit 2, nothing started."""

import os
import subprocess

import pytest

from probe_dask.testing.runner import assert_one_error_line, cli_command, run_cli

DATA = ["--run", "RUN", "--train-shards", "TRAIN", "--test-shards", "TEST"]


@pytest.mark.parametrize("flag,value,expected", [
    ("--ridge", "nan", "finite number > 0"),
    ("--ridge", "inf", "finite number > 0"),
    ("--ridge", "-1", "finite number > 0"),
    ("--max-iter", "0", "integer >= 1"),
    ("--max-iter", "-5", "integer >= 1"),
    ("--workers", "0", "integer >= 1"),
    ("--threads", "0", "integer >= 1"),
    ("--block-nnz", "0", "integer >= 1"),
    ("--block-nnz", "-1", "integer >= 1"),
    ("--memory-limit", "lots", "memory size"),
])
def test_bad_flag_is_one_line_exit_2(tmp_path, flag, value, expected):
    # The paths do not exist: the flag is refused before any path is even looked at.
    proc = run_cli("fit", *DATA, flag, value, timeout=60)
    line = assert_one_error_line(proc, flag, expected)
    assert "Traceback" not in proc.stderr and value in line


def test_version_and_missing_flags():
    proc = run_cli("--version", timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("probe-dask ")
    assert_one_error_line(run_cli("fit", "--run", "RUN", timeout=60), "--train-shards")


def test_closed_pipe_is_a_quiet_exit(tiny_run):
    """``probe-dask plan ... | head -1``: the reader leaves early; no BrokenPipeError."""
    cmd = cli_command("plan", "--run", tiny_run.run_dir, "--train-shards", tiny_run.train_shard,
                      "--test-shards", tiny_run.test_shard)
    # The reader is gone before the report is written (a report smaller than the pipe's
    # buffer would otherwise never meet the closed end).
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(cmd, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert proc.returncode == 0, proc.stderr
    assert "BrokenPipeError" not in proc.stderr and "Traceback" not in proc.stderr
