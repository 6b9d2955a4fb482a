"""The latent-major layout of a shard on disk: every latent's events, rows in shard order.

A fit whose latent ranges do not fit in worker memory reads them from here every pass
(``engine.range_data``): a range's events are one contiguous span of each file, so a pass
reads exactly the latents that still have active pairs, in long sequential reads.

A layout is a folder::

    layout.json      version, the input's identity, shape, nnz
    latent_ptr.i64   (L + 1,) offsets: latent l's events are [ptr[l], ptr[l + 1])
    rows.i32         (nnz,) shard row of each event, ascending within a latent
    values.f32       (nnz,) activation value of each event
    labels.u8        (n_rows,) class of each row

It is built in two steps of independent tasks (the Dask side is ``engine.layout``):
:func:`write_part` writes each CSR row block's events grouped by latent as a *part*
(its own ``ptr``, ``rows``, ``values`` files) and its rows' labels into ``labels.u8``;
then :func:`merge_segment` interleaves, for one segment of latents, every part's span of
those latents in row order and writes it at its place in ``rows.i32`` and ``values.f32``
(disjoint regions: segments run in parallel on any worker that sees the folder), then
punches the spans it copied out of the parts (``io.holes``), so the parts shrink as the
layout grows. Parts are deleted and the folder renamed into place by
:func:`commit_layout`; until then it has a temporary name, so a build killed halfway
leaves nothing that looks finished (``io.tempfiles`` removes it later). A layout is reused
while ``layout.json`` names the same input (:func:`open_layout`).

Memory per task: writing a part, the row block's events and their int64 permutation (the
caller's ``LatentBlock``, about ``16 nnz_b``); merging a segment, its events in and out
(``16 nnz_s``, ``nnz_s`` at most :data:`SEGMENT_NNZ` unless one latent holds more) plus
every part's ``L_s + 1`` offsets (and up to 1024 beyond each end, to find the latents its
edge blocks share); reading (:class:`LatentMajorLayout`), what the caller asks for
(``read_runs``). Disk while building: about one layout (``8 nnz``), the parts'
events moving into it segment by segment; twice that where the file system cannot punch
holes. :func:`check_build_disk` refuses a build the folder's free space cannot hold.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from probe_dask.errors import MachineError
from probe_dask.io.durable import fsync_dir, fsync_path
from probe_dask.io.holes import can_punch_holes, punch_hole
from probe_dask.io.tempfiles import temp_dir

__all__ = ["SEGMENT_NNZ", "LatentMajorLayout", "open_layout", "begin_layout", "size_events",
           "write_part", "merge_segment", "segment_bounds", "commit_layout",
           "build_disk_bytes", "check_build_disk"]

LAYOUT_VERSION = 1
#: Events a merge task interleaves at once (128 MiB in and out): bounds its memory.
SEGMENT_NNZ = 2**23
_FILES = {"rows": ("rows.i32", np.int32), "values": ("values.f32", np.float32)}
#: A file system block, and the events of one in each event file (both 4-byte): a span's
#: partial blocks are given back once the latents that share them are merged too.
_BLOCK = 4096
_BLOCK_EVENTS = _BLOCK // 4
#: Latents read beyond a segment's, each side, to find those that share its edge blocks.
_EDGE_LATENTS = _BLOCK_EVENTS


def _pread_into(fd: int, out: np.ndarray, offset: int) -> None:
    """Fill ``out`` from byte ``offset`` of ``fd`` (short reads retried; EOF is an error)."""
    view = memoryview(out).cast("B")
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            raise OSError(f"unexpected end of file at byte {offset + done}")
        done += n


def _pwrite(fd: int, data: np.ndarray, offset: int) -> None:
    view = memoryview(np.ascontiguousarray(data)).cast("B")
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


def _write_file(path, data: np.ndarray) -> None:
    with open(path, "wb") as f:
        f.write(memoryview(np.ascontiguousarray(data)).cast("B"))


def part_prefix(building: str | os.PathLike, index: int) -> Path:
    """The files of part ``index`` of a layout being built: ``<prefix>.ptr.i64`` etc."""
    return Path(building) / "parts" / f"part-{index:06d}"


def begin_layout(final: str | os.PathLike, n_rows: int) -> str:
    """A fresh temporary folder for the layout that becomes ``final``, with its label file
    at full size (sparse until the parts write it). Returns its path."""
    building = temp_dir(final)
    (Path(building) / "parts").mkdir(parents=True)
    with open(Path(building) / "labels.u8", "wb") as f:
        f.truncate(int(n_rows))
    return building


def size_events(building, nnz: int) -> None:
    """Make the event files of a layout being built at their full size (sparse until the
    segments write them), once the parts have counted the events."""
    for name, dtype in _FILES.values():
        with open(Path(building) / name, "wb") as f:
            f.truncate(int(nnz) * np.dtype(dtype).itemsize)


def write_part(building, index: int, latent_ptr, rows, values, labels, row_offset: int):
    """Write one row block's events (grouped by latent, block-local ``rows``) as part
    ``index``, and its ``labels`` at ``row_offset`` of ``labels.u8``. Returns the block's
    non-zeros per latent (int64)."""
    prefix = part_prefix(building, index)
    _write_file(f"{prefix}.ptr.i64", np.asarray(latent_ptr, dtype=np.int64))
    _write_file(f"{prefix}.{_FILES['rows'][0]}",
                np.asarray(rows, dtype=np.int32) + np.int32(row_offset))
    _write_file(f"{prefix}.{_FILES['values'][0]}", np.asarray(values, dtype=np.float32))
    fd = os.open(Path(building) / "labels.u8", os.O_WRONLY)
    try:
        _pwrite(fd, np.asarray(labels, dtype=np.uint8), int(row_offset))
    finally:
        os.close(fd)
    return np.diff(np.asarray(latent_ptr, dtype=np.int64))


def segment_bounds(counts, target_nnz: int = SEGMENT_NNZ, at_least: int = 1):
    """Contiguous latent segments with about ``target_nnz`` events each (a latent is never
    split), at least ``at_least`` of them while there are latents enough."""
    counts = np.asarray(counts, dtype=np.int64)
    n_lat, nnz = len(counts), int(counts.sum())
    n = int(np.clip(max(-(-nnz // int(target_nnz)), int(at_least)), 1, max(n_lat, 1)))
    cum = np.cumsum(counts)
    inner = np.searchsorted(cum, nnz * np.arange(1, n) / n, side="left") + 1
    edges = sorted({0, n_lat, *(int(e) for e in np.clip(inner, 1, max(n_lat - 1, 1)))})
    return [(a, z) for a, z in zip(edges[:-1], edges[1:]) if z > a]


def merge_segment(building, n_parts: int, start: int, stop: int, latent_ptr) -> int:
    """Interleave every part's events of latents ``[start, stop)`` in part (row) order and
    write them at ``latent_ptr[start]`` of the layout's event files. ``latent_ptr`` is the
    layout's ``(stop - start + 1)`` offsets of those latents. Returns the events written."""
    ptr = np.asarray(latent_ptr, dtype=np.int64)
    base, n_out = int(ptr[0]), int(ptr[-1] - ptr[0])
    # Written once the segment is in place, before its parts' spans are punched: a rerun
    # of this task (its worker died after the punch) must not copy the zeros over it.
    merged = Path(building) / "parts" / f"merged-{start:09d}-{stop:09d}"
    if merged.exists():
        return n_out
    out = {key: np.empty(n_out, dtype=dtype) for key, (_, dtype) in _FILES.items()}
    spans = []  # each part's span copied, punched once the segment is written
    # where the next part's events of each latent go in this segment's output
    cursor = ptr[:-1] - base
    for p in range(n_parts):
        prefix = part_prefix(building, p)
        span, edges = _part_span(prefix, start, stop)
        counts = np.diff(span)
        n = int(span[-1] - span[0])
        if n == 0:
            continue
        spans.append((p, int(span[0]), n, edges))
        # event j of latent l goes to cursor[l] + (j - first event of l in this part)
        dest = np.repeat(cursor - (span[:-1] - span[0]), counts) + np.arange(n, dtype=np.int64)
        for key, (name, dtype) in _FILES.items():
            part = np.empty(n, dtype=dtype)
            with open(f"{prefix}.{name}", "rb") as f:
                _pread_into(f.fileno(), part, int(span[0]) * part.itemsize)
            out[key][dest] = part
            del part
        cursor += counts
    if merged.exists():  # another run of this task finished (and punched) while this one read
        return n_out
    for key, (name, dtype) in _FILES.items():
        fd = os.open(Path(building) / name, os.O_WRONLY)
        try:
            _pwrite(fd, out[key], base * np.dtype(dtype).itemsize)
            os.fsync(fd)
        finally:
            os.close(fd)
    merged.touch()
    _punch_spans(building, start, stop, spans)
    return n_out


