"""``sweep --dry-run``, ``--array`` (the script; its tasks selected by
``SLURM_ARRAY_TASK_ID``, run here on local clusters, and the array submitted to the real
Slurm, marker ``slurm``) and ``--summarize``."""

import csv
import re
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from probe_dask.app.cli import build_parser
from probe_dask.app.sweep_array import array_script, task_argv, task_index
from probe_dask.app.sweep_summary import BEST_NAME, SETTINGS_NAME, SUMMARY_NAME
from probe_dask.errors import InputError
from probe_dask.io.layout import METRICS_NAME
from probe_dask.testing.runner import assert_one_error_line, cli_env, run_cli
from probe_dask.testing.synthetic import make_run
from tests.app.test_sweep import CLUSTER, TINY, write_json_sweep

OPTIONS = build_parser()._subparsers._group_actions[0].choices["sweep"]._option_string_actions


@pytest.fixture(scope="module")
def swept_twice(tmp_path_factory):
    """One SAE run, a sweep file, and the sweep's two folders (ridge 1e-8 and 1e-2)."""
    root = tmp_path_factory.mktemp("array")
    run = make_run(root / "data", d_sae=128, seed=5, **TINY)
    sweep = write_json_sweep(root, [{"run": str(run.run_dir), "train_shards": run.train_shard,
                                     "test_shards": run.test_shard, "max_iter": 4}])
    name = Path(run.run_dir).name
    folders = [root / "out" / "results" / f"{name}__ridge={r}__max_iter=4" for r in (1e-8, 1e-2)]
    return root, run, sweep, folders


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_task_argv_drops_the_array_flags_abbreviated_or_not():
    argv = ["-v", "sweep", "s.json", "--set", "ridge=1,2", "--array", "--sb=--time=1:00",
            "--sbatch=--mem=4G", "--array-l", "2", "--sub", "--cluster", "slurm"]
    build_parser().parse_args(argv)  # what argparse takes, abbreviations included
    assert task_argv(argv, OPTIONS) == ["-v", "sweep", "s.json", "--set", "ridge=1,2",
                                        "--cluster", "slurm", "--task"]


def test_array_script_text(tmp_path):
    argv = ["sweep", "my sweep.json", "--array", "--jobs", "2"]
    text = array_script(argv, OPTIONS, 6, log_dir=tmp_path / "logs", cwd="/data/x y",
                        python="/venv/bin/python", sbatch=["--time=02:00:00"], limit=3)
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    assert "#SBATCH --array=0-5%3" in lines and "#SBATCH --time=02:00:00" in lines
    assert f"#SBATCH --output={tmp_path / 'logs' / '%x-%A_%a.out'}" in lines
    assert "cd '/data/x y'" in lines
    assert lines[-1] == ("exec /venv/bin/python -m probe_dask sweep 'my sweep.json' --jobs 2 "
                         "--task")
    # Every #SBATCH line comes before the first command (sbatch stops reading them there).
    first = next(i for i, x in enumerate(lines) if x and not x.startswith("#"))
    assert all(i < first for i, x in enumerate(lines) if x.startswith("#SBATCH"))
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0


def test_task_index_from_slurm():
    assert task_index(None, 4, {"SLURM_ARRAY_TASK_ID": "3"}) == 3
    assert task_index("1", 4, {}) == 1
    with pytest.raises(InputError, match="SLURM_ARRAY_TASK_ID: found unset"):
        task_index(None, 4, {})
    with pytest.raises(InputError, match=r"found 4; expected a run index 0\.\.3"):
        task_index(None, 4, {"SLURM_ARRAY_TASK_ID": "4"})
    with pytest.raises(InputError, match="found 'x'"):
        task_index("x", 4, {})


