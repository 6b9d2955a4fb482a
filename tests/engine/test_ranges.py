"""Latent ranges (``engine.ranges``): the bounds, the cut of a block by latent, and where a
range's pass runs after a worker was lost (a real LocalCluster)."""

import numpy as np
import pytest
import scipy.sparse as sp
from distributed import Client, LocalCluster

from probe_dask.core.datatypes import LatentBlock
from probe_dask.engine.ranges import place_ranges, range_bounds


@pytest.mark.parametrize("n_latents, n_ranges", [(1, 4), (7, 3), (128, 2), (4096, 16), (5, 5)])
def test_range_bounds_cover_every_latent_once(n_latents, n_ranges):
    count = np.random.default_rng(n_latents).integers(0, 1000, n_latents) ** 2  # skewed
    for c in (None, count, np.zeros(n_latents)):
        bounds = range_bounds(n_latents, n_ranges, c)
        assert bounds[0][0] == 0 and bounds[-1][1] == n_latents
        assert all(z > a for a, z in bounds) and len(bounds) <= min(n_latents, n_ranges)
        assert all(b[0] == a[1] for a, b in zip(bounds, bounds[1:]))


def test_range_bounds_balance_the_events():
    count = np.ones(4096)
    count[:64] = 10_000  # the first latents hold most of the events
    bounds = range_bounds(4096, 4, count)
    weight = count + count.mean()
    shares = [weight[a:z].sum() / weight.sum() for a, z in bounds]
    assert max(shares) < 0.4, shares  # equal latents would give the first range 0.97
    assert range_bounds(4096, 4) == [(0, 1024), (1024, 2048), (2048, 3072), (3072, 4096)]


def test_a_latent_slice_is_the_block_of_those_columns():
    rng = np.random.default_rng(0)
    csr = sp.random(300, 50, density=0.1, format="csr", random_state=1, dtype=np.float32)
    labels = rng.integers(0, 5, 300).astype(np.uint8)
    block = LatentBlock.from_csr(csr, labels)
    for a, z in [(0, 50), (0, 1), (13, 29), (49, 50), (7, 7)]:
        got, want = block.latent_slice(a, z), LatentBlock.from_csr(csr[:, a:z], labels)
        for name in ("latent_ptr", "rows", "values", "labels"):
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
        assert got.values.base is None  # its own arrays: the block can be let go
    with pytest.raises(ValueError, match="outside"):
        block.latent_slice(10, 51)


def test_a_survivors_extra_ranges_go_to_threads_to_spare():
    """Two ranges on one worker of two (as after the other was lost and its ranges were
    recomputed on the survivor): the next pass keeps one there and moves the other, events
    first, to the idle worker."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        first, second = sorted(client.scheduler_info()["workers"])
        data = [client.submit(np.full, 1000, r, workers=[first], pure=False) for r in range(2)]
        fits = [client.submit(np.add, d, 1, workers=[first], pure=False) for d in data]
        moved, places = place_ranges(client, data, fits)
        assert [p["workers"] for p in places] == [[first], [second]]
        assert moved[0] is data[0] and moved[1] is not data[1]
        np.testing.assert_array_equal(moved[1].result(), data[1].result())
        assert list(client.who_has(moved[1])[moved[1].key]) == [second]
        # placed as it should be: nothing moves
        fits[1] = client.submit(np.add, moved[1], 1, **places[1], pure=False)
        again, places = place_ranges(client, moved, fits)
        assert again == moved and [p["workers"] for p in places] == [[first], [second]]
