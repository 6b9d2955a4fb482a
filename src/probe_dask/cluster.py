"""Choosing and starting the Dask cluster that probe-dask runs on.

One call, :func:`make_cluster`, turns a short spec into a connected ``Client``:

- ``"local"``: a ``LocalCluster`` of worker processes on this machine;
- ``"slurm"`` or ``"slurm:PROFILE"``: a dask-jobqueue ``SLURMCluster`` built from a named
  profile of ``jobqueue.yaml`` (the ``probe-dask: slurm-profiles:`` section laid over the
  standard ``jobqueue: slurm:`` defaults), scaled to a number of jobs or made adaptive;
- ``"tcp://host:port"`` (any scheduler address): connect to a running scheduler and
  start nothing.

Where ``jobqueue.yaml`` comes from, in order: the ``jobqueue_config`` argument (a file or
a folder), the ``DASK_CONFIG`` environment variable (Dask's own mechanism, read when
Python starts), else the copy shipped in this package. An explicit file is merged into
Dask's configuration with ``dask.config.update(..., priority="new")`` (not
``dask.config.set``, which would replace the whole ``jobqueue`` section). Every Slurm job
script exports ``DASK_CONFIG`` pointing at that same file, so the workers read the same
settings (settings made with ``dask.config.set`` never reach Slurm-started workers).

The partition and network interface come from the profile, can be overridden with the
environment variables ``PROBE_DASK_SLURM_PARTITION`` / ``PROBE_DASK_SLURM_INTERFACE``
(or keyword arguments), and are otherwise detected: the partition ``sinfo`` marks as
default, and the loopback interface when every node of the partition is this host.

Memory: this module holds only the cluster and client objects; with ``"slurm"`` the
scheduler runs inside this process, with ``"local"`` in this process too (workers are
separate processes).
"""

from __future__ import annotations

import copy
import logging
import os
import re
import shlex
import shutil
import socket
import subprocess
import time
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import dask
import dask.config
from dask.utils import format_bytes, parse_bytes, parse_timedelta

from .errors import InputError, ProbeDaskError

__all__ = [
    "ClusterClient", "ClusterSpec", "parse_spec", "make_cluster", "gpu_resources",
    "load_jobqueue_config", "packaged_config_path", "slurm_profile", "slurm_cluster_kwargs",
    "detect_partition", "detect_interface",
]

logger = logging.getLogger(__name__)

PARTITION_ENV = "PROBE_DASK_SLURM_PARTITION"
INTERFACE_ENV = "PROBE_DASK_SLURM_INTERFACE"
PROFILES_KEY = "probe-dask.slurm-profiles"
DEFAULT_PROFILE_KEY = "probe-dask.slurm-default-profile"
_SCHEMES = ("tcp://", "tls://", "ucx://", "inproc://", "ws://", "wss://")
_SPEC_HELP = "'local', 'slurm', 'slurm:PROFILE' or a scheduler address such as tcp://host:8786"
_loaded: list[str] = []  # jobqueue config paths merged by load_jobqueue_config, latest last


class ClusterSpec(NamedTuple):
    """A parsed cluster spec: ``kind`` is "local", "slurm" or "address"."""

    kind: str
    profile: str | None = None
    address: str | None = None


class ClusterClient(NamedTuple):
    """What :func:`make_cluster` returns: unpacks as ``cluster, client``.

    ``cluster`` is None when the spec was a scheduler address (nothing was started).
    Use as a context manager, or call :meth:`close`, to close the client and then the
    cluster (which cancels its Slurm jobs).
    """

    cluster: Any
    client: Any

    def close(self) -> None:
        """Close the client, then the cluster this call started (if any)."""
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def __enter__(self) -> ClusterClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def parse_spec(spec: str) -> ClusterSpec:
    """Parse a cluster spec string.

    Parameters
    ----------
    spec : str
        ``"local"``, ``"slurm"``, ``"slurm:PROFILE"`` or a scheduler address
        (``tcp://``, ``tls://``, ``ucx://``, ``inproc://``, ``ws://``, ``wss://``).

    Returns
    -------
    ClusterSpec

    Raises
    ------
    ProbeDaskError
        When the spec is none of these.
    """
    s = (spec or "").strip()
    if s in ("local", "slurm"):
        return ClusterSpec(s)
    if s.startswith("slurm:") and s[6:].strip():
        return ClusterSpec("slurm", profile=s[6:].strip())
    if any(s.startswith(p) and len(s) > len(p) for p in _SCHEMES):
        return ClusterSpec("address", address=s)
    raise ProbeDaskError(f"cluster spec {spec!r}: expected {_SPEC_HELP}")


