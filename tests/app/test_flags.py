"""Every flag is checked where it is parsed: one line on stderr, exit 2, nothing started."""

import os
import subprocess

import pytest

from probe_dask.app.cli import build_parser
from probe_dask.app.parser import fit_settings
from probe_dask.core.settings import FitSettings
from probe_dask.engine.parameters import PARAMETER_CONSTRAINTS
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


#: The fit's flags and the fitter parameter each one sets.
FIT_FLAGS = {"--ridge": "ridge", "--max-iter": "max_iter"}
#: Every invalid value of those parameters typed as a flag's text (a string's text is what
#: it holds, a valid number: not a case here).
BAD_FIT_FLAGS = [(flag, str(value)) for flag, name in FIT_FLAGS.items()
                 for value in PARAMETER_CONSTRAINTS[name].invalid_values()
                 if value is not None and not isinstance(value, str)]


@pytest.mark.parametrize("flag, text", BAD_FIT_FLAGS, ids=[f"{f}={t}" for f, t in BAD_FIT_FLAGS])
def test_each_invalid_fit_flag_is_one_line_in_the_fitters_words(capsys, flag, text):
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["fit", *DATA, f"{flag}={text}"])  # "-1" is no flag
    assert stop.value.code == 2
    line, = capsys.readouterr().err.splitlines()
    expected = PARAMETER_CONSTRAINTS[FIT_FLAGS[flag]]
    assert line.startswith(f"probe-dask: error: argument {flag}: found ")
    assert f"{text}" in line and f"; expected {expected} (see" in line


def test_fit_flags_build_the_settings_once_with_their_defaults():
    parser = build_parser()
    assert fit_settings(parser.parse_args(["fit", *DATA])) == FitSettings()
    args = parser.parse_args(["fit", *DATA, "--ridge", "1e-6", "--max-iter", "7", "--device",
                              "cpu", "--kernel", "c"])
    assert fit_settings(args) == FitSettings(ridge=1e-6, max_iter=7, device="cpu", backend="c")
    # A sweep's flags not given stay None: the settings' defaults, each run's own laid over.
    sweep = parser.parse_args(["sweep", "sweep.json"])
    assert (sweep.ridge, sweep.max_iter, sweep.device) == (None, None, None)
    assert fit_settings(sweep) == FitSettings()
