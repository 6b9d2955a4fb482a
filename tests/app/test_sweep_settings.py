"""Swept settings: one SAE run with two ridges (``--set``), each (run, ridge) in a folder
of its own with its settings, on a real LocalCluster, against ``run_job`` alone."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from probe_dask.app.job import open_inputs, run_job
from probe_dask.app.sweep_summary import SETTINGS_NAME, SUMMARY_NAME
from probe_dask.io.layout import CLASSES_NAME, METRICS_NAME, inference_dir
from probe_dask.testing.faults import metrics
from probe_dask.testing.runner import run_cli
from probe_dask.testing.synthetic import make_run
from tests.app.test_sweep import CLUSTER, TINY, write_json_sweep

RIDGES = (1e-8, 1e-2)


@pytest.fixture(scope="module")
def one_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("settings")
    run = make_run(root / "data", d_sae=128, seed=11, **TINY)
    cfg = {"run": str(run.run_dir), "train_shards": run.train_shard, "test_shards": run.test_shard,
           "max_iter": 8}
    return root, run, cfg


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_two_ridges_on_one_run(one_run, local_client, tmp_path):
    root, run, cfg = one_run
    sweep = write_json_sweep(root, [cfg])
    out = root / "out"
    proc = run_cli("sweep", sweep, *CLUSTER, "--set", "ridge=1e-8,1e-2", "--out", out,
                   "--concurrent-runs", "1", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (inference_dir(run.run_dir, run.train_id) / METRICS_NAME).exists()
    rows = read_csv(out / SUMMARY_NAME)
    assert [float(r["ridge"]) for r in rows] == list(RIDGES)
    assert [int(r["max_iter"]) for r in rows] == [8, 8]
    assert {"block_nnz", "device", "name", "out"} <= set(rows[0])
    assert [r["device"] for r in rows] == ["auto", "auto"]
    assert [r["kernel"] for r in rows] == ["c on cpu x2"] * 2  # 2 CPU workers, C kernel
    for k, ridge in enumerate(RIDGES):
        folder = out / "results" / f"{Path(run.run_dir).name}__ridge={ridge}__max_iter=8"
        assert rows[k]["out"] == str(folder) and rows[k]["status"] == "finished"
        dirs = [folder / run.train_id, folder / run.test_id]
        settings = json.loads((dirs[0] / SETTINGS_NAME).read_text())
        assert (settings["ridge"], settings["max_iter"], settings["swept"]) == (ridge, 8, {"ridge": ridge})
        assert settings["out_dirs"] == [str(d) for d in dirs]
        assert json.loads((dirs[0] / CLASSES_NAME).read_text())["summary"]["ridge"] == ridge
        # The same fit alone, with that ridge: the same probes (same arithmetic, 1e-9).
        alone = [tmp_path / f"alone-{k}" / s for s in ("train", "test")]
        inputs = open_inputs(run.run_dir, run.train_shard, run.test_shard, out_dirs=alone)
        run_job(local_client, inputs, ridge=ridge, max_iter=8, log=lambda m: None)
        for a, b in zip(dirs, alone):
            ma, mb = metrics(a), metrics(b)
            for key in ma:
                np.testing.assert_allclose(ma[key], mb[key], rtol=1e-9, atol=0, err_msg=key)
    # Two ridges far apart give different weights: the folders hold different fits.
    w = [metrics(out / "results" / f"{Path(run.run_dir).name}__ridge={r}__max_iter=8"
                 / run.train_id)["weights"] for r in RIDGES]
    assert not np.allclose(w[0], w[1])


def test_require_converged_is_exit_3_naming_the_run(one_run):
    root, run, cfg = one_run
    sweep = write_json_sweep(root, [{**cfg, "max_iter": 1}], name="one-pass.json")
    proc = run_cli("sweep", sweep, *CLUSTER, "--out", root / "one-pass", "--require-converged",
                   timeout=600)
    assert proc.returncode == 3, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert "1 of 1 runs left pairs unconverged" in line and "run 0 (" in line, line
