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
    streamed = plan_run(small_run.train_shard, small_run.test_shard, run=small_run.run_dir,
                        memory_limit="4GB", n_workers=3, threads=2, persist=False)
    names = " | ".join(b.name for b in streamed.driver + streamed.worker)
    for want in ("LabelSums", "CSR row block", "LatentBlock", "label_sums scratch",
                 "eval partials", "baseline", "step's scratch", "range solver states",
                 "chunks of a range read from disk", "merging a segment", "layout's per-latent"):
        assert want in names, want
    L, C = streamed.n_latents, streamed.n_classes
    # one fit path: no process steps all the pairs, no pass sums P pairs anywhere
    for gone in ("solver state", "fit partials", "summed fit sums", "active pairs of an"):
        assert not [b for b in streamed.driver + streamed.worker
                    if b.name.startswith(gone) and b.stages], gone
    chunks = next(b for b in streamed.worker if b.name.startswith("chunks of a range"))
    lat = -(-L // 6)
    # two chunks of the plan's block size (at most a range's events) and every row's label
    assert chunks.each <= 2 * (8 * streamed.block_nnz + 8 * lat) + streamed.train.n_rows
    assert chunks.count == 2 and chunks.stages == ("label_train", "fit", "eval_train")
    eval_parts = next(b for b in streamed.worker if b.name.startswith("eval partials"))
    # engine.passes over the test blocks: one group per worker thread and block (3 blocks:
    # 3 groups, 1 tree task of fan-in 4): each of the 2 threads' group partials, plus the
    # tree task holding 4 partials and 2 sums
    assert streamed.n_blocks["test"] == 3
    assert eval_parts.each == 24 * L * C and eval_parts.count == 2 + (streamed.split_every + 2)
    assert eval_parts.stages == ("eval_test",)

    # persisted: latent ranges (engine.ranges), the state on the workers, 6 ranges of 22
    # latents at most for 3 workers x 2 threads
    plan = plan_run(small_run.train_shard, small_run.test_shard, run=small_run.run_dir,
                    memory_limit="4GB", n_workers=3, threads=2, persist=True)
    names = " | ".join(b.name for b in plan.worker)
    for want in ("train latent ranges", "range solver states", "range label sums",
                 "range evaluation", "cutting train ranges"):
        assert want in names, want
    assert not [b for b in plan.worker if b.stages and b.name.startswith(
        ("fit partials", "active pairs, ", "chunks of a range", "merging a segment"))]
    states = next(b for b in plan.worker if b.name.startswith("range solver states"))
    assert states.each == 2 * 91 * lat * C and states.count == 2
    # the test split cut at the ranges too: no row pass, no (L, C) sums on the driver
    assert plan.driver_peak < streamed.driver_peak
    # the peak is the largest stage's sum
    stage_sums = [sum(b.nbytes for b in plan.worker if b.live(s)) for s in WORKER_STAGES]
    assert plan.worker_peak == max(stage_sums)
    text = format_plan(plan)
    assert "block_nnz" in text and "peak of each worker" in text and "range solver states" in text
    assert text.splitlines()[-1].startswith("OK, fits")
    json.dumps(strict_json(plan.to_dict()), allow_nan=False)


def test_smaller_limits_get_smaller_blocks_until_none_fits(small_run):
    kw = dict(run=small_run.run_dir, n_workers=2, threads=1)
    sizes = []
    # An idle worker without torch is ~150 MiB (the C kernel path never imports it), so blocks
    # only need to shrink below ~320 MB on this run.
    for limit in ("8GB", "310MB", "300MB"):
        plan = plan_run(small_run.train_shard, small_run.test_shard, memory_limit=limit, **kw)
        assert plan.fits, plan.message
        assert plan.worker_peak <= plan.worker_budget
        sizes.append(plan.block_nnz)
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < sizes[0]
    assert sizes[0] <= config.get("probe-dask.memory.max-block-nnz")
    bad = plan_run(small_run.train_shard, small_run.test_shard, memory_limit="200MB", **kw)
    assert not bad.fits
    assert "limit 200 MB" in bad.message and "--memory-limit" in bad.message and "cannot hold one block" in bad.message
    # the limit the message names does fit
    ok = plan_run(small_run.train_shard, small_run.test_shard, memory_limit=bad.min_memory_limit, **kw)
    assert ok.fits, ok.message


def test_a_given_block_size_that_does_not_fit_says_which_does(small_run):
    plan = plan_run(small_run.train_shard, small_run.test_shard, run=small_run.run_dir,
                    memory_limit="330MB", n_workers=2, block_nnz=10**9)
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
    # 300 MB: one worker thread holds 2 fit partials of 38 MB (one group per thread, no tree),
    # the widest row's block and a 70 MB baseline: 204 MiB, over 60% of the limit
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, memory_limit="300MB",
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        with pytest.raises(ProbeDaskError) as err:
            run_job(client, inputs, log=lambda m: None)
        msg = str(err.value)
        assert "memory limit 300 MB cannot hold one block" in msg
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
                   "--memory-limit", "250MB")  # an idle worker (~150 MiB) lives; no block fits
    assert proc.returncode == 4, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("probe-dask: error: worker memory limit 250 MB cannot hold one block")
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
    assert proc.returncode == 4 and "DOES NOT FIT" in proc.stdout and "--memory-limit" in proc.stderr


