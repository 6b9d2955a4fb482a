"""The latent-major layout past 2**31 non-zeros (engine.layout, io.latent_major,
engine.range_data): int64 offsets end to end, checked against closed forms. And the disk a
build takes: about one layout, on a real file system of just that size; a folder too small
for it refused before anything is written.

The shard is generated, not read: row ``i`` has the 16 latents ``i % 32 + 32 j`` and the
value ``0.5 + 0.25 (i % 3)``, one class. Every latent then holds ``n_rows / 32`` events,
a third of them at each value, so its label sums and a pass's six sums are closed forms.
"""

import shutil

import dask
import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp
from distributed import Client, LocalCluster

from probe_dask.core.datatypes import ActivePairs, LatentBlock
from probe_dask.engine.layout import latent_major_layout
from probe_dask.engine.passes import latent_blocks
from probe_dask.errors import MachineError
from probe_dask.io.latent_major import build_disk_bytes
from probe_dask.engine.range_data import bytes_read, disk_range, range_fit_sums, range_label_sums

N_LATENTS, PER_ROW, BLOCK_ROWS = 512, 16, 2**20
#: A multiple of 96 (32 latent residues x 3 values): 16 n_rows = 2,260,992,000 events, the
#: real shard's count, well past 2**31.
N_ROWS = 96 * 1_472_000
VALUES = np.array([0.5, 0.75, 1.0], dtype=np.float32)


def _block(r0, r1) -> LatentBlock:
    rows = np.arange(r0, r1)
    indices = ((rows % 32)[:, None] + 32 * np.arange(PER_ROW)[None, :]).astype(np.int32)
    data = np.repeat(VALUES[rows % 3], PER_ROW)
    indptr = np.arange(0, PER_ROW * (len(rows) + 1), PER_ROW, dtype=np.int64)
    csr = sp.csr_matrix((data, indices.ravel(), indptr), shape=(len(rows), N_LATENTS))
    return LatentBlock.from_csr(csr, np.zeros(len(rows), dtype=np.uint8))


def _sigmoid32(x):
    return (1.0 / (1.0 + np.exp(-np.float32(x)))).astype(np.float64)


SMALL_ROWS, SMALL_LATENTS, SMALL_SEGMENT = 200_000, 64, 2**17


def _small_shard():
    X = sp.random(SMALL_ROWS, SMALL_LATENTS, density=0.25, format="csr", random_state=7,
                  dtype=np.float32)
    y = np.random.default_rng(7).integers(0, 5, SMALL_ROWS).astype(np.uint8)
    return X, da.from_array(X, chunks=(50_000, SMALL_LATENTS), asarray=False), da.from_array(y, chunks=50_000)


def _build(where, Xd, yd, nnz):
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        return latent_major_layout(client, latent_blocks(Xd, yd), Xd.chunks[0],
                                   (SMALL_ROWS, SMALL_LATENTS), where / "latent-major",
                                   {"small": 1}, threads=2, segment_nnz=SMALL_SEGMENT, nnz=nnz)


def _build_need(nnz, n_blocks):
    return build_disk_bytes(nnz, SMALL_ROWS, SMALL_LATENTS, n_blocks, 2, SMALL_SEGMENT, True)


def test_a_build_fits_a_disk_of_about_one_layout(small_disk):
    X, Xd, yd = _small_shard()
    need = _build_need(X.nnz, len(Xd.chunks[0]))
    assert 8 * X.nnz < need < 1.25 * 8 * X.nnz  # about one layout, not parts + layout
    disk = small_disk(need + (1 << 20))
    layout, seconds = _build(disk, Xd, yd, X.nnz)
    assert seconds is not None and [p.name for p in disk.iterdir()] == ["latent-major"]
    csc = X.tocsc()
    csc.sort_indices()
    np.testing.assert_array_equal(layout.latent_ptr(), csc.indptr)
    rows = np.empty(X.nnz, dtype=np.int32)
    values = np.empty(X.nnz, dtype=np.float32)
    layout.read_runs([(0, X.nnz)], rows, values)
    np.testing.assert_array_equal(rows, csc.indices)
    np.testing.assert_array_equal(values, csc.data)


