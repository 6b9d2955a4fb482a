"""The package versions of driver, scheduler and workers: compared, and kept for provenance.

A driver and workers from different Python environments (an old virtualenv on the compute
nodes, a ``pip install -U`` on the login node only) is the classic dask-jobqueue failure:
pickled tasks then fail far from their cause, or run other code than the driver's.
:func:`check_versions` compares the packages that decide what a task does and how it
travels (Python's major.minor, dask, distributed, cloudpickle, msgpack, tornado, toolz,
lz4, numpy and probe-dask itself), as ``client.get_versions(check=True)`` does, but fails
with one line naming the package, the worker and both versions.
:func:`cluster_versions` returns those versions (checked) for the provenance file
(``probe1d_classes.json``).

Memory: one small dict of version strings per worker.
"""

from __future__ import annotations

from distributed.versions import scheduler_relevant_packages

from probe_dask.errors import ProbeDaskError

__all__ = ["PACKAGES", "cluster_versions", "check_versions"]

#: Packages compared between driver and workers ("python" is its major.minor).
PACKAGES = ("python", "dask", "distributed", "cloudpickle", "msgpack", "tornado", "toolz",
            "lz4", "numpy", "probe_dask")
_EXTRA = ["probe_dask"]  # asked for on top of distributed's own list


def _packages(info) -> dict[str, str | None]:
    packages = (info or {}).get("packages") or {}
    return {name: packages.get(name) for name in PACKAGES}


def _comparable(name: str, value: str | None) -> str | None:
    # Python patch releases keep pickles and bytecode compatible; minor releases do not.
    if name == "python" and value:
        return ".".join(value.split(".")[:2])
    return value


def cluster_versions(client, *, check: bool = True) -> dict:
    """Versions of the compared packages on the driver, the scheduler and every worker.

    Parameters
    ----------
    client : distributed.Client
    check : bool
        Run :func:`check_versions` on them first (default).

    Returns
    -------
    dict
        ``{"driver": {package: version}, "scheduler": {...}, "workers": {address: {...}}}``,
        packages as :data:`PACKAGES` (a version is None where the package is not
        installed), JSON-ready.

    Raises
    ------
    ProbeDaskError
        With ``check``: a package differs between the driver and the scheduler or a worker.
    """
    raw = client.get_versions(packages=_EXTRA)
    versions = {"driver": _packages(raw.get("client")),
                "scheduler": _packages(raw.get("scheduler")),
                "workers": {addr: _packages(info)
                            for addr, info in sorted((raw.get("workers") or {}).items())}}
    if check:
        check_versions(versions)
    return versions


def check_versions(versions: dict) -> None:
    """Raise one clear line when a package differs from the driver's.

    Parameters
    ----------
    versions : dict
        As :func:`cluster_versions` returns. The scheduler is compared only on what it
        runs itself (distributed's list: not numpy, msgpack or probe-dask).

    Raises
    ------
    ProbeDaskError
        ``"<package> <version> on worker <address> (and N more) but <version> on the
        driver: ..."``, for the first package (in :data:`PACKAGES` order) that differs.
    """
    driver = versions["driver"]
    others = [("scheduler", versions.get("scheduler") or {})] if versions.get("scheduler") else []
    others += [(f"worker {addr}", pk) for addr, pk in (versions.get("workers") or {}).items()]
    for name in PACKAGES:
        want = _comparable(name, driver.get(name))
        bad = [(where, pk.get(name)) for where, pk in others
               if (where != "scheduler" or name in scheduler_relevant_packages)
               and _comparable(name, pk.get(name)) != want]
        if bad:
            where, got = bad[0]
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise ProbeDaskError(
                f"version mismatch: {name} {got or 'not installed'} on {where}{more} but "
                f"{driver.get(name) or 'not installed'} on the driver; run the driver and "
                "every worker from the same Python environment")
