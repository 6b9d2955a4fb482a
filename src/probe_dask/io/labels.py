"""Patch labels of a saev shard: ``metadata.json`` and ``labels.bin``.

``labels.bin`` is raw uint8 of shape ``(n_examples, content_tokens_per_example)`` in C
order, so flattened label ``r`` belongs to activation row ``r``.

Memory per process: :class:`LabelsSource` holds a path and two ints; ``read`` holds the
rows asked for (one byte each); ``class_counts`` and ``max_label`` scan the file in
chunks of ``chunk_rows`` bytes and hold one chunk plus a 256-entry histogram; the
histogram of every file scanned is kept (2 KiB each, at most 1024 files) so a shard shared by
the runs of a sweep is scanned once.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from probe_dask.errors import InputError
from probe_dask.io.layout import missing_hint

__all__ = ["ShardMetadata", "LabelsSource", "read_metadata", "open_labels"]

_CHUNK_ROWS = 32 * 2**20  # 32 MiB of labels per scan step
#: Label histograms already scanned, by (resolved path, rows, size, mtime_ns): 2 KiB each.
_HISTOGRAMS: dict = {}
_HISTOGRAMS_MAX = 1024


@dataclasses.dataclass(frozen=True)
class ShardMetadata:
    """The fields of ``metadata.json`` that probe-dask needs.

    Attributes
    ----------
    n_examples : int
        Images in the shard.
    tokens_per_example : int
        Patches per image (``content_tokens_per_example``).
    path : str
        The ``metadata.json`` read.
    extra : dict
        Every other field, kept as found (``family``, ``ckpt``, ``layers`` ...).
    """

    n_examples: int
    tokens_per_example: int
    path: str = ""
    extra: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    @property
    def n_rows(self) -> int:
        """Activation rows (patches) of the shard: ``n_examples * tokens_per_example``."""
        return self.n_examples * self.tokens_per_example


def read_metadata(shard_dir) -> ShardMetadata:
    """Read ``<shard_dir>/metadata.json``.

    Raises
    ------
    InputError
        When the file is missing or not a JSON object, or when ``n_examples`` or
        ``content_tokens_per_example`` is missing or not a positive int. Other fields
        are tolerated, not required.
    """
    path = os.path.join(os.path.abspath(os.fspath(shard_dir)), "metadata.json")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise InputError(path, "file", "no such file",
                         f"the metadata.json of a saev shard; {missing_hint(path)}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, "file", f"unreadable ({exc})", "a UTF-8 JSON file") from None
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"{exc.msg} at line {exc.lineno} column {exc.colno}"
        raise InputError(path, "JSON", f"invalid JSON ({where})", "a JSON object") from None
    if not isinstance(meta, dict):
        raise InputError(path, "JSON", f"a JSON {type(meta).__name__}", "a JSON object")
    values = {}
    for key in ("n_examples", "content_tokens_per_example"):
        if key not in meta:
            raise InputError(path, key, "missing", "a positive int")
        v = meta[key]
        # bool is an int in Python; 256.0 is not what saev writes.
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InputError(path, key, repr(v), "a positive int")
        values[key] = v
    extra = {k: v for k, v in meta.items() if k not in values}
    return ShardMetadata(values["n_examples"], values["content_tokens_per_example"], path, extra)


@dataclasses.dataclass(frozen=True)
class LabelsSource:
    """Row-sliceable ``labels.bin``; small and picklable (no data).

    Attributes
    ----------
    path : str
        Absolute path of ``labels.bin``.
    n_rows : int
        Labels in the file (``n_examples * tokens_per_example``).
    tokens_per_example : int
        Patches per image.
    """

    path: str
    n_rows: int
    tokens_per_example: int = 1

    def read(self, r0: int, r1: int) -> np.ndarray:
        """Labels of rows ``r0:r1`` as a fresh uint8 array (``np.fromfile``, no mmap)."""
        if not 0 <= r0 <= r1 <= self.n_rows:
            raise ValueError(f"row range [{r0}, {r1}) outside [0, {self.n_rows}]")
        if r1 == r0:
            return np.empty(0, np.uint8)
        out = np.fromfile(self.path, dtype=np.uint8, count=r1 - r0, offset=r0)
        if out.size != r1 - r0:
            raise InputError(self.path, "size", f"{out.size} labels at row {r0}",
                             f"{r1 - r0} (file truncated since it was opened?)")
        return out

    def _histogram(self, chunk_rows: int) -> np.ndarray:
        # A sweep opens the same shard for every run: the scan is kept per file (resolved
        # path, size, mtime_ns), so a shard's labels are read once per process.
        st = os.stat(self.path)
        key = (os.path.realpath(self.path), self.n_rows, st.st_size, st.st_mtime_ns)
        hist = _HISTOGRAMS.get(key)
        if hist is None:
            hist = np.zeros(256, np.int64)
            for r0 in range(0, self.n_rows, chunk_rows):
                hist += np.bincount(self.read(r0, min(self.n_rows, r0 + chunk_rows)), minlength=256)
            if len(_HISTOGRAMS) >= _HISTOGRAMS_MAX:
                _HISTOGRAMS.pop(next(iter(_HISTOGRAMS)))
            _HISTOGRAMS[key] = hist
        return hist.copy()

    def class_counts(self, n_classes: int | None = None, chunk_rows: int = _CHUNK_ROWS) -> np.ndarray:
        """Rows of each class, int64, scanned in chunks.

        Parameters
        ----------
        n_classes : int, optional
            Length of the result; default ``max_label() + 1``.

        Raises
        ------
        InputError
            When a label is ``>= n_classes``.
        """
        hist = self._histogram(chunk_rows)
        top = int(np.flatnonzero(hist)[-1])
        if n_classes is None:
            n_classes = top + 1
        if top >= n_classes:
            raise InputError(self.path, "labels", f"label {top}", f"labels < n_classes = {n_classes}")
        return hist[:n_classes].copy()

    def max_label(self, chunk_rows: int = _CHUNK_ROWS) -> int:
        """Largest label in the file."""
        return int(np.flatnonzero(self._histogram(chunk_rows))[-1])


def open_labels(shard_dir, metadata: ShardMetadata | None = None) -> LabelsSource:
    """Open ``<shard_dir>/labels.bin``, checking its size against ``metadata.json``.

    Raises
    ------
    InputError
        When ``labels.bin`` is missing or its size is not
        ``n_examples * content_tokens_per_example`` bytes (both numbers are given).
    """
    shard_dir = os.path.abspath(os.fspath(shard_dir))
    meta = metadata if metadata is not None else read_metadata(shard_dir)
    path = os.path.join(shard_dir, "labels.bin")
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        raise InputError(path, "file", "no such file",
                         f"the labels.bin of a saev shard; {missing_hint(path)}") from None
    if size != meta.n_rows:
        raise InputError(path, "size", f"{size} bytes",
                         f"n_examples * content_tokens_per_example = {meta.n_examples} * "
                         f"{meta.tokens_per_example} = {meta.n_rows} bytes")
    return LabelsSource(path, meta.n_rows, meta.tokens_per_example)
