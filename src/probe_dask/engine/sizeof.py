"""Teach ``dask.sizeof`` the real size of what probe-dask keeps in worker memory.

Without this the scheduler counts a ``scipy.sparse.csr_array`` as 56 bytes and a torch
tensor as 80, so the dashboard's memory panel shows blocks as free and the worker never
spills (docs/architecture.md, pitfall 2). Imported by ``probe_dask/__init__`` so every process that
unpickles a probe-dask object (every worker) has the registrations.
"""

from __future__ import annotations

from dask.sizeof import sizeof

from probe_dask.core.datatypes import ActivePairs, LabelSums, LatentBlock
from probe_dask.engine.evaluate import LabelAndEvalSums
from probe_dask.engine.ranges import RangeFit

__all__ = []


def _sparse_nbytes(m) -> int:
    total = 0
    for name in ("data", "indices", "indptr", "row", "col", "offsets"):
        arr = getattr(m, name, None)
        if arr is not None and hasattr(arr, "nbytes"):
            total += int(arr.nbytes)
    return total + 64


@sizeof.register_lazy("scipy")
def _register_scipy():
    import scipy.sparse as sp

    sizeof.register(sp.sparray)(_sparse_nbytes)
    sizeof.register(sp.spmatrix)(_sparse_nbytes)


@sizeof.register_lazy("torch")
def _register_torch():
    import torch

    @sizeof.register(torch.Tensor)
    def _tensor_nbytes(t) -> int:
        # On a GPU this is device memory, which is what a GPU worker must budget too.
        return int(t.element_size() * t.nelement()) + 64


def _nbytes_attr(obj) -> int:
    return int(obj.nbytes) + 64


def register_nbytes(cls):
    """Class decorator: ``sizeof(obj)`` is ``obj.nbytes`` (plus object overhead)."""
    sizeof.register(cls)(_nbytes_attr)
    return cls


for _cls in (ActivePairs, LabelAndEvalSums, LabelSums, LatentBlock, RangeFit):
    register_nbytes(_cls)
