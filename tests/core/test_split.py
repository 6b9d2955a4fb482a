"""Contiguous splits (core.split): cover the range once, in order, sizes within one."""

import pytest

from probe_dask.core.split import even_bounds


@pytest.mark.parametrize("n, parts", [(10, 3), (7, 7), (5, 9), (1, 4), (1000, 16), (3, 1)])
def test_even_bounds_cover_the_range_in_order(n, parts):
    bounds = even_bounds(n, parts)
    assert len(bounds) == min(n, parts)
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(z0 == a1 for (_, z0), (a1, _) in zip(bounds[:-1], bounds[1:]))
    sizes = [z - a for a, z in bounds]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


def test_even_bounds_of_nothing_is_one_empty_part():
    assert even_bounds(0, 4) == [(0, 0)]
