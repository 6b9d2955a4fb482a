"""Contiguous splits (core.split): cover the range once, in order, sizes within one."""

import numpy as np
import pytest

from probe_dask.core.split import even_bounds, weighted_bounds


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


def weighted_reference(weights, parts):
    """Item by item: cut ``k`` falls after the first item whose running total reaches
    ``k / parts`` of the whole, kept inside ``[1, n - 1]`` (no part empty, the last item
    alone when a target is only reached there); equal cuts are one."""
    total, n = float(sum(weights)), max(1, min(parts, len(weights)))
    cuts = set()
    for k in range(1, n):
        run, at = 0.0, len(weights)
        for i, w in enumerate(weights):
            run += float(w)
            if run >= total * k / n:
                at = i + 1
                break
        cuts.add(min(max(at, 1), len(weights) - 1))
    edges = [0, *sorted(cuts), len(weights)]
    return list(zip(edges[:-1], edges[1:]))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("parts", [1, 2, 3, 7, 40])
def test_weighted_bounds_follow_the_running_total(seed, parts):
    rng = np.random.default_rng(seed)
    weights = rng.pareto(1.2, int(rng.integers(1, 30))) * 100 + 1  # a few heavy items
    bounds = weighted_bounds(weights, parts)
    assert bounds == weighted_reference(weights, parts)
    assert bounds[0][0] == 0 and bounds[-1][1] == weights.size and len(bounds) <= parts
    assert all(z0 == a1 for (_, z0), (a1, _) in zip(bounds[:-1], bounds[1:]))
    assert all(z > a for a, z in bounds)


def test_weighted_bounds_balance_equal_weights_and_merge_cuts_at_a_heavy_item():
    assert weighted_bounds(np.ones(8), 4) == [(0, 2), (2, 4), (4, 6), (6, 8)]
    # both targets (1/3 and 2/3 of 104) are crossed by the heavy item: one cut after it
    assert weighted_bounds([1, 1, 100, 1, 1], 3) == [(0, 3), (3, 5)]
    assert weighted_bounds([], 3) == [(0, 0)]
