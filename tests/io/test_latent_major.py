"""Building a latent-major layout from its parts (io.latent_major), without Dask: the
events land where a CSC of the shard has them, the parts give their disk back as segments
are merged, and a merge that runs again (its worker died after it finished) changes nothing."""

import os
import sys

import numpy as np
import pytest
import scipy.sparse as sp

from probe_dask.core.datatypes import LatentBlock
from probe_dask.io.latent_major import (begin_layout, merge_segment, part_prefix,
                                        segment_bounds, size_events, write_part)

N_ROWS, N_LATENTS, BLOCK_ROWS = 60_000, 40, 20_000


def _shard():
    X = sp.random(N_ROWS, N_LATENTS, density=0.3, format="csr", random_state=4,
                  dtype=np.float32)
    X.data += 0.5
    y = np.random.default_rng(4).integers(0, 7, N_ROWS).astype(np.uint8)
    return X, y


def _parts(tmp_path, X, y):
    building = begin_layout(tmp_path / "latent-major", N_ROWS)
    counts = np.zeros(N_LATENTS, dtype=np.int64)
    for i, r0 in enumerate(range(0, N_ROWS, BLOCK_ROWS)):
        block = LatentBlock.from_csr(X[r0:r0 + BLOCK_ROWS], y[r0:r0 + BLOCK_ROWS])
        counts += write_part(building, i, block.latent_ptr, block.rows, block.values,
                             block.labels, r0)
    ptr = np.concatenate(([0], np.cumsum(counts)))
    size_events(building, int(ptr[-1]))
    return building, ptr, N_ROWS // BLOCK_ROWS


def _event_bytes(building, n_parts, allocated):
    total = 0
    for p in range(n_parts):
        for name in ("rows.i32", "values.f32"):
            st = os.stat(f"{part_prefix(building, p)}.{name}")
            total += st.st_blocks * 512 if allocated else st.st_size
    return total


def _files(building):
    return [np.fromfile(os.path.join(building, name), dtype=dtype)
            for name, dtype in (("rows.i32", np.int32), ("values.f32", np.float32))]


def test_merged_segments_are_the_shards_columns(tmp_path):
    X, y = _shard()
    building, ptr, n_parts = _parts(tmp_path, X, y)
    for a, z in segment_bounds(np.diff(ptr), target_nnz=100_000, at_least=3):
        assert merge_segment(building, n_parts, a, z, ptr[a:z + 1]) == ptr[z] - ptr[a]
    rows, values = _files(building)
    csc = X.tocsc()
    csc.sort_indices()
    np.testing.assert_array_equal(ptr, csc.indptr)
    np.testing.assert_array_equal(rows, csc.indices)
    np.testing.assert_array_equal(values, csc.data)
    np.testing.assert_array_equal(np.fromfile(os.path.join(building, "labels.u8"),
                                              dtype=np.uint8), y)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="hole punching is Linux's")
@pytest.mark.parametrize("order", ["in order", "reversed", "shuffled"])
def test_parts_give_their_disk_back_and_a_rerun_merge_changes_nothing(tmp_path, order):
    X, y = _shard()
    building, ptr, n_parts = _parts(tmp_path, X, y)
    os.sync()
    assert _event_bytes(building, n_parts, allocated=True) >= 8 * X.nnz
    segments = segment_bounds(np.diff(ptr), target_nnz=100_000, at_least=3)
    assert len(segments) >= 5
    if order == "reversed":
        segments = segments[::-1]
    elif order == "shuffled":
        segments = [segments[i] for i in np.random.default_rng(1).permutation(len(segments))]
    for a, z in segments:
        merge_segment(building, n_parts, a, z, ptr[a:z + 1])
    os.sync()
    # every block of the parts' events is given back, the partial ones at the segments'
    # edges too (the last merge of the two that share one frees it)
    left = _event_bytes(building, n_parts, allocated=True)
    assert left == 0, f"{left} bytes of {8 * X.nnz} left"
    assert _event_bytes(building, n_parts, allocated=False) == 8 * X.nnz  # sizes kept
    first = _files(building)
    for a, z in segments:  # the parts now read as zeros where they were merged
        merge_segment(building, n_parts, a, z, ptr[a:z + 1])
    for got, want in zip(_files(building), first):
        np.testing.assert_array_equal(got, want)
    assert not np.fromfile(f"{part_prefix(building, 0)}.values.f32", dtype=np.float32).any()
