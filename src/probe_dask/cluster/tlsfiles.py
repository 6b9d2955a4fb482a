"""TLS credentials as files, for a scheduler and workers started from the shell.

``scripts/probe-dask-allocation.sbatch`` (one allocation) starts ``dask scheduler`` and
``dask worker`` itself; they take TLS credentials only as files (``--tls-ca-file``,
``--tls-cert``, ``--tls-key``), and the driver takes the same files from Dask's
``distributed.comm.tls.*`` config. ``python -m probe_dask.cluster.tlsfiles --prefix
job-<id>-`` makes a fresh certificate authority and certificate for the run
(:func:`probe_dask.cluster.tls.run_credentials`: ``Security.temporary()``, one self-signed
certificate that is the CA and every endpoint's identity), writes them into a new folder of
mode 0700 under ``probe-dask.cluster.credentials-dir`` as ``ca.pem``, ``cert.pem`` and
``key.pem`` (mode 0600), and prints the folder's path. The script removes the folder when
it exits.

Memory: the temporary certificate and key (a few KB), while writing them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from probe_dask.cluster.tls import CREDENTIAL_FILES, run_credentials
from probe_dask.errors import ProbeDaskError

__all__ = []

#: File names in the credentials folder: the CA, the certificate, the private key.
FILES = tuple(CREDENTIAL_FILES.values())


def write_credentials(prefix: str = "run-") -> Path:
    """Write a fresh CA, certificate and key into a new private folder; return the folder.

    Parameters
    ----------
    prefix : str
        Start of the folder's name under ``probe-dask.cluster.credentials-dir``.

    Returns
    -------
    pathlib.Path
        A folder of mode 0700 holding :data:`FILES` (mode 0600, PEM).

    Raises
    ------
    ProbeDaskError
        The folder cannot be made private or the files cannot be written (nothing is left).
    """
    _, folder = run_credentials(prefix=prefix)  # writes FILES itself
    return folder


def main(argv: list[str] | None = None) -> int:
    """Command line: print the new credentials folder's path; one error line and 2 on failure."""
    parser = argparse.ArgumentParser(
        prog="python -m probe_dask.cluster.tlsfiles",
        description="Write a fresh TLS CA, certificate and key (PEM, mode 0600) into a new "
                    "0700 folder under probe-dask.cluster.credentials-dir; print its path.")
    parser.add_argument("--prefix", default="run-",
                        help="start of the folder's name (default run-)")
    args = parser.parse_args(argv)
    try:
        folder = write_credentials(args.prefix)
    except ProbeDaskError as exc:
        print(f"probe-dask: error: {exc}", file=sys.stderr)
        return 2
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
