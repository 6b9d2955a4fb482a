"""Cluster specs and the handle :func:`~probe_dask.cluster.make_cluster` returns.

A spec is one short string: ``"local"``, ``"slurm"``, ``"slurm:PROFILE"`` or a scheduler
address (``tcp://host:port``). :class:`ClusterClient` pairs the cluster that was started
(None for an address) with its connected client; :func:`wait_for_workers` waits for them
with one clear error.

Memory: nothing of its own; a ClusterClient holds the cluster and client objects.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, NamedTuple

from dask.utils import parse_timedelta

from probe_dask import config
from probe_dask.cluster.tls import release_credentials
from probe_dask.errors import ProbeDaskError

__all__ = ["ClusterSpec", "ClusterClient", "parse_spec", "wait_for_workers", "wait_seconds"]

logger = logging.getLogger(__name__)

_SCHEMES = ("tcp://", "tls://", "ucx://", "inproc://", "ws://", "wss://")
_SPEC_HELP = "'local', 'slurm', 'slurm:PROFILE' or a scheduler address such as tcp://host:8786"


class ClusterSpec(NamedTuple):
    """A parsed cluster spec: ``kind`` is "local", "slurm" or "address"."""

    kind: str
    profile: str | None = None
    address: str | None = None


class ClusterClient(NamedTuple):
    """What :func:`make_cluster` returns: unpacks as ``cluster, client``.

    ``cluster`` is None when the spec was a scheduler address (nothing was started).
    Use as a context manager, or call :meth:`close`, to close the client and then the
    cluster (which cancels its Slurm jobs and removes its TLS credentials).
    """

    cluster: Any
    client: Any

    def close(self) -> None:
        """Close the client, then the cluster this call started (if any) and its credentials."""
        self.client.close()
        if self.cluster is not None:
            try:
                self.cluster.close()
            finally:
                release_credentials(self.cluster)

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


def wait_seconds(value: float | str | None = None) -> float:
    """Seconds to wait for workers: ``value``, else ``probe-dask.cluster.wait-timeout``."""
    return float(parse_timedelta(config.get("probe-dask.cluster.wait-timeout")
                                 if value is None else value, default="s"))


def wait_for_workers(client, n: int, timeout: float, report: Callable[[], str]) -> None:
    """Wait until ``n`` workers joined; else ProbeDaskError with ``report()`` appended."""
    t0 = time.perf_counter()
    try:
        client.wait_for_workers(n, timeout=timeout)
    except TimeoutError:
        have = len(client.scheduler_info(n_workers=-1)["workers"])
        raise ProbeDaskError(f"only {have} of {n} Dask workers joined within {timeout:g} s "
                             f"({report()})") from None
    logger.info("%d workers ready in %.1f s", n, time.perf_counter() - t0)