def _info_from_row_lengths(lengths, n_cols):
    from probe_dask.memory import ShardInfo

    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return ShardInfo(path="synthetic", n_rows=len(lengths), n_cols=n_cols, nnz=int(indptr[-1]),
                     max_row_nnz=int(lengths.max()), compressed=False, indptr=indptr)


def test_every_worker_thread_gets_at_least_two_blocks():
    """16 workers x 1 thread on a 9.5 M non-zero run: at least 32 blocks (2 per thread), each
    under the 4 M cap; the old cut (nnz / threads) gave 16, one per thread and none to spare."""
    lengths = np.random.default_rng(0).integers(100, 500, size=31_700)
    info = _info_from_row_lengths(lengths, n_cols=4096)
    assert 9.4e6 < info.nnz < 9.6e6
    for workers, threads in ((16, 1), (4, 4), (3, 1)):
        plan = plan_run(info, n_classes=16, memory_limit="8GB", n_workers=workers, threads=threads)
        blocks = plan.row_blocks["train"]
        sizes = [int(info.indptr[r1] - info.indptr[r0]) for r0, r1 in blocks]
        print(f"{workers} workers x {threads} threads: {len(blocks)} blocks, largest {max(sizes):,}")
        assert plan.fits and len(blocks) >= 2 * workers * threads
        assert max(sizes) <= int(config.get("probe-dask.memory.max-block-nnz")) + lengths.max()
    # fewer rows than 2 blocks per thread: one row per block at most, nothing breaks
    few = _info_from_row_lengths(np.full(10, 1000), n_cols=64)
    plan = plan_run(few, n_classes=4, memory_limit="8GB", n_workers=16, threads=1)
    assert plan.fits and len(plan.row_blocks["train"]) == 10


def test_partials_per_worker_do_not_grow_with_blocks(small_run):
    """One partial per worker thread per pass over the test blocks (engine.passes): 1
    block or 40, the same count."""
    counts = {}
    for block_nnz in (40_000, 10**9):
        plan = plan_run(small_run.train_shard, small_run.test_shard, run=small_run.run_dir,
                        memory_limit="8GB", n_workers=2, threads=1, block_nnz=block_nnz,
                        persist=False)
        eval_parts = next(b for b in plan.worker if b.name.startswith("eval partials"))
        counts[plan.n_blocks["test"]] = eval_parts.count
    few, many = min(counts), max(counts)
    assert few == 1 and many >= 4
    # 1 block: one group, no tree (its partial and the block's); 2 groups: one tree task of
    # fan-in 4 holding 2 partials (counted as 4) and 2 sums, beside the thread's own
    assert counts[few] == 2 and counts[many] == 1 + 4 + 2


@pytest.fixture(scope="module")
def pairs_run(tmp_path_factory):
    """About 1 M pairs (16384 latents x 64 classes) on 250 k non-zeros: the driver's
    per-pair buffers outweigh its baseline."""
    return make_run(tmp_path_factory.mktemp("pairs-run"), n_train_examples=8, n_test_examples=4,
                    d_sae=16384, n_classes=64, seed=1, compressed=False)


