"""A sweep file: the Pareto-front SAE runs of ViT-B on ADE20K, layers 6 to 11.

Run with ``probe-dask sweep examples/sweep.py [--cluster slurm:gpu --jobs 4]``.

This file is Python: ``probe-dask sweep`` RUNS it (with your rights) to get the list of
runs. Use it for sweeps you write yourself; for a sweep that comes from someone else, ask for
the same list as JSON or TOML (``examples/sweep.toml``), which is data, not code.

``make_cfgs()`` returns one dict per run with the keys of one ``probe-dask fit``: ``run``,
``train_shards``, ``test_shards`` and optionally ``ridge``, ``max_iter``, ``block_nnz``,
``device``, ``cache_dir``, ``debug``, ``name``. Flags on the command line win over these
values. Relative paths are taken from this file's folder.
"""

import os

SAE_ROOT = os.environ.get("SAE_ROOT", "/scratch/saev/runs")
SHARDS = os.environ.get("SAEV_SHARDS", "/scratch/saev/shards")
TRAIN, TEST = "a1b2c3d4", "e5f6a7b8"  # ADE20K train and validation shards of ViT-B

# Run ids on the Pareto front of each layer (from the SAE training sweep).
PARETO = {
    6: ["3kq9x2ab", "7hd2m1pq"],
    7: ["p0c4v8zz"],
    8: ["m2n6b1xy", "q8w3e5rt"],
    9: ["z1x2c3v4"],
    10: ["l9k8j7h6"],
    11: ["g5f4d3s2", "a9s8d7f6"],
}


def make_cfgs():
    cfgs = []
    for layer, run_ids in PARETO.items():
        for run_id in run_ids:
            cfgs.append({
                "run": f"{SAE_ROOT}/{run_id}",
                "train_shards": f"{SHARDS}/{TRAIN}",
                "test_shards": f"{SHARDS}/{TEST}",
                "name": f"L{layer}-{run_id}",
                "max_iter": 30,
            })
    return cfgs
