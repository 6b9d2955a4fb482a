"""Safe outputs end to end: refused reruns, --overwrite, --out, umask, strict JSON with
provenance, the converged flag, --require-converged, kept telemetry, plain logs."""

import importlib.metadata
import json
import shutil
import stat

import numpy as np

from probe_dask.app.job import CLASSES_NAME, METRICS_NAME
from probe_dask.io.outputs import METRIC_KEYS
from probe_dask.telemetry import memory_plot_path, read_telemetry, run_telemetry
from probe_dask.testing.runner import assert_one_error_line, run_cli

UMASK_022 = ("sh", "-c", 'umask 022 && exec "$@"', "sh")


def _copy(run, tmp_path):
    shutil.copytree(run.root, tmp_path / "copy")
    root = tmp_path / "copy"
    return root / "run", root / "shards" / run.train_id, root / "shards" / run.test_id


def _refuse(constant):
    raise ValueError(constant)


def test_results_are_safe_and_say_where_they_came_from(tiny_run, tmp_path):
    run, train, test = _copy(tiny_run, tmp_path)
    base = ("fit", "--run", run, "--train-shards", train, "--test-shards", test, "--workers", 1)
    out_train = run / "inference" / train.name
    # one pass: pairs are left; --require-converged -> exit 3, results still written
    proc = run_cli(*base, "--max-iter", 1, "--require-converged", prefix=UMASK_022)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "\r" not in proc.stderr  # not a terminal: plain lines only
    assert "solver pass 1:" in proc.stderr
    warn = [ln for ln in proc.stderr.splitlines() if ln.startswith("WARNING:")
            and "did not converge" in ln]
    assert len(warn) == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("probe-dask: error: ")
    for d in (out_train, run / "inference" / test.name):
        for name in (METRICS_NAME, CLASSES_NAME):
            assert stat.S_IMODE((d / name).stat().st_mode) == 0o644
        with np.load(d / METRICS_NAME) as f:
            assert set(f.files) == {*METRIC_KEYS, "converged"}
            assert f["converged"].dtype == np.bool_ and f["converged"].shape == f["loss"].shape
            n_conv = int(f["converged"].sum())
        summary = json.loads((d / CLASSES_NAME).read_text(), parse_constant=_refuse)["summary"]
        assert summary["converged_pairs"] == n_conv < summary["pairs"]
        assert summary["solver_passes"] == 1 and summary["version"]
        assert "--require-converged" in summary["argv"] and summary["kernel"]
        # what ran where: the driver's and each worker's versions, as installed here
        versions = summary["versions"]
        assert versions["driver"]["dask"] == importlib.metadata.version("dask")
        assert len(versions["workers"]) >= 1 and all(
            w["probe_dask"] == versions["driver"]["probe_dask"] for w in versions["workers"].values())
        assert summary["started"].endswith("Z") and summary["finished"] >= summary["started"]
    # a rerun does not replace them
    before = (out_train / METRICS_NAME).read_bytes()
    proc = run_cli(*base, "--max-iter", 40)
    line = assert_one_error_line(proc, str(out_train), "--overwrite")
    assert line
    assert (out_train / METRICS_NAME).read_bytes() == before
    # --overwrite replaces them; the first run's telemetry is kept beside the second's
    proc = run_cli(*base, "--max-iter", 40, "--overwrite", "--require-converged", "--quiet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "solver pass" not in proc.stderr
    assert (out_train / METRICS_NAME).read_bytes() != before
    kept = run_telemetry(out_train)
    assert len(kept) == 2 and all(memory_plot_path(p).exists() for p in kept)
    # the plan errs high: planned peaks are at least what this run measured
    summary = [e for e in read_telemetry(kept[-1]) if e["event"] == "summary"][-1]
    planned, measured = summary["predicted"], summary["measured"]
    assert planned["worker_peak"] >= measured["worker_peak_rss_max"], summary
    assert planned["driver_peak"] >= measured["driver_peak_rss"], summary
    # --out DIR: results of each split under DIR/<shard_id>/, the run's folders untouched
    proc = run_cli(*base, "--max-iter", 40, "--out", tmp_path / "elsewhere", "--no-telemetry")
    assert proc.returncode == 0, proc.stderr[-2000:]
    for shard in (train, test):
        assert (tmp_path / "elsewhere" / shard.name / METRICS_NAME).exists()


def test_train_equal_to_test_is_refused(tiny_run, tmp_path):
    run, train, _ = _copy(tiny_run, tmp_path)
    proc = run_cli("fit", "--run", run, "--train-shards", train,
                   "--test-shards", train.parent / ".." / "shards" / train.name)
    assert_one_error_line(proc, "--test-shards is the train shard")
    assert not list(run.rglob(METRICS_NAME))


def test_plan_fits_100_columns_and_reads_a_slurm_profile(tiny_run):
    data = ("--run", tiny_run.run_dir, "--train-shards", tiny_run.train_shard,
            "--test-shards", tiny_run.test_shard)
    proc = run_cli("plan", *data, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert max(map(len, proc.stdout.splitlines())) <= 100
    assert "range solver states" in proc.stdout and "91 L_r C" in proc.stdout  # formulas not cut
    proc = run_cli("plan", *data, "--cluster", "slurm:gpu", "--jobs", 3, "--gpu-memory", "80GB",
                   timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # the packaged gpu profile: 8 cores, 60GiB, a GPU resource per job
    assert "3 workers x 8 thread(s), memory limit 60.00 GiB" in proc.stdout
    assert "device cuda" in proc.stdout