def test_plan_driver_peak_is_at_or_above_telemetry(pairs_run, tmp_path):
    """A real fit (CLI, 1 worker, 2 passes): telemetry's driver peak RSS per stage is at or
    under the plan's, and the plan is not far above it (within 1.5x). Failed before the model
    counted the checkpoint's copy of the state, the previous pass's sums and the measured
    baseline: 593 MB planned, 747 MB measured."""
    proc = run_cli("fit", "--run", pairs_run.run_dir, "--train-shards", pairs_run.train_shard,
                   "--test-shards", pairs_run.test_shard, "--workers", "1", "--max-iter", "2",
                   "--out", tmp_path / "out", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from probe_dask.telemetry import read_telemetry

    (path,) = (tmp_path / "out").rglob("probe1d_telemetry-*.jsonl")
    summary = next(e for e in read_telemetry(path) if e["event"] == "summary")
    planned, measured = summary["predicted"]["driver_peak"], summary["measured"]["driver_peak_rss"]
    print(f"driver peak RSS {measured / 2**20:.0f} MiB, planned {planned / 2**20:.0f} MiB; by "
          f"stage {summary['driver_peak_by_stage']}")
    assert measured <= planned <= 1.5 * measured
    for stage, pm in summary["driver_peak_by_stage"].items():
        if stage in ("fit_start", "iteration", "evaluate", "write"):
            assert pm["measured"] <= pm["predicted"], (stage, pm)


FULL_SIZE = ("--simulate-nnz", "2260000000", "--simulate-latents", "32768", "--simulate-classes",
             "151", "--simulate-rows", "5600000", "--workers", "16", "--memory-limit", "16GB")


def test_cli_plan_of_the_full_size_job_without_data():
    """issue 10: the real shard's size, planned without its data, with a time estimate."""
    proc = run_cli("plan", *FULL_SIZE, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(proc.stdout[proc.stdout.index("peak of driver"):])
    assert "2,260,000,000 non-zeros" in proc.stdout and "P = L C = 4,947,968 pairs" in proc.stdout
    assert "OK, fits" in proc.stdout and "assuming 15 passes" in proc.stdout
    assert "whole job: about" in proc.stdout and "ns per (non-zero x pair) unit" in proc.stdout
    plan = json.loads(run_cli("plan", *FULL_SIZE, "--json", timeout=120).stdout)
    est = plan["estimate"]
    assert plan["n_blocks"]["train"] >= 32 and plan["train"]["nnz"] == 2_260_000_000
    # kernel work: nnz x C units per full pass, on 16 worker threads
    assert est["units_per_pass"] == 2_260_000_000 * 151 and est["parallel"] == 16
    np.testing.assert_allclose(est["pass_seconds"],
                               est["units_per_pass"] * est["ns_per_unit"] * 1e-9 / 16, rtol=1e-12)
    assert 0.1 < est["ns_per_unit"] < 100 and est["total_seconds"] > est["pass_seconds"]


def test_time_estimate_is_monotone_in_the_size():
    from probe_dask.memory.estimate import estimate_time
    from probe_dask.memory.shardinfo import simulated_shard_info

    def total(nnz, latents=4096, classes=32, workers=4):
        info = simulated_shard_info(nnz, latents, 100_000)
        plan = plan_run(info, n_classes=classes, memory_limit="8GB", n_workers=workers)
        return estimate_time(plan, 2.0).total_seconds

    base = total(10**8)
    assert total(2 * 10**8) > base and total(10**8, classes=64) > base
    assert total(10**8, workers=8) < base
    np.testing.assert_allclose(total(2 * 10**8) / base, 2.0, rtol=1e-12)


def test_measured_kernel_throughput():
    from probe_dask.kernels import ckernel
    from probe_dask.memory.estimate import kernel_ns_per_unit

    ns, source = kernel_ns_per_unit("triton", "cuda", 151)
    assert ns == config.get("probe-dask.memory.ns-per-unit.triton") and "configured" in source
    if not ckernel.available():
        pytest.skip("no C kernel here")
    ns, source = kernel_ns_per_unit("c", "cpu", 151)
    assert source.startswith("measured here") and 0.1 < ns < 100, (ns, source)


@pytest.mark.parametrize("extra, says", [
    ((), "no input"),
    (FULL_SIZE[:6] + FULL_SIZE[8:], "--simulate-rows missing"),
    (FULL_SIZE + ("--run", "somewhere"), "not both"),
])
def test_cli_plan_needs_one_whole_kind_of_input(extra, says):
    from probe_dask.testing.runner import assert_one_error_line

    proc = run_cli("plan", *extra, "--workers", "2", timeout=120)
    line = assert_one_error_line(proc, says)
    assert "--train-shards" in line and "--simulate-nnz" in line and not proc.stdout


def test_a_plan_read_from_disk_says_the_layouts_disk():
    """The real shard on 2 workers of 8 GB: its ranges are read from the latent-major
    layout, whose build takes about one layout of disk (8 bytes a non-zero), not two."""
    from probe_dask.memory.estimate import estimate_time, format_estimate
    from probe_dask.memory.shardinfo import simulated_shard_info

    nnz = 2_260_000_000
    plan = plan_run(simulated_shard_info(nnz, 32768, 5_600_000), n_classes=151,
                    memory_limit="8GB", n_workers=2)
    est = estimate_time(plan, 2.0)
    assert not plan.persist and est.layout_tasks > plan.n_blocks["train"]
    assert 8 * nnz < est.layout_disk_bytes < 1.02 * 8 * nnz
    assert f"{est.layout_disk_bytes / 1e9:.1f} GB of disk at the peak" in format_estimate(est)
