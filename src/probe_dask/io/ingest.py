"""Validating a CSR npz in one streaming pass, ingesting a compressed one into a store.

A compressed npz (the ``save_npz`` default) cannot be sliced, so its arrays are streamed
once, converted to little-endian ``int64`` / ``int32`` / ``float32`` and written to the
store files (:data:`STORE_FILES`) while they are checked. An uncompressed npz is checked
the same way, in place, and nothing but the manifest is written. Either way the verdict
goes to ``store.json`` (:data:`MANIFEST`) with the source's identity, so a file, good or
bad, is streamed once; the folder is written under a temporary name and renamed into
place when whole and synced to disk (private, 0700, until then; then readable as the umask
allows and never group- or world-writable; the parent folder synced after the rename).
:mod:`probe_dask.io.store` reads the store back.

Memory per process: at most ``chunk_bytes`` of array data at a time (a raw chunk and its
converted copy), plus single ``indptr`` entries read back to name the row of a bad value.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np

from probe_dask.errors import InputError, MachineError
from probe_dask.io.arrayref import ArrayRef
from probe_dask.io.durable import fsync_dir, fsync_tree
from probe_dask.io.npz import ARRAYS, CSRHeader, member_chunks
from probe_dask.io.outputs import current_umask, publish_mode
from probe_dask.io.tempfiles import remove_stale, temp_dir

__all__ = ["ingest", "validate", "remove_stale_stores", "STORE_VERSION", "STORE_DTYPES", "STORE_FILES", "MANIFEST"]

#: Version of the store's layout; a manifest of another version is ingested again.
STORE_VERSION = 1
#: The store's arrays: little-endian dtypes and file names.
STORE_DTYPES = {"indptr": "<i8", "indices": "<i4", "data": "<f4"}
STORE_FILES = {"indptr": "indptr.i64", "indices": "indices.i32", "data": "data.f32"}
#: The manifest: source identity, kind, fingerprint, shape, nnz and the validation verdict.
MANIFEST = "store.json"


def ingest(header: CSRHeader, zf, identity: dict, sdir: str, chunk_bytes: int) -> bool:
    """Validate ``header``'s npz and commit its store folder ``sdir`` with the verdict.

    Returns
    -------
    bool
        True when the store was committed (read it back); False when ``sdir`` cannot be
        written and the npz is uncompressed: it was validated and nothing was cached.

    Raises
    ------
    InputError
        The validation's error (after its verdict was committed), or an unwritable
        ``sdir`` for a compressed npz (which cannot be read without a store).
    """
    kind = "inplace" if header.inplace else "store"
    try:
        os.makedirs(os.path.dirname(sdir), mode=0o777 & ~0o022, exist_ok=True)
        tmp = temp_dir(sdir)  # renamed into place when whole; names host and PID (tempfiles)
        os.mkdir(tmp, 0o700)  # private until renamed: no one else can swap a file inside
    except OSError as exc:
        if kind == "store":
            raise InputError(sdir, "cache_dir", f"not writable ({exc.strerror})",
                             "a writable folder for the ingested store "
                             "(--cache-dir DIR, or cache_dir=)") from None
        validate(header, zf, None, chunk_bytes)  # read-only run: validate, cache nothing
        return False
    try:
        try:
            validate(header, zf, tmp if kind == "store" else None, chunk_bytes)
            verdict = {"ok": True, "error": None}
        except InputError as err:  # cache the verdict: a bad 27 GB file is streamed once
            for name in os.listdir(tmp):
                os.remove(os.path.join(tmp, name))
            fields = ("field", "found", "expected")
            verdict = {"ok": False, "error": {k: str(getattr(err, k)) for k in fields}}
        with open(os.path.join(tmp, MANIFEST), "w") as f:
            json.dump({"version": STORE_VERSION, "source": identity, "kind": kind,
                       "fingerprint": header.fingerprint, "shape": list(header.shape),
                       "nnz": header.nnz, "validation": verdict}, f, indent=1)
        _publish(tmp)
        fsync_tree(tmp)  # every file and the folder on disk before the rename publishes them
        _commit(tmp, sdir)
    except OSError as exc:  # disk full, quota: one line naming the store, exit 2
        raise MachineError(sdir, exc, "ingesting " + os.path.basename(header.path)
                           + "; free space there or pass --cache-dir DIR") from None
    finally:  # also when a signal stops the run (app/signals.py raises in this thread)
        shutil.rmtree(tmp, ignore_errors=True)
    if not verdict["ok"]:
        raise InputError(header.path, **verdict["error"])
    return True


def _publish(tmp: str) -> None:
    # Readable as the umask allows, never group- or world-writable (a planted store would
    # change results); set just before the rename that makes the folder visible.
    for name in os.listdir(tmp):
        os.chmod(os.path.join(tmp, name), publish_mode())
    os.chmod(tmp, (0o777 & ~current_umask()) & ~0o022)


def _commit(tmp: str, sdir: str) -> None:
    # rename(2) cannot replace a non-empty folder: move the old store aside first, so
    # readers see either the old complete store or the new complete one.
    old = temp_dir(sdir, "old")
    try:
        os.replace(sdir, old)
    except OSError:
        old = None  # no old store (or a concurrent writer moved it)
    try:
        os.replace(tmp, sdir)
    except OSError:
        pass  # a concurrent writer committed first; the caller reads back what is there
    fsync_dir(os.path.dirname(sdir))  # the rename itself on disk (io/durable.py)
    if old is not None:
        if os.path.isdir(old) and not os.path.islink(old):
            shutil.rmtree(old, ignore_errors=True)
        else:  # the store path was a regular file (or a link)
            try:
                os.unlink(old)
            except OSError:
                pass


def remove_stale_stores(sdir: str) -> list:
    """Remove ``<sdir>.tmp-*`` / ``<sdir>.old-*`` folders of dead runs (their PID is gone)."""
    return remove_stale(os.path.dirname(sdir), [os.path.basename(sdir)])


def _row_of(indptr: ArrayRef, n_rows: int, p: int) -> int:
    """Row holding value position ``p``: the largest r with indptr[r] <= p (binary search)."""
    lo, hi = 0, n_rows - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if int(indptr.read(mid, 1)[0]) <= p:
            lo = mid
        else:
            hi = mid - 1
    return lo


def validate(header: CSRHeader, zf, out_dir: str | None, chunk_bytes: int) -> None:
    """Check indptr, then indices, then data in one streaming pass; write the store if ``out_dir``.

    indptr goes first so that a bad index or value can be located by row (binary
    search in the indptr already checked, in the zip or in the store being written).
    """
    path, (n_rows, n_cols), nnz = header.path, header.shape, header.nnz
    inplace = header.inplace
    refs = {a: ArrayRef(path, m.offset or 0, m.dtype.str, m.count) for a, m in header.arrays.items()}
    if inplace:
        indptr = refs["indptr"]
    else:
        indptr = ArrayRef(os.path.join(out_dir, STORE_FILES["indptr"]), 0, "<i8", n_rows + 1)
    last, n_bad, first_bad = None, 0, None
    for a in ARRAYS:
        ref = refs[a]
        dtype, target = np.dtype(ref.dtype), np.dtype(STORE_DTYPES[a])
        elems = max(1, chunk_bytes // (dtype.itemsize + target.itemsize))
        if inplace:
            chunks = (ref.read(s, min(elems, ref.count - s)) for s in range(0, ref.count, elems))
        else:
            chunks = member_chunks(path, zf, header.arrays[a], elems)
        out = open(os.path.join(out_dir, STORE_FILES[a]), "wb") if out_dir else None
        try:
            pos = 0
            for c in chunks:
                if a == "indptr":
                    if pos == 0 and c[0] != 0:
                        raise InputError(path, "indptr.npy[0]", int(c[0]), "0")
                    head_bad = last is not None and c[0] < last
                    dec = c[1:] < c[:-1]
                    if head_bad or dec.any():
                        i = pos if head_bad else pos + 1 + int(np.argmax(dec))
                        raise InputError(path, "indptr.npy", f"indptr[{i}] < indptr[{i - 1}] "
                                         f"(row {i - 1} ends before it starts)", "non-decreasing indptr")
                    last = int(c[-1])
                elif a == "indices":
                    if c.size and (c.min() < 0 or c.max() >= n_cols):
                        j = int(np.argmax((c < 0) | (c >= n_cols)))
                        row = _row_of(indptr, n_rows, pos + j)
                        raise InputError(path, "indices.npy", f"column index {int(c[j])} in row {row}",
                                         f"0 <= index < n_cols = {n_cols}")
                else:
                    with np.errstate(over="ignore", invalid="ignore"):  # overflow -> inf, counted
                        c = c.astype(target, copy=False)  # checked as it will be read: float32
                    finite = np.isfinite(c)
                    bad = c.size - int(np.count_nonzero(finite))
                    if bad and first_bad is None:
                        first_bad = pos + int(np.argmin(finite))
                    n_bad += bad
                if out is not None:  # file.write, not tofile: a full disk raises ENOSPC
                    out.write(np.ascontiguousarray(c, dtype=target).data)
                pos += c.size
        finally:
            if out is not None:
                out.close()
        if a == "indptr" and last != nnz:
            raise InputError(path, "indptr.npy[-1]", last, f"nnz = {nnz} (length of data.npy)")
    if n_bad:
        raise InputError(path, "data.npy", f"{n_bad} non-finite values (NaN or inf), first in row "
                         f"{_row_of(indptr, n_rows, first_bad)}", "finite values")
