"""One entry point, :func:`make_cluster`: a cluster spec in, a connected client out.

- ``"local"``: a ``LocalCluster`` of worker processes on this machine (started here);
- ``"slurm"`` or ``"slurm:PROFILE"``: a dask-jobqueue ``SLURMCluster`` from a profile of
  ``jobqueue.yaml`` (:mod:`probe_dask.cluster.slurm`, :mod:`probe_dask.cluster.profiles`);
- ``"tcp://host:port"`` (any scheduler address): connect and start nothing (joined here).

Security (docs/security.md): a local cluster listens on ``tcp://127.0.0.1`` only; a Slurm
cluster uses TLS with per-run credentials unless ``security=False``; a ``tls://`` address
is joined with the certificates of Dask's ``distributed.comm.tls.*`` config. Dashboards
of clusters started here listen on loopback (:mod:`probe_dask.cluster.dashboard`).

Memory: only the cluster and client objects; the scheduler of a "local" or "slurm"
cluster runs in this process, its workers in other processes.
"""

from __future__ import annotations

import logging
import shutil
import time

from distributed import Client, LocalCluster

from probe_dask.cluster.connect import connect
from probe_dask.cluster.dashboard import dashboard_address as default_dashboard
from probe_dask.cluster.slurm import start_slurm
from probe_dask.cluster.spec import ClusterClient, parse_spec, wait_for_workers, wait_seconds
from probe_dask.cluster.tls import address_security
from probe_dask.cluster.versions import cluster_versions
from probe_dask.errors import ProbeDaskError

__all__ = ["make_cluster"]

logger = logging.getLogger(__name__)


def make_cluster(spec: str = "local", *, jobs: int | None = None,
                 minimum_jobs: int | None = None, maximum_jobs: int | None = None,
                 n_workers: int | None = None, threads_per_worker: int | None = None,
                 memory_limit: str | int | None = None, jobqueue_config=None,
                 gpu: bool | None = None, wait_timeout: float | str | None = None,
                 security=None, dashboard_address: str | None = None,
                 **overrides) -> ClusterClient:
    """Start (or join) a Dask cluster and return it with a connected client.

    Parameters
    ----------
    spec : str
        ``"local"``, ``"slurm"``, ``"slurm:PROFILE"`` or a scheduler address.
    jobs : int, optional
        Slurm: ``scale(jobs=N)`` and wait; default 1 unless ``n_workers`` or
        ``minimum_jobs``/``maximum_jobs`` is given.
    minimum_jobs, maximum_jobs : int, optional
        Slurm: ``adapt(minimum_jobs=, maximum_jobs=)``; waits for the minimum.
    n_workers : int, optional
        Local: worker processes (default: Dask's choice; 1 with ``gpu=True``). Slurm:
        workers instead of jobs. Address: wait until this many joined.
    threads_per_worker, memory_limit : optional
        Per worker. Local: as LocalCluster. Slurm: ``cores``/``memory`` = this x
        ``processes``. Address: ignored.
    jobqueue_config : str or os.PathLike, optional
        Slurm: explicit ``jobqueue.yaml`` (file or folder).
    gpu : bool, optional
        Local: True gives each worker a ``GPU=1`` resource. Slurm: picks the "gpu"/"cpu"
        profile when none is named, must agree with a named one. Address: unused.
    wait_timeout : float or str, optional
        Seconds (or "10m") to wait for workers, default ``probe-dask.cluster.wait-timeout``
        (300 s); then ProbeDaskError (with squeue's view), and the cluster is closed.
    security : distributed.security.Security or bool, optional
        Slurm: None or True (default) creates per-run TLS credentials
        (:func:`~probe_dask.cluster.tls.run_credentials`), False turns TLS off (plain
        tcp://, anyone who reaches the port can run code as you), a ``Security`` is used as
        given. Local: None or False keeps ``tcp://127.0.0.1``, True uses temporary TLS.
        Address: None takes ``distributed.comm.tls.*`` from Dask's config for ``tls://``.
    dashboard_address : str, optional
        Local and Slurm: where the dashboard listens; default
        ``probe-dask.cluster.dashboard-address`` (``127.0.0.1:8787``, loopback only).
    **overrides
        Keyword arguments for ``LocalCluster``, ``SLURMCluster`` or ``Client``.

    Returns
    -------
    ClusterClient
        ``(cluster, client)``; ``cluster`` is None for an address. ProbeDaskError: bad
        spec or profile, Slurm rejecting the job script, workers not joining, a Slurm or
        address cluster's workers (or scheduler) running other package versions than this
        process (:func:`~probe_dask.cluster.versions.check_versions`; a local cluster's
        workers are this environment's by construction).
    """
    parsed = parse_spec(spec)
    if parsed.kind != "slurm" and any(v is not None for v in (jobs, minimum_jobs, maximum_jobs)):
        raise ProbeDaskError(f"cluster spec {spec!r}: jobs/minimum_jobs/maximum_jobs are for "
                             "'slurm' specs; use n_workers")
    timeout = wait_seconds(wait_timeout)
    if parsed.kind == "address":
        return _join(parsed.address, n_workers, timeout, security, overrides)
    if parsed.kind == "local":
        return _start_local(n_workers=n_workers, threads_per_worker=threads_per_worker,
                            memory_limit=memory_limit, gpu=gpu, timeout=timeout,
                            security=security, dashboard_address=dashboard_address,
                            overrides=overrides)
    if shutil.which("sbatch") is None:
        raise ProbeDaskError(f"cluster spec {spec!r}: sbatch not found on PATH; run this on a "
                             "Slurm login node (or scripts/slurm/start.sh here)")
    return start_slurm(parsed.profile, jobs=jobs, minimum_jobs=minimum_jobs,
                       maximum_jobs=maximum_jobs, n_workers=n_workers,
                       threads_per_worker=threads_per_worker, memory_limit=memory_limit,
                       jobqueue_config=jobqueue_config, gpu=gpu, wait_timeout=timeout,
                       security=security, dashboard_address=dashboard_address, **overrides)