def test_a_folder_too_small_for_the_build_is_refused_before_it_is_written(small_disk):
    X, Xd, yd = _small_shard()
    disk = small_disk(_build_need(X.nnz, len(Xd.chunks[0])) // 2)
    with pytest.raises(MachineError) as err:
        _build(disk, Xd, yd, X.nnz)
    message = str(err.value)
    assert message.startswith(f"{disk}: no space left") and " MB are free" in message
    assert f"{X.nnz:,} non-zeros" in message and "\n" not in message
    assert list(disk.iterdir()) == []  # no temporary folder left


@pytest.mark.slow
def test_a_layout_past_2_31_events_gives_its_closed_forms(tmp_path, require_free_disk):
    edges = list(range(0, N_ROWS, BLOCK_ROWS)) + [N_ROWS]
    blocks = [dask.delayed(_block)(a, z) for a, z in zip(edges[:-1], edges[1:])]
    chunks = tuple(z - a for a, z in zip(edges[:-1], edges[1:]))
    nnz = PER_ROW * N_ROWS
    assert nnz > 2**31
    require_free_disk(tmp_path, 8 * nnz + (2 << 30), f"a layout of {nnz:,} events")
    try:
        _check_giant_layout(tmp_path, blocks, chunks, nnz)
    finally:  # 18 GB: pytest keeps its last temporary folders, so remove the layout now
        shutil.rmtree(tmp_path / "layout", ignore_errors=True)


def _check_giant_layout(tmp_path, blocks, chunks, nnz):
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        layout, seconds = latent_major_layout(client, blocks, chunks, (N_ROWS, N_LATENTS),
                                              tmp_path / "layout", {"giant": 1}, threads=2,
                                              nnz=nnz)
    print(f"layout of {nnz:,} events built in {seconds:.0f} s")
    per_latent = N_ROWS // 32
    ptr = layout.latent_ptr()
    assert layout.nnz == nnz and ptr.dtype == np.int64 and int(ptr[-1]) == nnz
    np.testing.assert_array_equal(np.diff(ptr), per_latent)
    assert sorted(p.name for p in (tmp_path / "layout").iterdir()) == [
        "labels.u8", "latent_ptr.i64", "layout.json", "rows.i32", "values.f32"]

    # the last latents, whose events lie past 2**31: rows and values exactly
    start = N_LATENTS - 4
    far = disk_range(layout, start, N_LATENTS, chunk_nnz=3 * per_latent // 2)
    assert int(far.latent_ptr[0]) > 2**31
    rows = np.empty(per_latent, dtype=np.int32)
    values = np.empty(per_latent, dtype=np.float32)
    last = N_LATENTS - 1
    layout.read_runs([(int(ptr[last]), int(ptr[last + 1]))], rows, values)
    want_rows = np.arange(last % 32, N_ROWS, 32)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_array_equal(values, VALUES[want_rows % 3])

    # label sums: one class, every event positive
    sums = range_label_sums(far, 1)
    v = VALUES.astype(np.float64)
    np.testing.assert_array_equal(sums.count, per_latent)
    np.testing.assert_allclose(sums.sum_v2, per_latent / 3 * (v * v).sum(), rtol=1e-12)
    np.testing.assert_allclose(sums.vpos[:, 0], per_latent / 3 * v.sum(), rtol=1e-12)
    np.testing.assert_array_equal(sums.pos[:, 0], per_latent)

    # one pass at b = 0.1, w = -0.3: each sum is n / 3 x the sum over the three values
    b, w = 0.1, -0.3
    pairs = ActivePairs(np.arange(5, dtype=np.int64), np.zeros(4, dtype=np.int32),
                        np.full(4, b), np.full(4, w))
    got = range_fit_sums(far, pairs, "cpu", backend="c")
    eta = b + w * v
    mu = _sigmoid32(eta)
    s = mu * (1 - mu)
    softplus = np.maximum(eta, 0) + np.log1p(np.exp(-np.abs(eta)))
    want = per_latent / 3 * np.array([mu.sum(), (mu * v).sum(), s.sum(), (s * v).sum(),
                                      (s * v * v).sum(), softplus.sum()])
    # the kernel's sigmoid is float32: 1e-6 relative
    np.testing.assert_allclose(got, np.repeat(want[:, None], 4, axis=1), rtol=1e-6)
    assert bytes_read(far, pairs) == 8 * 4 * per_latent
