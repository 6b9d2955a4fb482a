"""Contiguous splits of ``range(n)``: the one rule every cut into parts follows (row blocks
into groups, latents into ranges or slices, pairs into a thread's share).

Pure: numpy only. Memory: the ``parts + 1`` edges.
"""

from __future__ import annotations

__all__ = ["even_bounds"]


def even_bounds(n: int, parts: int) -> list[tuple[int, int]]:
    """``min(parts, n)`` contiguous ``(start, stop)`` covering ``range(n)``, their sizes
    differing by at most one (at least one part, empty when ``n`` is 0)."""
    n = int(n)
    k = max(1, min(int(parts), n))
    edges = [(i * n) // k for i in range(k + 1)]
    return [(a, z) for a, z in zip(edges[:-1], edges[1:]) if z > a] or [(0, n)]
