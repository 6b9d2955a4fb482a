"""Slurm workers through dask-jobqueue: ``SLURMCluster`` keywords, checks, start and wait.

:func:`slurm_cluster_kwargs` turns a profile (see :mod:`probe_dask.cluster.profiles`),
``probe-dask.slurm.partition`` / ``probe-dask.slurm.interface`` and the caller's
overrides into ``SLURMCluster`` keywords, refusing a worker ``--lifetime`` that outlasts
the walltime. :func:`start_slurm` builds the cluster, asks ``sbatch --test-only`` whether
Slurm accepts its job script, scales (or adapts) it and waits for the workers; on any
failure it closes the cluster and cancels the jobs it submitted. The scheduler speaks TLS
with per-run credentials (:mod:`probe_dask.cluster.tls`) unless ``security=False``, and its
dashboard listens on loopback unless the caller names another address.

Memory: only the cluster and client objects; the scheduler runs in this process, the
workers in Slurm jobs.
"""

from __future__ import annotations

import logging
import re
import shlex
import shutil
import subprocess
import tempfile

import dask.config
from dask.utils import format_bytes, parse_bytes, parse_timedelta
from distributed import Client

from probe_dask import config
from probe_dask.cluster.dashboard import dashboard_address as default_dashboard
from probe_dask.cluster.jobqueue_import import SLURMCluster
from probe_dask.cluster.network import detect_interface, detect_partition, partitions, run_command
from probe_dask.cluster.profiles import config_source, packaged_config_path, slurm_profile
from probe_dask.cluster.spec import ClusterClient, wait_for_workers
from probe_dask.cluster.tls import release_credentials, run_credentials, watch_credentials
from probe_dask.cluster.versions import check_versions, cluster_versions
from probe_dask.errors import ProbeDaskError

__all__ = ["slurm_cluster_kwargs", "start_slurm", "has_gpu_resource"]

logger = logging.getLogger(__name__)

#: Worker preload laying the packaged jobqueue.yaml under the worker's own Dask config.
WORKER_PRELOAD = "probe_dask.cluster.worker_config"


def has_gpu_resource(worker_extra_args) -> bool:
    """Whether worker arguments give each worker a ``GPU`` resource (``--resources GPU=...``)."""
    args = [str(a) for a in (worker_extra_args or [])]
    for i, a in enumerate(args):
        value = a.split("=", 1)[1] if a.startswith("--resources=") else (
            args[i + 1] if a == "--resources" and i + 1 < len(args) else "")
        if re.search(r"(^|[ ,])GPU=", value):
            return True
    return False


