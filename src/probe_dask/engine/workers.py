"""What the cluster's workers offer: memory, GPU resources, and the kernel each one runs.

Memory per process: the scheduler's worker table (a few hundred bytes per worker); asking
every worker for its kernel makes a worker that is asked for CUDA import torch.
"""

from __future__ import annotations

from collections import Counter

from probe_dask import kernels
from probe_dask.kernels.dispatch import warm_up
from probe_dask.errors import ProbeDaskError

__all__ = ["gpu_resources", "task_resources", "total_worker_memory", "worker_table",
           "worker_capacity", "worker_slots", "worker_kernels", "check_worker_kernels"]

#: How the log names each backend.
KERNEL_NAMES = {"c": "C kernel", "triton": "Triton kernels", "torch": "torch fallback"}


def worker_table(client) -> dict:
    """The scheduler's description of every worker (address -> dict)."""
    return client.scheduler_info(n_workers=-1).get("workers", {})


def worker_capacity(client) -> dict[str, int]:
    """The tasks each worker runs at once: address -> its threads (at least one, for a
    worker that does not say)."""
    return {a: max(1, int(w.get("nthreads") or 1)) for a, w in worker_table(client).items()}


def worker_slots(client) -> list[str]:
    """Every worker address once per thread, in address order (one slot per group or range)."""
    capacity = worker_capacity(client)
    return [a for a in sorted(capacity) for _ in range(capacity[a])]


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


def task_resources(client, device=None) -> dict | None:
    """The ``resources=`` the block tasks of a fit on ``device`` request.

    Only tasks that run on a GPU request one: ``"cpu"`` requests nothing (a CPU task must not
    wait behind the ``GPU`` resource of a GPU worker), ``"cuda"`` and ``None``/``"auto"``
    request ``{"GPU": 1}`` when every worker advertises one (:func:`gpu_resources`).
    """
    if device is not None and str(device).split(":")[0] == "cpu":
        return None
    return gpu_resources(client)


def _kernel_here(device, backend):
    # Runs on each worker (client.run): the error travels back as text, not as an exception,
    # so one worker without CUDA does not hide what the others have.
    try:
        kernel = kernels.kernel_for(device, backend)
        warm_up(device, backend)  # Triton compiles its variants now, not in the first pass
        return kernel
    except (RuntimeError, ValueError) as exc:
        return str(exc)


def worker_kernels(client, device=None, backend="auto") -> dict:
    """The kernel every worker runs for ``device`` and ``backend`` (``kernels.kernel_for``).

    Returns
    -------
    dict
        Worker address -> ``(backend, device type)``, or the text of why it cannot run.
    """
    return {addr: (tuple(r) if isinstance(r, (list, tuple)) else r)
            for addr, r in client.run(_kernel_here, device, backend).items()}


def check_worker_kernels(client, device=None, backend="auto", log=None) -> dict:
    """:func:`worker_kernels`, logged in one line, with a one-line warning when a worker falls
    back to the slow torch path; raises when a worker cannot run what was asked.

    Raises
    ------
    ProbeDaskError
        Naming the first worker that cannot run the kernels, and what it lacks.
    """
    found = worker_kernels(client, device, backend)
    if not found:
        raise ProbeDaskError("the cluster has no workers")
    bad = {a: why for a, why in found.items() if isinstance(why, str)}
    asked = f"--device {device or 'auto'} --kernel {backend}"
    if bad:
        addr = min(bad)
        more = f" (and {len(bad) - 1} more workers)" if len(bad) > 1 else ""
        raise ProbeDaskError(f"worker {addr}{more} cannot run {asked}: {bad[addr]}")
    if log is not None:
        groups = Counter(found.values())
        log("kernels: " + ", ".join(
            f"{n} worker{'s' if n > 1 else ''} {KERNEL_NAMES.get(b, b)} on {d}"
            for (b, d), n in sorted(groups.items())))
        slow = sorted(a for a, (b, _) in found.items() if b == "torch")
        if slow and backend != "torch":
            log(f"warning: {len(slow)} worker{'s' if len(slow) > 1 else ''} ({slow[0]}"
                f"{', ...' if len(slow) > 1 else ''}) fall back to the slow torch path "
                "(far slower than the C or Triton kernels; see the README, GPU)")
    return found
