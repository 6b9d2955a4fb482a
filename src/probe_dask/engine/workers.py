"""What the cluster's workers offer, as the scheduler reports it: memory and GPU resources.

Memory per process: the scheduler's worker table (a few hundred bytes per worker).
"""

from __future__ import annotations

__all__ = ["gpu_resources", "total_worker_memory", "worker_table"]


def worker_table(client) -> dict:
    """The scheduler's description of every worker (address -> dict)."""
    return client.scheduler_info(n_workers=-1).get("workers", {})


def total_worker_memory(client) -> int:
    """Sum of the workers' memory limits in bytes (0 for workers without one)."""
    return sum(int(w.get("memory_limit") or 0) for w in worker_table(client).values())


def gpu_resources(client) -> dict | None:
    """The ``resources=`` GPU tasks should use: ``{"GPU": 1}`` or None.

    Parameters
    ----------
    client : distributed.Client

    Returns
    -------
    dict or None
        ``{"GPU": 1}`` when there are workers and every one advertises a ``GPU``
        resource; None otherwise (CPU-only or mixed clusters).
    """
    workers = worker_table(client)
    if workers and all((w.get("resources") or {}).get("GPU", 0) >= 1 for w in workers.values()):
        return {"GPU": 1}
    return None
