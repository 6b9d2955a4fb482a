"""``probe-dask sweep``: three synthetic runs sharing their shards (one with another latent
count), on a real LocalCluster, against each run fitted alone with ``run_job``."""

import json
import os
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from probe_dask.app.job import open_inputs, run_job
from probe_dask.app.sweep import validate_sweep
from probe_dask.app.sweep_summary import BEST_NAME, SUMMARY_NAME
from probe_dask.app.sweepfile import read_sweep
from probe_dask.io import labels as labels_io
from probe_dask.io.layout import (
    CHECKPOINT_NAME,
    CLASSES_NAME,
    METRICS_NAME,
    inference_dir,
)
from probe_dask.testing.faults import metrics
from probe_dask.testing.runner import assert_one_error_line, popen_cli, run_cli
from probe_dask.testing.synthetic import make_run

TINY = dict(n_train_examples=8, n_test_examples=4, tokens_per_example=64, n_classes=8,
            mean_nnz_per_row=32, n_planted=4)
CLUSTER = ("--workers", "2", "--threads", "1", "--memory-limit", "3GB", "--no-telemetry")


def make_sweep(root) -> tuple[Path, list[dict]]:
    """Three runs over one pair of shards; run ``b`` has 256 latents, the others 128."""
    root = Path(root)
    base = make_run(root / "base", d_sae=128, seed=3, **TINY)
    runs = []
    for name, seed, d_sae in (("a", 3, 128), ("b", 5, 256), ("c", 7, 128)):
        src = base if seed == 3 else make_run(root / f"gen-{name}", d_sae=d_sae, seed=seed, **TINY)
        run_dir = root / "runs" / f"run-{name}"
        for sid_src, sid in ((src.train_id, base.train_id), (src.test_id, base.test_id)):
            dst = inference_dir(run_dir, sid)
            dst.mkdir(parents=True)
            shutil.copy(Path(src.acts_path(sid_src)), dst / "token_acts.npz")
        runs.append({"run": str(run_dir), "train_shards": base.train_shard,
                     "test_shards": base.test_shard})
    return root, runs


def write_json_sweep(root, runs, name="sweep.json") -> Path:
    path = Path(root) / name
    path.write_text(json.dumps(runs))
    return path


def out_dirs(cfg):
    return [inference_dir(cfg["run"], Path(cfg[k]).name) for k in ("train_shards", "test_shards")]


