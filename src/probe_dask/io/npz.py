"""The ``.npz`` of ``scipy.sparse.save_npz``: zip members, ``.npy`` headers, where the arrays lie.

The one reader of a CSR npz's structure, used by the store (:mod:`probe_dask.io.store`,
:mod:`probe_dask.io.ingest`) and by the plan (:mod:`probe_dask.memory.shardinfo`): which
members are there, ``format.npy`` and ``shape.npy``, each array's dtype and length, and,
for a member stored raw (``compressed=False``), the byte offset of its values in the file.
It also streams a member's values in chunks (decompressing once, checking the CRC at the
end) and fingerprints the zip's central directory.

``.npy`` headers are read with numpy's public ``read_array_header_1_0`` / ``_2_0``; a
format-3.0 header (utf-8 field names; ``save_npz`` never writes one) is refused.

Memory per process: the zip's central directory and the two tiny members
(``format.npy``, ``shape.npy``); while streaming a member, one reused chunk buffer of the
caller's size plus zipfile's 1 MiB reads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
import zipfile
import zlib

import numpy as np

from probe_dask.errors import InputError

__all__ = ["ARRAYS", "EXPECT", "CSRHeader", "open_npz", "member_chunks"]

#: The members ``save_npz`` writes for a CSR matrix (``_is_array.npy`` may come too).
MEMBERS = ("format.npy", "shape.npy", "indptr.npy", "indices.npy", "data.npy")
#: The three arrays of a CSR matrix, in the order they are validated and ingested.
ARRAYS = ("indptr", "indices", "data")
#: What a file must be, as error messages say it.
EXPECT = "a CSR .npz written by scipy.sparse.save_npz"
_PIECE = 2**20  # bytes per zip read: keeps zipfile's own buffers small
_SMALL = 2**20  # format.npy / shape.npy larger than this are not what save_npz writes
_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}


@dataclasses.dataclass(frozen=True)
class NpyMember:
    """One 1-D ``.npy`` member: its zip entry, dtype, length, and data offset in the file
    (None when the member is compressed and cannot be read in place)."""

    info: zipfile.ZipInfo
    dtype: np.dtype
    count: int
    offset: int | None

    @property
    def name(self) -> str:
        return self.info.filename

    @property
    def compressed(self) -> bool:
        return self.info.compress_type != zipfile.ZIP_STORED


@dataclasses.dataclass(frozen=True)
class CSRHeader:
    """A CSR npz as its headers describe it: ``shape``, ``nnz``, the three ``arrays``
    (``{"indptr"|"indices"|"data": NpyMember}``) and the central directory's ``fingerprint``."""

    path: str
    shape: tuple
    nnz: int
    arrays: dict
    fingerprint: str

    @property
    def inplace(self) -> bool:
        """All three arrays stored raw: rows can be read inside the zip."""
        return all(m.offset is not None for m in self.arrays.values())


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def open_zip(path) -> zipfile.ZipFile:
    """Open ``path`` as a zip; one-line :class:`InputError` when absent or not a zip."""
    try:
        return zipfile.ZipFile(path)
    except FileNotFoundError:
        raise InputError(path, "file", "no such file", EXPECT) from None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        raise InputError(path, "zip archive", "not a zip archive (truncated or corrupt)",
                         EXPECT) from None


def open_npz(path) -> tuple[zipfile.ZipFile, CSRHeader]:
    """Open a CSR npz and read its headers; the caller closes the zip."""
    zf = open_zip(path)
    try:
        return zf, read_csr_header(path, zf)
    except BaseException:
        zf.close()
        raise


