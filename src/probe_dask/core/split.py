"""Contiguous splits of ``range(n)``: the rules every cut into parts follows (row blocks
into groups, latents into ranges or a kernel's thread shares, pairs into a thread's share).

:func:`even_bounds` cuts into parts of about equal size, :func:`weighted_bounds` into parts
of about equal total weight (non-zeros, work).

Pure: numpy only. Memory: the ``parts + 1`` edges, and the cumulative weights (8 bytes an item).
"""

from __future__ import annotations

import numpy as np

__all__ = ["even_bounds", "weighted_bounds"]


def even_bounds(n: int, parts: int) -> list[tuple[int, int]]:
    """``min(parts, n)`` contiguous ``(start, stop)`` covering ``range(n)``, their sizes
    differing by at most one (at least one part, empty when ``n`` is 0)."""
    n = int(n)
    k = max(1, min(int(parts), n))
    edges = [(i * n) // k for i in range(k + 1)]
    return [(a, z) for a, z in zip(edges[:-1], edges[1:]) if z > a] or [(0, n)]


def weighted_bounds(weights, parts: int) -> list[tuple[int, int]]:
    """At most ``parts`` contiguous ``(start, stop)`` covering ``range(len(weights))``, each
    of at least one item, about equal in total weight.

    Part ``k`` ends after the item whose cumulative weight first reaches ``k / parts`` of the
    total (so an item that crosses a target stays in the part before it); parts that would
    be empty are dropped. One empty part when there are no items.
    """
    cum = np.cumsum(np.asarray(weights, dtype=np.float64))
    n_items = int(cum.size)
    n = max(1, min(int(parts), n_items))
    if n == 1:
        return [(0, n_items)]
    inner = np.searchsorted(cum, cum[-1] * np.arange(1, n) / n, side="left") + 1
    edges = sorted({0, n_items, *(int(e) for e in np.clip(inner, 1, n_items - 1))})
    return [(a, z) for a, z in zip(edges[:-1], edges[1:]) if z > a]
