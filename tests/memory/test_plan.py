"""The memory plan: read cheaply, agree with the blocks the fit uses, choose sizes that fit,
and stop a run before fitting when no setting fits the workers' memory limit."""

import json
import os
import time

import numpy as np
import pytest
import scipy.sparse as sp
from distributed import Client, LocalCluster

from probe_dask.engine.shard import open_shard
from probe_dask.errors import ProbeDaskError
from probe_dask.app.job import METRICS_NAME, open_inputs, run_job
from probe_dask import config
from probe_dask.memory import (default_target_fraction, WORKER_STAGES, format_plan, plan_job,
                               plan_run, read_shard_info)
from probe_dask.testing.runner import run_cli
from probe_dask.testing.synthetic import make_run
from probe_dask.telemetry import strict_json


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A compressed run of about 1.2 M non-zeros, never ingested by this module's tests."""
    return make_run(tmp_path_factory.mktemp("plan-run"), n_train_examples=48, n_test_examples=12,
                    tokens_per_example=256, d_sae=1024, n_classes=12, seed=5)


def test_plan_reads_headers_and_indptr_only(small_run):
    t0 = time.perf_counter()
    plan = plan_run(small_run.train_shard, small_run.test_shard, run=small_run.run_dir,
                    memory_limit="4GB", n_workers=2, threads=1)
    assert time.perf_counter() - t0 < 30
    # a compressed npz is not ingested (no store written) just to plan
    for sid in (small_run.train_id, small_run.test_id):
        assert not os.path.exists(os.path.join(small_run.run_dir, "inference", sid, ".probe-dask-store"))
    info = read_shard_info(small_run.train_acts)
    X = sp.load_npz(small_run.train_acts)
    assert (info.n_rows, info.n_cols, info.nnz) == (X.shape[0], X.shape[1], X.nnz)
    np.testing.assert_array_equal(info.indptr, X.indptr)
    assert info.max_row_nnz == np.diff(X.indptr).max() and info.compressed
    assert plan.n_classes == small_run.n_classes and plan.n_latents == small_run.d_sae
    assert plan.fits and plan.worker_peak <= default_target_fraction() * plan.memory_limit


def test_plan_blocks_are_the_blocks_the_fit_uses(small_run, tmp_path):
    for block_nnz in (50_000, 333_333, 10**9):
        plan = plan_run(small_run.train_shard, small_run.test_shard, run=small_run.run_dir,
                        memory_limit="4GB", n_workers=2, block_nnz=block_nnz)
        shard = open_shard(small_run.run_dir, small_run.train_shard, block_nnz=block_nnz,
                           cache_dir=tmp_path)
        assert plan.row_blocks["train"] == shard.row_blocks
        assert plan.n_blocks["train"] == len(shard.row_blocks)
        assert plan.train.indptr is None  # the plan keeps no per-row data
        ptr = read_shard_info(small_run.train_acts).indptr
        assert plan.max_block["nnz"] >= max(ptr[r1] - ptr[r0] for r0, r1 in shard.row_blocks)
        # the same numbers from the opened shard (a CSRSource) as from the folder
        again = plan_run(shard, open_shard(small_run.run_dir, small_run.test_shard,
                                           block_nnz=block_nnz, cache_dir=tmp_path),
                         n_classes=plan.n_classes, memory_limit="4GB", n_workers=2,
                         block_nnz=block_nnz)
        assert again.worker_peak == plan.worker_peak and again.driver_peak == plan.driver_peak


def test_plan_lists_every_buffer_and_prints_a_table(small_run):
    plan = plan_run(small_run.train_shard, small_run.test_shard, run=small_run.run_dir,
                    memory_limit="4GB", n_workers=3, threads=2)
    names = " | ".join(b.name for b in plan.driver + plan.worker)
    for want in ("solver state", "LabelSums", "CSR row block", "LatentBlock", "label_sums scratch",
                 "fit partials", "eval partials", "active pairs", "baseline", "solver.step scratch"):
        assert want in names, want
    L, C = plan.n_latents, plan.n_classes
    state = next(b for b in plan.driver if b.name == "solver state")
    assert state.nbytes == 91 * L * C  # 11 float64 + 3 bool per pair (solver.TrustRegionState)
    fit_parts = next(b for b in plan.worker if b.name.startswith("fit partials"))
    assert fit_parts.each == 48 * L * C and fit_parts.count == 2 * (plan.split_every + 2)
    # the peak is the largest stage's sum
    stage_sums = [sum(b.nbytes for b in plan.worker if b.live(s)) for s in WORKER_STAGES]
    assert plan.worker_peak == max(stage_sums)
    text = format_plan(plan)
    assert "block_nnz" in text and "peak of each worker" in text and "solver state" in text
    assert text.splitlines()[-1].startswith("OK, fits")
    json.dumps(strict_json(plan.to_dict()), allow_nan=False)