def _join(address, n_workers, timeout, security, overrides) -> ClusterClient:
    """A client of the scheduler at ``address`` (started elsewhere), once ``n_workers`` (if
    any) have joined and their package versions are this process's."""
    if security is None:
        security, warning = address_security(address)
        if warning:
            logger.warning(warning)
    if security is not None:
        overrides = {**overrides, "security": security}
    # A Dask scheduler must answer there within probe-dask.cluster.connect-timeout
    # (an HTTP server or the dashboard's port is one line, not a hang or MemoryError).
    client = connect(address, **overrides)
    try:
        if n_workers:
            wait_for_workers(client, n_workers, timeout, lambda: f"scheduler {address}")
        # Someone else's scheduler and workers: their environment may not be ours.
        cluster_versions(client)
    except BaseException:
        client.close()
        raise
    return ClusterClient(None, client)


def _start_local(*, n_workers, threads_per_worker, memory_limit, gpu, timeout, security,
                 dashboard_address, overrides) -> ClusterClient:
    """A ``LocalCluster`` of worker processes on loopback and its client, its workers ready."""
    kw = {"n_workers": n_workers or (1 if gpu else None), "processes": True,
          "threads_per_worker": threads_per_worker, "memory_limit": memory_limit,
          "resources": {"GPU": 1} if gpu else None,
          # Loopback only: nothing but this host reaches the scheduler, workers and
          # dashboard (Dask's own default dashboard ":8787" listens on every interface).
          "host": "127.0.0.1", "dashboard_address": default_dashboard(dashboard_address),
          "security": security or None}
    kw = {k: v for k, v in kw.items() if v is not None} | overrides
    t0 = time.perf_counter()
    cluster = LocalCluster(**kw)
    client = Client(cluster)
    # The "N workers ready in S s" line of Slurm and joined clusters (cluster/spec.py),
    # timed from the start of the cluster: LocalCluster waits for its workers to start.
    n = len(cluster.workers)
    client.wait_for_workers(n, timeout=timeout)
    logger.info("%d workers ready in %.1f s", n, time.perf_counter() - t0)
    return ClusterClient(cluster, client)
