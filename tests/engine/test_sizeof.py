"""dask.sizeof knows what probe-dask keeps in worker memory, so the scheduler (and the
dashboard's memory panel) counts persisted blocks at their real size, not 56 bytes."""

import time

import numpy as np
import scipy.sparse as sp
import torch
from dask.sizeof import sizeof
from distributed import wait

from probe_dask import kernels
from probe_dask.engine.shard import open_shard
from probe_dask.engine.passes import latent_blocks
from probe_dask.engine.ranges import start_range
from probe_dask.testing.synthetic import make_run


def _arrays_nbytes(m):
    return m.data.nbytes + m.indices.nbytes + m.indptr.nbytes


def test_sizeof_of_blocks_pairs_sums_and_tensors():
    csr = sp.random(2000, 300, density=0.05, format="csr", dtype=np.float32, random_state=0)
    for m in (csr, sp.csr_array(csr), csr.tocsc()):
        assert _arrays_nbytes(m) <= sizeof(m) <= _arrays_nbytes(m) + 1024
    labels = np.zeros(2000, np.uint8)
    block = kernels.LatentBlock.from_csr(csr, labels)
    assert sizeof(block) == block.nbytes + 64 and block.nbytes >= 8 * csr.nnz
    pairs = kernels.ActivePairs.all_pairs(np.zeros((300, 4)), np.zeros((300, 4)))
    assert sizeof(pairs) == pairs.nbytes + 64 >= 20 * 1200
    sums = kernels.label_sums(block, 4)
    assert sizeof(sums) == sums.nbytes + 64 >= 16 * 1200
    t = torch.zeros((1000, 3), dtype=torch.float64)
    assert 24_000 <= sizeof(t) <= 24_000 + 1024
    # a latent range's fit: its label sums and its solver state (91 bytes a pair)
    fit = start_range(block.latent_slice(100, 200), 4, 1e-8, 100, 200)
    state = sum(getattr(fit.state, n).nbytes for n in fit.state.FLOAT_FIELDS + fit.state.BOOL_FIELDS)
    assert state == 91 * 100 * 4
    assert state + fit.label_sums.nbytes <= sizeof(fit) <= state + fit.label_sums.nbytes + 4096


def _managed(client) -> int:
    return client.run_on_scheduler(lambda dask_scheduler: sum(ws.nbytes for ws in dask_scheduler.workers.values()))


def test_scheduler_counts_persisted_blocks_at_real_size(local_client, tmp_path):
    run = make_run(tmp_path / "run", n_train_examples=40, n_test_examples=2, tokens_per_example=256,
                   d_sae=1024, n_classes=8, seed=11, compressed=False)
    shard = open_shard(run.run_dir, run.train_shard, block_nnz=250_000)
    assert len(shard.row_blocks) >= 4
    # what each block really holds, computed here without dask
    want_blocks = [kernels.LatentBlock.from_csr(shard.source.read_rows(r0, r1), shard.labels.read(r0, r1)).nbytes
                   for r0, r1 in shard.row_blocks]
    want_csr = [_arrays_nbytes(shard.source.read_rows(r0, r1)) for r0, r1 in shard.row_blocks]

    before = _managed(local_client)
    blocks = local_client.persist(latent_blocks(shard.X, shard.y))
    wait(blocks)
    counted = local_client.nbytes(summary=False)
    got = [counted[b.key] for b in blocks]
    assert all(w <= g <= w + 256 for w, g in zip(want_blocks, got)), (want_blocks, got)
    grown = _managed(local_client) - before
    assert sum(want_blocks) <= grown <= sum(want_blocks) + 4096 * len(blocks) + 2**16, (grown, sum(want_blocks))

    # the CSR chunks of the dask array too (what a user persists with X.persist())
    X = shard.X.persist()
    wait(X)
    counted = local_client.nbytes(summary=False)
    got = [counted[row[0]] for row in X.__dask_keys__()]  # one key per row block
    assert all(w <= g <= w + 1024 for w, g in zip(want_csr, got)), (want_csr, got)
    assert sum(got) > 8 * shard.nnz  # never the 56 bytes dask would count without us

    # the heartbeat's managed memory (what the dashboard shows) catches up with it
    total = sum(want_blocks) + sum(want_csr)
    deadline = time.time() + 20
    while time.time() < deadline:
        managed = sum(w["metrics"]["managed_bytes"] for w in local_client.scheduler_info()["workers"].values())
        if managed >= total:
            break
        time.sleep(0.5)
    assert managed >= total, (managed, total)
    del blocks, X
