"""Tests of core/datatypes.py: a CSR block with offsets or indices out of bounds never becomes a
LatentBlock (scipy's CSR -> CSC conversion would write out of bounds: a segfault)."""

import numpy as np
import pytest
import scipy.sparse as sp

from probe_dask.core.datatypes import LatentBlock


def _csr(indices, indptr, n_cols=10):
    data = np.ones(len(indices), np.float32)
    m = sp.csr_matrix((3, n_cols), dtype=np.float32)
    # Set the arrays directly: scipy's constructor would check some of them itself.
    m.data, m.indices, m.indptr = data, np.asarray(indices, np.int32), np.asarray(indptr, np.int32)
    return m


def test_good_block_groups_by_latent():
    b = LatentBlock.from_csr(_csr([1, 3, 1, 9], [0, 2, 2, 4]), np.zeros(3, np.uint8))
    np.testing.assert_array_equal(b.latent_ptr[[0, 1, 2, 3, 4, 10]], [0, 0, 2, 2, 3, 4])
    np.testing.assert_array_equal(b.rows, [0, 2, 0, 2])


@pytest.mark.parametrize("indices, indptr, says", [
    ([1, 3, 1, 10], [0, 2, 2, 4], "column index outside"),
    ([1, 3, 1, -1], [0, 2, 2, 4], "column index outside"),
    ([1, 3, 1, 2**20], [0, 2, 2, 4], "column index outside"),
    ([1, 3, 1, 2], [0, 2, 1, 4], "indptr not non-decreasing"),
    ([1, 3, 1, 2], [0, 2, 2**30, 4], "indptr not non-decreasing"),
])
def test_bad_block_is_refused_before_scipy_sees_it(indices, indptr, says):
    with pytest.raises(ValueError, match=says):
        LatentBlock.from_csr(_csr(indices, indptr), np.zeros(3, np.uint8))