def read_csr_header(path, zf: zipfile.ZipFile) -> CSRHeader:
    """Check members, format, shape and array headers (dtypes, lengths); read no values."""
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
    arrays = {a: _array_member(path, zf, infos[a + ".npy"]) for a in ARRAYS}
    for a, kinds, want in (("indptr", "iu", "an integer dtype (int32 or int64)"),
                           ("indices", "iu", "an integer dtype (int32 or int64)"),
                           ("data", "f", "a floating-point dtype (float32)")):
        if arrays[a].dtype.kind not in kinds:
            raise InputError(path, f"{a}.npy dtype", str(arrays[a].dtype), want)
    if arrays["indptr"].count != n_rows + 1:
        raise InputError(path, "indptr.npy length", arrays["indptr"].count, f"n_rows + 1 = {n_rows + 1}")
    nnz = arrays["data"].count
    if arrays["indices"].count != nnz:
        raise InputError(path, "indices.npy length", f"{arrays['indices'].count} (data.npy has {nnz})",
                         "the length of data.npy")
    return CSRHeader(path, (n_rows, n_cols), nnz, arrays, fingerprint(zf))


def read_npy_header(path, name, f) -> tuple[np.dtype, int]:
    """(dtype, length) of the 1-D ``.npy`` array whose header starts at ``f``'s position."""
    try:
        version = np.lib.format.read_magic(f)
    except Exception as exc:
        raise InputError(path, f"{name} header", f"unreadable ({_one_line(exc)})",
                         "a .npy header") from None
    if version not in _HEADER_READERS:
        raise InputError(path, f"{name} header", f".npy format version {version[0]}.{version[1]}",
                         ".npy format version 1.0 or 2.0 (as save_npz writes)")
    try:
        shape, _, dtype = _HEADER_READERS[version](f)
    except Exception as exc:
        raise InputError(path, f"{name} header", f"unreadable ({_one_line(exc)})",
                         "a .npy header") from None
    if len(shape) != 1:
        raise InputError(path, name, f"array of shape {shape}", "a 1-D array")
    return np.dtype(dtype), int(shape[0])


def _small_member(path, zf, info) -> np.ndarray:
    if info.file_size > _SMALL:
        raise InputError(path, info.filename, f"{info.file_size} bytes", f"a tiny array ({EXPECT})")
    try:
        with zf.open(info) as f:
            return np.lib.format.read_array(f, allow_pickle=False)
    except Exception as exc:  # zip, zlib and .npy errors alike: the member is unreadable
        raise InputError(path, info.filename, f"unreadable ({_one_line(exc)})", "a .npy array") from None


def _array_member(path, zf, info) -> NpyMember:
    """The header of one array member, and its data offset when it is stored raw."""
    name = info.filename
    if info.compress_type != zipfile.ZIP_STORED:
        try:
            with zf.open(info) as f:
                dtype, count = read_npy_header(path, name, f)
        except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
            raise InputError(path, name, f"corrupt member ({_one_line(exc)})",
                             "an intact zip member") from None
        return NpyMember(info, dtype, count, None)
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
        dtype, count = read_npy_header(path, name, f)
        header_len = f.tell() - start
    whole = header_len + count * dtype.itemsize
    if info.file_size != whole or start + info.file_size > os.path.getsize(path):
        raise InputError(path, name, f"{info.file_size} bytes stored",
                         f"{whole} bytes for {count} x {dtype}")
    return NpyMember(info, dtype, count, start + header_len)


def member_chunks(path, zf, member: NpyMember, elems: int):
    """Yield ``member``'s values in chunks of ``elems`` items, read (decompressed) once, in order.

    Each chunk is a view of one reused buffer: use it before asking for the next. The
    member must end with its last value (zipfile then checks the CRC).
    """
    name, dtype, count = member.name, member.dtype, member.count
    buf = bytearray(min(count, elems) * dtype.itemsize)
    view = memoryview(buf)
    try:
        with zf.open(member.info) as f:
            read_npy_header(path, name, f)
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


def fingerprint(zf: zipfile.ZipFile) -> str:
    """Digest of the central directory: names, CRC-32s, sizes and offsets of the members.

    Content replaced under the same size and mtime (``cp -p``, ``rsync -t``) changes it.
    """
    rows = sorted((i.filename, i.CRC, i.compress_size, i.file_size, i.header_offset)
                  for i in zf.infolist())
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:24]
