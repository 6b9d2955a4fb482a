"""Row-sliceable ``token_acts.npz`` (a CSR matrix written by ``scipy.sparse.save_npz``).

:func:`open_csr` gives a :class:`CSRSource`: rows are read in place inside an uncompressed
npz (``compressed=False``: the ``.npy`` members lie raw in the zip), or from the store of
a compressed one (raw little-endian ``indptr.i64``, ``indices.i32``, ``data.f32``, written
once by :mod:`probe_dask.io.ingest`). The store folder's ``store.json`` manifest records
the source's identity (path, size, mtime_ns, and a fingerprint of the zip's directory),
the shape, nnz and the validation verdict; while they match the source, the store and the
verdict are reused and nothing is streamed again.

Memory per process: a :class:`CSRSource` holds only paths and offsets; ``read_rows`` holds
exactly one block in fresh buffers (:class:`~probe_dask.io.arrayref.ArrayRef`, never
``np.memmap``); ``row_blocks`` scans ``indptr`` ``chunk_bytes`` at a time; opening holds
what :mod:`probe_dask.io.ingest` holds when the file is new.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os

import numpy as np
import scipy.sparse

from probe_dask.errors import InputError
from probe_dask.io.arrayref import ArrayRef
from probe_dask.io.row_blocks import row_blocks
from probe_dask.io.ingest import (MANIFEST, STORE_DTYPES, STORE_FILES, STORE_VERSION, ingest,
                                  remove_stale_stores)
from probe_dask.io.npz import ARRAYS, EXPECT, CSRHeader, open_npz
from probe_dask.io.verify import check_block

__all__ = ["CSRSource", "open_csr", "store_dir", "DEFAULT_CHUNK_BYTES"]

DEFAULT_CHUNK_BYTES = 64 * 2**20

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CSRSource:
    """Row-sliceable view of one ``token_acts.npz``; small and picklable (no data).

    ``path`` is the source npz (absolute), ``shape`` ``(n_rows, n_cols)``, ``identity``
    the source's ``{"path", "size", "mtime_ns"}`` when opened (JSON-able), ``kind``
    ``"inplace"`` (read inside the zip) or ``"store"`` (read from the ingested store),
    ``store_dir`` the folder of ``store.json``, ``indptr``/``indices``/``data`` where the
    arrays live, ``chunk_bytes`` the read size of whole-array scans (:meth:`row_blocks`), and
    ``fingerprint`` a digest of the zip's central directory (each member's CRC-32 and sizes):
    content replaced under the same size and mtime (``cp -p``, ``rsync -t``) still changes it.
    """

    path: str
    shape: tuple
    nnz: int
    identity: dict = dataclasses.field(hash=False)
    kind: str = "store"
    store_dir: str = ""
    indptr: ArrayRef = None
    indices: ArrayRef = None
    data: ArrayRef = None
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    fingerprint: str = ""

    @property
    def n_rows(self) -> int:
        return int(self.shape[0])

    @property
    def n_cols(self) -> int:
        return int(self.shape[1])

    def _check_range(self, r0: int, r1: int) -> None:
        if not 0 <= r0 <= r1 <= self.n_rows:
            raise ValueError(f"row range [{r0}, {r1}) outside [0, {self.n_rows}]")

    def read_indptr(self, r0: int, r1: int) -> np.ndarray:
        """Return ``indptr[r0:r1 + 1]`` as int64 (``r1 - r0 + 1`` entries, not rebased)."""
        self._check_range(r0, r1)
        return self.indptr.read(r0, r1 - r0 + 1).astype(np.int64, copy=False)

    def read_rows(self, r0: int, r1: int) -> scipy.sparse.csr_matrix:
        """Rows ``r0:r1`` as a ``csr_matrix`` (float32 data, int32 indices, indptr from 0).

        Indices are int64 only when the block itself holds 2**31 or more values
        (scipy needs indptr and indices of one dtype). The block is checked as it is read
        (:func:`probe_dask.io.verify.check_block`): offsets, column indices and values;
        InputError names the file and the row of the first bad one.
        """
        ptr = self.read_indptr(r0, r1)
        a, b = int(ptr[0]), int(ptr[-1])
        redo = (f"remove {self.store_dir} to ingest {self.path} again" if self.kind == "store"
                else "the file changed after it was validated")
        if not 0 <= a <= b <= self.nnz:  # checked before reading: offsets say how much to read
            check_block(self, r0, r1, ptr, np.empty(0, np.int32), np.empty(0, np.float32), redo)
        indices = self.indices.read(a, b - a)
        data = self.data.read(a, b - a)
        check_block(self, r0, r1, ptr, indices, data, redo)
        indices = indices.astype(np.int32, copy=False)
        data = data.astype(np.float32, copy=False)
        ptr -= a
        # Give scipy matching int32 arrays so the constructor does not copy them.
        ptr = ptr.astype(np.int32) if b - a < 2**31 else ptr
        indices = indices if b - a < 2**31 else indices.astype(np.int64)
        return scipy.sparse.csr_matrix((data, indices, ptr), shape=(r1 - r0, self.n_cols), copy=False)

    def row_blocks(self, target_nnz: int, max_rows: int | None = None) -> list[tuple[int, int]]:
        """Contiguous row blocks of about ``target_nnz`` non-zeros each
        (:func:`probe_dask.io.row_blocks.row_blocks`, ``indptr`` read ``chunk_bytes`` at a time)."""
        return row_blocks(self.read_indptr, self.n_rows, self.nnz, target_nnz, max_rows,
                          chunk_rows=max(1, self.chunk_bytes // 8))

    def __repr__(self) -> str:
        return f"CSRSource({self.path!r}, shape={self.shape}, nnz={self.nnz}, kind={self.kind!r})"


def store_dir(npz_path, cache_dir=None) -> str:
    """Folder of the store (and validation manifest) of ``npz_path``.

    ``<npz dir>/.probe-dask-store`` by default, else ``cache_dir/<sha256 of abs path>``.
    """
    path = os.path.abspath(os.fspath(npz_path))
    if cache_dir is None:
        return os.path.join(os.path.dirname(path), ".probe-dask-store")
    digest = hashlib.sha256(path.encode()).hexdigest()[:20]
    return os.path.join(os.path.abspath(os.fspath(cache_dir)), digest)


def open_csr(npz_path, cache_dir=None, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> CSRSource:
    """Open a ``token_acts.npz`` for row-block reads, ingesting or validating it once.

    Parameters
    ----------
    npz_path : str or os.PathLike
        The ``.npz`` written by ``scipy.sparse.save_npz`` (compressed or not).
    cache_dir : str or os.PathLike, optional
        Where stores go (``cache_dir/<hash>/``); default ``<npz dir>/.probe-dask-store``.
    chunk_bytes : int
        Most array bytes held at once while validating or ingesting.

    Raises
    ------
    InputError
        When the file is missing, not a CSR npz, or fails validation (one line).
    """
    if int(chunk_bytes) < 64:
        raise ValueError(f"chunk_bytes must be at least 64, got {chunk_bytes!r}")
    chunk_bytes, path = int(chunk_bytes), os.path.abspath(os.fspath(npz_path))
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError(path, "file", "no such file", EXPECT) from None
    identity = {"path": path, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    sdir = store_dir(path, cache_dir)
    remove_stale_stores(sdir)  # temporaries of runs that died while ingesting (PID gone)
    src = _cached(identity, sdir, chunk_bytes)
    if src is not None:
        return src
    zf, header = open_npz(path)
    with zf:
        committed = ingest(header, zf, identity, sdir, chunk_bytes)
    if not committed:  # read-only location, uncompressed npz: validated, nothing cached
        return _inplace(header, identity, sdir, chunk_bytes)
    src = _cached(identity, sdir, chunk_bytes)  # read back: a commit that lost a race is not trusted
    if src is None:
        raise InputError(sdir, "store", "replaced while being written",
                         "one probe-dask writer at a time")
    return src


def _inplace(header: CSRHeader, identity, sdir, chunk_bytes) -> CSRSource:
    """The source reading an uncompressed npz inside the zip, at its members' offsets."""
    refs = {a: ArrayRef(header.path, m.offset, m.dtype.str, m.count) for a, m in header.arrays.items()}
    return CSRSource(header.path, header.shape, header.nnz, identity, "inplace", sdir,
                     chunk_bytes=chunk_bytes, fingerprint=header.fingerprint, **refs)


