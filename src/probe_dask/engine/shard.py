"""Dask arrays over one shard: CSR row blocks and their labels.

A shard becomes two dask arrays with the same row chunks: ``X``, whose chunks are
``scipy.sparse.csr_matrix`` row blocks of the activations, and ``y``, the ``uint8`` labels
of the same rows. Rows are split by non-zero count so blocks cost about the same.

Memory per process: the graph holds only paths and row ranges (a few bytes per block);
each task materialises exactly one row block (its CSR arrays, about 8 bytes per non-zero
plus 8 bytes per row) and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

import dask.array as da
import numpy as np
import scipy.sparse as sp
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from probe_dask import config
from probe_dask.errors import InputError
from probe_dask.io.labels import LabelsSource, open_labels, read_metadata
from probe_dask.io.layout import activations_path, require_dir, require_file
from probe_dask.io.store import CSRSource, open_csr

__all__ = ["Shard", "open_shard", "csr_block_array", "label_block_array"]

#: Non-zeros per row block when nothing else decides it (about 32 MB of CSR per block).


@dataclass
class Shard:
    """One shard opened as dask arrays.

    Attributes
    ----------
    X : dask.array.Array
        Activations, ``(n_rows, n_latents)`` float32, chunks are CSR row blocks.
    y : dask.array.Array
        Labels, ``(n_rows,)`` uint8, same row chunks as ``X``.
    source : CSRSource
        Where the activations are read from.
    labels : LabelsSource
        Where the labels are read from.
    row_blocks : list of (int, int)
        Row range of each block.
    shard_id : str
        Name of the shard folder.
    """

    X: da.Array
    y: da.Array
    source: CSRSource
    labels: LabelsSource
    row_blocks: list
    shard_id: str

    @property
    def n_rows(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_latents(self) -> int:
        return int(self.X.shape[1])

    @property
    def nnz(self) -> int:
        return int(self.source.nnz)


def open_shard(run_dir, shard_dir, *, block_nnz: int | None = None, cache_dir=None) -> Shard:
    """Open a shard of a run as dask arrays.

    Parameters
    ----------
    run_dir : path
        The SAE run folder (holds ``inference/<shard_id>/token_acts.npz``).
    shard_dir : path
        The shard folder (holds ``metadata.json`` and ``labels.bin``).
    block_nnz : int, optional
        Target non-zeros per row block (default: ``probe-dask.engine.block-nnz``).
    cache_dir : path, optional
        Where a compressed ``token_acts.npz`` is ingested (default: beside it).

    Returns
    -------
    Shard
    """
    # A missing folder is named with the closest existing path (a typo in a shard id).
    shard_dir = require_dir(shard_dir, "shard folder", "a saev shard folder (metadata.json, labels.bin)")
    require_dir(run_dir, "run folder", "an SAE run folder (inference/<shard_id>/token_acts.npz)")
    meta = read_metadata(shard_dir)
    labels = open_labels(shard_dir, meta)
    npz = activations_path(run_dir, shard_dir.name)
    require_file(npz, "file", "the token_acts.npz of this shard in the run")
    source = open_csr(npz, cache_dir=cache_dir)
    if source.shape[0] != labels.n_rows:
        raise InputError(
            npz, "shape.npy (rows)", source.shape[0],
            f"{labels.n_rows} rows = n_examples {meta.n_examples} x content_tokens_per_example "
            f"{meta.tokens_per_example} of {shard_dir / 'metadata.json'}",
        )
    blocks = source.row_blocks(int(block_nnz or config.get("probe-dask.engine.block-nnz")))
    return Shard(
        X=csr_block_array(source, blocks),
        y=label_block_array(labels, blocks),
        source=source,
        labels=labels,
        row_blocks=blocks,
        shard_id=shard_dir.name,
    )


def _row_chunks(blocks) -> tuple:
    return tuple(int(r1 - r0) for r0, r1 in blocks)


def csr_block_array(source: CSRSource, blocks) -> da.Array:
    """A dask array whose chunks are CSR row blocks read from ``source``."""
    name = "csr-rows-" + tokenize(source.identity, source.fingerprint, blocks)
    dsk = {(name, i, 0): (source.read_rows, r0, r1) for i, (r0, r1) in enumerate(blocks)}
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=())
    meta = sp.csr_matrix((0, 0), dtype=np.float32)
    return da.Array(graph, name, chunks=(_row_chunks(blocks), (source.shape[1],)), meta=meta)


def label_block_array(labels: LabelsSource, blocks) -> da.Array:
    """A dask array of ``uint8`` labels with the row chunks of ``blocks``."""
    name = "labels-" + tokenize(labels.path, labels.n_rows, blocks)
    dsk = {(name, i): (labels.read, r0, r1) for i, (r0, r1) in enumerate(blocks)}
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=())
    return da.Array(graph, name, chunks=(_row_chunks(blocks),), dtype=np.uint8)
