"""Reaching a run from where the user sits: the dashboard from a laptop, the right cluster
from a login node.

A run prints its dashboard address and the ``ssh -L`` line that forwards it to a laptop
(``cluster.ssh_tunnel_hint``: the dashboard listens on loopback, so the tunnel ends on the
driver's host); ``--cluster local`` on a Slurm login node is warned about before it takes
the node's cores (:func:`login_node_warning`).

Memory per process: nothing beyond a few strings.
"""

from __future__ import annotations

import os
import shutil

__all__ = ["login_node_warning"]


def login_node_warning(cluster: str, env=None, which=shutil.which) -> str | None:
    """A warning when ``--cluster local`` would run on a Slurm login node, else None.

    A login node is recognised by Slurm's ``sinfo`` on the PATH outside any Slurm job
    (no ``SLURM_JOB_ID``).
    """
    env = os.environ if env is None else env
    if cluster != "local" or env.get("SLURM_JOB_ID") or which("sinfo") is None:
        return None
    return ("WARNING: --cluster local starts workers on this machine, which looks like a Slurm "
            "login node (sinfo is here, no SLURM_JOB_ID); to run on compute nodes pass "
            "--cluster slurm:PROFILE (profiles: jobqueue.yaml) or submit the command with sbatch")
