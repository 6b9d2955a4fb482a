"""The latent-major layout on disk (io.latent_major, engine.layout) and a range read from
it (engine.range_data): the same bits as the in-memory LatentBlock, on a real cluster."""

import dask
import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp
from distributed import Client, LocalCluster

from probe_dask import kernels
from probe_dask.core.datatypes import ActivePairs, LatentBlock
from probe_dask.engine.layout import latent_major_layout
from probe_dask.engine.passes import latent_blocks
from probe_dask.core.objective import ProblemConstants
from probe_dask.core.state import init_state
from probe_dask.engine.range_data import (bytes_read, disk_range, range_eval_sums,
                                          range_fit_sums, range_label_sums, sums_at_zero)


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=":0") as cluster, Client(cluster) as c:
        yield c


def test_disk_ranges_give_the_bits_of_memory(client, tmp_path):
    rng = np.random.default_rng(0)
    n, L, C = 3000, 50, 5
    X = sp.random(n, L, density=0.1, format="csr", random_state=1, dtype=np.float32)
    y = rng.integers(0, C, n).astype(np.uint8)
    Xd = da.from_array(X, chunks=(700, L), asarray=False)
    yd = da.from_array(y, chunks=700)
    blocks = latent_blocks(Xd, yd)
    where = tmp_path / "latent-major"
    layout, built = latent_major_layout(client, blocks, Xd.chunks[0], (n, L), where,
                                        {"x": 1}, threads=2)
    assert built is not None and layout.nnz == X.nnz
    again, rebuilt = latent_major_layout(client, blocks, Xd.chunks[0], (n, L), where,
                                         {"x": 1}, threads=2)
    assert rebuilt is None and again == layout  # reused while the identity matches
    assert [p.name for p in tmp_path.iterdir()] == ["latent-major"]  # no temporaries left
    whole = LatentBlock.from_csr(X, y)
    with dask.config.set({"probe-dask.engine.range-chunk-nnz": 37}):  # many chunks
        for a, z in [(0, L), (3, 17), (17, L)]:
            on_disk, in_memory = disk_range(layout, a, z), whole.latent_slice(a, z)
            b, w = rng.normal(size=(z - a, C)), rng.normal(size=(z - a, C))
            pairs = ActivePairs.all_pairs(b, w)
            np.testing.assert_array_equal(range_fit_sums(on_disk, pairs),
                                          kernels.fit_sums(in_memory, pairs))
            np.testing.assert_array_equal(range_eval_sums(on_disk, pairs),
                                          kernels.eval_sums(in_memory, pairs))
            got, want = range_label_sums(on_disk, C), kernels.label_sums(in_memory, C)
            for name in ("count", "sum_v2", "pos", "vpos", "class_rows"):
                np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
            # a pass with a few active latents reads only theirs
            keep = np.zeros((z - a, C), dtype=bool)
            keep[::4, 1] = True
            ptr = np.zeros(z - a + 1, dtype=np.int64)
            np.cumsum(keep.sum(axis=1), out=ptr[1:])
            some = ActivePairs(ptr, np.nonzero(keep)[1].astype(np.int32), b[keep], w[keep])
            np.testing.assert_array_equal(range_fit_sums(on_disk, some),
                                          kernels.fit_sums(in_memory, some))
            assert bytes_read(on_disk, some) == 8 * int(np.diff(in_memory.latent_ptr)[::4].sum())


@pytest.mark.parametrize("backend", ["c", "torch"])
def test_first_pass_sums_are_closed_forms_of_the_label_sums(backend):
    """At w = 0 (every pair's start) the six sums need no event: equal to the kernel's sums
    over every event to 1e-12 relative (activations are non-negative, as an SAE's)."""
    rng = np.random.default_rng(3)
    n_rows, n_lat, n_cls = 3000, 40, 7
    X = sp.random(n_rows, n_lat, density=0.3, random_state=4, format="csr", dtype=np.float32)
    X.data = rng.gamma(1.0, 2.0, X.nnz).astype(np.float32)
    X.data[X.indices == 5] = 0  # an empty latent: no pairs active
    X.eliminate_zeros()
    block = LatentBlock.from_csr(X, rng.integers(0, n_cls, n_rows).astype(np.uint8))
    label_sums = kernels.label_sums(block, n_cls)
    state = init_state(ProblemConstants.from_label_sums(label_sums, ridge=1e-8))
    state.active[::3, 1] = False  # some pairs already stopped
    pairs = state.active_pairs()
    want = kernels.fit_sums(block, pairs, "cpu", backend=backend)
    got = sums_at_zero(label_sums, pairs, "cpu", backend)
    assert got.shape == want.shape == (6, pairs.n_pairs) and pairs.n_pairs < n_lat * n_cls
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
