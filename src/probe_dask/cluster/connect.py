"""Joining a running scheduler: make sure a Dask scheduler answers at the address first.

``distributed.Client`` trusts whatever accepts the connection: an HTTP server answers its
binary handshake with ``HTTP/1.1 400``, whose first 8 bytes read as a frame length of
3 EiB (``MemoryError``), and the dashboard's port never answers at all (silence for
minutes). :func:`probe_scheduler` looks first, with a plain socket and within
``probe-dask.cluster.connect-timeout``: a Dask server sends its handshake frame as soon as
it accepts a connection, so the first bytes tell a scheduler from anything else, and
nothing is sent to the peer unless it has already failed to be one. Then :func:`connect`
makes the client, with the same timeout.

Memory: nothing kept; the probe reads at most a few KiB.
"""

from __future__ import annotations

import socket
import struct
import time

from dask.utils import parse_timedelta
from distributed import Client
from distributed.comm import parse_address, parse_host_port

from probe_dask import config
from probe_dask.errors import ProbeDaskError

__all__ = ["connect", "probe_scheduler"]

_HANDSHAKE_KEYS = (b"compression", b"pickle-protocol")  # in every Dask handshake (msgpack)
_MAX_HANDSHAKE = 1 << 16  # a handshake is a few hundred bytes


def connect_seconds(value: float | str | None = None) -> float:
    """Seconds to wait for a scheduler: ``value``, else ``probe-dask.cluster.connect-timeout``."""
    return float(parse_timedelta(config.get("probe-dask.cluster.connect-timeout")
                                 if value is None else value, default="s"))


def _printable(data: bytes) -> str:
    text = data.split(b"\r\n", 1)[0].split(b"\n", 1)[0][:60].decode("ascii", "replace")
    return "".join(c if c.isprintable() else "?" for c in text)


def _what_answers(sock: socket.socket) -> str:
    """Name a silent server: ask it as HTTP would (it is not a scheduler in any case)."""
    try:
        sock.settimeout(2)
        sock.sendall(b"HEAD / HTTP/1.0\r\n\r\n")
        reply = sock.recv(256)
    except OSError:
        reply = b""
    if reply.startswith(b"HTTP/"):
        return f"an HTTP server ({_printable(reply)}; the dashboard's port?)"
    return "a server that sent nothing"


def probe_scheduler(address: str, timeout: float | str | None = None) -> None:
    """ProbeDaskError unless a Dask scheduler answers at ``address`` within ``timeout``.

    Parameters
    ----------
    address : str
        ``tcp://host:port``; other schemes (tls, ucx, ws) are left to the client's own
        connect (TLS clients speak first, so nothing can be learnt before a handshake).
    timeout : float or str, optional
        Default ``probe-dask.cluster.connect-timeout`` (30 s).

    Raises
    ------
    ProbeDaskError
        One line naming the address and what answered: nothing listening, no answer
        within the timeout, an HTTP server, or another server's first bytes.
    """
    seconds = connect_seconds(timeout)
    scheme, loc = parse_address(address)
    if scheme != "tcp":
        return
    host, port = parse_host_port(loc)
    head = f"{address}: not a Dask scheduler"
    deadline = time.monotonic() + seconds
    try:
        sock = socket.create_connection((host, port), timeout=seconds)
    except socket.gaierror as exc:
        raise ProbeDaskError(f"{head}: cannot resolve host {host!r} ({exc.strerror})") from None
    except ConnectionRefusedError:
        raise ProbeDaskError(f"{head}: nothing listening on port {port} (connection refused); "
                             "is the scheduler running, and is this its address "
                             "(not the dashboard's)?") from None
    except TimeoutError:
        raise ProbeDaskError(f"{head}: no answer within {seconds:g} s (connection not accepted; "
                             "probe-dask.cluster.connect-timeout)") from None
    except OSError as exc:
        raise ProbeDaskError(f"{head}: cannot connect ({exc.strerror or exc})") from None
    with sock:
        data = b""
        try:
            while len(data) < 8 or len(data) < 8 + struct.unpack("<Q", data[:8])[0]:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                sock.settimeout(left)
                piece = sock.recv(4096)
                if not piece:
                    break
                data += piece
                if len(data) >= 8 and struct.unpack("<Q", data[:8])[0] > _MAX_HANDSHAKE:
                    break
        except TimeoutError:
            if not data:
                what = _what_answers(sock)
                raise ProbeDaskError(f"{head}: {what}; no Dask handshake within {seconds:g} s "
                                     "(probe-dask.cluster.connect-timeout)") from None
        except OSError as exc:
            raise ProbeDaskError(f"{head}: the connection failed ({exc.strerror or exc})") from None
    if not data:
        raise ProbeDaskError(f"{head}: the server closed the connection without a word")
    if not all(k in data for k in _HANDSHAKE_KEYS):
        what = (f"an HTTP server ({_printable(data)})" if data.startswith(b"HTTP/")
                else f"a server that answered {_printable(data)!r}")
        raise ProbeDaskError(f"{head}: {what}")


def connect(address: str, timeout: float | str | None = None, **kwargs) -> Client:
    """A client of the scheduler at ``address``, after :func:`probe_scheduler` found one.

    Parameters
    ----------
    address : str
    timeout : float or str, optional
        For the probe and the client's connect; default ``probe-dask.cluster.connect-timeout``.
    **kwargs
        For ``distributed.Client``.
    """
    seconds = connect_seconds(timeout)
    probe_scheduler(address, seconds)
    try:
        return Client(address, timeout=seconds, **kwargs)
    except (OSError, TimeoutError) as exc:
        raise ProbeDaskError(f"{address}: cannot reach the scheduler: {exc}") from None
