"""Synthetic runs in the users' on-disk layout (docs/formats.md), for demos, tests and benchmarks.

The data look like SAE activations of ViT patches with ADE20K-like labels:
power-law latent frequencies with dead latents, heavy-tailed positive values,
32 to 400 non-zeros per row, imbalanced classes (class 0 the most common), a few
latents planted to predict a few classes, and all-zero rows for ignored patches.

Memory per process: one row chunk of about 2**20 non-zeros while generating (a few
8-byte arrays of that length, tens of MB). The matrix is never whole in memory: chunks
are spooled to raw temporary files next to the output, then streamed into the zip
members, since a zip is written one member at a time and CSR needs three.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import zipfile

import numpy as np

from probe_dask.io.layout import ACTIVATIONS_NAME, activations_path, inference_dir

__all__ = ["SyntheticRun", "make_run", "NNZ_MIN", "NNZ_MAX"]

NNZ_MIN, NNZ_MAX = 32, 400  # non-zeros of a row that is not ignored
_CHUNK_NNZ = 2**20  # non-zeros generated per row chunk
_COPY_ITEMS = 2**20  # items per copy step from the spool into the zip
_ZIPF_A, _ZIPF_R0 = 1.15, 8.0  # latent rank density ~ (rank + r0) ** -a
_Q_IN, _Q_OUT = 0.8, 0.001  # planted latent fires on its class / on any other row


@dataclasses.dataclass(frozen=True)
class SyntheticRun:
    """Where a synthetic run was written, and what was planted in it.

    Attributes
    ----------
    root, run_dir, shards_dir : str
        ``<root>``, ``<root>/run`` and ``<root>/shards``.
    train_shard, test_shard : str
        Shard folders (``metadata.json`` and ``labels.bin``).
    train_id, test_id : str
        Shard ids (8 hex characters).
    n_classes, d_sae : int
        Classes and latents. The train split holds every class once it has at least
        ``4 * n_classes`` rows, so that ``n_classes == max(label) + 1``.
    planted : tuple of (int, int)
        ``(latent, class)`` pairs where the latent predicts the class.
    dead : tuple of int
        Latents that never fire.
    """

    root: str
    run_dir: str
    shards_dir: str
    train_shard: str
    test_shard: str
    train_id: str
    test_id: str
    n_classes: int
    d_sae: int
    planted: tuple
    dead: tuple

    def acts_path(self, shard_id: str) -> str:
        """``<run>/inference/<shard_id>/token_acts.npz``."""
        return str(activations_path(self.run_dir, shard_id))

    @property
    def train_acts(self) -> str:
        return self.acts_path(self.train_id)

    @property
    def test_acts(self) -> str:
        return self.acts_path(self.test_id)


def make_run(root, *, n_train_examples: int, n_test_examples: int, tokens_per_example: int = 256,
             d_sae: int = 4096, n_classes: int = 151, mean_nnz_per_row: float = 96, seed: int = 0,
             compressed: bool = True, dead_fraction: float = 0.1, ignored_fraction: float = 0.05,
             n_planted: int = 8) -> SyntheticRun:
    """Write a train and a test shard plus their activations under ``root``.

    Layout: ``<root>/shards/<id>/{metadata.json,labels.bin}`` and
    ``<root>/run/inference/<id>/token_acts.npz`` (readable by ``scipy.sparse.load_npz``;
    deflate-compressed like ``save_npz`` unless ``compressed=False``).

    Parameters
    ----------
    root : str or os.PathLike
        Folder to write into (created).
    n_train_examples, n_test_examples : int
        Images per split; rows are ``n_examples * tokens_per_example``.
    tokens_per_example : int
        Patches per image.
    d_sae : int
        Latents (columns); at least 128.
    n_classes : int
        Classes, 2 to 256; labels are uint8.
    mean_nnz_per_row : float
        About the mean non-zeros of a row that is not ignored, in [32, 400].
    seed : int
        Same seed, same arrays.
    compressed : bool
        Deflate the npz members (``save_npz`` default) or store them raw.
    dead_fraction, ignored_fraction : float
        Share of latents that never fire, of rows that are all zero (label 0).
    n_planted : int
        Planted ``(latent, class)`` pairs.

    Returns
    -------
    SyntheticRun
    """
    if d_sae < 128:
        raise ValueError(f"d_sae must be at least 128, got {d_sae}")
    if not 2 <= n_classes <= 256:
        raise ValueError(f"n_classes must be in [2, 256] (uint8 labels), got {n_classes}")
    if not NNZ_MIN <= mean_nnz_per_row <= NNZ_MAX:
        raise ValueError(f"mean_nnz_per_row must be in [{NNZ_MIN}, {NNZ_MAX}], got {mean_nnz_per_row}")
    root = os.path.abspath(os.fspath(root))
    model = _Model(np.random.default_rng([seed, 0]), d_sae, n_classes, mean_nnz_per_row,
                   dead_fraction, min(n_planted, n_classes - 1))
    ids = {}
    for split, n_examples in enumerate((n_train_examples, n_test_examples)):
        name = ("train", "test")[split]
        sid = hashlib.sha256(f"probe-dask-synthetic:{seed}:{name}".encode()).hexdigest()[:8]
        ids[name] = sid
        _write_shard(root, sid, name, model, seed, split, int(n_examples), tokens_per_example,
                     ignored_fraction, compressed)
    shards = os.path.join(root, "shards")
    planted = tuple((int(lat), int(c)) for lat, c in zip(model.planted_latent, model.planted_class))
    return SyntheticRun(root, os.path.join(root, "run"), shards, os.path.join(shards, ids["train"]),
                        os.path.join(shards, ids["test"]), ids["train"], ids["test"], n_classes, d_sae,
                        planted, tuple(sorted(int(x) for x in model.dead)))


class _Model:
    """What both splits share: latent frequencies and scales, planted pairs, class prior."""

    def __init__(self, rng, d_sae, n_classes, mean_nnz, dead_fraction, n_planted):
        self.d_sae, self.n_classes, self.mean_nnz = d_sae, n_classes, mean_nnz
        perm = rng.permutation(d_sae)
        n_dead = int(round(dead_fraction * d_sae))
        self.dead = perm[:n_dead]
        self.planted_latent = perm[n_dead:n_dead + n_planted]
        self.bg = perm[n_dead + n_planted:]  # background latents in frequency-rank order
        pool = np.arange(1, min(n_classes, max(11, n_planted + 1)))
        self.planted_class = np.sort(rng.choice(pool, size=n_planted, replace=False))
        self.class_of_latent = np.full(d_sae, -1, np.int64)
        self.class_of_latent[self.planted_latent] = self.planted_class
        self.scale = rng.lognormal(0.0, 0.5, d_sae).astype(np.float32)
        # Class prior ~ c ** -1.1 for c >= 1, class 0 twice class 1: imbalanced, 0 on top.
        w = np.full(n_classes, 2.0)
        w[1:] = np.arange(1, n_classes, dtype=np.float64) ** -1.1
        self.class_cdf = np.cumsum(w / w.sum())
        self.nnz_hi = min(NNZ_MAX - n_planted, self.bg.size // 2)
        e = 1.0 - _ZIPF_A  # rank probabilities: the density integrated over [r, r + 1)
        self.log_p = np.log(np.diff((np.arange(self.bg.size + 1) + _ZIPF_R0) ** e) / e)

    def ranks(self, u: np.ndarray) -> np.ndarray:
        # Inverse CDF of the continuous Zipf-Mandelbrot density on [0, n_bg).
        e = 1.0 - _ZIPF_A
        lo, hi = _ZIPF_R0 ** e, (self.bg.size + _ZIPF_R0) ** e
        x = (lo + u * (hi - lo)) ** (1.0 / e) - _ZIPF_R0
        return np.minimum(x.astype(np.int64), self.bg.size - 1)


def _labels(model, rng, n, ignored_fraction):
    labels = np.searchsorted(model.class_cdf, rng.random(n), side="right")
    labels = np.minimum(labels, model.n_classes - 1).astype(np.uint8)
    ignored = rng.random(n) < ignored_fraction
    labels[ignored] = 0
    return labels, ignored


def _chunk(model, rng, labels, ignored):
    """Activations of one row chunk: (row counts, latent ids int32, values float32)."""
    n, d = labels.size, model.d_sae
    # Target non-zeros per row: log-normal around the mean, clipped to the range.
    t = np.rint(model.mean_nnz * np.exp(0.45 * rng.standard_normal(n) - 0.1)).astype(np.int64)
    t = np.where(ignored, 0, np.clip(t, NNZ_MIN, model.nnz_hi))
    # Draw with replacement (1.5x + 8 per row) and dedupe: cheaper than exact
    # sampling without replacement; a random cyclic window then keeps t per row.
    m = np.where(t > 0, (3 * t) // 2 + 8, 0)
    keys = np.repeat(np.arange(n, dtype=np.int64) * d, m)
    keys += model.bg[model.ranks(rng.random(keys.size))]
    parts = [keys]
    for lat, cls in zip(model.planted_latent, model.planted_class):
        p = np.where(labels == cls, _Q_IN, _Q_OUT)
        parts.append(np.flatnonzero((rng.random(n) < p) & ~ignored).astype(np.int64) * d + lat)
    keys = np.concatenate(parts)
    del parts
    keys.sort()
    keys = keys[np.concatenate(([True], keys[1:] != keys[:-1]))]
    row = keys // d
    lat = keys - row * d
    del keys
    planted = model.class_of_latent[lat] >= 0
    bg = ~planted
    bg_count = np.bincount(row[bg], minlength=n)
    rank = np.cumsum(bg) - 1 - (np.cumsum(bg_count) - bg_count)[row]  # index among the row's bg
    start = (rng.random(n) * bg_count).astype(np.int64)
    keep = planted | ((rank - start[row]) % np.maximum(bg_count, 1)[row] < t[row])
    row, lat, planted = row[keep], lat[keep], planted[keep]
    short = np.flatnonzero(bg_count < t)  # too few distinct draws: rare unless d_sae is small
    if short.size:
        drop = np.isin(row, short) & ~planted
        extra_row, extra_lat = _exact_rows(model, rng, short, t[short])
        key = np.concatenate([row[~drop] * d + lat[~drop], extra_row * d + extra_lat])
        key.sort()
        row = key // d
        lat = key - row * d
        planted = model.class_of_latent[lat] >= 0
    # Heavy-tailed positive values; a planted latent is strong on its class, weak elsewhere.
    z = rng.standard_normal(lat.size)
    on = labels[row] == model.class_of_latent[lat]
    mu = np.where(planted, np.where(on, 1.0, -0.7), 0.0)
    sigma = np.where(planted, 0.4, 1.0)
    values = (model.scale[lat] * np.exp(mu + sigma * z)).astype(np.float32)
    return np.bincount(row, minlength=n), lat.astype(np.int32), values


def _exact_rows(model, rng, rows, t):
    """Exactly ``t[i]`` distinct background latents for each of ``rows`` (Gumbel top-k).

    Weighted sampling without replacement, in batches of at most 2**22 row x latent keys.
    """
    n_bg, out_row, out_lat = model.bg.size, [], []
    step = max(1, 2**22 // n_bg)
    for s in range(0, rows.size, step):
        r, k = rows[s:s + step], t[s:s + step]
        g = model.log_p - np.log(-np.log(rng.random((r.size, n_bg))))
        order = np.argsort(-g, axis=1)
        out_lat.append(model.bg[order[np.arange(n_bg) < k[:, None]]])
        out_row.append(np.repeat(r, k))
    return np.concatenate(out_row), np.concatenate(out_lat)


def _write_shard(root, sid, name, model, seed, split, n_examples, tokens, ignored_fraction, compressed):
    shard = os.path.join(root, "shards", sid)
    inference = str(inference_dir(os.path.join(root, "run"), sid))
    os.makedirs(shard, exist_ok=True)
    os.makedirs(inference, exist_ok=True)
    n_rows = n_examples * tokens
    meta = {"family": "synthetic", "ckpt": f"probe-dask/synthetic-seed{seed}", "layers": [-2],
            "n_examples": n_examples, "content_tokens_per_example": tokens, "cls_token": False,
            "d_model": 768, "max_tokens_per_shard": n_rows,
            "data": {"__class__": "Synthetic", "split": name, "seed": seed},
            "dataset": "synthetic-ade20k", "pixel_agg": "majority", "dtype": "float32",
            "protocol": "2.1"}
    with open(os.path.join(shard, "metadata.json"), "w") as f:
        json.dump(meta, f, indent=2)
    # The train split holds every class once at least, so n_classes = max label + 1.
    forced_rows = np.empty(0, np.int64)
    if split == 0 and n_rows >= 4 * model.n_classes:
        forced_rng = np.random.default_rng([seed, 1, 2**31])
        forced_rows = forced_rng.choice(n_rows, model.n_classes, replace=False)
    rows_per_chunk = max(1, int(_CHUNK_NNZ // model.mean_nnz))
    spool = _Spool(os.path.join(inference, ACTIVATIONS_NAME))
    try:
        with open(os.path.join(shard, "labels.bin"), "wb") as flab:
            for k, r0 in enumerate(range(0, n_rows, rows_per_chunk)):
                r1 = min(n_rows, r0 + rows_per_chunk)
                rng = np.random.default_rng([seed, 1 + split, k])
                labels, ignored = _labels(model, rng, r1 - r0, ignored_fraction)
                hit = np.flatnonzero((forced_rows >= r0) & (forced_rows < r1))
                labels[forced_rows[hit] - r0] = hit
                ignored[forced_rows[hit] - r0] = False
                labels.tofile(flab)
                spool.append(*_chunk(model, rng, labels, ignored))
        spool.finish(model.d_sae, compressed)
    finally:
        spool.cleanup()


class _Spool:
    """Raw temporary files for indptr / indices / data, then one streaming zip write."""

    def __init__(self, path):
        self.path = path
        self.tmp = {a: f"{path}.{a}.tmp" for a in ("indptr", "indices", "data")}
        self.files = {a: open(p, "wb") for a, p in self.tmp.items()}
        self.nnz, self.n_rows = 0, 0
        np.zeros(1, "<i8").tofile(self.files["indptr"])

    def append(self, counts, indices, values):
        (self.nnz + np.cumsum(counts, dtype=np.int64)).astype("<i8").tofile(self.files["indptr"])
        indices.astype("<i4", copy=False).tofile(self.files["indices"])
        values.astype("<f4", copy=False).tofile(self.files["data"])
        self.nnz += int(counts.sum())
        self.n_rows += counts.size

    def finish(self, n_cols, compressed):
        for f in self.files.values():
            f.close()
        # save_npz writes int32 indices unless nnz needs int64; same order of members.
        idx = "<i4" if self.nnz < 2**31 else "<i8"
        part = self.path + ".part"
        method = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
        # Level 1: several times faster than the default 6, and just as readable.
        level = 1 if compressed else None
        with zipfile.ZipFile(part, "w", method, allowZip64=True, compresslevel=level) as zf:
            _member_from_file(zf, "indices.npy", self.tmp["indices"], "<i4", idx)
            _member_from_file(zf, "indptr.npy", self.tmp["indptr"], "<i8", idx)
            for name, arr in (("format.npy", np.array(b"csr")),
                              ("shape.npy", np.array([self.n_rows, n_cols], np.int64))):
                with zf.open(name, "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, arr, allow_pickle=False)
            _member_from_file(zf, "data.npy", self.tmp["data"], "<f4", "<f4")
        os.replace(part, self.path)

    def cleanup(self):
        for a, p in self.tmp.items():
            self.files[a].close()
            if os.path.exists(p):
                os.remove(p)
        if os.path.exists(self.path + ".part"):
            os.remove(self.path + ".part")


def _member_from_file(zf, name, src, src_dtype, dst_dtype):
    """Stream a raw spool file into an ``.npy`` zip member, converting the dtype."""
    n = os.path.getsize(src) // np.dtype(src_dtype).itemsize
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dst_dtype)), "fortran_order": False,
              "shape": (n,)}
    with zf.open(name, "w", force_zip64=True) as out, open(src, "rb") as f:
        np.lib.format.write_array_header_1_0(out, header)
        for _ in range(0, n, _COPY_ITEMS):
            out.write(np.fromfile(f, src_dtype, count=_COPY_ITEMS).astype(dst_dtype, copy=False))