def packaged_config_path() -> Path:
    """Path of the ``jobqueue.yaml`` shipped in the package (a copy of the repo's)."""
    return Path(str(resources.files("probe_dask").joinpath("jobqueue.yaml")))


def load_jobqueue_config(path: str | os.PathLike) -> Path:
    """Merge a ``jobqueue.yaml`` (or every YAML file of a folder) into Dask's config.

    Parameters
    ----------
    path : str or os.PathLike
        A YAML file, or a folder (all its ``*.yaml``/``*.yml``/``*.json`` are read, as
        Dask does for ``DASK_CONFIG``).

    Returns
    -------
    pathlib.Path
        The absolute path; job scripts export ``DASK_CONFIG`` set to it.

    Notes
    -----
    Values in the file win over values already in the config, including earlier
    ``dask.config.set`` calls.
    """
    p = Path(path).expanduser().resolve()
    if not p.exists():
        raise InputError(p, "jobqueue config", "no such file or folder", "a jobqueue.yaml")
    try:
        new = dask.config.collect(paths=[str(p)], env={})
    except ValueError as exc:
        raise InputError(p, "YAML", str(exc).splitlines()[-1], "a valid YAML mapping") from None
    dask.config.update(dask.config.config, new, priority="new")
    _loaded.append(str(p))
    return p


def _config_source(jobqueue_config) -> str | None:
    """Make sure profiles are in the config; return the path workers should read."""
    if jobqueue_config is not None:
        return str(load_jobqueue_config(jobqueue_config))
    env = os.environ.get("DASK_CONFIG")
    if dask.config.get(PROFILES_KEY, None) is not None:
        if _loaded:
            return _loaded[-1]
        return os.path.abspath(env) if env else None
    if env:
        raise InputError(env, PROFILES_KEY, "no such section (DASK_CONFIG is set)",
                         f"the probe-dask section of {packaged_config_path()}")
    return str(load_jobqueue_config(packaged_config_path()))


def _has_gpu_resource(worker_extra_args) -> bool:
    args = [str(a) for a in (worker_extra_args or [])]
    for i, a in enumerate(args):
        value = a.split("=", 1)[1] if a.startswith("--resources=") else (
            args[i + 1] if a == "--resources" and i + 1 < len(args) else "")
        if re.search(r"(^|[ ,])GPU=", value):
            return True
    return False


def slurm_profile(name: str | None = None, *, jobqueue_config=None,
                  gpu: bool | None = None) -> tuple[str, dict]:
    """Look up a named Slurm profile.

    Parameters
    ----------
    name : str, optional
        Profile name; default ``"gpu"`` when ``gpu`` is True, ``"cpu"`` when False, else
        ``probe-dask.slurm-default-profile``.
    jobqueue_config : str or os.PathLike, optional
        Explicit ``jobqueue.yaml`` (file or folder) to load first.
    gpu : bool, optional
        Used only to choose the default name.

    Returns
    -------
    name : str
    profile : dict
        A copy of the profile, keys as ``SLURMCluster`` keyword names (``name`` becomes
        ``job_name``). Keys it leaves out come from ``jobqueue.slurm``.

    Raises
    ------
    InputError
        When the profile does not exist (the message names the file and the profiles).
    """
    source = _config_source(jobqueue_config)
    profiles = dask.config.get(PROFILES_KEY, None) or {}
    if name is None:
        name = {True: "gpu", False: "cpu"}.get(gpu) or dask.config.get(DEFAULT_PROFILE_KEY, "cpu")
    if name not in profiles or not isinstance(profiles[name], dict):
        raise InputError(source or "dask config", PROFILES_KEY, f"no profile {name!r}",
                         "one of: " + (", ".join(sorted(profiles)) or "(none defined)"))
    out = {}
    for key, value in profiles[name].items():
        key = key.replace("-", "_")
        out["job_name" if key == "name" else key] = copy.deepcopy(value)
    return name, out