def test_dry_run_lists_and_runs_nothing(swept_twice):
    root, run, sweep, folders = swept_twice
    proc = run_cli("sweep", sweep, "--set", "ridge=1e-8,1e-2", "--out", root / "out",
                   "--dry-run", *CLUSTER, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 2
    for k, (ridge, folder) in enumerate(zip((1e-8, 1e-2), folders)):
        assert lines[k] == (f"run {k} ({Path(run.run_dir).name}, ridge={ridge}): ridge={ridge} "
                            f"max_iter=4 block_nnz=auto device=auto -> {folder}: fit")
    assert not (root / "out").exists() and "dashboard" not in proc.stderr


def test_bad_task_is_one_line(swept_twice):
    root, run, sweep, folders = swept_twice
    proc = run_cli("sweep", sweep, "--set", "ridge=1e-8,1e-2", "--task", "2", *CLUSTER,
                   timeout=120)
    assert_one_error_line(proc, "--task", "expected a run index 0..1")
    proc = run_cli("sweep", sweep, "--submit", *CLUSTER, timeout=120)
    assert_one_error_line(proc, "--submit goes with --array")


def test_array_tasks_then_summarize(swept_twice):
    root, run, sweep, folders = swept_twice
    flags = ("--set", "ridge=1e-8,1e-2", "--out", root / "out", *CLUSTER)
    proc = run_cli("sweep", sweep, *flags, "--array", timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    script = root / "array.sh"
    script.write_text(proc.stdout)
    assert "#SBATCH --array=0-1" in proc.stdout
    # Task 1 of the array, as Slurm would start it: only run 1 (ridge 1e-2) is fitted.
    task = subprocess.run(["bash", script], capture_output=True, text=True, timeout=600,
                          env=cli_env({"SLURM_ARRAY_TASK_ID": "1"}), stdin=subprocess.DEVNULL)
    assert task.returncode == 0, task.stderr[-3000:]
    assert (folders[1] / run.train_id / METRICS_NAME).is_file()
    assert (folders[1] / run.train_id / SETTINGS_NAME).is_file()
    assert not folders[0].exists()
    assert not (root / "out" / SUMMARY_NAME).exists()  # tasks write no summary
    proc = run_cli("sweep", sweep, *flags, "--summarize", timeout=120)
    assert proc.returncode == 1 and "1 of 2 runs have no results: run 0" in proc.stderr
    rows = read_csv(root / "out" / SUMMARY_NAME)
    assert [(r["status"], r["ridge"]) for r in rows] == [("pending", "1e-08"), ("finished", "0.01")]
    assert rows[1]["passes"] and not rows[0]["passes"]
    # Task 0, then the summary of both; the best file comes from the finished runs.
    task = run_cli("sweep", sweep, *flags, "--task", "0", "-v", timeout=600)
    assert task.returncode == 0, task.stderr[-3000:]
    # Each task's own local cluster says when its workers are up (cluster/start.py).
    assert any(ln.startswith("2 workers ready in ") for ln in task.stderr.splitlines()), \
        task.stderr[-3000:]
    proc = run_cli("sweep", sweep, *flags, "--summarize", timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_csv(root / "out" / SUMMARY_NAME)
    assert [r["status"] for r in rows] == ["finished", "finished"]
    assert [r["out"] for r in rows] == [str(f) for f in folders]
    assert read_csv(root / "out" / BEST_NAME)
    assert shlex.split(proc.stdout)[0] == "summary:"


def _array_done(job, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%i %T"], capture_output=True,
                             text=True, check=False).stdout
        if not out.strip():
            return True
        time.sleep(2)
    return False


@pytest.mark.slurm
def test_array_on_real_slurm(tmp_path):
    run = make_run(tmp_path / "data", d_sae=128, seed=9, **TINY)
    sweep = write_json_sweep(tmp_path, [{"run": str(run.run_dir), "train_shards": run.train_shard,
                                         "test_shards": run.test_shard, "max_iter": 4}])
    out = tmp_path / "out"
    flags = ("--set", "ridge=1e-8,1e-2", "--out", out, "--workers", "1", "--threads", "1",
             "--memory-limit", "2GB", "--no-telemetry")
    proc = run_cli("sweep", sweep, *flags, "--array", "--submit", "--array-limit", "1",
                   "--sbatch=--job-name=pd-test-sweep-array", timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    job = re.search(r"submitted job array (\d+)", proc.stdout).group(1)
    try:
        assert _array_done(job, 600), f"job array {job} still queued or running after 600 s"
    finally:
        subprocess.run(["scancel", job], check=False)
    logs = sorted((out / "logs").glob("*.out"))
    text = "\n".join(f"{p.name}:\n{p.read_text()[-2000:]}" for p in logs)
    assert [p.name for p in logs] == [f"pd-test-sweep-array-{job}_{i}.out" for i in (0, 1)], text
    summary = run_cli("sweep", sweep, *flags, "--summarize", timeout=120)
    assert summary.returncode == 0, summary.stderr[-3000:] + text
    rows = read_csv(out / SUMMARY_NAME)
    assert [(r["status"], float(r["ridge"])) for r in rows] == [("finished", 1e-8),
                                                               ("finished", 1e-2)]