def test_smaller_limits_get_smaller_blocks_until_none_fits(small_run):
    kw = dict(run=small_run.run_dir, n_workers=2, threads=1)
    sizes = []
    # An idle worker without torch is ~70 MiB (the C kernel path never imports it), so blocks
    # only need to shrink below ~250 MB on this run.
    for limit in ("8GB", "250MB", "200MB"):
        plan = plan_run(small_run.train_shard, small_run.test_shard, memory_limit=limit, **kw)
        assert plan.fits, plan.message
        assert plan.worker_peak <= plan.worker_budget
        sizes.append(plan.block_nnz)
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < sizes[0]
    assert sizes[0] <= config.get("probe-dask.memory.max-block-nnz")
    bad = plan_run(small_run.train_shard, small_run.test_shard, memory_limit="120MB", **kw)
    assert not bad.fits
    assert "limit 120 MB" in bad.message and "--memory-limit" in bad.message and "cannot hold one block" in bad.message
    # the limit the message names does fit
    ok = plan_run(small_run.train_shard, small_run.test_shard, memory_limit=bad.min_memory_limit, **kw)
    assert ok.fits, ok.message


def test_a_given_block_size_that_does_not_fit_says_which_does(small_run):
    plan = plan_run(small_run.train_shard, small_run.test_shard, run=small_run.run_dir,
                    memory_limit="250MB", n_workers=2, block_nnz=10**9)
    assert not plan.fits and plan.block_nnz_fixed
    assert "--block-nnz 1,000,000,000" in plan.message and "lower --block-nnz to" in plan.message


def _wide_row_shard(root, n_cols=400_000, wide=300_000):
    """A shard whose first row has ``wide`` non-zeros; the other rows a few."""
    rng = np.random.default_rng(0)
    n_rows = 512
    rows = [np.sort(rng.choice(n_cols, wide, replace=False))]
    rows += [np.sort(rng.choice(n_cols, 8, replace=False)) for _ in range(n_rows - 1)]
    indptr = np.concatenate([[0], np.cumsum([r.size for r in rows])])
    X = sp.csr_matrix((np.ones(indptr[-1], np.float32), np.concatenate(rows).astype(np.int32), indptr),
                      shape=(n_rows, n_cols))
    run = root / "run"
    for sid in ("wide0001", "wide0002"):
        (run / "inference" / sid).mkdir(parents=True)
        sp.save_npz(run / "inference" / sid / "token_acts.npz", X)
        shard = root / "shards" / sid
        shard.mkdir(parents=True)
        (shard / "metadata.json").write_text(json.dumps({"n_examples": 2, "content_tokens_per_example": 256}))
        (rng.integers(0, 2, n_rows).astype(np.uint8)).tofile(shard / "labels.bin")
    return run, root / "shards" / "wide0001", root / "shards" / "wide0002"


def test_one_row_wider_than_the_budget_stops_before_fitting(tmp_path, monkeypatch):
    run, train, test = _wide_row_shard(tmp_path)
    inputs = open_inputs(run, train, test)
    from probe_dask.engine import fit as fit_module

    def no_fit(*a, **k):
        raise AssertionError("the fit started")

    monkeypatch.setattr(fit_module.ProbeFitter, "fit", no_fit)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, memory_limit="600MB",
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        with pytest.raises(ProbeDaskError) as err:
            run_job(client, inputs, log=lambda m: None)
        msg = str(err.value)
        assert "memory limit 600 MB cannot hold one block" in msg
        assert "widest row has 300,000" in msg and "--memory-limit" in msg
        # the same planner, asked directly, names a limit that fits
        with pytest.raises(ProbeDaskError):
            plan_job(client, inputs)
    assert not list(run.rglob(METRICS_NAME))


def test_cli_tiny_memory_limit_is_one_error_before_fitting(small_run, tmp_path):
    import shutil

    shutil.copytree(small_run.root, tmp_path / "copy")
    run = tmp_path / "copy" / "run"
    proc = run_cli("fit", "--run", run, "--train-shards", tmp_path / "copy" / "shards" / small_run.train_id,
                   "--test-shards", tmp_path / "copy" / "shards" / small_run.test_id, "--workers", "1",
                   "--memory-limit", "120MB")
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("probe-dask: error: worker memory limit 120 MB cannot hold one block")
    assert "--memory-limit" in last and "non-zeros" in last
    assert not list(run.rglob(METRICS_NAME))


def test_cli_plan_prints_the_table(small_run):
    args = ["plan", "--run", small_run.run_dir, "--train-shards", small_run.train_shard,
            "--test-shards", small_run.test_shard, "--memory-limit", "4GB", "--workers", "2"]
    proc = run_cli(*args, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "peak of each worker" in proc.stdout and "OK, fits" in proc.stdout
    proc = run_cli(*args, "--json", timeout=120)
    plan = json.loads(proc.stdout)
    assert plan["fits"] and plan["worker_peak"] <= plan["worker_budget"] and plan["worker"]
    proc = run_cli(*args[:-4], "--memory-limit", "100MB", timeout=120)
    assert proc.returncode == 2 and "DOES NOT FIT" in proc.stdout and "--memory-limit" in proc.stderr