def _run(cmd: list[str], timeout: float = 15) -> str | None:
    """stdout of a command, or None when it is missing, fails or hangs."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout if r.returncode == 0 else None


def _partitions() -> list[str]:
    out = _run(["sinfo", "-h", "-o", "%P"])
    return [n.strip() for n in (out or "").splitlines() if n.strip()]


def detect_partition() -> str | None:
    """The default Slurm partition (``sinfo -h -o %P`` marks it ``*``).

    Returns
    -------
    str or None
        The default partition, the only partition when there is one, else None (also
        when ``sinfo`` is missing or fails).
    """
    names = _partitions()
    default = [n[:-1] for n in names if n.endswith("*")]
    if default:
        return default[0]
    return names[0] if len(names) == 1 else None


def _resolve(host: str) -> set[str]:
    try:
        return {ai[4][0] for ai in socket.getaddrinfo(host, None)}
    except (OSError, UnicodeError):
        return set()


def _interfaces() -> dict[str, set[str]]:
    import psutil

    return {name: {a.address.split("%")[0] for a in addrs
                   if a.family in (socket.AF_INET, socket.AF_INET6)}
            for name, addrs in psutil.net_if_addrs().items()}


def detect_interface(partition: str | None = None) -> tuple[str | None, bool]:
    """Pick the network interface for the scheduler (and maybe the workers).

    Parameters
    ----------
    partition : str, optional
        Only consider this partition's nodes.

    Returns
    -------
    interface : str or None
        The loopback interface when every node is this host (a one-machine Slurm);
        otherwise the interface this host routes through to reach the first node; None
        when nothing could be found out (no ``sinfo``, unresolvable nodes).
    for_workers : bool
        True when the workers can use the same interface name (loopback case); else only
        the scheduler should bind to it and workers choose theirs.
    """
    cmd = ["sinfo", "-h", "-N", "-o", "%N %o"] + (["-p", partition] if partition else [])
    nodes = [line.split() for line in (_run(cmd) or "").splitlines() if line.strip()]
    if not nodes:
        return None, False
    ifaces = _interfaces()
    local_ips = set().union(*ifaces.values()) if ifaces else set()
    hostname = socket.gethostname()
    names = {hostname, hostname.split(".")[0], socket.getfqdn()}

    def is_local(node: list[str]) -> bool:
        ips = _resolve(node[-1])
        return node[0] in names or bool(ips) and ips <= local_ips | {"127.0.0.1", "::1"}

    if all(is_local(n) for n in nodes):
        loop = [n for n, ips in ifaces.items() if "127.0.0.1" in ips or "::1" in ips]
        return (loop[0] if loop else "lo"), True
    for node in nodes:
        for ip in sorted(_resolve(node[-1])):
            fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
            try:
                with socket.socket(fam, socket.SOCK_DGRAM) as s:
                    s.connect((ip, 9))
                    mine = s.getsockname()[0]
            except OSError:
                continue
            for name, ips in ifaces.items():
                if mine in ips:
                    return name, False
    return None, False


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
    """Keyword arguments for ``SLURMCluster`` from a profile, env and overrides.

    Parameters
    ----------
    profile : str, optional
        Profile name (see :func:`slurm_profile`).
    jobqueue_config : str or os.PathLike, optional
        Explicit ``jobqueue.yaml`` to load first.
    gpu : bool, optional
        Chooses the default profile; when given, must agree with whether the profile
        gives workers a ``GPU`` resource.
    **overrides
        ``SLURMCluster`` keyword arguments; they replace the profile's values
        (``scheduler_options`` is merged).

    Returns
    -------
    dict
        Includes ``queue`` and ``interface`` (or ``scheduler_options["interface"]``)
        resolved as described in the module docstring, and a ``job_script_prologue``
        that exports ``DASK_CONFIG``.
    """
    source = _config_source(jobqueue_config)
    name, kw = slurm_profile(profile, gpu=gpu)
    base = dask.config.get("jobqueue.slurm", {})
    overrides = {k.replace("-", "_"): v for k, v in overrides.items()}
    kw.update(overrides)
    extra = list(kw.get("worker_extra_args", base.get("worker-extra-args")) or [])
    if gpu is not None and gpu != _has_gpu_resource(extra):
        raise ProbeDaskError(f"Slurm profile {name!r} {'lacks' if gpu else 'has'} a GPU "
                             f"worker resource but gpu={gpu} was asked")
    _check_lifetime(kw.get("walltime", base.get("walltime")), extra)

    queue = overrides.get("queue") or os.environ.get(PARTITION_ENV) or kw.get("queue") \
        or base.get("queue")
    if not queue:
        queue = detect_partition()
        if queue is None and len(parts := _partitions()) > 1:
            raise ProbeDaskError("Slurm has no default partition; set queue in the profile "
                                 f"or {PARTITION_ENV} (partitions: {' '.join(parts)})")
    kw["queue"] = queue or None

    sched = dict(base.get("scheduler-options") or {})
    sched.update(kw.get("scheduler_options") or {})
    iface = overrides.get("interface") or os.environ.get(INTERFACE_ENV) or kw.get("interface") \
        or base.get("interface")
    if not iface and "interface" not in sched and "host" not in sched:
        iface, for_workers = detect_interface(kw["queue"])
        if iface and not for_workers:
            sched["interface"], iface = iface, None
    kw["interface"] = iface or None
    kw["scheduler_options"] = sched

    prologue = list(kw.get("job_script_prologue", base.get("job-script-prologue")) or [])
    if source and not any("DASK_CONFIG" in str(line) for line in prologue):
        prologue.insert(0, f"export DASK_CONFIG={shlex.quote(source)}")
    kw["job_script_prologue"] = prologue
    return kw


def _slurm_report(cluster) -> str:
    ids = [str(j.job_id) for j in cluster.workers.values() if getattr(j, "job_id", None)]
    out = _run(["squeue", "-h", "-o", "%i %T %r", "-j", ",".join(ids)]) if ids else None
    return f"jobs {', '.join(ids) or '(none submitted)'}; squeue: {(out or '').strip() or '-'}"


def make_cluster(spec: str = "local", *, jobs: int | None = None,
                 minimum_jobs: int | None = None, maximum_jobs: int | None = None,
                 n_workers: int | None = None, threads_per_worker: int | None = None,
                 memory_limit: str | int | None = None, jobqueue_config=None,
                 gpu: bool | None = None, wait_timeout: float = 300,
                 **overrides) -> ClusterClient:
    """Start (or join) a Dask cluster and return it with a connected client.

    Parameters
    ----------
    spec : str
        ``"local"``, ``"slurm"``, ``"slurm:PROFILE"`` or a scheduler address.
    jobs : int, optional
        Slurm: number of jobs to submit (``cluster.scale(jobs=N)``), waited for. Default
        1 when neither ``jobs`` nor ``minimum_jobs``/``maximum_jobs`` is given.
    minimum_jobs, maximum_jobs : int, optional
        Slurm: make the cluster adaptive between these; waits for ``minimum_jobs``.
    n_workers : int, optional
        Local: worker processes (default: Dask's choice; 1 with ``gpu=True``). Slurm:
        workers to scale to instead of ``jobs``. Address: wait until this many joined.
    threads_per_worker : int, optional
        Local: threads per worker. Slurm: sets ``cores`` to this times ``processes``.
    memory_limit : str or int, optional
        Local: memory limit per worker. Slurm: sets ``memory`` to this times ``processes``.
    jobqueue_config : str or os.PathLike, optional
        Slurm: explicit ``jobqueue.yaml`` (file or folder).
    gpu : bool, optional
        Local: True gives each worker a ``GPU=1`` resource. Slurm: picks the "gpu"/"cpu"
        profile when none is named, and must agree with a named one. Address: unused
        (check with :func:`gpu_resources`).
    wait_timeout : float
        Seconds to wait for workers before giving up (ProbeDaskError, cluster closed).
    **overrides
        Extra keyword arguments for ``LocalCluster``, ``SLURMCluster`` or ``Client``.

    Returns
    -------
    ClusterClient
        ``(cluster, client)``; ``cluster`` is None for an address.
    """
    from distributed import Client

    parsed = parse_spec(spec)
    slurm_only = {"jobs": jobs, "minimum_jobs": minimum_jobs, "maximum_jobs": maximum_jobs}
    if parsed.kind != "slurm" and any(v is not None for v in slurm_only.values()):
        raise ProbeDaskError(f"cluster spec {spec!r}: jobs/minimum_jobs/maximum_jobs are for "
                             "'slurm' specs; use n_workers")
    if parsed.kind == "address":
        if threads_per_worker is not None or memory_limit is not None:
            raise ProbeDaskError(f"cluster spec {spec!r}: an existing scheduler's workers "
                                 "cannot be resized")
        try:
            client = Client(parsed.address, **overrides)
        except OSError as exc:
            raise ProbeDaskError(f"{parsed.address}: cannot reach the scheduler: {exc}") from exc
        if n_workers:
            _wait(client, n_workers, wait_timeout, lambda: f"at {parsed.address}", None)
        return ClusterClient(None, client)
    if parsed.kind == "local":
        from distributed import LocalCluster

        kw = {"n_workers": n_workers or (1 if gpu else None), "processes": True,
              "threads_per_worker": threads_per_worker, "memory_limit": memory_limit,
              "resources": {"GPU": 1} if gpu else None}
        kw = {k: v for k, v in kw.items() if v is not None}
        kw.update(overrides)
        cluster = LocalCluster(**kw)
        return ClusterClient(cluster, Client(cluster))

    if shutil.which("sbatch") is None:
        raise ProbeDaskError(f"cluster spec {spec!r}: sbatch not found on PATH; run this on a "
                             "Slurm login node (or scripts/slurm/start.sh here)")
    kw = slurm_cluster_kwargs(parsed.profile, jobqueue_config=jobqueue_config, gpu=gpu,
                              **overrides)
    processes = int(kw.get("processes") or dask.config.get("jobqueue.slurm.processes") or 1)
    if threads_per_worker is not None:
        kw["cores"] = threads_per_worker * processes
    if memory_limit is not None:
        kw["memory"] = format_bytes(parse_bytes(memory_limit) * processes).replace(" ", "")
    from dask_jobqueue import SLURMCluster

    cluster = SLURMCluster(**kw)
    client = Client(cluster)
    try:
        if minimum_jobs is not None or maximum_jobs is not None:
            lo = minimum_jobs or 0
            cluster.adapt(minimum_jobs=lo, maximum_jobs=max(maximum_jobs or lo, lo, 1))
            want = lo * processes
        elif n_workers is not None:
            cluster.scale(n=n_workers)
            want = n_workers
        else:
            cluster.scale(jobs=1 if jobs is None else jobs)
            want = (1 if jobs is None else jobs) * processes
        if want:
            _wait(client, want, wait_timeout, lambda: _slurm_report(cluster), cluster)
    except BaseException:
        client.close()
        cluster.close()
        raise
    return ClusterClient(cluster, client)


def _wait(client, n: int, timeout: float, report, cluster) -> None:
    t0 = time.perf_counter()
    try:
        client.wait_for_workers(n, timeout=timeout)
    except TimeoutError:
        raise ProbeDaskError(f"only {len(client.scheduler_info(n_workers=-1)['workers'])} of "
                             f"{n} Dask workers joined within {timeout:g} s ({report()})") from None
    logger.info("%d workers ready in %.1f s", n, time.perf_counter() - t0)


def gpu_resources(client) -> dict | None:
    """The ``resources=`` argument GPU tasks should use on this client's cluster.

    Parameters
    ----------
    client : distributed.Client

    Returns
    -------
    dict or None
        ``{"GPU": 1}`` when there are workers and every one advertises a ``GPU``
        resource (so tasks that ask for it can run anywhere it is needed); None
        otherwise (CPU-only or mixed clusters: run without resource restrictions, or
        ask for GPUs explicitly).
    """
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    if workers and all((w.get("resources") or {}).get("GPU", 0) >= 1 for w in workers.values()):
        return {"GPU": 1}
    return None
