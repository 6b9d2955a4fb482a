"""The memory plan of GPU workers: blocks above the CPU's cap up to max-gpu-block-nnz, and the
resident blocks budgeted against the GPU's memory (bounded by the resident cache)."""

import dask

from probe_dask.memory.search import plan_run


def gpu_rows(plan):
    return {b.name: b for b in plan.gpu}


def test_gpu_workers_take_larger_blocks_and_budget_resident_ones(tiny_run):
    with dask.config.set({"probe-dask.memory.max-block-nnz": 2000,
                          "probe-dask.memory.min-block-nnz": 1000,
                          "probe-dask.memory.max-gpu-block-nnz": 10**8}):
        cpu = plan_run(tiny_run.train_shard, tiny_run.test_shard, run=tiny_run.run_dir,
                       memory_limit="4GB", n_workers=1, device="cpu")
        gpu = plan_run(tiny_run.train_shard, tiny_run.test_shard, run=tiny_run.run_dir,
                       memory_limit="4GB", n_workers=1, device="cuda", gpu_memory="80GB")
    assert cpu.block_nnz == 2000 and cpu.backend == "c"
    # one worker thread: at least 2 blocks of the train shard, not the CPU's cap
    assert gpu.backend == "triton" and gpu.block_nnz > 2000 and gpu.fits and gpu.persist
    rows = gpu_rows(gpu)
    resident = rows["resident train ranges + work lists (kernels.resident)"]
    nnz = gpu.train.nnz
    # every train range on the device: 8 bytes a non-zero + a byte a row, plus work lists
    assert resident.nbytes >= 8 * nnz + gpu.train.n_rows
    assert not any("torch chunk" in name for name in rows)
    # a GPU too small for them: the resident cache's bound is what the plan counts
    with dask.config.set({"probe-dask.kernels.gpu-resident-fraction": 1e-9}):
        small = plan_run(tiny_run.train_shard, tiny_run.test_shard, run=tiny_run.run_dir,
                         memory_limit="4GB", n_workers=1, device="cuda", gpu_memory="80GB")
    assert gpu_rows(small)["resident train ranges + work lists (kernels.resident)"].nbytes == 80
