"""Read ``token_acts.npz`` (a CSR matrix written by ``scipy.sparse.save_npz``) out of core.

An uncompressed npz (``compressed=False``) stores its ``.npy`` members raw inside the
zip, so rows are read in place at the members' data offsets. A compressed npz (the
``save_npz`` default) cannot be sliced, so it is streamed once into a store folder of
raw little-endian arrays (``indptr.i64``, ``indices.i32``, ``data.f32``) next to a
``store.json`` manifest that records the source's identity (path, size, mtime_ns), the
shape, nnz and the validation result. The store is reused while the source is unchanged.
Both kinds are validated once, in a streaming pass, and the result is cached.

Memory per process: :func:`open_csr` holds at most ``chunk_bytes`` of array data
(raw chunk plus its converted copy) while validating or ingesting; a
:class:`CSRSource` holds only paths and offsets; ``read_rows`` holds exactly one block
in fresh buffers (``np.fromfile``, never ``np.memmap``: mapped pages count in a
worker's RSS, which the nanny and Slurm's cgroup watch).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import struct
import uuid
import zipfile
import zlib

import numpy as np
import scipy.sparse

from probe_dask.errors import InputError

__all__ = ["ArrayRef", "CSRSource", "open_csr", "store_dir", "DEFAULT_CHUNK_BYTES"]

DEFAULT_CHUNK_BYTES = 64 * 2**20
STORE_VERSION = 1
MEMBERS = ("format.npy", "shape.npy", "indptr.npy", "indices.npy", "data.npy")
_ARRAYS = ("indptr", "indices", "data")
_STORE_DTYPES = {"indptr": "<i8", "indices": "<i4", "data": "<f4"}
_STORE_FILES = {"indptr": "indptr.i64", "indices": "indices.i32", "data": "data.f32"}
_PIECE = 2**20  # bytes per zip read: keeps zipfile's own buffers small
_SMALL = 2**20  # format.npy / shape.npy larger than this are not what save_npz writes
_EXPECT = "a CSR .npz written by scipy.sparse.save_npz"


@dataclasses.dataclass(frozen=True)
class ArrayRef:
    """A 1-D array stored raw in a file at a byte offset (a zip member or a store file)."""

    file: str
    offset: int
    dtype: str
    count: int

    def read(self, start: int, count: int) -> np.ndarray:
        """Read ``count`` items from item ``start`` into a fresh buffer."""
        dt = np.dtype(self.dtype)
        if count <= 0:
            return np.empty(0, dt)
        out = np.fromfile(self.file, dtype=dt, count=count, offset=self.offset + start * dt.itemsize)
        if out.size != count:
            raise InputError(self.file, "size", f"{out.size} items at item {start}",
                             f"{count} (file truncated since it was opened?)")
        return out


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
        (scipy needs indptr and indices of one dtype).
        """
        ptr = self.read_indptr(r0, r1)
        a, b = int(ptr[0]), int(ptr[-1])
        indices = self.indices.read(a, b - a).astype(np.int32, copy=False)
        data = self.data.read(a, b - a).astype(np.float32, copy=False)
        ptr -= a
        # Give scipy matching int32 arrays so the constructor does not copy them.
        ptr = ptr.astype(np.int32) if b - a < 2**31 else ptr
        indices = indices if b - a < 2**31 else indices.astype(np.int64)
        return scipy.sparse.csr_matrix((data, indices, ptr), shape=(r1 - r0, self.n_cols), copy=False)

    def row_blocks(self, target_nnz: int, max_rows: int | None = None) -> list[tuple[int, int]]:
        """Plan contiguous row blocks of about ``target_nnz`` non-zeros each.

        Blocks cover ``[0, n_rows)``, never split a row, and are balanced: the cut
        points are the row boundaries nearest to ``k * nnz / n_blocks``. A single row
        wider than ``target_nnz`` is a block of its own. ``max_rows`` (optional) further
        splits blocks holding many empty rows.

        Returns
        -------
        list of (int, int)
            ``(r0, r1)`` pairs, half-open.
        """
        if int(target_nnz) < 1:
            raise ValueError(f"target_nnz must be a positive int, got {target_nnz!r}")
        n_rows, nnz = self.n_rows, self.nnz
        n_blocks = max(1, -(-nnz // int(target_nnz)))
        cuts = self._nearest_boundaries((np.arange(1, n_blocks, dtype=np.int64) * nnz) // n_blocks)
        bounds = np.unique(np.concatenate([[0], cuts, [n_rows]])).tolist()
        blocks = list(zip(bounds[:-1], bounds[1:]))
        if max_rows:
            split = []
            for r0, r1 in blocks:
                k = -(-(r1 - r0) // int(max_rows))
                edges = np.linspace(r0, r1, k + 1).round().astype(int).tolist()
                split += list(zip(edges[:-1], edges[1:]))
            blocks = split
        return [(int(r0), int(r1)) for r0, r1 in blocks]

    def _nearest_boundaries(self, targets: np.ndarray) -> np.ndarray:
        # Scan indptr in chunks (bounded memory); targets are ascending and in (0, nnz).
        out = np.empty(targets.size, np.int64)
        step = max(1, self.chunk_bytes // 8)
        ti = 0
        for s in range(0, self.n_rows, step):
            if ti == targets.size:
                break
            v = self.read_indptr(s, min(self.n_rows, s + step))
            tj = int(np.searchsorted(targets, v[-1], side="right"))
            t = targets[ti:tj]
            i = np.searchsorted(v, t, side="left")  # v[i-1] < t <= v[i], 1 <= i
            out[ti:tj] = s + np.where(t - v[i - 1] < v[i] - t, i - 1, i)
            ti = tj
        return out

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
        raise InputError(path, "file", "no such file", _EXPECT) from None
    identity = {"path": path, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    sdir = store_dir(path, cache_dir)
    src = _cached(identity, sdir, chunk_bytes)
    if src is not None:
        return src
    src, zf, infos = _open_zip(path, identity, sdir, chunk_bytes)
    with zf:
        try:
            os.makedirs(os.path.dirname(sdir), exist_ok=True)
            tmp = f"{sdir}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"  # renamed into place when whole
            os.mkdir(tmp)
        except OSError as exc:
            if src.kind == "store":
                raise InputError(sdir, "cache_dir", f"not writable ({exc.strerror})",
                                 "a writable folder for the ingested store "
                                 "(--cache-dir DIR, or cache_dir=)") from None
            _validate(src, zf, infos, None, chunk_bytes)  # read-only run: validate, cache nothing
            return src
        try:
            try:
                _validate(src, zf, infos, tmp if src.kind == "store" else None, chunk_bytes)
                verdict = {"ok": True, "error": None}
            except InputError as err:  # cache the verdict: a bad 27 GB file is streamed once
                for name in os.listdir(tmp):
                    os.remove(os.path.join(tmp, name))
                fields = ("field", "found", "expected")
                verdict = {"ok": False, "error": {k: str(getattr(err, k)) for k in fields}}
            with open(os.path.join(tmp, "store.json"), "w") as f:
                json.dump({"version": STORE_VERSION, "source": identity, "kind": src.kind,
                           "fingerprint": src.fingerprint, "shape": list(src.shape), "nnz": src.nnz,
                           "validation": verdict}, f, indent=1)
            _commit(tmp, sdir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if not verdict["ok"]:
        raise InputError(path, **verdict["error"])
    src = _cached(identity, sdir, chunk_bytes)  # read back: a commit that lost a race is not trusted
    if src is None:
        raise InputError(sdir, "store", "replaced while being written",
                         "one probe-dask writer at a time")
    return src


def _cached(identity, sdir, chunk_bytes) -> CSRSource | None:
    """The source from a manifest that matches ``identity``; None when absent, stale or damaged."""
    try:
        with open(os.path.join(sdir, "store.json")) as f:
            m = json.load(f)
        if m["version"] != STORE_VERSION or m["source"] != identity:
            return None
        (n_rows, n_cols), nnz, verdict = m["shape"], m["nnz"], m["validation"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    path = identity["path"]
    fingerprint = _zip_fingerprint(path)
    if fingerprint is None or m.get("fingerprint") != fingerprint:
        return None  # same size and mtime but other content (e.g. `cp -p`): ingest again
    if not verdict["ok"]:
        raise InputError(path, **verdict["error"])
    if m["kind"] == "inplace":
        src, zf, _ = _open_zip(path, identity, sdir, chunk_bytes)
        zf.close()  # offsets come from the zip's directory; the verdict is cached
        return src
    refs = {}
    for a, count in zip(_ARRAYS, (n_rows + 1, nnz, nnz)):
        f = os.path.join(sdir, _STORE_FILES[a])
        if not os.path.isfile(f) or os.path.getsize(f) != count * np.dtype(_STORE_DTYPES[a]).itemsize:
            return None  # damaged store: ingest again
        refs[a] = ArrayRef(f, 0, _STORE_DTYPES[a], count)
    return CSRSource(path, (n_rows, n_cols), nnz, identity, "store", sdir, chunk_bytes=chunk_bytes,
                     fingerprint=fingerprint, **refs)


def _fingerprint(zf: zipfile.ZipFile) -> str:
    """Digest of the central directory: names, CRC-32s, sizes and offsets of the members."""
    rows = sorted((i.filename, i.CRC, i.compress_size, i.file_size, i.header_offset)
                  for i in zf.infolist())
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:24]


def _zip_fingerprint(path) -> str | None:
    try:
        with zipfile.ZipFile(path) as zf:
            return _fingerprint(zf)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return None


def _commit(tmp: str, sdir: str) -> None:
    # rename(2) cannot replace a non-empty folder: move the old store aside first, so
    # readers see either the old complete store or the new complete one.
    old = f"{sdir}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        os.replace(sdir, old)
    except OSError:
        old = None  # no old store (or a concurrent writer moved it)
    try:
        os.replace(tmp, sdir)
    except OSError:
        pass  # a concurrent writer committed first; the caller reads back what is there
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------- reading the zip


def _open_zip(path, identity, sdir, chunk_bytes):
    """Check members, format, shape and array headers; return (source, zipfile, infos)."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        raise InputError(path, "zip archive", "not a zip archive (truncated or corrupt)",
                         _EXPECT) from None
    try:
        infos = {i.filename: i for i in zf.infolist()}
        missing = [m for m in MEMBERS if m not in infos]
        if missing:
            raise InputError(path, "members", "missing " + ", ".join(missing), ", ".join(MEMBERS))
        fmt = _small_member(path, zf, infos["format.npy"])
        if fmt.shape != () or fmt.item() not in (b"csr", "csr"):
            raise InputError(path, "format.npy", repr(fmt.tolist()), "b'csr'")
        shp = _small_member(path, zf, infos["shape.npy"])
        if shp.shape != (2,) or shp.dtype.kind not in "iu":
            raise InputError(path, "shape.npy", f"{shp.dtype} array of shape {shp.shape}", "2 ints")
        n_rows, n_cols = (int(x) for x in shp)
        if n_rows < 1:
            raise InputError(path, "shape.npy", f"{n_rows} rows (empty shard)", "at least 1 row")
        if not 1 <= n_cols < 2**31:
            raise InputError(path, "shape.npy", f"{n_cols} columns", "1 <= n_cols < 2**31")
        heads = {a: _array_header(path, zf, infos[a + ".npy"]) for a in _ARRAYS}
        for a, kinds, want in (("indptr", "iu", "an integer dtype (int32 or int64)"),
                               ("indices", "iu", "an integer dtype (int32 or int64)"),
                               ("data", "f", "a floating-point dtype (float32)")):
            if heads[a][0].kind not in kinds:
                raise InputError(path, f"{a}.npy dtype", str(heads[a][0]), want)
        if heads["indptr"][1] != n_rows + 1:
            raise InputError(path, "indptr.npy length", heads["indptr"][1], f"n_rows + 1 = {n_rows + 1}")
        nnz = heads["data"][1]
        if heads["indices"][1] != nnz:
            raise InputError(path, "indices.npy length", f"{heads['indices'][1]} (data.npy has {nnz})",
                             "the length of data.npy")
        inplace = all(heads[a][2] is not None for a in _ARRAYS)
        refs = {a: ArrayRef(path, heads[a][2] or 0, heads[a][0].str, heads[a][1]) for a in _ARRAYS}
        src = CSRSource(path, (n_rows, n_cols), nnz, identity, "inplace" if inplace else "store",
                        sdir, chunk_bytes=chunk_bytes, fingerprint=_fingerprint(zf), **refs)
        return src, zf, infos
    except BaseException:
        zf.close()
        raise


def _small_member(path, zf, info) -> np.ndarray:
    if info.file_size > _SMALL:
        raise InputError(path, info.filename, f"{info.file_size} bytes", f"a tiny array ({_EXPECT})")
    try:
        with zf.open(info) as f:
            return np.lib.format.read_array(f, allow_pickle=False)
    except Exception as exc:  # zip, zlib and .npy errors alike: the member is unreadable
        raise InputError(path, info.filename, f"unreadable ({_one_line(exc)})", "a .npy array") from None


def _read_npy_header(path, name, f):
    try:
        version = np.lib.format.read_magic(f)
        read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version in read:
            shape, _, dtype = read[version](f)
        else:  # format 3.0 (utf-8 header); numpy has no public reader for it
            shape, _, dtype = np.lib.format._read_array_header(f, version)
    except Exception as exc:
        raise InputError(path, f"{name} header", f"unreadable ({_one_line(exc)})",
                         "a .npy header") from None
    if len(shape) != 1:
        raise InputError(path, name, f"array of shape {shape}", "a 1-D array")
    return np.dtype(dtype), int(shape[0])


def _array_header(path, zf, info):
    """(dtype, count, data offset inside the zip or None when compressed)."""
    name = info.filename
    if info.compress_type != zipfile.ZIP_STORED:
        try:
            with zf.open(info) as f:
                dtype, count = _read_npy_header(path, name, f)
        except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
            raise InputError(path, name, f"corrupt member ({_one_line(exc)})",
                             "an intact zip member") from None
        return dtype, count, None
    with open(path, "rb") as f:
        # The local header's extra field can differ from the central directory's,
        # so the data offset comes from the local header itself.
        f.seek(info.header_offset)
        local = f.read(30)
        if len(local) != 30 or local[:4] != b"PK\x03\x04":
            raise InputError(path, name, "bad local zip header", "an intact zip member")
        n_name, n_extra = struct.unpack("<HH", local[26:30])
        start = info.header_offset + 30 + n_name + n_extra
        f.seek(start)
        dtype, count = _read_npy_header(path, name, f)
        header_len = f.tell() - start
    whole = header_len + count * dtype.itemsize
    if info.file_size != whole or start + info.file_size > os.path.getsize(path):
        raise InputError(path, name, f"{info.file_size} bytes stored",
                         f"{whole} bytes for {count} x {dtype}")
    return dtype, count, start + header_len


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# ---------------------------------------------------------------- streaming validation


def _zip_chunks(path, zf, info, dtype, count, elems):
    """Yield ``dtype`` chunks of a compressed member, decompressed once, in order.

    Each chunk is a view of one reused buffer: use it before asking for the next.
    """
    name = info.filename
    buf = bytearray(min(count, elems) * dtype.itemsize)
    view = memoryview(buf)
    try:
        with zf.open(info) as f:
            _read_npy_header(path, name, f)
            left = count
            while left:
                k = min(left, elems)
                need, got = k * dtype.itemsize, 0
                while got < need:
                    piece = f.read(min(_PIECE, need - got))
                    if not piece:
                        raise InputError(path, name, f"{count - left + got // dtype.itemsize} items",
                                         f"{count} items (member truncated)")
                    view[got:got + len(piece)] = piece
                    got += len(piece)
                yield np.frombuffer(buf, dtype, count=k)
                left -= k
            if f.read(1):  # also makes zipfile check the CRC
                raise InputError(path, name, "bytes after the array", f"exactly {count} items")
    except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise InputError(path, name, f"corrupt compressed data ({_one_line(exc)})",
                         "an intact zip member") from None


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


def _validate(src: CSRSource, zf, infos, out_dir, chunk_bytes) -> None:
    """Check indptr, then indices, then data in one streaming pass; write the store if ``out_dir``.

    indptr goes first so that a bad index or value can be located by row (binary
    search in the indptr already checked, in the zip or in the store being written).
    """
    path, (n_rows, n_cols), nnz = src.path, src.shape, src.nnz
    if src.kind == "inplace":
        indptr = src.indptr
    else:
        indptr = ArrayRef(os.path.join(out_dir, _STORE_FILES["indptr"]), 0, "<i8", n_rows + 1)
    last, n_bad, first_bad = None, 0, None
    for a in _ARRAYS:
        ref = getattr(src, a)
        dtype, target = np.dtype(ref.dtype), np.dtype(_STORE_DTYPES[a])
        elems = max(1, chunk_bytes // (dtype.itemsize + target.itemsize))
        if src.kind == "inplace":
            chunks = (ref.read(s, min(elems, ref.count - s)) for s in range(0, ref.count, elems))
        else:
            chunks = _zip_chunks(path, zf, infos[a + ".npy"], dtype, ref.count, elems)
        out = open(os.path.join(out_dir, _STORE_FILES[a]), "wb") if out_dir else None
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
                if out is not None:
                    c.astype(target, copy=False).tofile(out)
                pos += c.size
        finally:
            if out is not None:
                out.close()
        if a == "indptr" and last != nnz:
            raise InputError(path, "indptr.npy[-1]", last, f"nnz = {nnz} (length of data.npy)")
    if n_bad:
        raise InputError(path, "data.npy", f"{n_bad} non-finite values (NaN or inf), first in row "
                         f"{_row_of(indptr, n_rows, first_bad)}", "finite values")