def _part_span(prefix, start: int, stop: int):
    """A part's offsets of latents ``[start, stop)``, and the latents that share the first
    and the last file block of its span: ``(lo, hi)`` such that latents ``[lo, start)`` and
    ``[stop, hi)`` hold the rest of those blocks (None for a side not found among the
    :data:`_EDGE_LATENTS` latents read beyond the segment's)."""
    with open(f"{prefix}.ptr.i64", "rb") as f:
        n_latents = os.fstat(f.fileno()).st_size // 8 - 1
        a0, b0 = max(start - _EDGE_LATENTS, 0), min(stop + _EDGE_LATENTS, n_latents)
        window = np.empty(b0 - a0 + 1, dtype=np.int64)
        _pread_into(f.fileno(), window, 8 * a0)
    span = window[start - a0:stop - a0 + 1]
    first, end = int(span[0]), int(span[-1])
    e_lo = first // _BLOCK_EVENTS * _BLOCK_EVENTS  # the first event of its first block
    e_hi = -(-end // _BLOCK_EVENTS) * _BLOCK_EVENTS  # the end of its last block
    lo = int(np.searchsorted(window, e_lo, "right")) - 1 + a0 if window[0] <= e_lo else None
    if e_hi - 1 < window[-1]:
        hi = int(np.searchsorted(window, e_hi - 1, "right")) + a0
    else:  # past the latents read: nothing there only when they were the last
        hi = n_latents if b0 == n_latents else None
    return span, (lo, hi)


def _punch_spans(building, start: int, stop: int, spans) -> None:
    """Give back the disk of the part spans ``(part, first, n, (lo, hi))`` merged for
    latents ``[start, stop)`` (a no-op where holes cannot be punched). A span's first and
    last file blocks are given back whole when every latent that shares them is merged
    (its segment's marker is there): of segments sharing a block, the last to list the
    markers sees all of them, so no block is left behind."""
    if not spans:
        return
    n_latents = os.stat(f"{part_prefix(building, 0)}.ptr.i64").st_size // 8 - 1
    merged = np.zeros(n_latents, dtype=bool)
    for marker in (Path(building) / "parts").glob("merged-*"):
        a, z = (int(x) for x in marker.name.split("-")[1:])
        merged[a:z] = True
    for p, first, n, (lo, hi) in spans:
        e0, e1 = first, first + n
        if lo is not None and merged[lo:start].all():
            e0 = first // _BLOCK_EVENTS * _BLOCK_EVENTS
        if hi is not None and merged[stop:hi].all():
            e1 = -(-e1 // _BLOCK_EVENTS) * _BLOCK_EVENTS
        prefix = part_prefix(building, p)
        for name, dtype in _FILES.values():
            size = np.dtype(dtype).itemsize
            fd = os.open(f"{prefix}.{name}", os.O_WRONLY)
            try:
                if not punch_hole(fd, e0 * size, (e1 - e0) * size):
                    return
            finally:
                os.close(fd)


def build_disk_bytes(nnz: int, n_rows: int, n_latents: int, n_parts: int, threads: int,
                     segment_nnz: int, punches: bool) -> int:
    """Disk a layout's build needs at its peak: the layout (``8 nnz`` events, labels,
    offsets), the parts' offsets, and the parts' events not yet given back: those of the
    segments being merged (``threads`` at once, ``segment_nnz`` events each) and their
    edge blocks; where holes cannot be punched, all the parts' events."""
    layout = 8 * int(nnz) + int(n_rows) + 8 * (int(n_latents) + 1)
    parts_ptr = 8 * (int(n_latents) + 1) * int(n_parts)
    if not punches:
        return layout + parts_ptr + 8 * int(nnz)
    # a block each side of a span, per file, part and segment in flight; twice that, for the
    # segments done whose neighbours are not
    edges = 2 * 2 * len(_FILES) * _BLOCK * int(n_parts) * max(int(threads), 1)
    in_flight = min(int(threads) * int(segment_nnz), int(nnz))
    return layout + parts_ptr + 8 * in_flight + edges


def check_build_disk(building, nnz: int, n_rows: int, n_latents: int, n_parts: int,
                     threads: int, segment_nnz: int) -> int:
    """Raise :class:`~probe_dask.errors.MachineError` naming the layout's folder, the bytes
    its build needs and the bytes free, before anything is written, when the folder's file
    system cannot hold it. Returns the bytes needed."""
    need = build_disk_bytes(nnz, n_rows, n_latents, n_parts, threads, segment_nnz,
                            can_punch_holes(building))
    free = shutil.disk_usage(building).free
    if free < need:
        raise MachineError(Path(building).parent, OSError(errno.ENOSPC, "no space left"),
                           f"building the latent-major layout of {int(nnz):,} non-zeros: "
                           f"it needs {_size(need)}, {_size(free)} are free")
    return need


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def commit_layout(building, final, identity: dict, shape, latent_ptr) -> "LatentMajorLayout":
    """Finish a layout: its offsets and manifest written, the parts deleted, every file
    synced, the folder renamed to ``final`` (an older layout there is replaced)."""
    building, final = Path(building), Path(final)
    shutil.rmtree(building / "parts")
    _write_file(building / "latent_ptr.i64", np.asarray(latent_ptr, dtype=np.int64))
    manifest = {"version": LAYOUT_VERSION, "identity": identity,
                "shape": [int(shape[0]), int(shape[1])], "nnz": int(latent_ptr[-1])}
    (building / "layout.json").write_text(json.dumps(manifest, sort_keys=True, default=str))
    for name in ("labels.u8", "latent_ptr.i64", "layout.json"):
        fsync_path(building / name)
    fsync_dir(building)
    if final.exists():
        old = Path(temp_dir(final, "old"))
        final.rename(old)
        shutil.rmtree(old, ignore_errors=True)
    building.rename(final)
    fsync_dir(final.parent)
    return LatentMajorLayout(str(final), (int(shape[0]), int(shape[1])), int(latent_ptr[-1]))


def open_layout(path, identity: dict, shape) -> "LatentMajorLayout | None":
    """The layout at ``path`` when its manifest names ``identity`` and ``shape`` and its
    files have their sizes; None otherwise (absent, stale, damaged: build it again)."""
    path = Path(path)
    try:
        manifest = json.loads((path / "layout.json").read_text())
    except (OSError, ValueError):
        return None
    want = json.loads(json.dumps(identity, sort_keys=True, default=str))
    if (manifest.get("version") != LAYOUT_VERSION or manifest.get("identity") != want
            or manifest.get("shape") != [int(shape[0]), int(shape[1])]):
        return None
    layout = LatentMajorLayout(str(path), (int(shape[0]), int(shape[1])), int(manifest["nnz"]))
    sizes = {"rows.i32": 4 * layout.nnz, "values.f32": 4 * layout.nnz,
             "labels.u8": layout.shape[0], "latent_ptr.i64": 8 * (layout.shape[1] + 1)}
    try:
        if any((path / name).stat().st_size != size for name, size in sizes.items()):
            return None
    except OSError:
        return None
    return layout


@dataclass(frozen=True)
class LatentMajorLayout:
    """A committed layout: its folder, ``(n_rows, n_latents)`` and non-zeros. Small and
    picklable: tasks carry it and open the files where they run."""

    path: str
    shape: tuple
    nnz: int

    def latent_ptr(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Offsets of latents ``[start, stop)``: ``stop - start + 1`` int64."""
        stop = self.shape[1] if stop is None else stop
        out = np.empty(stop - start + 1, dtype=np.int64)
        with open(Path(self.path) / "latent_ptr.i64", "rb") as f:
            _pread_into(f.fileno(), out, 8 * start)
        return out

    def labels(self) -> np.ndarray:
        """Every row's class (``n_rows`` bytes)."""
        return np.fromfile(Path(self.path) / "labels.u8", dtype=np.uint8)

    def read_runs(self, runs, rows: np.ndarray, values: np.ndarray) -> None:
        """Read event spans ``runs`` (``(first, stop)`` offsets, in order) back to back into
        ``rows`` and ``values`` (long enough for all of them): one read per span and file."""
        fds = [os.open(Path(self.path) / name, os.O_RDONLY) for name, _ in _FILES.values()]
        try:
            at = 0
            for first, stop in runs:
                n = int(stop - first)
                for fd, out in zip(fds, (rows, values)):
                    _pread_into(fd, out[at:at + n], int(first) * out.itemsize)
                at += n
        finally:
            for fd in fds:
                os.close(fd)
