"""The memory bound in CI: a shard 4x bigger than all workers' memory together is fitted and
evaluated on a 2-worker LocalCluster with no worker restarted and every worker under its limit.

The shard is written fast (a tile of rows repeated, ``compressed=False``) so the test spends
its time fitting: about 4.3 GB of CSR for 2 workers of 512 MiB, read from disk every pass.
"""

import json
import os
import shutil
import zipfile

import numpy as np
import pytest
from distributed import Client, LocalCluster

from probe_dask.app.job import open_inputs, run_job
from probe_dask.telemetry import Telemetry, read_telemetry

WORKER_LIMIT = 512 * 2**20


def _npy_member(zf, name, dtype, count, chunks):
    """Write a 1-D ``.npy`` member from an iterable of arrays (stored, not compressed)."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": (int(count),)}
    with zf.open(name, "w", force_zip64=True) as out:
        np.lib.format.write_array_header_1_0(out, header)
        for c in chunks:
            out.write(np.ascontiguousarray(c, dtype=dtype).data)


def write_tiled_shard(root, shard_id, *, tiles, tile_rows=16384, nnz_per_row=48, n_latents=256,
                      n_classes=3, tokens=256, seed=0):
    """A shard in the saev layout made of one random tile of rows repeated ``tiles`` times.

    Returns the run folder and the shard folder. Latent 0 fires mostly on class 1 rows, so
    the fit has something to find.
    """
    rng = np.random.default_rng(seed)
    lat = np.sort(rng.random((tile_rows, n_latents)).argsort(axis=1)[:, :nnz_per_row], axis=1)
    labels = rng.integers(0, n_classes, tile_rows).astype(np.uint8)
    lat[:, 0] = np.where(labels == 1, 0, lat[:, 0])  # sorted rows start at their smallest latent
    lat = np.sort(lat, axis=1)
    keep = np.concatenate([np.ones((tile_rows, 1), bool), lat[:, 1:] != lat[:, :-1]], axis=1)
    lat[~keep] = -1  # duplicates (rare) become empty slots, dropped below
    counts = keep.sum(axis=1)
    indices = lat[keep].astype(np.int32)
    data = (rng.random(indices.size) + 0.05).astype(np.float32)
    tile_nnz = indices.size
    n_rows, nnz = tiles * tile_rows, tiles * tile_nnz
    assert tile_rows % tokens == 0
    shard = os.path.join(root, "shards", shard_id)
    inference = os.path.join(root, "run", "inference", shard_id)
    os.makedirs(shard, exist_ok=True)
    os.makedirs(inference, exist_ok=True)
    with open(os.path.join(shard, "metadata.json"), "w") as f:
        json.dump({"n_examples": n_rows // tokens, "content_tokens_per_example": tokens}, f)
    with open(os.path.join(shard, "labels.bin"), "wb") as f:
        for _ in range(tiles):
            labels.tofile(f)
    ptr = np.cumsum(counts, dtype=np.int64)
    path = os.path.join(inference, "token_acts.npz")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        _npy_member(zf, "indices.npy", "<i4", nnz, (indices for _ in range(tiles)))
        _npy_member(zf, "indptr.npy", "<i8", n_rows + 1,
                    [np.zeros(1, np.int64)] + [ptr + t * tile_nnz for t in range(tiles)])
        for name, arr in (("format.npy", np.array(b"csr")),
                          ("shape.npy", np.array([n_rows, n_latents], np.int64))):
            with zf.open(name, "w") as f:
                np.lib.format.write_array(f, arr, allow_pickle=False)
        _npy_member(zf, "data.npy", "<f4", nnz, (data for _ in range(tiles)))
    return os.path.join(root, "run"), shard, 8 * nnz + 8 * (n_rows + 1)


@pytest.mark.slow
def test_shard_4x_bigger_than_all_workers_fits_without_restart(tmp_path, require_free_disk):
    n_workers = 2
    tile_bytes = 8 * 16384 * 48
    tiles = int(np.ceil(4.1 * n_workers * WORKER_LIMIT / tile_bytes))
    # the npz, its store and its latent-major layout: three copies of the CSR at the peak
    require_free_disk(tmp_path, 3 * tiles * tile_bytes + (2 << 30), "a shard of 4x the workers")
    try:
        _fit_big_shard(tmp_path, n_workers, tiles)
    finally:  # 4 GB: pytest keeps its last temporary folders, so remove the data now
        shutil.rmtree(tmp_path / "run", ignore_errors=True)


def _fit_big_shard(tmp_path, n_workers, tiles):
    run_dir, train, csr_bytes = write_tiled_shard(tmp_path, "train0001", tiles=tiles, seed=1)
    _, test, _ = write_tiled_shard(tmp_path, "test0001", tiles=2, seed=2)
    assert csr_bytes >= 4 * n_workers * WORKER_LIMIT
    inputs = open_inputs(run_dir, train, test, out_dirs=[tmp_path / "out-train", tmp_path / "out-test"])

    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                      memory_limit=WORKER_LIMIT, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        before = {a: w["name"] for a, w in client.scheduler_info()["workers"].items()}
        tele = Telemetry(tmp_path / "telemetry.jsonl", interval=0.5)
        tele.attach(client)
        result = run_job(client, inputs, max_iter=1, callbacks=[tele], log=lambda m: None)
        summary = tele.close()
        after = {a: w["name"] for a, w in client.scheduler_info()["workers"].items()}
        limits = [w["memory_limit"] for w in client.scheduler_info()["workers"].values()]

    assert limits == [WORKER_LIMIT] * n_workers and csr_bytes >= 4 * sum(limits)
    assert result.n_iter == 1 and result.fitter.persisted_ is False
    plan = tele.plan
    assert plan is not None and plan.fits and not plan.persist
    assert plan.n_blocks["train"] > 8 * n_workers  # many blocks, each re-read every pass
    # no worker restarted: same addresses, same processes, and the telemetry saw none
    assert after == before
    assert summary["worker_restarts"] == 0 and not summary["workers_removed"]
    assert not summary["workers_paused"], summary["workers_paused"]
    # every worker's measured peak (kernel high-water mark and background samples) under its limit
    for name, w in summary["measured"]["workers"].items():
        assert w["peak_rss"] < WORKER_LIMIT, (name, w)
        assert w["sampled_max_rss"] < WORKER_LIMIT, (name, w)
    assert summary["workers_under_limit"]
    events = read_telemetry(tmp_path / "telemetry.jsonl")
    stages = [e["stage"] for e in events if e["event"] == "host_mem"]
    assert stages.count("iteration") == 1 and "evaluate_test_end" in stages
    print(f"CSR {csr_bytes / 2**30:.2f} GiB on 2 x {WORKER_LIMIT / 2**20:.0f} MiB workers; "
          f"blocks {plan.n_blocks}, block_nnz {plan.block_nnz:,}; worker peaks "
          f"{[w['peak_rss'] >> 20 for w in summary['measured']['workers'].values()]} MiB, "
          f"planned {plan.worker_peak >> 20} MiB")