def result_files(cfgs):
    return [d / n for c in cfgs for d in out_dirs(c) for n in (METRICS_NAME, CLASSES_NAME)]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """The three runs, swept once by the CLI."""
    root, runs = make_sweep(tmp_path_factory.mktemp("sweep"))
    sweep = write_json_sweep(root, runs)
    proc = run_cli("sweep", sweep, *CLUSTER, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, runs, sweep, proc


def assert_close(a_dirs, b_dirs, rtol=1e-9):
    for a, b in zip(a_dirs, b_dirs):
        ma, mb = metrics(a), metrics(b)
        assert set(ma) == set(mb)
        for k in ma:
            np.testing.assert_allclose(ma[k], mb[k], rtol=rtol, atol=0, err_msg=f"{a} {k}")


def test_sweep_equals_each_run_alone(swept, local_client, tmp_path):
    root, runs, sweep, proc = swept
    for i, cfg in enumerate(runs):
        alone = [tmp_path / f"alone-{i}" / s for s in ("train", "test")]
        inputs = open_inputs(cfg["run"], cfg["train_shards"], cfg["test_shards"], out_dirs=alone)
        run_job(local_client, inputs, log=lambda m: None)
        assert_close(out_dirs(cfg), alone)
    latents = [metrics(out_dirs(c)[0])["loss"].shape[0] for c in runs]
    assert latents == [128, 256, 128]
    assert "sweep: 2 runs at once" in proc.stderr  # overlapping (the plans fit together)
    for i in range(3):
        assert f"sweep [{i + 1}/3] run {i} (run-{'abc'[i]}): started" in proc.stderr
        assert f"sweep [{i + 1}/3] run {i} (run-{'abc'[i]}): finished" in proc.stderr


def test_summary_files(swept):
    root, runs, sweep, _ = swept
    rows = (root / SUMMARY_NAME).read_text().splitlines()
    head = rows[0].split(",")
    table = [dict(zip(head, r.split(","))) for r in rows[1:]]
    assert [t["run_id"] for t in table] == ["run-a", "run-b", "run-c"]
    assert [int(t["latents"]) for t in table] == [128, 256, 128]
    for t, cfg in zip(table, runs):
        doc = json.loads((out_dirs(cfg)[0] / CLASSES_NAME).read_text())
        assert int(t["passes"]) == doc["summary"]["solver_passes"]
        r = [c["test_probe_r"] for c in doc["classes"] if c["test_probe_r"] is not None]
        assert float(t["best_test_r"]) == pytest.approx(max(r), rel=1e-12)
    # Per class: the best test probe R over every latent of every run, recomputed here.
    best = (root / BEST_NAME).read_text().splitlines()
    head = best[0].split(",")
    got = {int(r["class"]): r for r in (dict(zip(head, x.split(","))) for x in best[1:])}
    n_classes = json.loads((out_dirs(runs[0])[0] / CLASSES_NAME).read_text())["summary"]["n_classes"]
    for c in range(n_classes):
        cands = []
        for i, cfg in enumerate(runs):
            doc = json.loads((out_dirs(cfg)[0] / CLASSES_NAME).read_text())["classes"][c]
            loss = metrics(out_dirs(cfg)[1])["loss"][:, c].astype(float)
            if doc["test_rows"]:
                cands.append((1 - loss.min() / doc["test_baseline_ce"], i, int(loss.argmin())))
        if not cands:
            assert c not in got
            continue
        r, i, latent = max(cands, key=lambda x: x[0])
        assert (int(got[c]["index"]), int(got[c]["latent"])) == (i, latent)
        assert float(got[c]["test_probe_r"]) == pytest.approx(r, rel=1e-12)


def test_rerun_skips_every_run_without_touching_results(swept):
    root, runs, sweep, _ = swept
    files = result_files(runs)
    before = [f.stat().st_mtime_ns for f in files]
    proc = run_cli("sweep", sweep, *CLUSTER, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count(": skipped, results exist") == 3
    assert "dashboard" not in proc.stderr  # nothing to fit: no cluster started
    assert [f.stat().st_mtime_ns for f in files] == before


def test_rerun_with_another_ridge_is_refused_naming_the_run(swept, tmp_path):
    root, runs, _, _ = swept
    files = result_files(runs)
    before = [f.stat().st_mtime_ns for f in files]
    changed = [dict(r) for r in runs]
    changed[1]["ridge"] = 1e-4
    sweep = write_json_sweep(tmp_path, changed)
    proc = run_cli("sweep", sweep, *CLUSTER, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert "run 1 (run-b)" in line and "ridge 1e-08 (this sweep: 0.0001)" in line, line
    assert str(out_dirs(runs[1])[0]) in line
    assert [f.stat().st_mtime_ns for f in files] == before


def test_labels_read_once_per_shard(tmp_path, monkeypatch):
    root, runs = make_sweep(tmp_path)
    reads = {}
    real_read = labels_io.LabelsSource.read

    def counting_read(self, r0, r1):
        reads[self.path] = reads.get(self.path, 0) + 1
        return real_read(self, r0, r1)

    monkeypatch.setattr(labels_io, "_HISTOGRAMS", {})
    monkeypatch.setattr(labels_io.LabelsSource, "read", counting_read)
    sweep = write_json_sweep(root, runs)
    entries = validate_sweep(sweep, read_sweep(sweep), log=lambda m: None)
    assert [e.status for e in entries] == ["pending"] * 3
    # One chunk per labels file (tiny shards): each shard scanned once for three runs.
    assert sorted(reads.values()) == [1, 1] and len(reads) == 2


def test_bad_run_refused_before_any_fit(tmp_path):
    root, runs = make_sweep(tmp_path)
    runs[2]["test_shards"] = runs[2]["test_shards"] + "x"
    sweep = write_json_sweep(root, runs)
    proc = run_cli("sweep", sweep, *CLUSTER, timeout=120)
    line = assert_one_error_line(proc, str(sweep), "run 2 (run-c)", "no such folder")
    assert runs[2]["test_shards"] in line
    assert not any(f.exists() for f in result_files(runs))
    assert not (root / SUMMARY_NAME).exists() and "dashboard" not in proc.stderr


def test_command_line_wins_over_the_file(tmp_path):
    root, runs = make_sweep(tmp_path)
    cfgs = [{**runs[0], "max_iter": 30, "ridge": 1e-3}, {**runs[2], "max_iter": 30}]
    sweep = write_json_sweep(root, cfgs)
    proc = run_cli("sweep", sweep, *CLUSTER, "--max-iter", "1", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = [json.loads((out_dirs(c)[0] / CLASSES_NAME).read_text())["summary"] for c in cfgs]
    assert [x["solver_passes"] for x in s] == [1, 1]
    assert [x["ridge"] for x in s] == [1e-3, 1e-8]  # the file's ridge where no flag says otherwise


@pytest.mark.parametrize("at_once", ["1", "2"])
def test_sigterm_then_rerun_gives_the_same_results(swept, tmp_path, at_once):
    _, ref_runs, _, _ = swept
    root, runs = make_sweep(tmp_path)
    sweep = write_json_sweep(root, runs)
    proc = popen_cli("sweep", sweep, *CLUSTER, "--concurrent-runs", at_once,
                     stderr=subprocess.PIPE, text=True)
    lines = []

    def watch():
        for line in proc.stderr:
            lines.append(line)
            if "run 0 (run-a): finished" in line:
                proc.send_signal(signal.SIGTERM)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    rc = proc.wait(timeout=600)
    t.join(timeout=30)
    text = "".join(lines)
    assert "run 0 (run-a): finished" in text, text[-3000:]
    # Stopped after run 0 (run 1 may have finished before the signal landed: tiny runs).
    assert rc != 0 or "run 2 (run-c): finished" not in text, text[-3000:]
    assert all(f.exists() for f in result_files(runs[:1]))
    again = run_cli("sweep", sweep, *CLUSTER, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "run 0 (run-a): skipped" in again.stderr
    for cfg, ref in zip(runs, ref_runs):
        assert_close(out_dirs(cfg), out_dirs(ref))
        assert not (out_dirs(cfg)[0] / CHECKPOINT_NAME).exists()
    assert os.path.exists(root / SUMMARY_NAME)
