"""What a cluster flag means for the memory plan: ``plan`` sized as ``fit`` would run.

``probe-dask plan --cluster slurm:PROFILE --jobs N`` plans for N worker jobs of that
profile (its cores, memory and GPU resource, from ``jobqueue.yaml`` through
``cluster.profiles``); ``--cluster local`` (the default) plans for this machine. Explicit
``--workers``, ``--threads`` and ``--memory-limit`` win over both.

Memory per process: nothing beyond the profile's few keys.
"""

from __future__ import annotations

import dask
from dask.utils import parse_bytes

from probe_dask.cluster.profiles import slurm_profile
from probe_dask.cluster.slurm import has_gpu_resource
from probe_dask.cluster.spec import parse_spec

__all__ = ["plan_sizing"]


def plan_sizing(cluster="local", *, jobs=None, workers=None, threads=None, memory_limit=None,
                device="auto", jobqueue_config=None) -> dict:
    """Keywords of ``memory.search.plan_run`` for a cluster spec.

    Parameters
    ----------
    cluster : str
        ``local``, ``slurm`` or ``slurm:PROFILE`` (an address plans like ``local``: the
        running workers are not asked).
    jobs : int, optional
        Slurm worker jobs (default 1).
    workers, threads, memory_limit, device
        As given on the command line (None: from the profile, or this machine).

    Returns
    -------
    dict
        ``n_workers``, ``threads``, ``memory_limit``, ``device``.
    """
    spec = parse_spec(cluster)
    out = {"n_workers": workers, "threads": threads or 1, "memory_limit": memory_limit,
           "device": device}
    if spec.kind != "slurm":
        return out
    _, profile = slurm_profile(spec.profile, jobqueue_config=jobqueue_config)
    base = dask.config.get("jobqueue.slurm", {}) or {}

    def key(name, default=None):
        for source in (profile, base):
            for k in (name, name.replace("_", "-")):
                if source.get(k) is not None:
                    return source[k]
        return default

    processes = int(key("processes", 1))
    cores = int(key("cores", 1))
    memory = key("memory")
    gpu = has_gpu_resource(key("worker_extra_args", []))
    out["n_workers"] = workers or (jobs or 1) * processes
    out["threads"] = threads or max(1, cores // processes)
    if memory_limit is None and memory is not None:
        out["memory_limit"] = int(parse_bytes(str(memory)) // processes)
    if device == "auto":
        out["device"] = "cuda" if gpu else "cpu"
    return out
