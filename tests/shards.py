"""Small helpers to read a synthetic shard densely, independently of probe_dask.store."""

import json
from pathlib import Path

import numpy as np
import scipy.sparse as sp


def dense_shard(run_dir, shard_dir):
    """(X float64 dense, y uint8) of a small shard, read with scipy (independent of our store)."""
    shard_dir = Path(shard_dir)
    X = sp.load_npz(Path(run_dir) / "inference" / shard_dir.name / "token_acts.npz")
    meta = json.loads((shard_dir / "metadata.json").read_text())
    y = np.fromfile(shard_dir / "labels.bin", dtype=np.uint8)
    assert y.size == meta["n_examples"] * meta["content_tokens_per_example"]
    return np.asarray(X.toarray(), dtype=np.float64), y
