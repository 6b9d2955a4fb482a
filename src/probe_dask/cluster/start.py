"""Choosing and starting the Dask cluster that probe-dask runs on.

One call, :func:`make_cluster`, turns a short spec into a connected ``Client``:

- ``"local"``: a ``LocalCluster`` of worker processes on this machine;
- ``"slurm"`` or ``"slurm:PROFILE"``: a dask-jobqueue ``SLURMCluster`` built from a named
  profile of ``jobqueue.yaml`` (the ``probe-dask: slurm-profiles:`` section laid over the
  standard ``jobqueue: slurm:`` defaults), scaled to a number of jobs or made adaptive;
- ``"tcp://host:port"`` (any scheduler address): connect to a running scheduler and
  start nothing.

``jobqueue.yaml`` is found from the ``jobqueue_config`` argument (file or folder), else
``DASK_CONFIG`` (Dask's own variable), else the copy shipped in this package; it is merged
with ``dask.config.update(..., priority="new")`` (``dask.config.set`` with a nested dict
would replace the whole ``jobqueue`` section). Every job script exports ``DASK_CONFIG``
pointing at that file, so Slurm-started workers read the same settings (a notebook's
``dask.config.set`` never reaches them). Partition and interface: keyword argument, else
``PROBE_DASK_SLURM_PARTITION`` / ``PROBE_DASK_SLURM_INTERFACE``, else the profile, else
detected (the partition ``sinfo`` marks default; loopback when every node is this host).

Memory: only the cluster and client objects; the scheduler of a "local" or "slurm"
cluster runs in this process, its workers in other processes.
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

from probe_dask.engine.workers import gpu_resources
from probe_dask.errors import InputError, ProbeDaskError

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
    """Parse ``"local"``, ``"slurm"``, ``"slurm:PROFILE"`` or a scheduler address.

    Parameters
    ----------
    spec : str
        Addresses start with tcp://, tls://, ucx://, inproc://, ws:// or wss://.

    Returns
    -------
    ClusterSpec
        Raises ProbeDaskError for anything else.
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
    """Merge a ``jobqueue.yaml`` (or every YAML/JSON file of a folder) into Dask's config.

    Values in the file win over values already there, earlier ``dask.config.set`` included.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    pathlib.Path
        The absolute path, which job scripts export as ``DASK_CONFIG``.
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
    if dask.config.get(PROFILES_KEY, None) is None:
        if not env:
            return str(load_jobqueue_config(packaged_config_path()))
        load_jobqueue_config(env)  # DASK_CONFIG may have been set after dask was imported
        if dask.config.get(PROFILES_KEY, None) is None:
            raise InputError(env, PROFILES_KEY, "no such section (DASK_CONFIG is set)",
                             f"the probe-dask section of {packaged_config_path()}")
    return _loaded[-1] if _loaded else (os.path.abspath(env) if env else None)


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
    """Look up a named Slurm profile (InputError naming file and profiles if missing).

    Parameters
    ----------
    name : str, optional
        Default: "gpu" if ``gpu`` is True, "cpu" if False, else
        ``probe-dask.slurm-default-profile``.
    jobqueue_config : str or os.PathLike, optional
        Explicit ``jobqueue.yaml`` (file or folder) to load first.
    gpu : bool, optional

    Returns
    -------
    name : str
    profile : dict
        A copy, keys as ``SLURMCluster`` keywords (``name`` becomes ``job_name``); keys it
        leaves out come from ``jobqueue.slurm``.
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
    """The partition ``sinfo -h -o %P`` marks default (``*``), or the only one, or None."""
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
        Loopback when every node is this host; else the interface this host routes
        through to the first node; None when unknown (no ``sinfo``, unresolvable nodes).
    for_workers : bool
        True in the loopback case; otherwise only the scheduler binds to ``interface``
        and workers pick the address from which they reach it.
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
    """Keyword arguments for ``SLURMCluster`` from a profile, the env and overrides.

    Parameters
    ----------
    profile : str, optional
        See :func:`slurm_profile`.
    jobqueue_config : str or os.PathLike, optional
    gpu : bool, optional
        When given, must agree with whether the profile gives workers a GPU resource.
    **overrides
        ``SLURMCluster`` keywords replacing the profile's (``scheduler_options`` merged).

    Returns
    -------
    dict
        With ``queue`` and ``interface`` (or ``scheduler_options["interface"]``) resolved,
        and ``job_script_prologue`` exporting ``DASK_CONFIG``. Raises ProbeDaskError when
        the worker ``--lifetime`` would outlast the walltime.
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


def _sbatch_test(cluster, profile: str) -> None:
    """Ask ``sbatch --test-only`` whether Slurm would accept the job script at all."""
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".sh", prefix="probe-dask-") as f:
        f.write(cluster.job_script())
        f.flush()
        try:
            r = subprocess.run(["sbatch", "--test-only", f.name], capture_output=True,
                               text=True, timeout=60, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            raise ProbeDaskError(f"Slurm profile {profile!r}: sbatch failed: {exc}") from None
    if r.returncode != 0:
        why = " ".join((r.stderr or r.stdout).split()) or f"exit status {r.returncode}"
        raise ProbeDaskError(f"Slurm profile {profile!r}: Slurm rejects its job script ({why}); "
                             "see the profile in jobqueue.yaml and cluster.job_script()")


def _slurm_report(cluster) -> str:
    ids = [str(j.job_id) for j in cluster.workers.values() if getattr(j, "job_id", None)]
    out = _run(["squeue", "-h", "-o", "%i %T %r", "-j", ",".join(ids)]) if ids else None
    return f"jobs {', '.join(ids) or '(none submitted)'}; squeue: {(out or '').strip() or '-'}"


def _close_quietly(cluster, client) -> None:
    """Close after a failed start: cancel submitted jobs even if close() trips."""
    ids = [str(j.job_id) for j in getattr(cluster, "workers", {}).values()
           if getattr(j, "job_id", None)]
    for close in (client.close, cluster.close):
        try:
            close()
        except Exception as exc:  # noqa: BLE001 - already failing; report the first error
            logger.debug("while closing after a failed start: %r", exc)
    if ids:
        _run(["scancel", *ids])


def _wait(client, n: int, timeout: float, report) -> None:
    t0 = time.perf_counter()
    try:
        client.wait_for_workers(n, timeout=timeout)
    except TimeoutError:
        have = len(client.scheduler_info(n_workers=-1)["workers"])
        raise ProbeDaskError(f"only {have} of {n} Dask workers joined within {timeout:g} s "
                             f"({report()})") from None
    logger.info("%d workers ready in %.1f s", n, time.perf_counter() - t0)


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
    wait_timeout : float
        Seconds to wait for workers; then ProbeDaskError (with squeue's view), and the
        cluster is closed.
    **overrides
        Keyword arguments for ``LocalCluster``, ``SLURMCluster`` or ``Client``.

    Returns
    -------
    ClusterClient
        ``(cluster, client)``; ``cluster`` is None for an address. ProbeDaskError: bad
        spec or profile, Slurm rejecting the job script, workers not joining.
    """
    from distributed import Client

    parsed = parse_spec(spec)
    if parsed.kind != "slurm" and any(v is not None for v in (jobs, minimum_jobs, maximum_jobs)):
        raise ProbeDaskError(f"cluster spec {spec!r}: jobs/minimum_jobs/maximum_jobs are for "
                             "'slurm' specs; use n_workers")
    if parsed.kind == "address":
        try:
            client = Client(parsed.address, **overrides)
        except OSError as exc:
            raise ProbeDaskError(f"{parsed.address}: cannot reach the scheduler: {exc}") from None
        if n_workers:
            _wait(client, n_workers, wait_timeout, lambda: f"scheduler {parsed.address}")
        return ClusterClient(None, client)
    if parsed.kind == "local":
        from distributed import LocalCluster

        kw = {"n_workers": n_workers or (1 if gpu else None), "processes": True,
              "threads_per_worker": threads_per_worker, "memory_limit": memory_limit,
              "resources": {"GPU": 1} if gpu else None}
        kw = {k: v for k, v in kw.items() if v is not None} | overrides
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
        _sbatch_test(cluster, slurm_profile(parsed.profile, gpu=gpu)[0])
        if minimum_jobs is not None or maximum_jobs is not None:
            lo = minimum_jobs or 0
            cluster.adapt(minimum_jobs=lo, maximum_jobs=max(maximum_jobs or lo, lo, 1))
            want = lo * processes
        elif n_workers is not None:
            cluster.scale(n=n_workers)
            want = n_workers
        else:
            jobs = 1 if jobs is None else jobs
            cluster.scale(jobs=jobs)
            want = jobs * processes
        if want:
            _wait(client, want, wait_timeout, lambda: _slurm_report(cluster))
    except BaseException:
        _close_quietly(cluster, client)
        raise
    return ClusterClient(cluster, client)