def _walltime_seconds(walltime) -> float | None:
    """Slurm time limit ("MM", "MM:SS", "HH:MM:SS", "D-HH[:MM[:SS]]") in seconds."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", str(walltime).strip())
    if not m:
        return None
    d, a, b, c = (int(x) if x else None for x in m.groups())
    if d is not None:
        return d * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    if c is not None:
        return a * 3600 + b * 60 + c
    return a * 60 + (b or 0)


def _arg_value(args: list[str], flag: str) -> str | None:
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def _check_lifetime(walltime, worker_extra_args) -> None:
    args = [str(a) for a in (worker_extra_args or [])]
    wall, life = _walltime_seconds(walltime), _arg_value(args, "--lifetime")
    if wall is None or life is None:
        return
    stagger = _arg_value(args, "--lifetime-stagger")
    end = parse_timedelta(life) + (parse_timedelta(stagger) if stagger else 0)
    if end >= wall:
        raise ProbeDaskError(
            f"worker --lifetime {life} (+/- {stagger or '0s'}) does not end before the Slurm "
            f"walltime {walltime}: Slurm would kill workers mid-task; lower --lifetime in "
            "worker_extra_args or raise walltime")


def slurm_cluster_kwargs(profile: str | None = None, *, jobqueue_config=None,
                         gpu: bool | None = None, **overrides) -> dict:
    """Keyword arguments for ``SLURMCluster`` from a profile, the config and overrides.

    Parameters
    ----------
    profile : str, optional
        See :func:`~probe_dask.cluster.profiles.slurm_profile`.
    jobqueue_config : str or os.PathLike, optional
    gpu : bool, optional
        When given, must agree with whether the profile gives workers a GPU resource.
    **overrides
        ``SLURMCluster`` keywords replacing the profile's (``scheduler_options`` merged).

    Returns
    -------
    dict
        With ``queue`` (override, else ``probe-dask.slurm.partition``, else the profile's,
        else ``jobqueue.slurm.queue``, else detected) and ``interface`` (same order, or
        ``scheduler_options["interface"]`` when detected for the scheduler only) resolved,
        ``worker_extra_args`` ending in ``--preload-nanny probe_dask.cluster.worker_config``
        (``--preload`` without a nanny: the packaged defaults under the worker's own
        config), and ``job_script_prologue`` exporting ``DASK_CONFIG`` only for the user's
        own file (explicit, or ``$DASK_CONFIG``). Raises ProbeDaskError when the worker
        ``--lifetime`` would outlast the walltime.
    """
    source = config_source(jobqueue_config)
    name, kw = slurm_profile(profile, gpu=gpu)
    base = dask.config.get("jobqueue.slurm", {})
    overrides = {k.replace("-", "_"): v for k, v in overrides.items()}
    kw.update(overrides)
    extra = list(kw.get("worker_extra_args", base.get("worker-extra-args")) or [])
    if gpu is not None and gpu != has_gpu_resource(extra):
        raise ProbeDaskError(f"Slurm profile {name!r} {'lacks' if gpu else 'has'} a GPU "
                             f"worker resource but gpu={gpu} was asked")
    _check_lifetime(kw.get("walltime", base.get("walltime")), extra)
    kw["queue"] = _queue(kw, base, overrides)
    kw["interface"], kw["scheduler_options"] = _interface(kw, base, overrides)
    # The packaged defaults reach workers through a preload that lays them under the
    # worker's own config (DASK_CONFIG would be read last and win over ~/.config/dask).
    flag = "--preload-nanny" if kw.get("nanny", base.get("nanny", True)) else "--preload"
    if WORKER_PRELOAD not in extra:
        extra += [flag, WORKER_PRELOAD]
    kw["worker_extra_args"] = extra
    kw["job_script_prologue"] = _prologue(kw, base, source)
    return kw


def _queue(kw, base, overrides) -> str | None:
    """The partition: override, ``probe-dask.slurm.partition``, the profile's, jobqueue's,
    else Slurm's default; ProbeDaskError when there is none to choose among several."""
    queue = overrides.get("queue") or config.get("probe-dask.slurm.partition") \
        or kw.get("queue") or base.get("queue")
    if not queue:
        queue = detect_partition()
        if queue is None and len(parts := partitions()) > 1:
            raise ProbeDaskError("Slurm has no default partition; set queue in the profile "
                                 f"or probe-dask.slurm.partition (partitions: {' '.join(parts)})")
    return queue or None


def _interface(kw, base, overrides) -> tuple[str | None, dict]:
    """``(interface, scheduler_options)``: the interface given (same order as the queue),
    else the one detected on ``kw["queue"]``'s nodes, for the scheduler only when the
    workers' nodes lack it."""
    sched = dict(base.get("scheduler-options") or {})
    sched.update(kw.get("scheduler_options") or {})
    iface = overrides.get("interface") or config.get("probe-dask.slurm.interface") \
        or kw.get("interface") or base.get("interface")
    if not iface and "interface" not in sched and "host" not in sched:
        iface, for_workers = detect_interface(kw["queue"])
        if iface and not for_workers:
            sched["interface"], iface = iface, None
    return iface or None, sched


def _prologue(kw, base, source) -> list:
    """The job script's prologue, exporting ``DASK_CONFIG`` for the user's own file."""
    prologue = list(kw.get("job_script_prologue", base.get("job-script-prologue")) or [])
    if source != str(packaged_config_path()) and \
            not any("DASK_CONFIG" in str(line) for line in prologue):
        # The user's own file (explicit or $DASK_CONFIG): read over the rest, as here.
        prologue.insert(0, f"export DASK_CONFIG={shlex.quote(source)}")
    return prologue