def _stale(manifest: str, why: str) -> None:
    # One line, logged: the store is ingested again, and the user learns why it took long.
    logger.warning("%s: %s; ingesting again", manifest, why)


def _cached(identity, sdir, chunk_bytes) -> CSRSource | None:
    """The source from a manifest that matches ``identity``; None when absent, stale or damaged.

    A manifest of this very source (same path, size, mtime) is still checked against the
    source's own headers (fingerprint, shape, nnz) and the store files' sizes, cheaply: a
    store edited or damaged since it was written is ingested again (one logged line saying
    why), never trusted. The values themselves are checked block by block as they are read.
    """
    manifest = os.path.join(sdir, MANIFEST)
    try:
        with open(manifest) as f:
            m = json.load(f)
        if m["version"] != STORE_VERSION or m["source"] != identity:
            return None
        (n_rows, n_cols), nnz, verdict, kind = m["shape"], int(m["nnz"]), m["validation"], m["kind"]
        n_rows, n_cols = int(n_rows), int(n_cols)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        _stale(manifest, f"unreadable ({type(exc).__name__}: {exc})")
        return None
    path = identity["path"]
    zf, header = open_npz(path)  # headers only: a bad npz is the user's one-line error
    zf.close()
    if m.get("fingerprint") != header.fingerprint:
        return None  # same size and mtime but other content (e.g. `cp -p`): ingest again
    if (n_rows, n_cols) != tuple(header.shape) or nnz != header.nnz:
        _stale(manifest, f"shape {n_rows} x {n_cols}, nnz {nnz} disagree with {path} "
                         f"(shape.npy {header.shape[0]} x {header.shape[1]}, nnz {header.nnz})")
        return None
    if not verdict["ok"]:
        raise InputError(path, **verdict["error"])
    if kind == "inplace":  # offsets come from the zip's directory; the verdict is cached
        return _inplace(header, identity, sdir, chunk_bytes)
    refs = {}
    for a, count in zip(ARRAYS, (n_rows + 1, nnz, nnz)):
        f = os.path.join(sdir, STORE_FILES[a])
        want = count * np.dtype(STORE_DTYPES[a]).itemsize
        have = os.path.getsize(f) if os.path.isfile(f) else None
        if have != want:
            _stale(f, f"{'missing' if have is None else f'{have} bytes'}, expected {want} "
                      f"for {count} values ({MANIFEST})")
            return None
        refs[a] = ArrayRef(f, 0, STORE_DTYPES[a], count)
    return CSRSource(path, (n_rows, n_cols), nnz, identity, "store", sdir, chunk_bytes=chunk_bytes,
                     fingerprint=header.fingerprint, **refs)