def _sbatch_test(cluster, profile: str) -> None:
    """Ask ``sbatch --test-only`` whether Slurm would accept the job script at all."""
    timeout = parse_timedelta(config.get("probe-dask.slurm.test-only-timeout"), default="s")
    with tempfile.NamedTemporaryFile("w", suffix=".sh", prefix="probe-dask-") as f:
        f.write(cluster.job_script())
        f.flush()
        try:
            r = subprocess.run(["sbatch", "--test-only", f.name], capture_output=True,
                               text=True, timeout=timeout, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            raise ProbeDaskError(f"Slurm profile {profile!r}: sbatch failed: {exc}") from None
    if r.returncode != 0:
        why = " ".join((r.stderr or r.stdout).split()) or f"exit status {r.returncode}"
        raise ProbeDaskError(f"Slurm profile {profile!r}: Slurm rejects its job script ({why}); "
                             "see the profile in jobqueue.yaml and cluster.job_script()")


def _job_ids(cluster) -> list[str]:
    return [str(j.job_id) for j in getattr(cluster, "workers", {}).values()
            if getattr(j, "job_id", None)]


def _slurm_report(cluster) -> str:
    ids = _job_ids(cluster)
    out = run_command(["squeue", "-h", "-o", "%i %T %r", "-j", ",".join(ids)]) if ids else None
    return f"jobs {', '.join(ids) or '(none submitted)'}; squeue: {(out or '').strip() or '-'}"


def _close_quietly(cluster, client) -> None:
    """Close after a failed start: cancel submitted jobs even if close() trips."""
    ids = _job_ids(cluster)
    for close in (client.close, cluster.close):
        try:
            close()
        except Exception as exc:  # noqa: BLE001 - already failing; report the first error
            logger.debug("while closing after a failed start: %r", exc)
    if ids:
        run_command(["scancel", *ids])
    release_credentials(cluster)


def start_slurm(profile: str | None = None, *, jobs: int | None = None,
                minimum_jobs: int | None = None, maximum_jobs: int | None = None,
                n_workers: int | None = None, threads_per_worker: int | None = None,
                memory_limit: str | int | None = None, jobqueue_config=None,
                gpu: bool | None = None, wait_timeout: float = 300,
                security=None, dashboard_address: str | None = None,
                **overrides) -> ClusterClient:
    """Start a ``SLURMCluster`` from a profile and wait for its workers.

    Parameters are those of :func:`probe_dask.cluster.make_cluster` for a "slurm" spec;
    ``wait_timeout`` is in seconds; ``security`` None or True creates the run's TLS
    credentials, False turns TLS off, a ``Security`` is used as given.

    Returns
    -------
    ClusterClient
        ProbeDaskError when Slurm rejects the job script, the workers do not join in
        time or run other package versions than this process (then the cluster is closed
        and its jobs cancelled).
    """
    kw = slurm_cluster_kwargs(profile, jobqueue_config=jobqueue_config, gpu=gpu, **overrides)
    processes = int(kw.get("processes") or dask.config.get("jobqueue.slurm.processes") or 1)
    if threads_per_worker is not None:
        kw["cores"] = threads_per_worker * processes
    if memory_limit is not None:
        kw["memory"] = format_bytes(parse_bytes(memory_limit) * processes).replace(" ", "")
    if dashboard_address or "dashboard_address" not in kw["scheduler_options"]:
        kw["scheduler_options"]["dashboard_address"] = default_dashboard(dashboard_address)
    folder = None
    if security is None or security is True:
        # A fresh CA per run, as files (0600) in a private folder: the job script names
        # only their paths, and dask-jobqueue has nothing to copy.
        kw["security"], folder = run_credentials()
    elif security is not False:
        kw["security"] = security
    try:
        cluster = SLURMCluster(**kw)
    except BaseException:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    if folder is not None:
        watch_credentials(cluster, folder, kw["security"])
    client = Client(cluster)
    try:
        _sbatch_test(cluster, slurm_profile(profile, gpu=gpu)[0])
        want = _scale(cluster, jobs, minimum_jobs, maximum_jobs, n_workers, processes)
        if want:
            wait_for_workers(client, want, wait_timeout, lambda: _slurm_report(cluster))
        check_versions(cluster_versions(client, check=False))  # the workers that joined
    except BaseException:
        _close_quietly(cluster, client)
        raise
    return ClusterClient(cluster, client)


def _scale(cluster, jobs, minimum_jobs, maximum_jobs, n_workers, processes) -> int:
    """Ask for the workers: adaptive between ``minimum_jobs`` and ``maximum_jobs``, else
    ``n_workers``, else ``jobs`` (default 1). Returns the workers to wait for."""
    if minimum_jobs is not None or maximum_jobs is not None:
        lo = minimum_jobs or 0
        cluster.adapt(minimum_jobs=lo, maximum_jobs=max(maximum_jobs or lo, lo, 1))
        return lo * processes
    if n_workers is not None:
        cluster.scale(n=n_workers)
        return n_workers
    jobs = 1 if jobs is None else jobs
    cluster.scale(jobs=jobs)
    return jobs * processes
